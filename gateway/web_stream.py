"""Streamed HTTP responses: one sink for every HTTP stream, a framing per dialect.

The native API streams Server-Sent Events when asked, NDJSON otherwise; both carry `{"result": message}`
per message and, when the call fails after the first message, one final `{"error": Status}` frame
(grpc-gateway's runtime/handler.go). The compat endpoints bring their own framings. `gateway.relay`
decides what is written when; a failure before the first message is an ordinary HTTP error response
in the endpoint's dialect.

SSE streams of sequenced events (gateway.events) are resumable the EventSource way: each event's `id:`
is its sequence, and `Last-Event-ID` resumes after it (web_rest). Every SSE stream sends a `: keep-alive`
comment after `sse_keepalive_seconds` of silence, so proxies and browsers keep an idle follower open;
a stream silent that long before its first event commits to 200 for it, and a later failure is then
its `event: error` frame. An event stream that ends with nothing to send answers 204, which tells an
EventSource that reconnected after the terminal event to stop reconnecting.

A stream's headers go out with its first message, so a completion's names the deployment answering
(`x-aibattle-deployment`, from the message's `deployment`) and, for a collaboration model, the reasoning
session producing it (`x-aibattle-reasoning-id`, from its `reasoning_id`), as a unary response's do
(web_rest).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from gateway import observe
from gateway.calls import RequestPump
from gateway.metadata import response_headers
from gateway.relay import relay
from gateway.routes import Route
from gateway.transcode import dumps_bytes, error_frame, response_json
from gateway.web_errors import NATIVE, Dialect, error_response
from gateway.web_state import STATE

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"
DEPLOYMENT_HEADER = "x-aibattle-deployment"
REASONING_HEADER = "x-aibattle-reasoning-id"
#: On a token count the server estimated (not the model's tokenizer nor its upstream's count).
ESTIMATED_HEADER = "x-aibattle-tokens-estimated"
#: The responses whose `reasoning_id` names the session that produced them (a collaboration model's).
_REASONING_NAMED = frozenset({"aibattle.v1.CreateCompletionResponse", "aibattle.v1.StreamCompletionResponse"})


def deployment_header(message: Message | None) -> dict[str, str]:
    """`x-aibattle-deployment` for a response that names the deployment answering (a completion's
    `deployment`, set when its model has several); none otherwise."""
    if message is None or "deployment" not in message.DESCRIPTOR.fields_by_name:
        return {}
    deployment = getattr(message, "deployment", "")
    return {DEPLOYMENT_HEADER: deployment} if isinstance(deployment, str) and deployment else {}


def answer_headers(message: Message | None) -> dict[str, str]:
    """`deployment_header`, and `x-aibattle-reasoning-id` for a completion a collaboration model's
    reasoning session produced (readable over ReasoningService after the call)."""
    headers = deployment_header(message)
    if message is not None and message.DESCRIPTOR.full_name in _REASONING_NAMED:
        reasoning_id = getattr(message, "reasoning_id", "")
        if reasoning_id:
            headers[REASONING_HEADER] = reasoning_id
    return headers


class Framing(Protocol):
    """How one dialect writes a stream's messages, its error frame and its end."""

    @property
    def content_type(self) -> str:
        """The response's Content-Type."""
        ...

    def message(self, message: Message) -> bytes:
        """The bytes of one response message (b"" to send nothing for it)."""
        ...

    def error(self, status: status_pb2.Status) -> bytes:
        """The final frame of a stream that failed after it started."""
        ...

    def end(self) -> bytes:
        """What ends a successful stream (b"" when closing the body is enough)."""
        ...

    def keepalive(self) -> bytes:
        """What to send after a silence, that every client ignores (b"": nothing, e.g. NDJSON)."""
        ...

    @property
    def empty_status(self) -> int:
        """The HTTP status of a stream that ended OK with no message (200, or 204 "stop reconnecting")."""
        ...


#: An SSE comment line: EventSource and SSE parsers skip it, proxies see traffic.
SSE_KEEPALIVE = b": keep-alive\n\n"


def sse_event(data: bytes, *, event: str | None = None, id: int | None = None) -> bytes:
    """One Server-Sent Event around JSON already encoded (`dumps_bytes`): nothing is encoded twice."""
    if id is None and not event:
        return b"data: " + data + b"\n\n"
    head = (f"id: {id}\n" if id is not None else "") + (f"event: {event}\n" if event else "")
    return head.encode() + b"data: " + data + b"\n\n"


@dataclass
class NativeFraming:
    """The native API's frames: `{"result": …}` / `{"error": Status}`, as SSE or NDJSON lines."""

    route: Route
    emit_unpopulated: bool
    sse: bool

    @property
    def content_type(self) -> str:
        return SSE if self.sse else NDJSON

    def message(self, message: Message) -> bytes:
        frame = dumps_bytes(
            {"result": response_json(self.route, message, emit_unpopulated=self.emit_unpopulated)}
        )
        if not self.sse:
            return frame + b"\n"
        events = self.route.events
        sequence = events.sequence(message) if events is not None else 0
        return sse_event(frame, id=sequence or None)

    def error(self, status: status_pb2.Status) -> bytes:
        frame = error_frame(status).encode()
        return sse_event(frame, event="error") if self.sse else frame + b"\n"

    def end(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE if self.sse else b""

    @property
    def empty_status(self) -> int:
        """204 for an SSE event stream with nothing to send (EventSource stops reconnecting), else 200."""
        return 204 if self.sse and self.route.events is not None else 200


def wants_sse(accept: str | None) -> bool:
    """Whether the client accepts text/event-stream (else it gets NDJSON)."""
    return any(part.split(";")[0].strip().lower() == SSE for part in (accept or "").split(","))


class HttpStreamSink:
    """A relay sink writing a framing into a chunked HTTP response (see gateway.relay.Sink).

    `keepalive_seconds` (0: off) — after that long without a write, the framing's keep-alive goes out,
    starting the response if nothing has been sent yet.
    """

    def __init__(
        self,
        request: web.Request,
        framing: Framing,
        *,
        dialect: Dialect = NATIVE,
        keepalive_seconds: float = 0.0,
        transport: str | None = None,
    ) -> None:
        self._request = request
        self._framing = framing
        self._dialect = dialect
        self.response: web.StreamResponse | None = None
        # One writer at a time: the relay and the keep-alive timer share the response.
        self._lock = asyncio.Lock()
        self._last_write = time.monotonic()
        self._keepalive: asyncio.Task[None] | None = None
        self._initial: grpc.aio.Metadata | None = None
        #: aibattle_open_streams, from the response's headers until the stream ends.
        self.open_stream = observe.OpenStream(
            transport or ("sse" if framing.content_type == SSE else "ndjson")
        )
        if keepalive_seconds > 0 and framing.keepalive():
            self._keepalive = asyncio.ensure_future(self._keep_alive(keepalive_seconds))

    @property
    def started(self) -> bool:
        return self.response is not None and self.response.prepared

    async def start(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        # The headers go out with the first message (`message`), which may name the deployment.
        self._initial = initial_metadata

    async def _start(
        self, initial_metadata: grpc.aio.Metadata | None, *, status: int = 200, first: Message | None = None
    ) -> None:
        if self.started:
            return  # the keep-alive started it
        headers = self.head(initial_metadata, first)
        response = web.StreamResponse(status=status, headers=headers)
        if status != 204:
            response.content_type = self._framing.content_type
        self.response = response
        await response.prepare(self._request)
        if status != 204:
            self.open_stream.open()

    def head(self, initial_metadata: grpc.aio.Metadata | None, first: Message | None) -> dict[str, str]:
        """The response's headers: the upstream's metadata, what the first message names, no caching."""
        headers = response_headers(initial_metadata)
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **answer_headers(first)})
        return headers

    async def message(self, message: Message) -> None:
        data = self._framing.message(message)
        if data or not self.started:
            async with self._lock:
                await self._start(self._initial, first=message)
                if data:
                    await self._write(data)

    async def end(self) -> None:
        await self.stop_keepalive()
        data = self._framing.end()
        if data:
            await self._write(data)
        await self._write_eof()

    async def end_empty(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        await self.stop_keepalive()
        if not self.started and self._framing.empty_status == 204:
            await self._start(initial_metadata, status=204)
            await self._write_eof()
            return
        await self._start(initial_metadata)  # unless the keep-alive did
        await self.end()

    async def fail(self, status: status_pb2.Status, http: int | None, headers: dict[str, str]) -> None:
        await self.stop_keepalive()
        if not self.started:
            self.response = error_response(status, dialect=self._dialect, http=http, headers=headers)
            return
        await self._write(self._framing.error(status))
        await self._write_eof()

    async def stop_keepalive(self) -> None:
        if self._keepalive is None:
            return
        task, self._keepalive = self._keepalive, None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _keep_alive(self, interval: float) -> None:
        try:
            while True:
                await asyncio.sleep(max(0.0, self._last_write + interval - time.monotonic()))
                if time.monotonic() - self._last_write < interval:
                    continue  # something was written meanwhile
                async with self._lock:
                    await self._start(None)
                    await self._write(self._framing.keepalive())
        except ConnectionError:
            pass  # the client left; the relay finds out on its next write

    async def _write(self, data: bytes) -> None:
        assert self.response is not None
        self._last_write = time.monotonic()
        await self.response.write(data)

    async def _write_eof(self) -> None:
        assert self.response is not None
        await self.response.write_eof()


async def stream_http(
    request: web.Request,
    call: Any,
    framing: Framing,
    *,
    dialect: Dialect = NATIVE,
    pump: RequestPump | None = None,
) -> web.StreamResponse:
    """Relay a server stream over HTTP; the caller cancels the call if this returns or raises early."""
    keepalive = request.app[STATE].options.sse_keepalive_seconds
    sink = HttpStreamSink(request, framing, dialect=dialect, keepalive_seconds=keepalive)
    try:
        await relay(call, sink, streaming=True, pump=pump)
    finally:
        await sink.stop_keepalive()
        sink.open_stream.close()
    # No response only when the client left before anything was sent; nobody reads this one.
    return sink.response or web.Response(status=499)
