"""`python -m server`: serve gRPC (and the HTTP gateway in-process) until SIGTERM or SIGINT.

Shutdown: the first signal turns health NOT_SERVING, stops accepting calls and gives
in-flight ones `shutdown_grace_seconds` to finish before cancelling them, then exits 0.
A second signal exits at once (1), except the same signal again within RELAY_WINDOW_SECONDS: that is
the first one relayed, not a second request.

`--workers N` (or `[server] workers`) runs N such processes on the same ports, under a supervisor that
serves nothing itself (server/workers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable

from common import event_loop
from common.addresses import parse_host_port
from common.observability import metrics, tracing
from server import logs
from server.app import AIBattleServer
from server.config import Config, ConfigError, load_config
from server.providers.registry import ProviderStartError
from server.storage.base import SchemaTooNew
from server.workers import as_worker, die_with_supervisor, supervise, tag_logs, worker_index

log = logging.getLogger("aibattle")

#: A repeat of the first shutdown signal this soon is that signal relayed, not a second request. A
#: signal to a whole process group (`kill -TERM -- -PGID`, a service manager stopping `make run`)
#: reaches the server and its parent at once, and GNU make passes its SIGTERM on to its child, so the
#: server gets the same SIGTERM twice within milliseconds. Exiting on that repeat would cut the drain.
#: A different signal, or the same one later (a second Ctrl-C), still exits at once.
RELAY_WINDOW_SECONDS = 1.0


class ShutdownSignals:
    """Counts shutdown signals: the first sets `stopping`, a second one exits at once (`exit_now`: the
    workers' supervisor kills its workers first)."""

    def __init__(self, stopping: asyncio.Event, exit_now: Callable[[], None] | None = None) -> None:
        self._stopping = stopping
        self._exit_now = exit_now
        self._first: tuple[int, float] | None = None

    def __call__(self, signum: int) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self._first is None:
            self._first = (signum, now)
            log.info("shutting down", extra={"signal": name})
            self._stopping.set()
            return
        first, at = self._first
        if signum == first and now - at < RELAY_WINDOW_SECONDS:
            log.info(
                "repeated signal taken as the first one relayed (send it again to exit now)",
                extra={"signal": name},
            )
            return
        log.warning("second signal: exiting now", extra={"signal": name})
        if self._exit_now is not None:
            self._exit_now()
        os._exit(1)


async def serve(config: Config, *, reuse_port: bool = False) -> int:
    """`reuse_port`: one of several workers sharing the ports (server/workers.py)."""
    server = AIBattleServer(config, reuse_port=reuse_port)
    await server.start()
    gateway = None
    metrics_listener = None
    settings = config.server
    if settings.http_addr:
        from gateway import GatewayOptions, start_gateway

        host, port = parse_host_port(settings.http_addr)
        # /metrics on the gateway's port, unless metrics_addr gives it a listener of its own.
        options = GatewayOptions.from_settings(config.gateway, metrics_route=not settings.metrics_addr)
        # In-process (the default): the gateway calls the servicers through the server's interceptor
        # chain, without the loopback gRPC hop.
        gateway = await start_gateway(
            grpc_target=server.grpc_target,
            host=host,
            port=port,
            options=options,
            reuse_port=reuse_port,
            dispatcher=server.dispatcher() if settings.gateway_in_process else None,
        )
    if settings.metrics and settings.metrics_addr:
        from gateway import start_metrics

        host, port = parse_host_port(settings.metrics_addr)
        metrics_listener = await start_metrics(host=host, port=port, reuse_port=reuse_port)
    print(
        f"AI Battle serving gRPC on {server.grpc_target}"
        + (f", HTTP on {gateway.url}" if gateway else "")
        + (f", metrics on {metrics_listener.url}" if metrics_listener else "")
        + f"; models: {', '.join(m.id for m in config.models)}",
        flush=True,
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    on_signal = ShutdownSignals(stopping)
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stopping.wait()

    grace = config.server.shutdown_grace_seconds
    await server.drain()
    stops = [server.stop(grace)]
    if gateway is not None:
        stops.append(gateway.close())
    if metrics_listener is not None:
        stops.append(metrics_listener.close())
    await asyncio.gather(*stops)
    log.info("stopped")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="aibattle-server", description="AI Battle gRPC server")
    parser.add_argument("--config", help="TOML configuration file (default: $AIBATTLE_CONFIG)")
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="processes serving the same ports and database (default: [server] workers, 1); 0: one per"
        " core; more than one needs a postgresql:// database",
    )
    args = parser.parse_args()
    try:
        config = load_config(args.config, workers=args.workers)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"aibattle: configuration error: {line}", file=sys.stderr)
        sys.exit(2)
    logs.configure(config.server.log_level)
    worker = worker_index()
    if worker is None and config.server.worker_count > 1:
        # The supervisor serves nothing itself: its workers do, each a `python -m server` of its own.
        sys.exit(
            supervise(config, argv=["--config", args.config] if args.config else [], signals=ShutdownSignals)
        )
    if worker is not None:
        tag_logs(worker)
        die_with_supervisor()
        config = as_worker(config)
    observe(config)
    try:
        sys.exit(event_loop.run(serve(config, reuse_port=worker is not None)))  # uvloop's, by default
    except (ProviderStartError, ConfigError, SchemaTooNew, OSError) as exc:
        log.error("cannot start: %s", exc)
        print(f"aibattle: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        tracing.shutdown()  # flush the spans still pending, off the event loop (it has ended)


def observe(config: Config) -> None:
    """Prometheus metrics as `[server]` says (on, and by key id); OpenTelemetry as the `OTEL_*`
    environment says (nothing installed without an endpoint)."""
    metrics.configure(on=config.server.metrics, by_key=config.server.metrics_key_label)
    tracing.configure()


if __name__ == "__main__":
    main()
