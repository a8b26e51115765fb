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
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPLY = " ".join(f"word{i}" for i in range(32))  # a 32-chunk stream
CONFIG = {
    "server": {"grpc_addr": "127.0.0.1:0", "http_addr": ""},
    "models": [{"id": "bench", "provider": "scripted", "capabilities": ["text"], "script": [REPLY]}],
}
BODY = {"model": "bench", "prompt": "benchmark"}


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


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def measure(call: Callable[[], Awaitable[None]], *, requests: int, concurrency: int) -> list[float]:
    """Latencies in ms of `requests` calls, `concurrency` at a time (after a short warm-up)."""
    for _ in range(min(20, requests)):
        await call()
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            latencies.append((time.perf_counter() - start) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


async def bench(args: argparse.Namespace) -> None:
    import aiohttp
    import grpc

    from aibattle.v1 import completions_pb2, completions_pb2_grpc

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
    base = f"http://127.0.0.1:{http_port}"

    channel = grpc.aio.insecure_channel(grpc_target)
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    connector = aiohttp.TCPConnector(limit=max(args.concurrency) * 2)
    session = aiohttp.ClientSession(connector=connector)

    async def grpc_unary() -> None:
        await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(**BODY))

    async def grpc_stream() -> None:
        async for _ in stub.StreamCompletion(completions_pb2.StreamCompletionRequest(**BODY)):
            pass

    async def http_unary() -> None:
        async with session.post(f"{base}/api/v1/completions", json=BODY) as resp:
            assert resp.status == 200
            await resp.read()

    async def http_stream() -> None:
        async with session.post(f"{base}/api/v1/completions:stream", json=BODY) as resp:
            assert resp.status == 200
            async for raw in resp.content:
                json.loads(raw)

    print(f"gateway overhead over direct gRPC, {args.requests} calls per cell, 127.0.0.1, scripted model")
    heads = ("gRPC p50", "p99", "HTTP p50", "p99")
    print(f"{'call':<9}{'conc':>5} " + "".join(f"{h:>10}" for h in heads) + f" {'+p50':>10}{'+p99':>10}")
    try:
        for name, direct, via in (("unary", grpc_unary, http_unary), ("stream32", grpc_stream, http_stream)):
            for concurrency in args.concurrency:
                a = await measure(direct, requests=args.requests, concurrency=concurrency)
                b = await measure(via, requests=args.requests, concurrency=concurrency)
                a50, a99, b50, b99 = (percentile(s, q) for s, q in ((a, 0.5), (a, 0.99), (b, 0.5), (b, 0.99)))
                cells = "".join(f"{v:>8.2f}ms" for v in (a50, a99, b50, b99))
                extra = "".join(f"{v:>+8.2f}ms" for v in (b50 - a50, b99 - a99))
                print(f"{name:<9}{concurrency:>5} {cells} {extra}")
        print("stream32 = the whole 32-chunk stream of one completion; client and server share this machine")
    finally:
        await session.close()
        await channel.close()
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
