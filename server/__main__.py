"""`python -m server`: serve gRPC (and the HTTP gateway in-process) until SIGTERM or SIGINT.

Shutdown: the first signal turns health NOT_SERVING, stops accepting calls and gives
in-flight ones `shutdown_grace_seconds` to finish before cancelling them, then exits 0.
A second signal exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from common.addresses import parse_host_port
from server import logs
from server.app import AIBattleServer
from server.config import Config, ConfigError, load_config
from server.providers.registry import ProviderStartError

log = logging.getLogger("aibattle")


async def serve(config: Config) -> int:
    server = AIBattleServer(config)
    await server.start()
    gateway = None
    if config.server.http_addr:
        from gateway import GatewayOptions, start_gateway

        host, port = parse_host_port(config.server.http_addr)
        options = GatewayOptions.from_settings(config.gateway)
        gateway = await start_gateway(grpc_target=server.grpc_target, host=host, port=port, options=options)
    print(
        f"AI Battle serving gRPC on {server.grpc_target}"
        + (f", HTTP on {gateway.url}" if gateway else "")
        + f"; models: {', '.join(m.id for m in config.models)}",
        flush=True,
    )

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            log.warning("second signal: exiting now", extra={"signal": signal.Signals(signum).name})
            os._exit(1)
        log.info("shutting down", extra={"signal": signal.Signals(signum).name})
        stopping.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    await stopping.wait()

    grace = config.server.shutdown_grace_seconds
    await server.drain()
    stops = [server.stop(grace)]
    if gateway is not None:
        stops.append(gateway.close())
    await asyncio.gather(*stops)
    log.info("stopped")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="aibattle-server", description="AI Battle gRPC server")
    parser.add_argument("--config", help="TOML configuration file (default: $AIBATTLE_CONFIG)")
    args = parser.parse_args()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.lines:
            print(f"aibattle: configuration error: {line}", file=sys.stderr)
        sys.exit(2)
    logs.configure(config.server.log_level)
    try:
        sys.exit(asyncio.run(serve(config)))
    except (ProviderStartError, ConfigError, OSError) as exc:
        log.error("cannot start: %s", exc)
        print(f"aibattle: cannot start: {exc}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
