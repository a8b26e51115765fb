"""Benchmark: the embedded local model through gRPC: time to first token, token rate, and the
latency of a unary call made while a stream generates (the event loop must stay free).

Prints figures; asserts nothing. Loopback only, bounded counts.

    .venv/bin/python bench/local_model.py [--runs 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import grpc

from aibattle.v1 import completions_pb2, completions_pb2_grpc, models_pb2, models_pb2_grpc
from server.app import AIBattleServer
from server.config import Config

MODEL = "smollm2-135m"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(runs: int, max_tokens: int) -> None:
    server = AIBattleServer(Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": ""}}))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            completions = completions_pb2_grpc.CompletionServiceStub(channel)
            models = models_pb2_grpc.ModelServiceStub(channel)
            ttft, rates, side_latency = [], [], []
            for run in range(runs):
                request = completions_pb2.StreamCompletionRequest(
                    model=MODEL, prompt=f"Tell story number {run} about a lighthouse.", max_tokens=max_tokens
                )
                started = time.perf_counter()
                first = None
                final = None
                async for chunk in completions.StreamCompletion(request):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        probe = time.perf_counter()
                        await models.ListModels(models_pb2.ListModelsRequest())
                        side_latency.append(time.perf_counter() - probe)
                    if chunk.is_final:
                        final = chunk
                assert first is not None and final is not None
                ttft.append(first - started)
                tokens = final.usage.completion_tokens
                rates.append(tokens / (time.perf_counter() - first) if tokens > 1 else 0.0)
    finally:
        await server.stop(grace=1)

    print(f"local model {MODEL}: {runs} streams of up to {max_tokens} tokens")
    p50_ttft, max_ttft = statistics.median(ttft) * 1000, max(ttft) * 1000
    print(f"  time to first token   p50 {p50_ttft:7.1f} ms   max {max_ttft:7.1f} ms")
    print(f"  generation rate       p50 {statistics.median(rates):7.1f} tok/s min {min(rates):7.1f} tok/s")
    print(
        f"  ListModels mid-stream p50 {statistics.median(side_latency) * 1000:7.2f} ms   "
        f"p99 {percentile(side_latency, 0.99) * 1000:7.2f} ms"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.max_tokens))
