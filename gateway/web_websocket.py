"""WebSocket routes (from our `(aibattle.v1.websocket)` method option) for streaming RPCs.

Protocol, the same for every route:

* The request: path variables and query parameters, as on REST routes. A request-streaming RPC
  (bidi, client-streaming) takes one JSON request per text frame, merged with the URL's fields; an
  empty text frame ends the request stream (half-close). A server-streaming RPC starts at once when
  the URL sets every REQUIRED field of its request; otherwise its first text frame is the request body.
* The response: one text frame per message, `{"result": …}`; on failure a last `{"error": Status}`
  frame. Then the server closes: 1000 on OK, 4000 + the gRPC code otherwise (4003 INVALID_ARGUMENT,
  4005 NOT_FOUND, 4014 UNAVAILABLE, 4016 UNAUTHENTICATED…). A message over the size limit closes
  with 1009 (aiohttp's).
* A client that closes or drops the connection cancels the upstream call.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc
from aiohttp import WSMsgType, web
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from common.errors import ApiError
from gateway.calls import ClientGone, RequestPump, cancel_on_exit
from gateway.errors import invalid_argument, ws_close_code
from gateway.relay import relay
from gateway.router import Match
from gateway.routes import Route
from gateway.transcode import decode_request, error_frame, parse_json, response_json, result_frame
from gateway.web_cors import websocket_origin_allowed
from gateway.web_state import STATE, call_context

log = logging.getLogger(__name__)

_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 for the code


def is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


async def handle_websocket(request: web.Request, match: Match) -> web.StreamResponse:
    """Upgrade, then relay between the client's frames and the upstream call."""
    state = request.app[STATE]
    options = state.options
    if not websocket_origin_allowed(request, options.cors_origins):
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            "ORIGIN_NOT_ALLOWED",
            f"origin {request.headers.get('Origin')!r} may not open WebSockets here",
        )
    route, rpc = match.route, match.route.rpc
    # URL errors are plain HTTP 400s, before the upgrade.
    url_request = decode_request(
        route, path_params=match.path_params, query=request.query, strict=options.strict
    )
    context = call_context(request)
    # No permessage-deflate: token-sized frames gain little from it, and some clients (Node's
    # undici WebSocket) drop the connection on aiohttp's compressed frames.
    ws = web.WebSocketResponse(
        max_msg_size=options.max_body_bytes, heartbeat=options.ws_heartbeat, compress=False
    )
    await ws.prepare(request)
    state.websockets.add(ws)
    try:
        url_set = {f.name for f, _ in url_request.ListFields()}
        from_url = not rpc.shape.streams_requests and rpc.required_fields <= url_set
        frames = _frame_requests(ws, match, request, request_taken=from_url)
        if rpc.shape.streams_requests:
            call = state.upstream.start(rpc, None, metadata=context.metadata, timeout=context.timeout)
        else:
            first: Message = url_request
            if not from_url:
                try:
                    first = await anext(frames)
                except (StopAsyncIteration, ClientGone):
                    return ws
                except ApiError as exc:
                    await _finish(ws, exc.to_status())
                    return ws
            call = state.upstream.start(rpc, first, metadata=context.metadata, timeout=context.timeout)
        with cancel_on_exit(call):
            pump = RequestPump(call, frames, half_close=rpc.shape.streams_requests)
            try:
                sink = WebSocketSink(ws, route, emit_unpopulated=options.emit_unpopulated)
                await relay(call, sink, streaming=rpc.shape.streams_responses, pump=pump)
            finally:
                await pump.aclose()
    except ConnectionError:
        log.debug("websocket client disconnected on %s", route.describe())
    finally:
        state.websockets.discard(ws)
        await ws.close()
    return ws


class WebSocketSink:
    """A relay sink over an open WebSocket: one text frame per message, the status as the close code."""

    started = True  # the upgrade is done: every outcome, even a failure before any message, is a frame

    def __init__(self, ws: web.WebSocketResponse, route: Route, *, emit_unpopulated: bool) -> None:
        self._ws = ws
        self._route = route
        self._emit = emit_unpopulated

    async def start(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        return None

    async def message(self, message: Message) -> None:
        await self._ws.send_str(
            result_frame(response_json(self._route, message, emit_unpopulated=self._emit))
        )

    async def end(self) -> None:
        await _finish(self._ws, status_pb2.Status(code=code_pb2.OK))

    async def fail(self, status: status_pb2.Status, http: int | None, headers: dict[str, str]) -> None:
        await _finish(self._ws, status)


async def _finish(ws: web.WebSocketResponse, status: status_pb2.Status) -> None:
    """Last frame (on error) and the close code for the call's status."""
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError):
        if status.code != code_pb2.OK:
            await ws.send_str(error_frame(status))
        reason = status.message.encode()[:_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode()
        await ws.close(code=ws_close_code(status.code), message=reason)


async def _frame_requests(
    ws: web.WebSocketResponse, match: Match, request: web.Request, *, request_taken: bool
) -> AsyncIterator[Message]:
    """Request messages from text frames; ends on an empty frame, raises ClientGone when the client leaves.

    `request_taken`: a unary-request call already has its request (from the URL), so no frame may follow.
    """
    strict = request.app[STATE].options.strict
    half_close = match.route.rpc.shape.streams_requests
    started = request_taken
    async for frame in ws:
        if frame.type == WSMsgType.TEXT:
            if started and not half_close:
                raise invalid_argument(
                    "this WebSocket route takes a single request; no further frames are allowed",
                    reason="UNEXPECTED_FRAME",
                )
            if frame.data == "":
                return
            started = True
            yield decode_request(
                match.route,
                path_params=match.path_params,
                query=request.query,
                body=parse_json(frame.data, what="WebSocket frame"),
                has_body=True,
                strict=strict,
            )
        elif frame.type == WSMsgType.BINARY:
            raise invalid_argument(
                "binary frames are not supported: send JSON text frames", reason="BINARY_FRAME"
            )
        elif frame.type == WSMsgType.ERROR:
            raise ClientGone()
    raise ClientGone()
