"""Streams over HTTP: NDJSON and SSE responses, NDJSON request streams, errors mid-stream, disconnects."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import sseclient

from gateway import create_app
from tests.gateway.gateway_testlib import ProtoApi, RunningLibrary, dummy_options, wait_for


async def test_ndjson_frames_parse_line_by_line(client: Any) -> None:
    resp = await client.get("/v1/shelves/s1/books:stream?count=3")
    assert resp.status == 200
    assert resp.content_type == "application/x-ndjson"
    lines = (await resp.text()).splitlines()
    frames = [json.loads(line) for line in lines]
    assert [f["result"]["name"] for f in frames] == [f"shelves/s1/books/{i}" for i in range(3)]
    assert all(set(f) == {"result"} for f in frames)


async def test_sse_parsed_by_a_standard_reader(client: Any) -> None:
    resp = await client.get("/v1/shelves/s1/books:stream?count=3", headers={"Accept": "text/event-stream"})
    assert resp.status == 200
    assert resp.content_type == "text/event-stream"
    assert resp.headers["Cache-Control"] == "no-cache"
    raw = await resp.read()
    events = list(sseclient.SSEClient(iter([raw])).events())
    assert [e.event for e in events] == ["message"] * 3
    assert [json.loads(e.data)["result"]["title"] for e in events] == ["Book 0", "Book 1", "Book 2"]


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_error_after_first_chunk_is_a_final_error_frame(client: Any, accept: str) -> None:
    resp = await client.get("/v1/shelves/s1/books:stream?count=5&fail_after=2", headers={"Accept": accept})
    assert resp.status == 200  # headers went out with the first chunk
    raw = await resp.read()
    if accept == "text/event-stream":
        events = list(sseclient.SSEClient(iter([raw])).events())
        kinds = [e.event for e in events]
        frames = [json.loads(e.data) for e in events]
        assert kinds == ["message", "message", "error"]
    else:
        frames = [json.loads(line) for line in raw.decode().splitlines()]
    assert [set(f) for f in frames] == [{"result"}, {"result"}, {"error"}]
    error = frames[-1]["error"]
    assert error["code"] == 14 and error["message"] == "shelf collapsed"
    assert error["details"][0]["reason"] == "SHELF_COLLAPSED"


@pytest.mark.parametrize("accept", ["application/x-ndjson", "text/event-stream"])
async def test_error_before_first_chunk_is_an_http_error(client: Any, accept: str) -> None:
    resp = await client.get("/v1/shelves/s1/books:stream?count=3&fail_after=-1", headers={"Accept": accept})
    assert resp.status == 503
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["code"] == 14 and body["details"][0]["reason"] == "SHELF_COLLAPSED"


async def test_empty_stream_is_ok(client: Any) -> None:
    resp = await client.get("/v1/shelves/s1/books:stream?count=0")
    assert resp.status == 200
    assert await resp.text() == ""


async def test_disconnect_cancels_upstream_stream(client: Any, library: RunningLibrary) -> None:
    resp = await client.get("/v1/shelves/s1/books:stream?count=1000&interval=0.05s")
    first = await resp.content.readline()
    assert json.loads(first)["result"]["title"] == "Book 0"
    resp.close()  # the client goes away
    assert await wait_for(lambda: library.servicer.cancelled["StreamBooks"].is_set())
    assert library.servicer.sent["StreamBooks"] < 200


async def test_client_streaming_reads_ndjson_body(client: Any) -> None:
    body = b'{"title": "A"}\n\n{"title": "B"}\n{"title": "C"}'
    resp = await client.post("/v1/books:upload", data=body, headers={"Content-Type": "application/x-ndjson"})
    assert resp.status == 200
    assert await resp.json() == {"count": 3, "titles": ["A", "B", "C"]}


async def test_client_streaming_bad_line_is_400(client: Any) -> None:
    resp = await client.post("/v1/books:upload", data=b'{"title": "A"}\n{"title": \n')
    assert resp.status == 400
    assert "request line 2" in (await resp.json())["message"]
    resp = await client.post("/v1/books:upload", data=b'{"title": "A"}\n{"colour": "red"}\n')
    assert resp.status == 400
    assert "colour" in (await resp.json())["message"]


async def test_client_streaming_line_limit_is_413(
    aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi
) -> None:
    client = await aiohttp_client(create_app(library.target, dummy_options(dummy_api, max_body_bytes=256)))
    resp = await client.post(
        "/v1/books:upload", data=b'{"title": "A"}\n' + json.dumps({"title": "x" * 400}).encode()
    )
    assert resp.status == 413


async def test_bidi_over_http_ndjson(client: Any) -> None:
    body = b'{"text": "hello"}\n{"text": "world"}\n'
    resp = await client.post("/v1/rooms/r1:chat", data=body)
    assert resp.status == 200
    frames = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert frames == [
        {"result": {"room": "r1", "text": "HELLO", "index": 0}},
        {"result": {"room": "r1", "text": "WORLD", "index": 1}},
    ]


async def test_stream_request_id_and_metadata(client: Any, library: RunningLibrary) -> None:
    resp = await client.get("/v1/shelves/s1/books:stream?count=1", headers={"X-Request-Id": "abc"})
    assert resp.headers["X-Request-Id"] == "abc"
    await resp.read()
    assert library.servicer.metadata[-1]["x-request-id"] == "abc"


async def test_stream_deadline(client: Any) -> None:
    resp = await client.get(
        "/v1/shelves/s1/books:stream?count=100&interval=0.05s", headers={"Grpc-Timeout": "300m"}
    )
    frames = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert "result" in frames[0]
    assert frames[-1]["error"]["code"] == 4
    await asyncio.sleep(0)
