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
* A connection with no message either way for `ws_idle_timeout` seconds gets a DEADLINE_EXCEEDED error
  frame and close code 4004 (pings keep dead peers out, not idle ones).

That is the native dialect; gateway.ws_dialects describes the flat one (seed 000's `{type: …}` frames),
how a connection picks its dialect, and when a flat connection without credentials starts its call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from aiohttp import WSMsgType, web
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from common.errors import (
    BINARY_FRAME,
    CONFLICTING_CREDENTIALS,
    ORIGIN_NOT_ALLOWED,
    UNEXPECTED_FRAME,
    ApiError,
    InvalidArgument,
    PermissionDenied,
)
from gateway import access, observe
from gateway.calls import ClientGone, RequestPump, cancel_on_exit
from gateway.errors import ws_close_code
from gateway.relay import relay
from gateway.router import Match
from gateway.routes import Route
from gateway.transcode import decode_request, dumps, error_frame, parse_json, response_json, result_frame
from gateway.web_cors import same_or_allowed_origin
from gateway.web_state import STATE, CallContext, call_context
from gateway.ws_dialects import (
    AUTH,
    AUTH_OK,
    PROTOCOL_HEADER,
    Negotiation,
    WsDialect,
    auth_token,
    flat_error,
    flat_event,
    flat_frame,
    flat_request_body,
    looks_flat,
    negotiate,
)

log = logging.getLogger(__name__)

_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 for the code


def is_websocket_upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


async def handle_websocket(request: web.Request, match: Match) -> web.StreamResponse:
    """Upgrade, pick the dialect, then relay between the client's frames and the upstream call."""
    state = request.app[STATE]
    options = state.options
    if not same_or_allowed_origin(request, options.cors_origins):
        raise PermissionDenied(
            ORIGIN_NOT_ALLOWED, f"origin {request.headers.get('Origin')!r} may not open WebSockets here"
        )
    route = match.route
    # URL and header errors are plain HTTP 400s, before the upgrade.
    url_request = decode_request(
        route, path_params=match.path_params, query=request.query, strict=options.strict
    )
    offer = negotiate(request.headers.get(PROTOCOL_HEADER))
    credentials = _Credentials(call_context(request))
    if offer.token is not None:
        credentials.add(offer.token, where=PROTOCOL_HEADER)
    # No permessage-deflate: token-sized frames gain little from it, and some clients (Node's
    # undici WebSocket) drop the connection on aiohttp's compressed frames.
    ws = web.WebSocketResponse(
        max_msg_size=options.max_body_bytes,
        heartbeat=options.ws_heartbeat,
        compress=False,
        protocols=(offer.protocol,) if offer.protocol else (),
    )
    await ws.prepare(request)
    state.websockets.add(ws)
    idle = _IdleWatch(ws, options.ws_idle_timeout)
    with observe.websocket_open():
        try:
            await _serve(ws, request, match, url_request, offer, credentials, idle)
        except ConnectionError:
            log.debug("websocket client disconnected on %s", route.describe())
        finally:
            await idle.stop()
            state.websockets.discard(ws)
            await ws.close()
    return ws


class _IdleWatch:
    """Closes a WebSocket that carried no message for `timeout` seconds (see the module docstring)."""

    def __init__(self, ws: web.WebSocketResponse, timeout: float) -> None:
        self._ws = ws
        self._timeout = timeout
        self._last = time.monotonic()
        self.dialect = WsDialect.NATIVE
        self._task = asyncio.create_task(self._watch()) if timeout else None

    def touch(self) -> None:
        self._last = time.monotonic()

    async def _watch(self) -> None:
        while not self._ws.closed:
            left = self._last + self._timeout - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)
                continue
            status = status_pb2.Status(
                code=code_pb2.DEADLINE_EXCEEDED,
                message=f"no message either way for {self._timeout:g} s: closing the idle WebSocket",
            )
            await _finish(self._ws, status, self.dialect)
            return

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


async def _serve(
    ws: web.WebSocketResponse,
    request: web.Request,
    match: Match,
    url_request: Message,
    offer: Negotiation,
    credentials: _Credentials,
    idle: _IdleWatch,
) -> None:
    options = request.app[STATE].options
    route, rpc = match.route, match.route.rpc
    url_set = {f.name for f, _ in url_request.ListFields()}
    from_url = not rpc.shape.streams_requests and rpc.required_fields <= url_set
    texts = _Frames(ws, idle)
    pending: str | None = None  # a frame read before the call started, still to be handled
    dialect = offer.dialect
    try:
        if dialect is None:
            # Only a call that waits for a first frame anyway can let that frame choose the dialect.
            if from_url:
                dialect = WsDialect.NATIVE
            else:
                pending = await anext(texts)
                dialect = WsDialect.FLAT if looks_flat(route, pending) else WsDialect.NATIVE
        if dialect is WsDialect.FLAT and not credentials.given and not from_url:
            # The seed's client authenticates first; the call's metadata must carry its token. A watcher
            # of a bidi call may never send a frame: past ws_auth_timeout its call starts without one,
            # and the server decides (an open server serves it, one with keys refuses it: 4016).
            if pending is None:
                wait = options.ws_auth_timeout if rpc.shape.streams_requests else None
                pending = await texts.next_within(wait)
            if pending is not None:
                frame = flat_frame(pending)
                if frame["type"] == AUTH:
                    credentials.add(auth_token(frame), where="auth frame")
                    await ws.send_str(AUTH_OK)
                    pending = None
        translate = _translator(dialect, match, request, credentials, ws)
        first: Message | None = None
        if not rpc.shape.streams_requests and not from_url:
            while first is None:
                first = await translate(pending if pending is not None else await anext(texts))
                pending = None
    except (StopAsyncIteration, ClientGone):
        return
    except ApiError as exc:
        await _finish(ws, exc.to_status(), dialect or WsDialect.NATIVE)
        return
    idle.dialect = dialect
    # A flat connection without credentials starts at once (a server without keys serves it). If the
    # server refuses the call for want of credentials, the client may still send its auth frame: then
    # the same request is sent again with them. Only a unary request can be sent again; a request
    # stream's frames went into the refused call.
    retry = dialect is WsDialect.FLAT and not credentials.given and not rpc.shape.streams_requests
    while True:
        refused = await _call(
            ws,
            request,
            match,
            url_request if first is None else first,
            dialect,
            credentials,
            idle,
            texts=texts,
            translate=translate,
            pending=pending,
            hold_unauthenticated=retry,
        )
        pending = None
        if refused is None:
            return
        try:
            await _await_auth(texts, translate, credentials, options.ws_auth_timeout)
        except (StopAsyncIteration, ClientGone):
            return
        except ApiError as exc:
            await _finish(ws, exc.to_status(), dialect)
            return
        if not credentials.given:
            await _finish(ws, refused, dialect)
            return
        retry = False


async def _call(
    ws: web.WebSocketResponse,
    request: web.Request,
    match: Match,
    unary: Message,
    dialect: WsDialect,
    credentials: _Credentials,
    idle: _IdleWatch,
    *,
    texts: _Frames,
    translate: Translate,
    pending: str | None,
    hold_unauthenticated: bool,
) -> status_pb2.Status | None:
    """Run the upstream call over the socket; returns the UNAUTHENTICATED status it held back, if any."""
    state = request.app[STATE]
    rpc = match.route.rpc
    metadata, timeout = credentials.metadata(), credentials.context.timeout
    if rpc.shape.streams_requests:
        call = state.upstream.start(rpc, None, metadata=metadata, timeout=timeout)
    else:
        call = state.upstream.start(rpc, unary, metadata=metadata, timeout=timeout)
    # A flat client may only watch: the first request names the resource (from the URL) with no action.
    join = unary if dialect is WsDialect.FLAT and rpc.shape.streams_requests else None
    requests = _requests(
        texts,
        translate,
        pending=pending,
        join=join,
        taken=not rpc.shape.streams_requests,
        half_close=rpc.shape.streams_requests,
    )
    with cancel_on_exit(call):
        pump = RequestPump(call, requests, half_close=rpc.shape.streams_requests)
        try:
            sink = WebSocketSink(
                ws,
                match.route,
                emit_unpopulated=state.options.emit_unpopulated,
                dialect=dialect,
                idle=idle,
                hold_unauthenticated=hold_unauthenticated,
            )
            await relay(call, sink, streaming=rpc.shape.streams_responses, pump=pump)
        finally:
            await pump.aclose()
    return sink.held


async def _await_auth(
    texts: _Frames, translate: Translate, credentials: _Credentials, seconds: float
) -> None:
    """Read frames for up to `seconds` until one brings credentials (an auth frame)."""
    deadline = time.monotonic() + seconds
    while not credentials.given:
        text = await texts.next_within(max(0.0, deadline - time.monotonic()))
        if text is None:
            return
        if await translate(text) is not None:
            return  # a request frame, not credentials: the refusal stands


class _Credentials:
    """The call's metadata, and the one bearer token a connection may carry (header, subprotocol, frame)."""

    def __init__(self, context: CallContext) -> None:
        self.context = context
        self._token: str | None = None
        self._header = next((v for k, v in context.metadata if k == "authorization"), None)

    @property
    def given(self) -> bool:
        return self._header is not None or self._token is not None

    def add(self, token: str, *, where: str) -> None:
        if not token:
            return  # an empty token authenticates nothing; the call goes without one
        access.note_credential(token)
        current = self._token if self._token is not None else _bearer(self._header)
        if current is not None and current != token:
            raise InvalidArgument(
                None,
                f"the {where} carries a different token than the connection already has",
                reason=CONFLICTING_CREDENTIALS,
            )
        if self._header is None:
            self._token = token

    def matches(self, token: str) -> bool:
        current = self._token if self._token is not None else _bearer(self._header)
        return not token or current == token

    def metadata(self) -> list[tuple[str, str | bytes]]:
        metadata = list(self.context.metadata)
        if self._token is not None:
            metadata.append(("authorization", f"Bearer {self._token}"))
        return metadata


def _bearer(header: object) -> str | None:
    if not isinstance(header, str):
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" else header


Translate = Callable[[str], Awaitable[Message | None]]


def _translator(
    dialect: WsDialect,
    match: Match,
    request: web.Request,
    credentials: _Credentials,
    ws: web.WebSocketResponse,
) -> Translate:
    """A text frame → the request message it stands for (None: the gateway answered it itself)."""
    strict = request.app[STATE].options.strict

    def decode(body: Any) -> Message:
        return decode_request(
            match.route,
            path_params=match.path_params,
            query=request.query,
            body=body,
            has_body=True,
            strict=strict,
        )

    async def native(text: str) -> Message | None:
        return decode(parse_json(text, what="WebSocket frame"))

    async def flat(text: str) -> Message | None:
        frame = flat_frame(text)
        if frame["type"] == AUTH:
            token = auth_token(frame)
            if not credentials.given:
                # The call runs without credentials; if the server refuses it for that, it is sent
                # again with these (see _serve).
                credentials.add(token, where="auth frame")
            # The call's metadata is fixed once it started: the same token again is fine, another is not.
            elif not credentials.matches(token):
                raise InvalidArgument(
                    None,
                    "the call already runs with other credentials; reconnect to change them",
                    reason=CONFLICTING_CREDENTIALS,
                )
            await ws.send_str(AUTH_OK)
            return None
        return decode(flat_request_body(match.route, frame))

    return flat if dialect is WsDialect.FLAT else native


async def _requests(
    texts: AsyncIterator[str],
    translate: Translate,
    *,
    pending: str | None,
    join: Message | None,
    taken: bool,
    half_close: bool,
) -> AsyncIterator[Message]:
    """Request messages for the pump; ends on an empty frame, raises ClientGone when the client leaves.

    `taken`: a unary-request call already has its request, so only frames the gateway answers itself
    (a flat auth frame) may follow.
    """
    if join is not None:
        yield join
    while True:
        if pending is not None:
            text, pending = pending, None
        else:
            try:
                text = await anext(texts)
            except StopAsyncIteration:
                return
        if text == "" and half_close:
            return
        message = await translate(text) if text else None
        if message is None and text:
            continue
        if taken or message is None:
            raise InvalidArgument(
                None,
                "this WebSocket route takes a single request; no further frames are allowed",
                reason=UNEXPECTED_FRAME,
            )
        yield message


class _Frames:
    """The client's text frames. A client that leaves is ClientGone (StopAsyncIteration is never raised).

    Not an async generator: a read may be cancelled (a timed wait for an auth frame, the request pump of
    a call that ended) and the next read must still work, which a generator interrupted mid-`await`
    would not allow.
    """

    def __init__(self, ws: web.WebSocketResponse, idle: _IdleWatch | None = None) -> None:
        self._ws = ws
        self._idle = idle

    def __aiter__(self) -> _Frames:
        return self

    async def __anext__(self) -> str:
        while True:
            frame = await self._ws.receive()
            if frame.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                raise ClientGone()
            if self._idle is not None:
                self._idle.touch()
            if frame.type == WSMsgType.TEXT:
                return str(frame.data)
            if frame.type == WSMsgType.BINARY:
                raise InvalidArgument(
                    None, "binary frames are not supported: send JSON text frames", reason=BINARY_FRAME
                )

    async def next_within(self, seconds: float | None) -> str | None:
        """The next text frame, or None if none came within `seconds` (None: as long as it takes)."""
        try:
            return await asyncio.wait_for(anext(self), seconds)
        except TimeoutError:
            return None


class WebSocketSink:
    """A relay sink over an open WebSocket: one text frame per message, the status as the close code."""

    started = True  # the upgrade is done: every outcome, even a failure before any message, is a frame

    def __init__(
        self,
        ws: web.WebSocketResponse,
        route: Route,
        *,
        emit_unpopulated: bool,
        dialect: WsDialect = WsDialect.NATIVE,
        idle: _IdleWatch | None = None,
        hold_unauthenticated: bool = False,
    ) -> None:
        self._ws = ws
        self._route = route
        self._emit = emit_unpopulated
        self._dialect = dialect
        self._idle = idle
        self._hold = hold_unauthenticated
        self._sent = False
        #: The UNAUTHENTICATED failure held back instead of sent (hold_unauthenticated, before any message).
        self.held: status_pb2.Status | None = None

    async def start(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        return None

    async def message(self, message: Message) -> None:
        if self._dialect is WsDialect.FLAT:
            frame = dumps(flat_event(self._route, message, emit_unpopulated=self._emit))
        else:
            frame = result_frame(response_json(self._route, message, emit_unpopulated=self._emit))
        await self._ws.send_str(frame)
        self._sent = True
        if self._idle is not None:
            self._idle.touch()

    async def end(self) -> None:
        await _finish(self._ws, status_pb2.Status(code=code_pb2.OK), self._dialect)

    async def end_empty(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        await self.end()

    async def fail(self, status: status_pb2.Status, http: int | None, headers: dict[str, str]) -> None:
        if self._hold and not self._sent and status.code == code_pb2.UNAUTHENTICATED:
            self.held = status
            return
        await _finish(self._ws, status, self._dialect)


async def _finish(ws: web.WebSocketResponse, status: status_pb2.Status, dialect: WsDialect) -> None:
    """Last frame (on error) and the close code for the call's status."""
    if ws.closed:
        return
    observe.note_status(status)
    with contextlib.suppress(ConnectionError):
        if status.code != code_pb2.OK:
            await ws.send_str(flat_error(status) if dialect is WsDialect.FLAT else error_frame(status))
        reason = status.message.encode()[:_CLOSE_REASON_BYTES].decode("utf-8", "ignore").encode()
        await ws.close(code=ws_close_code(status.code), message=reason)
