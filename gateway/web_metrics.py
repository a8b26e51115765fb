"""`/metrics`: the Prometheus text exposition of `common.observability.metrics.REGISTRY`.

Served on the gateway's own port (`GatewayOptions.metrics_route`, when metrics are recorded), or on a
listener of its own (`start_metrics`, for `[server].metrics_addr`) and then not on the gateway's. It needs
no API key, as a health endpoint; it is not counted in the request series it reports. Its labels carry
route templates and model ids, never a raw path or a secret.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiohttp import hdrs, web

from common.addresses import join_host_port
from common.observability import metrics

METRICS_PATH = "/metrics"


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Every series, in Prometheus' text format."""
    # Several workers' series are read from their files: off the event loop.
    body = await asyncio.to_thread(metrics.exposition) if metrics.MULTIPROCESS else metrics.exposition()
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: metrics.CONTENT_TYPE})


@dataclass(eq=False)
class MetricsHandle:
    """A running metrics listener: its bound port, and close()."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{join_host_port(self.host, self.port)}{METRICS_PATH}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_metrics(*, host: str, port: int, reuse_port: bool = False) -> MetricsHandle:
    """Serve `/metrics` alone on host:port (0 picks a free port); any other path is a 404. `reuse_port`:
    share the port with the other workers of `--workers N` (each answers with every worker's series)."""
    app = web.Application()
    app.router.add_get(METRICS_PATH, metrics_endpoint)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_port=reuse_port or None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return MetricsHandle(runner=runner, host=host, port=int(runner.addresses[0][1]))
