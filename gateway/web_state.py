"""Typed application and request state shared by the gateway's handlers and middlewares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from common.observability import ECHO_IN_TRAILERS, ECHO_METADATA
from gateway.inprocess import InProcessUpstream
from gateway.metadata import outgoing_metadata, parse_grpc_timeout
from gateway.options import GatewayOptions
from gateway.path_template import PathTemplate
from gateway.router import Router
from gateway.source_info import Comments
from gateway.upstream import Metadata, Upstream
from gateway.web_errors import NATIVE, Dialect


@dataclass(frozen=True)
class FixedRoute:
    """An endpoint registered by hand (compat, meta), not derived from the protos: derived routes
    may not overlap it (checked at start-up), and its errors are written in its dialect."""

    template: PathTemplate
    methods: tuple[str, ...]
    dialect: Dialect
    counted: bool = True
    """Whether its requests count in the request series (not /metrics itself)."""


@dataclass(eq=False)
class GatewayState:
    """What every handler needs: options, routes, the upstream channel, live WebSockets."""

    options: GatewayOptions
    router: Router
    comments: Comments
    closing: bool = False
    _upstream: Upstream | InProcessUpstream | None = None
    websockets: set[web.WebSocketResponse] = field(default_factory=set)
    openapi: dict[str, Any] | None = None
    fixed_routes: list[FixedRoute] = field(default_factory=list)
    fixed_resources: dict[web.AbstractResource, FixedRoute] = field(default_factory=dict)
    """The fixed route of each aiohttp resource registered for one (what a request is for, without
    matching its path again)."""
    path_dialects: list[tuple[Callable[[str], bool], Dialect]] = field(default_factory=list)
    """The dialect of paths no fixed route serves (a compat API's unknown routes answer its 404)."""

    def dialect_for(self, raw_path: str) -> Dialect:
        """The error dialect of a path: its fixed route's, else `path_dialects`', else native."""
        for fixed in self.fixed_routes:
            if fixed.template.match(raw_path) is not None:
                return fixed.dialect
        return self.path_dialect(raw_path)

    def path_dialect(self, raw_path: str) -> Dialect:
        """The dialect of a path no fixed route serves: `path_dialects`', else native."""
        for owns, dialect in self.path_dialects:
            if owns(raw_path):
                return dialect
        return NATIVE

    def allowed_methods(self, raw_path: str) -> list[str]:
        """HTTP methods some route (derived or fixed) accepts on this path (405 Allow, CORS preflight)."""
        fixed = {m for f in self.fixed_routes if f.template.match(raw_path) is not None for m in f.methods}
        return sorted(fixed | set(self.router.allowed_methods(raw_path)))

    @property
    def upstream(self) -> Upstream | InProcessUpstream:
        """The channel, opened when the app starts (cleanup_ctx) and closed when it stops."""
        if self._upstream is None:
            raise RuntimeError("the gateway app has not started")
        return self._upstream

    @upstream.setter
    def upstream(self, value: Upstream | InProcessUpstream) -> None:
        self._upstream = value


STATE = web.AppKey("gateway_state", GatewayState)
_ECHO = (ECHO_METADATA, ECHO_IN_TRAILERS)
REQUEST_ID = web.RequestKey("request_id", str)


@dataclass(frozen=True)
class CallContext:
    """Per-request call settings derived from the HTTP request's headers."""

    metadata: Metadata
    timeout: float | None


def call_context(request: web.Request) -> CallContext:
    """Metadata (headers through the matcher, plus the request id) and deadline (Grpc-Timeout).

    It asks the server for the echo of a unary answer in its trailers (`ECHO_METADATA`): a write fewer
    per call; `observe.note_upstream_of` reads either."""
    options = request.app[STATE].options
    metadata = outgoing_metadata(
        request.headers.items(), matcher=options.header_matcher, request_id=request[REQUEST_ID]
    )
    metadata.append(_ECHO)
    return CallContext(metadata=metadata, timeout=parse_grpc_timeout(request.headers.get("Grpc-Timeout")))
