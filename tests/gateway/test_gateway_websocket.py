"""WebSocket routes from the (aibattle.v1.websocket) option: server streaming, bidi, client streaming."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from gateway import create_app
from tests.gateway.gateway_testlib import ProtoApi, RunningLibrary, dummy_options, wait_for


async def receive_all(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    frames = []
    async for msg in ws:
        assert msg.type == aiohttp.WSMsgType.TEXT
        frames.append(json.loads(msg.data))
    return frames


async def test_server_stream_starts_from_the_url(client: Any) -> None:
    async with client.ws_connect("/v1/ws/shelves/s1/books?count=3") as ws:
        frames = await receive_all(ws)
    assert [f["result"]["name"] for f in frames] == [f"shelves/s1/books/{i}" for i in range(3)]
    assert ws.close_code == 1000


async def test_server_stream_error_closes_with_4000_plus_code(client: Any) -> None:
    async with client.ws_connect("/v1/ws/shelves/s1/books?count=5&fail_after=1") as ws:
        frames = await receive_all(ws)
    assert "result" in frames[0]
    assert frames[-1]["error"]["code"] == 14
    assert frames[-1]["error"]["details"][0]["reason"] == "SHELF_COLLAPSED"
    assert ws.close_code == 4014  # 4000 + UNAVAILABLE


async def test_same_frames_as_ndjson(client: Any) -> None:
    http = await client.get("/v1/shelves/s1/books:stream?count=4")
    ndjson = [json.loads(line) for line in (await http.text()).splitlines()]
    async with client.ws_connect("/v1/ws/shelves/s1/books?count=4") as ws:
        assert await receive_all(ws) == ndjson


async def test_extra_frame_on_server_stream_is_rejected(client: Any) -> None:
    async with client.ws_connect("/v1/ws/shelves/s1/books?count=1000&interval=0.05s") as ws:
        await ws.send_str('{"count": 1}')
        frames = await receive_all(ws)
    assert frames[-1]["error"]["code"] == 3
    assert ws.close_code == 4003


async def test_bidi_chat(client: Any) -> None:
    async with client.ws_connect("/v1/ws/rooms/lobby") as ws:
        await ws.send_str('{"text": "hi"}')
        first = json.loads((await ws.receive()).data)
        assert first == {"result": {"room": "lobby", "text": "HI", "index": 0}}
        await ws.send_str('{"text": "bye"}')
        second = json.loads((await ws.receive()).data)
        assert second["result"]["text"] == "BYE"
        await ws.send_str("")  # half-close: the call ends OK
        assert await receive_all(ws) == []
    assert ws.close_code == 1000


async def test_client_streaming_over_websocket(client: Any) -> None:
    async with client.ws_connect("/v1/ws/books:upload") as ws:
        for title in ("A", "B"):
            await ws.send_str(json.dumps({"title": title}))
        await ws.send_str("")
        frames = await receive_all(ws)
    assert frames == [{"result": {"count": 2, "titles": ["A", "B"]}}]
    assert ws.close_code == 1000


@pytest.mark.parametrize(
    ("frame", "needle"),
    [('{"text": ', "malformed JSON"), ('{"colour": "red"}', "colour"), ('{"text": 5}', "text")],
)
async def test_bad_frame_closes_4003_with_status(client: Any, frame: str, needle: str) -> None:
    async with client.ws_connect("/v1/ws/rooms/lobby") as ws:
        await ws.send_str(frame)
        frames = await receive_all(ws)
    assert frames[-1]["error"]["code"] == 3
    assert needle in frames[-1]["error"]["message"]
    assert ws.close_code == 4003


async def test_binary_frame_rejected(client: Any) -> None:
    async with client.ws_connect("/v1/ws/rooms/lobby") as ws:
        await ws.send_bytes(b"\x00\x01")
        frames = await receive_all(ws)
    assert "binary" in frames[-1]["error"]["message"]
    assert ws.close_code == 4003


async def test_oversized_frame_closes_1009(
    aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi
) -> None:
    client = await aiohttp_client(create_app(library.target, dummy_options(dummy_api, max_body_bytes=128)))
    async with client.ws_connect("/v1/ws/rooms/lobby") as ws:
        await ws.send_str(json.dumps({"text": "x" * 500}))
        await receive_all(ws)
    assert ws.close_code == 1009


async def test_disconnect_cancels_upstream(client: Any, library: RunningLibrary) -> None:
    ws = await client.ws_connect("/v1/ws/shelves/s1/books?count=1000&interval=0.05s")
    first = json.loads((await ws.receive()).data)
    assert first["result"]["title"] == "Book 0"
    await ws.close()
    assert await wait_for(lambda: library.servicer.cancelled["StreamBooks"].is_set())
    assert library.servicer.sent["StreamBooks"] < 200


async def test_url_errors_are_http_400_before_upgrade(client: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/v1/ws/shelves/s1/books?count=many")
    assert caught.value.status == 400


async def test_plain_get_on_websocket_route_is_426(client: Any) -> None:
    resp = await client.get("/v1/ws/shelves/s1/books")
    assert resp.status == 426
    assert resp.headers["Upgrade"] == "websocket"


async def test_foreign_origin_refused(client: Any) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
        await client.ws_connect("/v1/ws/rooms/lobby", origin="http://evil.example")
    assert caught.value.status == 403
    # The gateway's own origin is fine (a page it serves).
    host = f"http://{client.host}:{client.port}"
    async with client.ws_connect("/v1/ws/rooms/lobby", origin=host) as ws:
        await ws.send_str("")
        await receive_all(ws)
    assert ws.close_code == 1000


async def test_metadata_from_upgrade_headers(client: Any, library: RunningLibrary) -> None:
    headers = {"X-API-Key": "k1", "X-Request-Id": "ws-1"}
    async with client.ws_connect("/v1/ws/shelves/s1/books?count=1", headers=headers) as ws:
        await receive_all(ws)
    assert library.servicer.metadata[-1]["x-api-key"] == "k1"
    assert library.servicer.metadata[-1]["x-request-id"] == "ws-1"


async def test_no_permessage_deflate(client: Any) -> None:
    async with client.ws_connect("/v1/ws/shelves/s1/books?count=1", compress=15) as ws:
        assert ws.compress == 0
        await receive_all(ws)
