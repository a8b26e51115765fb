"""Event streams through the gateway: SSE ids, Last-Event-ID, keep-alives, and the WebSocket dialects.

Against a scripted ConversationService / ReasoningService on our real protos (collab_servicer), with
the real gateway (create_app) in front.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import sseclient

from gateway import GatewayOptions, create_app
from gateway.options import GatewaySettings
from tests.gateway.collab_servicer import (
    AI_MODEL,
    AI_REPLY,
    RunningCollab,
    conversation_script,
    reasoning_script,
    seed,
    start_collab,
)
from tests.gateway.gateway_testlib import wait_for

SSE = {"Accept": "text/event-stream"}


@pytest.fixture
async def collab() -> AsyncIterator[RunningCollab]:
    server, running = await start_collab()
    yield running
    await server.stop(0)


async def gateway(aiohttp_client: Any, collab: RunningCollab, **settings: Any) -> Any:
    return await aiohttp_client(
        create_app(collab.target, GatewayOptions(descriptor_set=None, **settings)),
        server_kwargs={"handler_cancellation": True},
    )


@pytest.fixture
async def gw(aiohttp_client: Any, collab: RunningCollab) -> Any:
    return await gateway(aiohttp_client, collab)


def sse_events(raw: str) -> list[Any]:
    return list(sseclient.SSEClient(iter([raw.encode()])).events())


# --- SSE -------------------------------------------------------------------------------------------


async def test_sse_ids_are_the_event_sequences(gw: Any, collab: RunningCollab) -> None:
    await seed(collab.state.conversations["c1"], conversation_script("c1"))
    resp = await gw.get("/api/v1/conversations/c1/events", headers=SSE)
    assert resp.status == 200
    events = sse_events(await resp.text())  # the stream ended by itself after the completion
    assert [e.id for e in events] == ["1", "2", "3", "4", "5"]
    payloads = [json.loads(e.data)["result"]["event"] for e in events]
    assert [p["sequence"] for p in payloads] == ["1", "2", "3", "4", "5"]
    assert payloads[-1]["type"] == "CONVERSATION_EVENT_TYPE_COMPLETION"


async def test_reasoning_sse_ids(gw: Any, collab: RunningCollab) -> None:
    await seed(collab.state.reasonings["r1"], reasoning_script("r1"))
    resp = await gw.get("/api/v1/collaborative-reasoning/r1/events?after_sequence=2", headers=SSE)
    events = sse_events(await resp.text())
    assert [e.id for e in events] == ["3", "4", "5"]
    assert json.loads(events[-1].data)["result"]["event"]["final_result"] == "Use lattices."


async def test_last_event_id_resumes_and_wins_over_the_query(gw: Any, collab: RunningCollab) -> None:
    await seed(collab.state.conversations["c1"], conversation_script("c1"))
    # A reconnecting EventSource repeats its first URL; its header has the newest id it saw.
    resp = await gw.get(
        "/api/v1/conversations/c1/events?after_sequence=1", headers={**SSE, "Last-Event-ID": "3"}
    )
    assert [e.id for e in sse_events(await resp.text())] == ["4", "5"]
    assert collab.state.stream_requests[-1].after_sequence == 3
    # NDJSON takes it too.
    ndjson = await gw.get("/api/v1/conversations/c1/events", headers={"Last-Event-ID": "4"})
    lines = [json.loads(line) for line in (await ndjson.text()).splitlines()]
    assert [f["result"]["event"]["sequence"] for f in lines] == ["5"]


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "", "99999999999999999999"])
async def test_bad_last_event_id_is_a_400(gw: Any, collab: RunningCollab, value: str) -> None:
    resp = await gw.get("/api/v1/conversations/c1/events", headers={**SSE, "Last-Event-ID": value})
    assert resp.status == 400
    body = await resp.json()
    assert "Last-Event-ID" in body["message"]
    assert body["details"][0]["reason"] == "INVALID_HEADER"
    assert collab.state.calls == 0


async def test_reconnect_mid_stream_gets_exactly_the_missing_events(gw: Any, collab: RunningCollab) -> None:
    log = collab.state.conversations["c1"]
    script = conversation_script("c1")
    await seed(log, script[:2])
    resp = await gw.get("/api/v1/conversations/c1/events", headers=SSE)
    seen: list[str] = []
    buffer = b""
    while len(seen) < 2:
        buffer += await resp.content.readany()
        seen = [line.split(b": ", 1)[1].decode() for line in buffer.splitlines() if line.startswith(b"id: ")]
    resp.close()  # the watcher drops while the conversation goes on
    await seed(log, script[2:4])
    again = await gw.get("/api/v1/conversations/c1/events", headers={**SSE, "Last-Event-ID": seen[-1]})
    await wait_for(lambda: collab.state.stream_requests[-1].after_sequence == 2)
    await log.append(script[4])  # live, after the reconnect
    events = sse_events(await again.text())
    assert seen == ["1", "2"]
    assert [e.id for e in events] == ["3", "4", "5"]
    assert [json.loads(e.data)["result"]["event"]["sequence"] for e in events] == ["3", "4", "5"]


async def test_nothing_left_after_the_end_is_a_204(gw: Any, collab: RunningCollab) -> None:
    await seed(collab.state.conversations["c1"], conversation_script("c1"))
    resp = await gw.get("/api/v1/conversations/c1/events", headers={**SSE, "Last-Event-ID": "5"})
    assert resp.status == 204  # EventSource stops reconnecting on 204
    ndjson = await gw.get("/api/v1/conversations/c1/events?after_sequence=5")
    assert ndjson.status == 200 and await ndjson.text() == ""


async def test_keepalive_comments_on_an_idle_sse_stream(aiohttp_client: Any, collab: RunningCollab) -> None:
    gw = await gateway(aiohttp_client, collab, sse_keepalive_seconds=0.05)
    resp = await gw.get("/api/v1/conversations/idle/events", headers=SSE)
    # Nothing has happened yet: the keep-alive is what commits the response.
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    buffer = b""
    while buffer.count(b": keep-alive\n\n") < 2:
        buffer += await resp.content.readany()
    await collab.state.conversations["idle"].append(conversation_script("idle")[-1])
    buffer += await resp.content.read()
    comments, _, rest = buffer.rpartition(b": keep-alive\n\n")
    assert set(comments.split(b"\n\n")) <= {b": keep-alive", b""}
    events = sse_events(rest.decode())
    assert [e.id for e in events] == ["1"]
    assert json.loads(events[0].data)["result"]["event"]["type"] == "CONVERSATION_EVENT_TYPE_COMPLETION"


async def test_no_keepalive_on_ndjson_or_when_off(aiohttp_client: Any, collab: RunningCollab) -> None:
    cases = (({"sse_keepalive_seconds": 0.05}, {}), ({"sse_keepalive_seconds": 0}, SSE))
    for i, (settings, headers) in enumerate(cases):
        gw = await gateway(aiohttp_client, collab, **settings)
        before = collab.state.calls
        resp_task = asyncio.ensure_future(gw.get(f"/api/v1/conversations/quiet{i}/events", headers=headers))
        await wait_for(lambda before=before: collab.state.calls > before)
        await asyncio.sleep(0.3)  # several intervals of silence
        await collab.state.conversations[f"quiet{i}"].append(conversation_script("q")[-1])
        resp = await resp_task
        body = await resp.text()
        assert resp.status == 200 and "keep-alive" not in body, settings
        assert "CONVERSATION_EVENT_TYPE_COMPLETION" in body


def test_keepalive_setting() -> None:
    assert GatewaySettings().sse_keepalive_seconds == 15.0
    assert GatewaySettings(sse_keepalive_seconds=0).sse_keepalive_seconds == 0
    with pytest.raises(ValueError, match="sse_keepalive_seconds"):
        GatewaySettings(sse_keepalive_seconds=-1)


# --- WebSocket: the flat dialect ----------------------------------------------------------------------


async def frames(ws: aiohttp.ClientWebSocketResponse, until: Any = None) -> list[dict[str, Any]]:
    """Frames until the server closes, or until `until(frame)` holds."""
    out = []
    async for msg in ws:
        assert msg.type == aiohttp.WSMsgType.TEXT
        out.append(json.loads(msg.data))
        if until is not None and until(out[-1]):
            break
    return out


def is_ai_message(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "message" and frame.get("role") == "assistant"


async def test_seed_client_flow_first_frame_picks_flat(gw: Any, collab: RunningCollab) -> None:
    async with gw.ws_connect("/api/v1/ws/conversations/c9") as ws:
        await ws.send_json({"type": "auth", "token": "your-auth-token"})
        assert json.loads((await ws.receive()).data) == {"type": "auth_ok"}
        await ws.send_json({"type": "message", "content": "What about Shor's algorithm specifically?"})
        got = await frames(ws, until=is_ai_message)
    assert ws.protocol is None
    types = [f["type"] for f in got]
    assert types[:3] == ["message", "turn_started", "thinking"]
    assert set(types[3:-1]) == {"token"} and types[-1] == "message"
    human, ai = got[0], got[-1]
    assert (human["role"], human["content"]) == ("human", "What about Shor's algorithm specifically?")
    assert (ai["role"], ai["model"], ai["content"]) == ("assistant", AI_MODEL, AI_REPLY)
    assert got[2]["content"] == "Recall Shor." and got[2]["model"] == AI_MODEL  # thinking: delta as content
    assert "".join(f["content"] for f in got if f["type"] == "token") == AI_REPLY + " "
    assert [f["sequence"] for f in got] == list(range(1, len(got) + 1))
    # The servicer got a first frame naming the conversation, then the message as a human turn.
    join, said = collab.state.converse_requests[:2]
    assert join.conversation_id == "c9" and join.WhichOneof("action") is None
    assert said.WhichOneof("action") == "message"
    assert (said.message.content, said.message.role) == ("What about Shor's algorithm specifically?", "human")
    assert collab.state.metadata[-1]["authorization"] == "Bearer your-auth-token"


async def test_flat_frame_without_auth_goes_without_credentials(gw: Any, collab: RunningCollab) -> None:
    async with gw.ws_connect("/api/v1/ws/conversations/c8") as ws:
        await ws.send_json({"type": "message", "content": "hi", "role": "critic"})
        got = await frames(ws, until=is_ai_message)
    assert got[0]["type"] == "message" and got[0]["role"] == "critic"
    assert "authorization" not in collab.state.metadata[-1]


async def test_native_converse_still_works(gw: Any, collab: RunningCollab) -> None:
    async with gw.ws_connect("/api/v1/ws/conversations/c7") as ws:
        await ws.send_json({"message": {"content": "hi", "role": "human"}})
        got = await frames(
            ws, until=lambda f: f["result"]["event"].get("message", {}).get("role") == "assistant"
        )
    assert all(set(f) == {"result"} for f in got)
    assert got[0]["result"]["event"]["type"] == "CONVERSATION_EVENT_TYPE_MESSAGE"
    assert got[-1]["result"]["event"]["message"]["content"] == AI_REPLY
    first = collab.state.converse_requests[0]
    assert first.conversation_id == "c7" and first.message.content == "hi"


async def test_reasoning_socket_flat_by_subprotocol_with_bearer_token(gw: Any, collab: RunningCollab) -> None:
    await seed(collab.state.reasonings["r1"], reasoning_script("r1"))
    async with gw.ws_connect(
        "/api/v1/ws/collaborative-reasoning/r1", protocols=("aibattle.flat.v1", "bearer.sk-test-1")
    ) as ws:
        got = await frames(ws)
    assert ws.protocol == "aibattle.flat.v1"  # the dialect is echoed, never the token
    assert ws.close_code == 1000
    assert [f["type"] for f in got] == [
        "new_iteration",
        "stuck_detected",
        "handoff",
        "new_iteration",
        "completion",
    ]
    assert [f["sequence"] for f in got] == [1, 2, 3, 4, 5]
    draft, stuck, handoff, critique, done = got
    assert (draft["kind"], draft["model"], draft["content"]) == ("draft", "primary", "A first draft.")
    assert stuck["stuck_indicators"] == ["repetition", "no_progress"] and stuck["model"] == "primary"
    assert (handoff["model"], handoff["to_model"]) == ("primary", "secondary")
    assert critique["focus_areas"] == ["security_analysis"] and critique["model"] == "secondary"
    assert done["final_result"] == "Use lattices." and done["status"] == "RUN_STATUS_COMPLETED"
    assert collab.state.metadata[-1]["authorization"] == "Bearer sk-test-1"


async def test_flat_subprotocol_without_credentials_streams_at_once(gw: Any, collab: RunningCollab) -> None:
    """The README's `new WebSocket(url, ['aibattle.flat.v1'])`: nothing sent, events come (this upstream asks
    for no key; a server with keys is tests/gateway/test_gateway_auth.py's)."""
    await seed(collab.state.reasonings["r2"], reasoning_script("r2"))
    async with gw.ws_connect("/api/v1/ws/collaborative-reasoning/r2", protocols=("aibattle.flat.v1",)) as ws:
        got = await asyncio.wait_for(frames(ws), 5)
    assert [f["type"] for f in got][-1] == "completion"
    assert ws.close_code == 1000
    assert "authorization" not in collab.state.metadata[-1]


async def test_flat_auth_frame_on_a_running_call_is_acknowledged(gw: Any, collab: RunningCollab) -> None:
    """A client that authenticates on open anyway (the README's Python example) is not refused."""
    collab.state.reasonings["r9"]  # created empty: the stream waits for events
    async with gw.ws_connect("/api/v1/ws/collaborative-reasoning/r9", protocols=("aibattle.flat.v1",)) as ws:
        await ws.send_json({"type": "auth", "token": "tok-9"})
        assert json.loads((await asyncio.wait_for(ws.receive(), 5)).data) == {"type": "auth_ok"}
        await seed(collab.state.reasonings["r9"], reasoning_script("r9"))
        got = await asyncio.wait_for(frames(ws), 5)
    assert [f["type"] for f in got][-1] == "completion"
    assert ws.close_code == 1000


async def test_flat_converse_watcher_that_sends_nothing_starts_after_the_auth_wait(
    aiohttp_client: Any, collab: RunningCollab
) -> None:
    gw = await gateway(aiohttp_client, collab, ws_auth_timeout=0.1)
    await seed(collab.state.conversations["c10"], conversation_script("c10"))
    async with gw.ws_connect("/api/v1/ws/conversations/c10", protocols=("aibattle.flat.v1",)) as ws:
        got = await asyncio.wait_for(frames(ws), 5)
    assert [f["type"] for f in got][-1] == "completion"
    assert collab.state.converse_requests[0].conversation_id == "c10"
    assert "authorization" not in collab.state.metadata[-1]


async def test_reasoning_socket_without_subprotocol_stays_native(gw: Any, collab: RunningCollab) -> None:
    await seed(collab.state.reasonings["r3"], reasoning_script("r3"))
    async with gw.ws_connect("/api/v1/ws/collaborative-reasoning/r3?after_sequence=4") as ws:
        got = await frames(ws)
    assert [f["result"]["event"]["sequence"] for f in got] == ["5"]
    assert ws.close_code == 1000


async def test_proto_subprotocol_forces_native(gw: Any, collab: RunningCollab) -> None:
    async with gw.ws_connect("/api/v1/ws/conversations/c6", protocols=("aibattle.proto.v1",)) as ws:
        await ws.send_json({"type": "message", "content": "hi"})  # looks flat, but the client said native
        got = await frames(ws)
    assert ws.protocol == "aibattle.proto.v1"
    assert got[-1]["error"]["code"] == 3 and "type" in got[-1]["error"]["message"]
    assert ws.close_code == 4003


async def test_flat_errors_are_flat(gw: Any, collab: RunningCollab) -> None:
    async with gw.ws_connect("/api/v1/ws/conversations/c5") as ws:
        await ws.send_json({"type": "auth", "token": "a"})
        await ws.receive()
        await ws.send_json({"type": "dance"})
        got = await frames(ws)
    assert got[-1]["type"] == "error"
    assert got[-1]["error"]["code"] == 3 and "dance" in got[-1]["error"]["message"]
    assert ws.close_code == 4003


async def test_a_second_token_is_refused(gw: Any, collab: RunningCollab) -> None:
    async with gw.ws_connect("/api/v1/ws/conversations/c4") as ws:
        await ws.send_json({"type": "auth", "token": "a"})
        await ws.receive()
        await ws.send_json({"type": "auth", "token": "a"})  # the same again: acknowledged
        assert json.loads((await ws.receive()).data) == {"type": "auth_ok"}
        await ws.send_json({"type": "auth", "token": "b"})
        got = await frames(ws)
    assert (
        got[-1]["type"] == "error" and got[-1]["error"]["details"][0]["reason"] == "CONFLICTING_CREDENTIALS"
    )
    assert ws.close_code == 4003


async def test_bearer_subprotocol_alone_is_a_400(gw: Any, collab: RunningCollab) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await gw.ws_connect("/api/v1/ws/conversations/c3", protocols=("bearer.tok",))
    assert raised.value.status == 400
    assert collab.state.calls == 0


async def test_flat_status_event_frames(gw: Any, collab: RunningCollab) -> None:
    await seed(collab.state.conversations["c2"], conversation_script("c2"))
    async with gw.ws_connect("/api/v1/ws/conversations/c2", protocols=("aibattle.flat.v1", "bearer.t")) as ws:
        got = await frames(ws)
    assert [f["type"] for f in got] == ["status_changed", "message", "turn_started", "message", "completion"]
    assert got[0]["status"] == "RUN_STATUS_IN_PROGRESS"
    assert (got[3]["role"], got[3]["model"], got[3]["content"]) == ("assistant", "m2", "Lattices.")
    assert ws.close_code == 1000
    assert collab.state.converse_requests[0].WhichOneof("action") is None
