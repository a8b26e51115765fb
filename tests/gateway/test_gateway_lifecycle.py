"""The run lifecycle through the gateway: seed 000's first conversation flow as written, and event
streams that end at once, over SSE, NDJSON and WebSocket, when there is nothing left to send."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config

# The seed's model ids, scripted; the assistant answers slowly, so the human posts while it speaks.
CONFIG: dict[str, Any] = {
    "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
    "models": [
        {"id": "ollama-phi4", "provider": "scripted", "script": ["(a person's seat)"]},
        {
            "id": "claude-3-sonnet",
            "provider": "scripted",
            "script": [" ".join(f"point{i}" for i in range(30))],
            "chunk_delay_ms": 10,
        },
    ],
}

SEED_3_1_3 = """{
  "models": [
    {
      "id": "ollama-phi4",
      "role": "human"
    },
    {
      "id": "claude-3-sonnet",
      "role": "assistant"
    }
  ],
  "initial_prompt": "Let's discuss the implications of quantum computing on cryptography",
  "mode": "human-ai",
  "rounds": 3,
  "system_instruction": "This is a technical discussion between experts."
}"""

SEED_3_1_4 = """{
  "content": "What about Shor's algorithm specifically?",
  "role": "human",
  "model": "ollama-phi4"
}"""


@pytest.fixture
async def gw(aiohttp_client: Any, api_descriptor_set: Path) -> AsyncIterator[Any]:
    server = AIBattleServer(Config.from_dict(CONFIG))
    await server.start()
    try:
        yield await aiohttp_client(
            create_app(server.grpc_target, GatewayOptions(descriptor_set=api_descriptor_set)),
            server_kwargs={"handler_cancellation": True},
        )
    finally:
        await server.stop(grace=0.5)


async def ndjson(gw: Any, path: str) -> list[dict[str, Any]]:
    resp = await gw.get(path)
    assert resp.status == 200, await resp.text()
    return [json.loads(line) for line in (await resp.text()).splitlines() if line]


async def test_seed_flow_posts_a_message_right_after_creating_the_conversation(gw: Any) -> None:
    created = await gw.post("/api/v1/conversations", data=SEED_3_1_3)
    assert created.status == 200, await created.text()
    conv = await created.json()
    assert conv["status"] == "RUN_STATUS_IN_PROGRESS"
    assert (conv["next_model"], conv["next_role"]) == ("claude-3-sonnet", "assistant")
    cid = conv["conversation_id"]

    posted = await gw.post(f"/api/v1/conversations/{cid}/messages", data=SEED_3_1_4)
    assert posted.status == 200, await posted.text()
    message = await posted.json()
    assert (message["role"], message["model"]) == ("human", "ollama-phi4")
    assert message["content"] == "What about Shor's algorithm specifically?"
    assert message["message_id"].startswith("msg-") and message["created_at"]
    assert message["queued"] is True
    # Queued while the assistant speaks: shown as such in the transcript and in the events.
    now = await (await gw.get(f"/api/v1/conversations/{cid}")).json()
    assert [m["content"] for m in now["queued_messages"]] == [message["content"]]

    # The assistant answers, then the queued words take the human's turn and the assistant goes on;
    # then it waits for the person (a stream of a conversation waiting for input stays open).
    done = await asyncio.wait_for(_until_waiting(gw, cid, turns=4), 30)
    events = await asyncio.wait_for(_events_until(gw, cid, int(done["last_sequence"])), 10)
    spoken = [(m["role"], m["content"]) for m in done["messages"]]
    assert spoken[:4] == [
        ("system", "This is a technical discussion between experts."),
        ("human", "Let's discuss the implications of quantum computing on cryptography"),
        ("assistant", " ".join(f"point{i}" for i in range(30))),
        ("human", "What about Shor's algorithm specifically?"),
    ]
    assert spoken[4][0] == "assistant"  # the conversation went on by itself
    assert done["status"] == "RUN_STATUS_WAITING_FOR_INPUT" and not done.get("queued_messages")
    messages = [
        e["event"]["message"] for e in events if e["event"]["type"] == "CONVERSATION_EVENT_TYPE_MESSAGE"
    ]
    posted_events = [m for m in messages if m["message_id"] == message["message_id"]]
    assert [m.get("queued", False) for m in posted_events] == [True, False]  # queued, then spoken


async def test_streams_with_nothing_left_end_at_once_on_every_transport(gw: Any) -> None:
    created = await gw.post(
        "/api/v1/collaborative-reasoning",
        json={"primary_model": "claude-3-sonnet", "prompt": "Why?", "max_iterations": 1, "wait": True},
    )
    done = await created.json()
    assert done["status"] == "RUN_STATUS_COMPLETED", done
    rid, last = done["reasoning_id"], int(done["last_sequence"])
    for after in (last, last + 1, 10**12):
        path = f"/api/v1/collaborative-reasoning/{rid}/events?after_sequence={after}"
        sse = await asyncio.wait_for(gw.get(path, headers={"Accept": "text/event-stream"}), 5)
        assert sse.status == 204  # EventSource stops reconnecting
        resumed = await asyncio.wait_for(
            gw.get(
                f"/api/v1/collaborative-reasoning/{rid}/events",
                headers={"Accept": "text/event-stream", "Last-Event-ID": str(after)},
            ),
            5,
        )
        assert resumed.status == 204
        assert await asyncio.wait_for(ndjson(gw, path), 5) == []
        async with gw.ws_connect(
            f"/api/v1/ws/collaborative-reasoning/{rid}?after_sequence={after}",
            protocols=("aibattle.flat.v1",),
        ) as ws:
            frames = [m async for m in _frames(ws)]
        assert not [f for f in frames if f.get("type") not in ("auth_ok", "connected")], frames

    # A conversation waiting for a person, followed from beyond its log.
    conv = await (
        await gw.post(
            "/api/v1/conversations",
            json={
                "models": [
                    {"id": "ollama-phi4", "role": "human"},
                    {"id": "claude-3-sonnet", "role": "assistant"},
                ]
            },
        )
    ).json()
    assert conv["status"] == "RUN_STATUS_WAITING_FOR_INPUT"
    path = f"/api/v1/conversations/{conv['conversation_id']}/events?after_sequence={10**12}"
    assert (await asyncio.wait_for(gw.get(path, headers={"Accept": "text/event-stream"}), 5)).status == 204
    assert await asyncio.wait_for(ndjson(gw, path), 5) == []


async def _until_waiting(gw: Any, cid: str, *, turns: int) -> dict[str, Any]:
    while True:
        conv = await (await gw.get(f"/api/v1/conversations/{cid}")).json()
        if conv["status"] == "RUN_STATUS_WAITING_FOR_INPUT" and len(conv["messages"]) > turns:
            return conv
        await asyncio.sleep(0.05)


async def _events_until(gw: Any, cid: str, last: int) -> list[dict[str, Any]]:
    """The NDJSON event stream read up to sequence `last`, then left."""
    resp = await gw.get(f"/api/v1/conversations/{cid}/events")
    events = []
    async for line in resp.content:
        events.append(json.loads(line)["result"])  # grpc-gateway's NDJSON framing
        if int(events[-1]["event"]["sequence"]) >= last:
            break
    resp.close()
    return events


async def _frames(ws: Any) -> AsyncIterator[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        return [json.loads(m.data) async for m in ws]

    for frame in await asyncio.wait_for(read(), 5):
        yield frame


async def test_numbers_too_long_to_be_numbers_are_400s(gw: Any) -> None:
    """Python refuses int() of more than 4,300 digits: such a value is a 400, never a 500."""
    digits = "1" * 5000
    conv = await (await gw.post("/api/v1/conversations", data=SEED_3_1_3)).json()
    events = f"/api/v1/conversations/{conv['conversation_id']}/events"
    for resp in (
        await gw.get(events, headers={"Accept": "text/event-stream", "Last-Event-ID": digits}),
        await gw.get(events, headers={"Accept": "text/event-stream", "Last-Event-ID": "9" * 20}),
        await gw.get(f"/api/v1/conversations?status={digits}"),
        await gw.get(f"/api/v1/collaborative-reasoning?status={digits}"),
        await gw.get(f"{events}?after_sequence={digits}"),
    ):
        assert resp.status == 400, await resp.text()
        assert digits not in await resp.text()
