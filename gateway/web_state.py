"""Typed application and request state shared by the gateway's handlers and middlewares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.metadata import outgoing_metadata, parse_grpc_timeout
from gateway.options import GatewayOptions
from gateway.router import Router
from gateway.source_info import Comments
from gateway.upstream import Metadata, Upstream


@dataclass(eq=False)
class GatewayState:
    """What every handler needs: options, routes, the upstream channel, live WebSockets."""

    options: GatewayOptions
    router: Router
    comments: Comments
    closing: bool = False
    _upstream: Upstream | None = None
    websockets: set[web.WebSocketResponse] = field(default_factory=set)
    openapi: dict[str, Any] | None = None

    @property
    def upstream(self) -> Upstream:
        """The channel, opened when the app starts (cleanup_ctx) and closed when it stops."""
        if self._upstream is None:
            raise RuntimeError("the gateway app has not started")
        return self._upstream

    @upstream.setter
    def upstream(self, value: Upstream) -> None:
        self._upstream = value


STATE = web.AppKey("gateway_state", GatewayState)
REQUEST_ID = web.RequestKey("request_id", str)


@dataclass(frozen=True)
class CallContext:
    """Per-request call settings derived from the HTTP request's headers."""

    metadata: Metadata
    timeout: float | None


def call_context(request: web.Request) -> CallContext:
    """Metadata (headers through the matcher, plus the request id) and deadline (Grpc-Timeout)."""
    options = request.app[STATE].options
    metadata = outgoing_metadata(
        request.headers.items(), matcher=options.header_matcher, request_id=request[REQUEST_ID]
    )
    return CallContext(metadata=metadata, timeout=parse_grpc_timeout(request.headers.get("Grpc-Timeout")))
