"""CORS from an allow-list: preflights answered here, response headers added on every allowed response.

An empty allow-list (the default) sends no CORS headers at all: browsers on other origins are refused,
same-origin pages (such as /docs) work. WebSocket upgrades, which CORS does not cover, are checked
against the same list (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from common.errors import ApiError
from gateway.metadata import REQUEST_ID_HEADER
from gateway.router import route_not_found
from gateway.web_state import STATE

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
_ALWAYS_EXPOSED = (REQUEST_ID_HEADER, "Retry-After", "WWW-Authenticate")
_MAX_AGE = "600"


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    return "*" in allowed or origin in allowed


def websocket_origin_allowed(request: web.Request, allowed: Sequence[str]) -> bool:
    """Non-browser clients send no Origin; browsers may connect from this host or an allowed origin."""
    origin = request.headers.get("Origin")
    if origin is None or origin_allowed(origin, allowed):
        return True
    try:
        return URL(origin).raw_authority == request.host
    except ValueError:
        return False


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights for allowed origins; refuse them for others."""
    origin = request.headers.get("Origin")
    requested = request.headers.get("Access-Control-Request-Method")
    if request.method != "OPTIONS" or origin is None or requested is None:
        return await handler(request)
    state = request.app[STATE]
    if not origin_allowed(origin, state.options.cors_origins):
        raise ApiError(
            grpc.StatusCode.PERMISSION_DENIED,
            "ORIGIN_NOT_ALLOWED",
            f"origin {origin!r} is not allowed",
            http_status=403,
        )
    methods = state.allowed_methods(request.rel_url.raw_path)
    if not methods:
        raise route_not_found(request.rel_url.raw_path)
    headers = {
        "Access-Control-Allow-Methods": ", ".join(methods),
        "Access-Control-Max-Age": _MAX_AGE,
    }
    asked = [
        h.strip() for h in request.headers.get("Access-Control-Request-Headers", "").split(",") if h.strip()
    ]
    if asked and all(_TOKEN.fullmatch(h) for h in asked):
        # Any header may carry metadata (Grpc-Metadata-*), so whatever the page asks for is allowed.
        headers["Access-Control-Allow-Headers"] = ", ".join(asked)
    return web.Response(status=204, headers=headers)


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: CORS headers for an allowed Origin (also on streams and errors)."""
    origin = request.headers.get("Origin")
    if origin is None or not origin_allowed(origin, request.app[STATE].options.cors_origins):
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers.add("Vary", "Origin")
    exposed = [
        *_ALWAYS_EXPOSED,
        *(h for h in response.headers if h.lower().startswith(("grpc-metadata-", "grpc-trailer-"))),
    ]
    response.headers["Access-Control-Expose-Headers"] = ", ".join(dict.fromkeys(exposed))
