"""Gateway overhead over direct gRPC: p50/p99 latency of a unary and a streaming completion.

    python bench/gateway_overhead.py [--requests 300] [--concurrency 1,8,32]

A child process serves the AI Battle server with scripted models (no model time, so what is
measured is transport) and the HTTP gateway in-process, both on 127.0.0.1. This process then
sends the same calls directly over gRPC and through the gateway (JSON for unary, NDJSON for the
stream), at a few concurrency levels, with bounded counts. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from harness import SCRIPTED_MODEL, CompletionCalls, measure, percentile

ROOT = Path(__file__).resolve().parent.parent
CONFIG = {"server": {"grpc_addr": "127.0.0.1:0", "http_addr": ""}, "models": [SCRIPTED_MODEL]}


async def serve() -> None:
    """Child process: server + gateway until stdin closes."""
    from gateway import start_gateway
    from server.app import AIBattleServer
    from server.config import Config

    server = AIBattleServer(Config.from_dict(CONFIG))
    await server.start()
    gateway = await start_gateway(grpc_target=server.grpc_target, host="127.0.0.1", port=0)
    print(f"READY {server.grpc_target} {gateway.port}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)  # parent closes stdin to stop us
    await gateway.close()
    await server.stop(grace=0.5)


async def bench(args: argparse.Namespace) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--serve",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode().split()
    if not line or line[0] != "READY":
        raise SystemExit("the benchmark server did not start")
    grpc_target, http_port = line[1], int(line[2])
    calls = CompletionCalls(
        grpc_target, f"http://127.0.0.1:{http_port}", connections=max(args.concurrency) * 2
    )

    print(f"gateway overhead over direct gRPC, {args.requests} calls per cell, 127.0.0.1, scripted model")
    heads = ("gRPC p50", "p99", "HTTP p50", "p99")
    print(f"{'call':<9}{'conc':>5} " + "".join(f"{h:>10}" for h in heads) + f" {'+p50':>10}{'+p99':>10}")
    try:
        shapes = (
            ("unary", calls.grpc_unary, calls.http_unary),
            ("stream32", calls.grpc_stream, calls.http_stream),
        )
        for name, direct, via in shapes:
            for concurrency in args.concurrency:
                a = await measure(direct, requests=args.requests, concurrency=concurrency)
                b = await measure(via, requests=args.requests, concurrency=concurrency)
                a50, a99, b50, b99 = (percentile(s, q) for s, q in ((a, 0.5), (a, 0.99), (b, 0.5), (b, 0.99)))
                cells = "".join(f"{v:>8.2f}ms" for v in (a50, a99, b50, b99))
                extra = "".join(f"{v:>+8.2f}ms" for v in (b50 - a50, b99 - a99))
                print(f"{name:<9}{concurrency:>5} {cells} {extra}")
        print("stream32 = the whole 32-chunk stream of one completion; client and server share this machine")
    finally:
        await calls.close()
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="calls per (shape, concurrency) cell")
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 32])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    asyncio.run(serve() if args.serve else bench(args))


if __name__ == "__main__":
    main()
