"""Server-streaming responses over HTTP: Server-Sent Events when asked, NDJSON otherwise.

Both carry the same frames: `{"result": message}` per message and, when the call fails after the
first message, one final `{"error": Status}` frame (grpc-gateway's runtime/handler.go). A failure
before the first message is an ordinary HTTP error response with the mapped status code.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.rpc import code_pb2, status_pb2

from gateway.calls import RequestPump
from gateway.errors import status_from_rpc_error
from gateway.metadata import response_headers
from gateway.routes import Route
from gateway.transcode import error_frame, response_json, result_frame
from gateway.web_state import STATE

log = logging.getLogger(__name__)

INTERNAL = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


@dataclass(frozen=True)
class StreamFormat:
    """How frames are written on the wire."""

    content_type: str

    def result(self, frame: str) -> bytes:
        if self.content_type == SSE:
            return f"data: {frame}\n\n".encode()
        return f"{frame}\n".encode()

    def error(self, frame: str) -> bytes:
        if self.content_type == SSE:
            return f"event: error\ndata: {frame}\n\n".encode()
        return f"{frame}\n".encode()


def negotiate(accept: str | None) -> StreamFormat:
    """SSE if the client accepts text/event-stream, NDJSON otherwise."""
    wants_sse = any(part.split(";")[0].strip().lower() == SSE for part in (accept or "").split(","))
    return StreamFormat(SSE if wants_sse else NDJSON)


async def stream_response(
    request: web.Request, route: Route, call: Any, *, pump: RequestPump | None = None
) -> web.StreamResponse:
    """Relay a response stream; the caller cancels the call if this returns or raises early."""
    emit = request.app[STATE].options.emit_unpopulated
    fmt = negotiate(request.headers.get("Accept"))
    try:
        message = await call.read()
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        if pump is not None and pump.caused_failure():
            pump.raise_own_error()
        raise
    headers = response_headers(await call.initial_metadata())
    headers.update({"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    response = web.StreamResponse(status=200, headers=headers)
    response.content_type = fmt.content_type
    await response.prepare(request)
    status: status_pb2.Status | None = None
    try:
        try:
            while message is not grpc.aio.EOF:
                payload = response_json(route, message, emit_unpopulated=emit)
                await response.write(fmt.result(result_frame(payload)))
                message = await call.read()
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not (pump is not None and pump.caused_failure()):
                raise
            status = pump.status(exc) if pump is not None else status_from_rpc_error(exc)
        except ConnectionError:
            raise
        except Exception:
            # Headers are gone: the error middleware can't answer any more, so the stream says it.
            log.exception("stream relay failed on %s", route.describe())
            status = INTERNAL
        if status is not None and (pump is None or not pump.client_gone):
            await response.write(fmt.error(error_frame(status)))
        await response.write_eof()
    except ConnectionError:
        # The client went away; our caller cancels the call.
        log.debug("stream client disconnected on %s", route.describe())
    return response
