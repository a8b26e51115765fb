"""A scriptable in-test HTTP upstream, for the HTTP providers' tests (OpenAI, Ollama, Anthropic, Gemini).

It speaks exactly the bytes a test scripts — each provider's test module writes that provider's
documented wire format — and records what it was asked and whether the client went away:

    upstream.replies = [Reply(status=429, headers={"Retry-After": "0"}), Reply(chunks=[b"data: ...\n\n"])]
    ... drive a completion through the real gRPC server ...
    assert upstream.requests[-1].json["stream"] is True
    assert await upstream.wait_disconnected()

Replies are used in order; the last one repeats. A chunk that is a float is a pause (seconds); `hang`
keeps the connection open and silent after the chunks, until the client closes it; `reset` drops it.
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
    reset: bool = False
    """After the chunks, drop the connection mid-answer (no end of the chunked body): a crashed upstream.
    End the chunks with a pause, or the client may never read them (aiohttp raises a broken body's error
    before the data it has not read yet)."""


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
            if reply.reset:
                assert request.transport is not None
                request.transport.close()  # what was written goes out first, then the end of nothing
                return response
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


# --- Anthropic's Messages API, as its servers send it -------------------------------------------


def anthropic_event(kind: str, **fields: Any) -> bytes:
    """One Messages API stream event: a named SSE event whose compact JSON repeats the name as `type`."""
    data = json.dumps({"type": kind, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


def anthropic_stream(
    blocks: Sequence[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 25,
    output_tokens: int = 15,
    model: str = "claude-sonnet-4-5",
) -> list[bytes | float]:
    """The whole event sequence of one streamed Message, from `message_start` to `message_stop`, as
    Anthropic sends it. Each block is a text block `{"type": "text", "text": [pieces]}` (one
    `text_delta` per piece) or a tool call `{"type": "tool_use", "id", "name", "input": [pieces]}`: its
    start with `input: {}`, an empty `input_json_delta` first (as the API sends), then one per piece of
    the input's JSON text, split wherever the test likes. A `ping` follows the first block's start."""
    events: list[bytes | float] = [
        anthropic_event(
            "message_start",
            message={
                "model": model,
                "id": "msg_01K2JbSUMYhez5RHoK9ZCj9U",
                "type": "message",
                "role": "assistant",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": input_tokens,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "output_tokens": 1,
                    "service_tier": "standard",
                },
            },
        )
    ]
    for index, block in enumerate(blocks):
        if block["type"] == "tool_use":
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": p} for p in ["", *block["input"]]]
        else:
            start = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": p} for p in block["text"]]
        events.append(anthropic_event("content_block_start", index=index, content_block=start))
        if index == 0:
            events.append(anthropic_event("ping"))
        events.extend(anthropic_event("content_block_delta", index=index, delta=d) for d in deltas)
        events.append(anthropic_event("content_block_stop", index=index))
    events.append(
        anthropic_event(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"input_tokens": input_tokens, "output_tokens": output_tokens},
        )
    )
    events.append(anthropic_event("message_stop"))
    return events


def anthropic_message(
    content: Sequence[dict[str, Any]],
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 25,
    output_tokens: int = 15,
    model: str = "claude-sonnet-4-5",
) -> Reply:
    """A whole (non-streamed) Message answer with these content blocks, as one JSON reply."""
    body = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": list(content),
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    return Reply(content_type="application/json", chunks=[json.dumps(body).encode()])
