"""Conversations over REST, SSE and the native WebSocket dialect, before the real server (scripted models).

Seed 000 §3.1.3/§3.1.4 bodies are posted as written; only the model ids are ours.
"""

from __future__ import annotations

import json
from typing import Any

import sseclient

from tests.gateway.test_gateway_server import SEED_CONVERSATION, SEED_MESSAGE

JSON = {"Content-Type": "application/json"}


async def sse_events(api: Any, cid: str, after: int = 0) -> list[sseclient.Event]:
    resp = await api.get(
        f"/api/v1/conversations/{cid}/events?after_sequence={after}", headers={"Accept": "text/event-stream"}
    )
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    return list(sseclient.SSEClient(iter([await resp.read()])).events())


async def test_seed_conversation_and_message_bodies_as_written(api: Any) -> None:
    resp = await api.post("/api/v1/conversations", data=SEED_CONVERSATION, headers=JSON)
    assert resp.status == 200, await resp.text()
    conv = await resp.json()
    # §3.1.3's response: the conversation itself, running, with the system and first human message.
    assert conv["conversation_id"].startswith("conv-")
    assert conv["status"] == "RUN_STATUS_IN_PROGRESS"
    assert [(m["role"], m["model"], m["content"]) for m in conv["messages"]] == [
        ("system", "", "This is a technical discussion between experts."),
        ("human", "scripted-peer", "Let's discuss the implications of quantum computing on cryptography"),
    ]
    assert (conv["next_model"], conv["next_role"]) == ("scripted-echo", "assistant")
    cid = conv["conversation_id"]

    resp = await api.post(f"/api/v1/conversations/{cid}:run", json={"wait": True})
    conv = await resp.json()
    assert conv["status"] == "RUN_STATUS_WAITING_FOR_INPUT"
    assert (conv["next_model"], conv["next_role"]) == ("scripted-peer", "human")
    assert conv["messages"][-1]["content"] == "Hello there, friend."

    # §3.1.4: the human turn; its response is the recorded message.
    resp = await api.post(f"/api/v1/conversations/{cid}/messages", data=SEED_MESSAGE, headers=JSON)
    assert resp.status == 200, await resp.text()
    message = await resp.json()
    assert message["message_id"].startswith("msg-")
    assert (message["role"], message["model"], message["content"]) == (
        "human",
        "scripted-peer",
        "What about Shor's algorithm specifically?",
    )
    assert message["created_at"].endswith("Z")

    conv = await (await api.post(f"/api/v1/conversations/{cid}:run", json={"wait": True})).json()
    assert conv["messages"][-1]["content"] == "Second reply." and conv["completed_rounds"] == 2


async def test_sse_ids_are_sequences_and_resume_after_one(api: Any) -> None:
    resp = await api.post(
        "/api/v1/conversations",
        json={
            "models": [{"id": "scripted-peer", "role": "a"}, {"id": "scripted-echo", "role": "b"}],
            "initial_prompt": "Go",
            "mode": "ai-ai",
            "rounds": 1,
        },
    )
    cid = (await resp.json())["conversation_id"]
    everything = await sse_events(api, cid)  # ends by itself after the COMPLETION event
    frames = [json.loads(e.data)["result"]["event"] for e in everything]
    assert frames[-1]["type"] == "CONVERSATION_EVENT_TYPE_COMPLETION"
    assert [int(f["sequence"]) for f in frames] == list(range(1, len(frames) + 1))
    rest = await sse_events(api, cid, after=3)
    assert [json.loads(e.data)["result"]["event"] for e in rest] == frames[3:]


async def test_errors_and_resources_over_rest(api: Any) -> None:
    resp = await api.post(
        "/api/v1/conversations",
        json={"models": [{"id": "scripted-peer", "role": "human"}, {"id": "gpt-x", "role": "assistant"}]},
    )
    assert resp.status == 404 and "gpt-x" in (await resp.json())["message"]
    resp = await api.post(
        "/api/v1/conversations",
        json={
            "models": [{"id": "scripted-peer", "role": "human"}, {"id": "scripted-echo", "role": "x"}],
            "rounds": 99,
        },
    )
    assert resp.status == 400
    body = await resp.json()
    violations = next(d for d in body["details"] if d["@type"].endswith("BadRequest"))["field_violations"]
    assert violations[0]["field"] == "rounds"

    resp = await api.post(
        "/api/v1/conversations",
        json={
            "models": [{"id": "scripted-peer", "role": "human"}, {"id": "scripted-echo", "role": "assistant"}]
        },
    )
    cid = (await resp.json())["conversation_id"]
    listed = await (await api.get("/api/v1/conversations?status=RUN_STATUS_WAITING_FOR_INPUT")).json()
    assert [c["conversation_id"] for c in listed["conversations"]] == [cid]
    assert (await api.delete(f"/api/v1/conversations/{cid}")).status == 200
    assert (await api.get(f"/api/v1/conversations/{cid}")).status == 404


async def test_native_websocket_dialect_converses(api: Any) -> None:
    resp = await api.post(
        "/api/v1/conversations",
        json={
            "models": [{"id": "scripted-peer", "role": "human"}, {"id": "scripted-echo", "role": "assistant"}]
        },
    )
    cid = (await resp.json())["conversation_id"]
    async with api.ws_connect(f"/api/v1/ws/conversations/{cid}") as ws:
        await ws.send_str(json.dumps({"conversation_id": cid, "message": {"content": "Hi there"}}))
        messages = []
        async for frame in ws:
            event = json.loads(frame.data)["result"]["event"]
            if event["type"] == "CONVERSATION_EVENT_TYPE_MESSAGE":
                messages.append(event["message"]["content"])
            if event["type"] == "CONVERSATION_EVENT_TYPE_COMPLETION":
                break
    assert messages == ["Hi there", "Hello there, friend."]
