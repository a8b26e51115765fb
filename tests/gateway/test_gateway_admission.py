"""The server's `max_concurrent_streams` over HTTP: an SSE stream past it is a 429 with Retry-After (never
a 499 or a broken 200), the count comes back as streams end, and a client that does not read its stream
holds back that stream only.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from common.errors import SERVER_BUSY
from gateway import start_gateway
from gateway.upstream import channel_options
from server.app import AIBattleServer
from server.config import ModelConfig
from server.providers.base import ChatRequest, StreamItem
from server.providers.scripted import ScriptedProvider
from tests.conftest import SCRIPTED_MODELS, make_config
from tests.server.test_admission import hold_streams, until

LIMIT = 3
BURST = 10
STREAM = "/api/v1/completions:stream"
SSE = {"Accept": "text/event-stream"}
#: 50 MB in 250 words: far more than the sockets, HTTP/2 windows and buffers between model and client.
LARGE = {
    "id": "scripted-large",
    "provider": "scripted",
    "capabilities": ["text"],
    "script": [" ".join(["x" * 200_000] * 250)],
}


@dataclass
class Gateway:
    server: AIBattleServer
    url: str


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    server = AIBattleServer(make_config([*SCRIPTED_MODELS, LARGE], max_concurrent_streams=LIMIT))
    await server.start()
    handle = await start_gateway(grpc_target=server.grpc_target, host="127.0.0.1", port=0)
    yield Gateway(server, handle.url)
    await handle.close()
    await server.stop(grace=0.5)


@dataclass
class SseBurst:
    """SSE streams opened at once: who was answered 200 (and how it ended), who was refused."""

    admitted: int = 0
    completed: int = 0
    refused: list[tuple[int, str | None, str]] = field(default_factory=list)

    async def one(self, session: aiohttp.ClientSession, url: str) -> None:
        body = {"model": "scripted-echo", "prompt": "hi"}
        async with session.post(url + STREAM, json=body, headers=SSE) as response:
            if response.status != 200:
                self.refused.append(
                    (response.status, response.headers.get("Retry-After"), await response.text())
                )
                return
            self.admitted += 1
            text = (await response.read()).decode()
        assert "event: error" not in text, text
        self.completed += 1

    def settled(self, count: int) -> bool:
        return self.admitted + len(self.refused) >= count


async def test_sse_past_the_limit_is_429_with_retry_after(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = hold_streams(monkeypatch)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        burst = SseBurst()
        tasks = [asyncio.create_task(burst.one(session, gateway.url)) for _ in range(BURST)]
        await until(lambda: burst.settled(BURST))
        assert burst.admitted == LIMIT
        assert gateway.server.admission.open == LIMIT
        assert len(burst.refused) == BURST - LIMIT
        for status, retry_after, body in burst.refused:
            assert status == 429, body
            assert retry_after is not None and int(retry_after) >= 1
            assert SERVER_BUSY.name in body, body
        gate.set()
        await asyncio.gather(*tasks)
        assert burst.completed == LIMIT
        again = SseBurst()
        await asyncio.gather(*(again.one(session, gateway.url) for _ in range(LIMIT)))
        assert (again.completed, again.refused) == (LIMIT, [])


async def test_a_client_that_does_not_read_holds_back_its_own_stream_only(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    produced = [0]  # words of the large reply the model handed on so far
    original = ScriptedProvider.stream

    async def counted(
        self: ScriptedProvider, model: ModelConfig, request: ChatRequest
    ) -> AsyncIterator[StreamItem]:
        async for item in original(self, model, request):
            if model.id == LARGE["id"]:
                produced[0] += 1
            yield item

    monkeypatch.setattr(ScriptedProvider, "stream", counted)
    host, _, port = gateway.url.removeprefix("http://").rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    body = json.dumps({"model": "scripted-large", "prompt": "hi"}).encode()
    writer.write(
        f"POST {STREAM} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    try:
        await reader.readuntil(b"\r\n\r\n")  # its headers: the stream is under way; then read nothing
        await settled(produced)
        held = produced[0]
        assert held < 250, "the whole reply was produced for a client that reads nothing"
        async with aiohttp.ClientSession() as session:
            burst = SseBurst()
            for _ in range(LIMIT - 1):  # one after another, each to its end
                await burst.one(session, gateway.url)
            assert (burst.completed, burst.refused) == (LIMIT - 1, [])
        # The unread stream is still open, held where it was: at what the buffers between could take.
        assert gateway.server.admission.open == 1
        assert produced[0] == held
    finally:
        writer.close()
    # Gone, it gives its slot back.
    await until(lambda: not gateway.server.admission.open)


async def settled(counter: list[int]) -> None:
    """Until `counter` stops moving: unchanged over 20 looks 10 ms apart (what is asserted is where it
    stopped, not when)."""
    last, still = -1, 0
    async with asyncio.timeout(30):
        while still < 20:
            await asyncio.sleep(0.01)
            still = still + 1 if counter[0] == last else 0
            last = counter[0]


@pytest.mark.parametrize(
    ("target", "probing"),
    [("127.0.0.1:50051", False), ("[::1]:50051", False), ("localhost:1", False), ("aibattle:50051", True)],
)
def test_a_loopback_upstream_keeps_a_fixed_stream_window(target: str, probing: bool) -> None:
    """Every unread stream holds its window in the gateway; on loopback, probing would only grow it."""
    assert (("grpc.http2.bdp_probe", 0) not in channel_options(target)) is probing
