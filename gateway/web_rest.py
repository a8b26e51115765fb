"""REST routes: decode the request, call upstream, answer JSON or relay the stream.

Unary responses are JSON; streamed responses go through web_stream (SSE / NDJSON). On event streams
(gateway.events) a `Last-Event-ID` header sets the request's `after_sequence`. Request streams
(client-streaming and bidi RPCs with an HTTP rule) read the body as NDJSON, one request per line,
as grpc-gateway does.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message

from common.errors import RequestTooLarge
from gateway import observe
from gateway.calls import RequestPump, cancel_on_exit
from gateway.events import LAST_EVENT_ID
from gateway.metadata import response_headers
from gateway.router import Match
from gateway.transcode import decode_request, dumps, parse_json, response_json
from gateway.web_state import STATE, call_context
from gateway.web_stream import NativeFraming, answer_headers, stream_http, wants_sse


async def handle_rest(request: web.Request, match: Match) -> web.StreamResponse:
    """A REST route's request: the router picked the route, this calls it."""
    state = request.app[STATE]
    context = call_context(request)
    rpc = match.route.rpc
    framing = NativeFraming(
        match.route, state.options.emit_unpopulated, sse=wants_sse(request.headers.get("Accept"))
    )
    if rpc.shape.streams_requests:
        call = state.upstream.start(rpc, None, metadata=context.metadata, timeout=context.timeout)
        with cancel_on_exit(call):
            pump = RequestPump(call, _ndjson_requests(request, match), half_close=True)
            try:
                if rpc.shape.streams_responses:
                    return await stream_http(request, call, framing, pump=pump)
                return await _unary_response(match, call, emit=state.options.emit_unpopulated, pump=pump)
            finally:
                await pump.aclose()

    raw = await request.read()
    has_body = bool(raw.strip())
    body = parse_json(raw) if has_body else None
    message = decode_request(
        match.route,
        path_params=match.path_params,
        query=request.query,
        body=body,
        has_body=has_body,
        strict=state.options.strict,
    )
    if match.route.events is not None:
        # An EventSource reconnecting says where it stopped; see gateway.events.
        match.route.events.resume(message, request.headers.get(LAST_EVENT_ID))
    call = state.upstream.start(rpc, message, metadata=context.metadata, timeout=context.timeout)
    with cancel_on_exit(call):
        if rpc.shape.streams_responses:
            return await stream_http(request, call, framing)
        return await _unary_response(match, call, emit=state.options.emit_unpopulated)


async def _unary_response(
    match: Match, call: Any, *, emit: bool, pump: RequestPump | None = None
) -> web.Response:
    try:
        message = await call
    except (grpc.aio.AioRpcError, asyncio.CancelledError):
        if pump is not None and pump.caused_failure():
            pump.raise_own_error()
        raise
    initial = await call.initial_metadata()
    trailing = await call.trailing_metadata()
    observe.note_upstream_of(initial, trailing)
    headers = response_headers(initial, trailing)
    headers.update(answer_headers(message))
    payload = response_json(match.route, message, emit_unpopulated=emit)
    return web.Response(text=dumps(payload), content_type="application/json", headers=headers)


async def _ndjson_requests(request: web.Request, match: Match) -> AsyncIterator[Message]:
    """One request message per non-empty body line; each line is limited like a whole body."""
    options = request.app[STATE].options
    limit = options.max_body_bytes
    buffer = b""
    line_number = 0
    while True:
        chunk = await request.content.readany()
        if not chunk:
            lines, buffer = [buffer], b""
        else:
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            if len(buffer) > limit:
                raise RequestTooLarge(limit)
        for line in lines:
            line_number += 1
            if len(line) > limit:
                raise RequestTooLarge(limit)
            if line.strip():
                yield decode_request(
                    match.route,
                    path_params=match.path_params,
                    query=request.query,
                    body=parse_json(line, what=f"request line {line_number}"),
                    has_body=True,
                    strict=options.strict,
                )
        if not chunk:
            return
