"""A scriptable in-test HTTP upstream, for the HTTP providers' tests (OpenAI, Ollama, Anthropic, Gemini).

It speaks exactly the bytes a test scripts — each provider's test module writes that provider's
documented wire format — and records what it was asked and whether the client went away:

    upstream.replies = [Reply(status=429, headers={"Retry-After": "0"}), Reply(chunks=[b"data: ...\n\n"])]
    ... drive a completion through the real gRPC server ...
    assert upstream.requests[-1].json["stream"] is True
    assert await upstream.wait_disconnected()

Replies are used in order; the last one repeats. A chunk that is a float is a pause (seconds); `hang`
keeps the connection open and silent after the chunks, until the client closes it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from server.app import AIBattleServer
from server.config import Config


@dataclass
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    chunks: Sequence[bytes | float] = ()
    hang: bool = False
    content_type: str = "text/event-stream"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


class FakeUpstream:
    def __init__(self) -> None:
        self.replies: list[Reply] = [Reply()]
        self.requests: list[Recorded] = []
        self.disconnects = 0
        self._disconnected = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    async def wait_disconnected(self, within: float = 10.0) -> bool:
        """Whether a client closed a connection mid-answer (within `within` seconds)."""
        try:
            await asyncio.wait_for(self._disconnected.wait(), within)
        except TimeoutError:
            return False
        return True

    def _next(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        self.requests.append(
            Recorded(request.method, request.path, dict(request.query), dict(request.headers), parsed)
        )
        reply = self._next()
        response = web.StreamResponse(status=reply.status, headers=reply.headers)
        response.content_type = reply.content_type
        try:
            await response.prepare(request)
            for chunk in reply.chunks:
                if isinstance(chunk, float):
                    await asyncio.sleep(chunk)
                else:
                    await response.write(chunk)
            if reply.hang:
                await asyncio.Event().wait()  # silent until the client closes (handler cancellation)
            await response.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            self._disconnected.set()
            raise
        return response


async def start_fake(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    """A fake upstream on a free loopback port; returns it and its base URL."""
    fake = FakeUpstream()
    server = await aiohttp_server(fake.app)  # TestServer already cancels handlers on disconnect
    return fake, f"http://127.0.0.1:{server.port}"


@asynccontextmanager
async def serving(models: list[dict[str, Any]], **providers: Any) -> AsyncIterator[AIBattleServer]:
    """The real gRPC server with these [[models]] (and [providers.*] tables), on a free port."""
    config = Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
            "providers": providers,
            "models": models,
        }
    )
    server = AIBattleServer(config)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(grace=0.5)
