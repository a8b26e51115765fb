"""The gateway application, and running it (in-process beside the server, or as a standalone proxy)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import WSCloseCode, web

from aibattle.v1 import completions_pb2
from gateway.compat_ollama import add_ollama_routes
from gateway.compat_openai import add_openai_routes
from gateway.options import GatewayOptions
from gateway.router import Router
from gateway.routes import derive_routes
from gateway.source_info import Comments
from gateway.upstream import Upstream
from gateway.web_cors import add_cors_headers, cors_middleware
from gateway.web_meta import add_meta_routes
from gateway.web_middlewares import add_request_id, error_middleware, request_id_middleware
from gateway.web_rest import handle_api
from gateway.web_state import STATE, GatewayState


def create_app(grpc_target: str, options: GatewayOptions | None = None) -> web.Application:
    """The aiohttp application serving the routes of `options.files`, proxied to `grpc_target`.

    Routes are derived here, at start-up, from the descriptors: a bad rule fails now, loudly.
    """
    options = options or GatewayOptions()
    router = Router(derive_routes(options.files))
    app = web.Application(
        client_max_size=options.max_body_bytes,
        middlewares=[request_id_middleware, error_middleware, cors_middleware],
    )
    app[STATE] = GatewayState(options=options, router=router, comments=Comments.load(options.descriptor_set))
    app.on_response_prepare.append(add_request_id)
    app.on_response_prepare.append(add_cors_headers)
    app.on_shutdown.append(_on_shutdown)

    async def upstream_ctx(app: web.Application) -> AsyncIterator[None]:
        state = app[STATE]
        state.upstream = Upstream(grpc_target)
        yield
        await state.upstream.close()

    app.cleanup_ctx.append(upstream_ctx)
    add_meta_routes(app)
    if options.compat_endpoints and completions_pb2.DESCRIPTOR in options.files:
        add_openai_routes(app)
        add_ollama_routes(app)
    app.router.add_route("*", "/{tail:.*}", handle_api)
    return app


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
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (shutdown_timeout), cancel the rest."""
        self.runner.app[STATE].closing = True
        await self.runner.cleanup()


async def start_gateway(
    *, grpc_target: str, host: str, port: int, options: GatewayOptions | None = None
) -> GatewayHandle:
    """Serve the gateway on host:port (0 picks a free port) in front of the gRPC server at grpc_target."""
    options = options or GatewayOptions()
    app = create_app(grpc_target, options)
    # handler_cancellation: a client that disconnects cancels its handler, hence its upstream call.
    runner = web.AppRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=options.shutdown_timeout
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port = int(runner.addresses[0][1])
    return GatewayHandle(runner=runner, port=bound_port, host=host)
