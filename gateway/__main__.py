"""Standalone proxy: `python -m gateway --grpc-target HOST:PORT --http-addr 127.0.0.1:8080`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import replace

from gateway.options import GatewayOptions
from gateway.web_app import start_gateway


def split_addr(addr: str) -> tuple[str, int]:
    """ "127.0.0.1:8080" → ("127.0.0.1", 8080); "[::1]:8080" → ("::1", 8080)."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{addr!r} is not HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


async def serve(args: argparse.Namespace) -> None:
    options = replace(
        GatewayOptions(),
        cors_origins=tuple(args.cors_origin),
        max_body_bytes=args.max_body_bytes,
        strict=not args.lenient,
    )
    host, port = args.http_addr
    handle = await start_gateway(grpc_target=args.grpc_target, host=host, port=port, options=options)
    logging.getLogger("gateway").info("gateway on %s → gRPC %s", handle.url, args.grpc_target)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await handle.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--grpc-target", required=True, help="gRPC server to proxy, HOST:PORT")
    parser.add_argument(
        "--http-addr", type=split_addr, default=("127.0.0.1", 8080), help="listen on HOST:PORT"
    )
    parser.add_argument("--cors-origin", action="append", default=[], help="allowed CORS origin (repeatable)")
    parser.add_argument("--max-body-bytes", type=int, default=GatewayOptions.max_body_bytes)
    parser.add_argument("--lenient", action="store_true", help="ignore unknown fields and query parameters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
