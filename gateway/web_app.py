"""The gateway application, and running it (in-process beside the server, or as a standalone proxy).

Routing happens here, in two layers: hand-registered endpoints (compat dialects, meta, and every RPC's
Connect / gRPC-Web path, derived from the descriptors: web_rpc) as aiohttp resources, each with its error
dialect; then one catch-all that matches the routes derived from the
protos and dispatches by transport — REST (web_rest) or WebSocket (web_websocket). A derived route
that would overlap a hand-registered one is refused at start-up instead of being shadowed.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import WSCloseCode, web
from aiohttp.typedefs import Handler

from aibattle.v1 import completions_pb2
from common.addresses import join_host_port
from common.inprocess import Dispatcher
from common.observability import metrics
from gateway import compat, observe
from gateway.descriptors import RouteError
from gateway.inprocess import InProcessUpstream
from gateway.options import GatewayOptions
from gateway.path_template import parse_template
from gateway.router import Match, Router, method_not_allowed
from gateway.routes import Kind, Route, derive_routes
from gateway.source_info import Comments
from gateway.upstream import Upstream
from gateway.web_arena import arena_routes
from gateway.web_cors import add_cors_headers, cors_middleware
from gateway.web_errors import NATIVE, Dialect
from gateway.web_meta import DOCS_ASSETS, docs_assets_path, meta_routes
from gateway.web_metrics import METRICS_PATH, metrics_endpoint
from gateway.web_middlewares import (
    access_log_middleware,
    add_request_id,
    error_middleware,
    request_id_middleware,
)
from gateway.web_rest import handle_rest
from gateway.web_rpc import RPC, rpc_endpoints, unknown_method_endpoints
from gateway.web_state import STATE, FixedRoute, GatewayState
from gateway.web_websocket import handle_websocket, is_websocket_upgrade

#: Derived routes by transport.
_HANDLERS: dict[Kind, Callable[[web.Request, Match], Awaitable[web.StreamResponse]]] = {
    Kind.REST: handle_rest,
    Kind.WEBSOCKET: handle_websocket,
}


def create_app(
    grpc_target: str, options: GatewayOptions | None = None, *, dispatcher: Dispatcher | None = None
) -> web.Application:
    """The aiohttp application serving the routes of `options.files`, proxied to `grpc_target`, or
    with `dispatcher` (a gateway inside the server's process) to the server's handlers in-process.

    Routes are derived here, at start-up, from the descriptors: a bad rule fails now, loudly.
    """
    options = options or GatewayOptions()
    router = Router(derive_routes(options.files))
    app = web.Application(
        client_max_size=options.max_body_bytes,
        middlewares=[request_id_middleware, access_log_middleware, error_middleware, cors_middleware],
    )
    state = GatewayState(options=options, router=router, comments=Comments.load(options.descriptor_set))
    app[STATE] = state
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(add_cors_headers)
    app.on_response_prepare.append(observe.add_overhead)
    app.on_shutdown.append(_on_shutdown)

    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        state.upstream = Upstream(grpc_target) if dispatcher is None else InProcessUpstream(dispatcher)
        yield
        await state.upstream.close()

    app.cleanup_ctx.append(upstream_ctx)
    _add_fixed(app, NATIVE, meta_routes())
    _add_fixed(app, NATIVE, arena_routes())
    if options.metrics_route and metrics.enabled:
        _add_fixed(app, NATIVE, [("GET", METRICS_PATH, metrics_endpoint)], counted=False)
    assets = docs_assets_path()
    if assets is not None:
        static = app.router.add_static(DOCS_ASSETS, assets)
        fixed = FixedRoute(parse_template(f"{DOCS_ASSETS}/{{path=**}}"), ("GET",), NATIVE)
        state.fixed_routes.append(fixed)
        state.fixed_resources[static] = fixed
    # Connect and gRPC-Web: every RPC at /<service>/<method>, then any other method of those services.
    _add_fixed(app, RPC, rpc_endpoints(options.files))
    _add_fixed(app, RPC, unknown_method_endpoints(options.files))
    if options.compat_endpoints and completions_pb2.DESCRIPTOR in options.files:
        for dialect, routes in compat.ENDPOINTS:
            _add_fixed(app, dialect, routes)
        state.path_dialects.extend(compat.PATH_DIALECTS)
    check_no_overlap(router.routes, state.fixed_routes)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Every derived route: the path, method and Upgrade header pick the route, its transport the handler."""
    match = request.app[STATE].router.match(
        request.method, request.rel_url.raw_path, websocket=is_websocket_upgrade(request)
    )
    observe.note_route(match.route.template.source, websocket=match.route.kind is Kind.WEBSOCKET)
    return await _HANDLERS[match.route.kind](request, match)


def _add_fixed(
    app: web.Application,
    dialect: Dialect,
    routes: Sequence[tuple[str, str, Handler]],
    *,
    counted: bool = True,
) -> None:
    """Register hand-written endpoints; any other method on their paths is a 405 in their dialect.

    `counted`: whether their requests count in the request series (gateway.observe).
    """
    by_path: dict[str, list[tuple[str, Handler]]] = {}
    for method, path, handler in routes:
        by_path.setdefault(path, []).append((method, handler))
    for path, handlers in by_path.items():
        methods = tuple(sorted(m for m, _ in handlers))
        resource = app.router.add_resource(path)
        for method, handler in handlers:
            resource.add_route(method, handler)
        resource.add_route("*", _method_not_allowed(methods))
        # A template has no trailing "/": "/arena/" is known (overlaps, metrics) as "/arena".
        fixed = FixedRoute(parse_template(path.rstrip("/") or "/"), methods, dialect, counted)
        app[STATE].fixed_routes.append(fixed)
        app[STATE].fixed_resources[resource] = fixed


def _method_not_allowed(methods: tuple[str, ...]) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        raise method_not_allowed(request.method, request.rel_url.raw_path, methods)

    return handler


def check_no_overlap(routes: Sequence[Route], fixed: Sequence[FixedRoute]) -> None:
    """Refuse a derived route whose path overlaps a hand-registered endpoint (it would be shadowed)."""
    for route in routes:
        for endpoint in fixed:
            if route.template.overlaps(endpoint.template):
                raise RouteError(
                    f"{route.describe()} overlaps the gateway's own endpoint {endpoint.template.source} "
                    f"({endpoint.dialect.name}); change the rule's path"
                )


async def _on_shutdown(app: web.Application) -> None:
    """Report not-ready, and close WebSockets (1001) so their calls are cancelled before the channel goes."""
    state = app[STATE]
    state.closing = True
    for ws in list(state.websockets):
        with contextlib.suppress(ConnectionError):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"gateway shutting down")


@dataclass(eq=False)
class GatewayHandle:
    """A running gateway: its bound port, and close()."""

    runner: web.AppRunner
    port: int
    host: str

    @property
    def url(self) -> str:
        return f"http://{join_host_port(self.host, self.port)}"

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (shutdown_timeout), cancel the rest."""
        self.runner.app[STATE].closing = True
        await self.runner.cleanup()


async def start_gateway(
    *,
    grpc_target: str,
    host: str,
    port: int,
    options: GatewayOptions | None = None,
    reuse_port: bool = False,
    dispatcher: Dispatcher | None = None,
) -> GatewayHandle:
    """Serve the gateway on host:port (0 picks a free port) in front of the gRPC server at grpc_target
    (or, given the server's `dispatcher`, calling its handlers in-process: gateway/inprocess.py).

    `reuse_port`: share the port with the other workers of `python -m server --workers N` (SO_REUSEPORT);
    off, a port already taken is an error at start-up."""
    options = options or GatewayOptions()
    app = create_app(grpc_target, options, dispatcher=dispatcher)
    # handler_cancellation: a client that disconnects cancels its handler, hence its upstream call.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=options.shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return GatewayHandle(runner=runner, port=bound_port, host=host)
