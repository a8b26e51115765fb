"""Streamed HTTP responses: one sink for every HTTP stream, a framing per dialect.

The native API streams Server-Sent Events when asked, NDJSON otherwise; both carry `{"result": message}`
per message and, when the call fails after the first message, one final `{"error": Status}` frame
(grpc-gateway's runtime/handler.go). The compat endpoints bring their own framings. `gateway.relay`
decides what is written when; a failure before the first message is an ordinary HTTP error response
in the endpoint's dialect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from gateway.calls import RequestPump
from gateway.metadata import response_headers
from gateway.relay import relay
from gateway.routes import Route
from gateway.transcode import error_frame, response_json, result_frame
from gateway.web_errors import NATIVE, Dialect, error_response

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


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


def sse_event(data: str, *, event: str | None = None) -> bytes:
    """One Server-Sent Event."""
    return (f"event: {event}\n" if event else "").encode() + f"data: {data}\n\n".encode()


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
        frame = result_frame(response_json(self.route, message, emit_unpopulated=self.emit_unpopulated))
        return sse_event(frame) if self.sse else f"{frame}\n".encode()

    def error(self, status: status_pb2.Status) -> bytes:
        frame = error_frame(status)
        return sse_event(frame, event="error") if self.sse else f"{frame}\n".encode()

    def end(self) -> bytes:
        return b""


def wants_sse(accept: str | None) -> bool:
    """Whether the client accepts text/event-stream (else it gets NDJSON)."""
    return any(part.split(";")[0].strip().lower() == SSE for part in (accept or "").split(","))


class HttpStreamSink:
    """A relay sink writing a framing into a chunked HTTP response (see gateway.relay.Sink)."""

    def __init__(self, request: web.Request, framing: Framing, *, dialect: Dialect = NATIVE) -> None:
        self._request = request
        self._framing = framing
        self._dialect = dialect
        self.response: web.StreamResponse | None = None

    @property
    def started(self) -> bool:
        return self.response is not None and self.response.prepared

    async def start(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        headers = response_headers(initial_metadata)
        headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response = web.StreamResponse(status=200, headers=headers)
        response.content_type = self._framing.content_type
        self.response = response
        await response.prepare(self._request)

    async def message(self, message: Message) -> None:
        if data := self._framing.message(message):
            await self._write(data)

    async def end(self) -> None:
        if data := self._framing.end():
            await self._write(data)
        await self._write_eof()

    async def fail(self, status: status_pb2.Status, http: int | None, headers: dict[str, str]) -> None:
        if not self.started:
            self.response = error_response(status, dialect=self._dialect, http=http, headers=headers)
            return
        await self._write(self._framing.error(status))
        await self._write_eof()

    async def _write(self, data: bytes) -> None:
        assert self.response is not None
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
    sink = HttpStreamSink(request, framing, dialect=dialect)
    await relay(call, sink, streaming=True, pump=pump)
    # No response only when the client left before anything was sent; nobody reads this one.
    return sink.response or web.Response(status=499)
