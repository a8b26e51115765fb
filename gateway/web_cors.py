"""CORS from an allow-list: preflights answered here, response headers added on every allowed response.

An empty allow-list (the default) sends no CORS headers at all: browsers on other origins are refused,
same-origin pages (such as /docs) work. CORS alone does not stop a page from *sending* a "simple"
request (a form-like POST needs no preflight), so a request that can change something (any method but
GET, HEAD and OPTIONS) from a foreign Origin is refused before it runs; WebSocket upgrades, which CORS
does not cover, are checked against the same list (cross-site WebSocket hijacking).

DNS rebinding: a page on attacker.example whose name later resolves to 127.0.0.1 is same-origin with
us as far as the browser knows. A gateway listening on a loopback address therefore answers only to
loopback host names (localhost, *.localhost, 127.0.0.1, [::1]) in `Host`, as local dev servers do.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from aiohttp import web
from aiohttp.typedefs import Handler
from yarl import URL

from common.errors import HOST_NOT_ALLOWED, ORIGIN_NOT_ALLOWED, PermissionDenied
from common.observability import OVERHEAD_HEADER
from gateway.metadata import REQUEST_ID_HEADER
from gateway.router import route_not_found
from gateway.web_state import STATE
from gateway.web_stream import DEPLOYMENT_HEADER, ESTIMATED_HEADER, REASONING_HEADER

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
#: What a browser app may read of an answer: ours too (which deployment answered, what the gateway cost,
#: which collaboration session answered, whether a token count is an estimate), not only the standard ones.
_ALWAYS_EXPOSED = (
    REQUEST_ID_HEADER,
    "Retry-After",
    "WWW-Authenticate",
    OVERHEAD_HEADER,
    DEPLOYMENT_HEADER,
    REASONING_HEADER,
    ESTIMATED_HEADER,
    # gRPC-Web's status, when it comes as headers (a trailers-only answer)
    "Grpc-Status",
    "Grpc-Message",
    "Grpc-Status-Details-Bin",
)
#: Headers that carry call metadata: REST's prefixed ones, Connect's unary trailers, our own (Connect and
#: gRPC-Web send the server's metadata under its own names).
_METADATA_PREFIXES = ("grpc-metadata-", "grpc-trailer-", "trailer-", "x-aibattle-")
_MAX_AGE = "600"
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def origin_allowed(origin: str, allowed: Sequence[str]) -> bool:
    return "*" in allowed or origin in allowed


def same_or_allowed_origin(request: web.Request, allowed: Sequence[str]) -> bool:
    """No Origin (not a browser), this host's own origin, or an allowed one."""
    origin = request.headers.get("Origin")
    if origin is None or origin_allowed(origin, allowed):
        return True
    try:
        return URL(origin).raw_authority == request.host
    except ValueError:
        return False


def _on_loopback(request: web.Request) -> bool:
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not isinstance(sockname, tuple) or not sockname:
        return False  # a Unix socket or a test transport: no browser can rebind a name to it
    try:
        return ipaddress.ip_address(str(sockname[0]).split("%")[0]).is_loopback
    except ValueError:
        return False


def host_allowed(request: web.Request) -> bool:
    """On a loopback listener, only loopback names in Host (see the module docstring)."""
    if not _on_loopback(request):
        return True
    try:
        host = (URL(f"http://{request.host}").host or "").lower().strip("[]")
    except ValueError:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse foreign Hosts on loopback and state-changing requests from foreign origins; answer CORS
    preflights for allowed origins."""
    if not host_allowed(request):
        raise PermissionDenied(
            HOST_NOT_ALLOWED,
            f"host {request.host!r} is not a loopback name; this gateway listens on loopback only",
        )
    origin = request.headers.get("Origin")
    state = request.app[STATE]
    if (
        origin is not None
        and request.method not in _SAFE_METHODS
        and not same_or_allowed_origin(request, state.options.cors_origins)
    ):
        raise PermissionDenied(ORIGIN_NOT_ALLOWED, f"origin {origin!r} is not allowed")
    requested = request.headers.get("Access-Control-Request-Method")
    if request.method != "OPTIONS" or origin is None or requested is None:
        return await handler(request)
    if not origin_allowed(origin, state.options.cors_origins):
        raise PermissionDenied(ORIGIN_NOT_ALLOWED, f"origin {origin!r} is not allowed")
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
        *(h for h in response.headers if h.lower().startswith(_METADATA_PREFIXES)),
    ]
    response.headers["Access-Control-Expose-Headers"] = ", ".join(dict.fromkeys(exposed))
