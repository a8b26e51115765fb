"""Benchmark: the embedded local model through gRPC: time to first token, token rate, the
latency of unary calls made while a stream generates (the event loop must stay free), and how
long generation runs on after the client cancels (a cancelled request must stop paying).

Prints figures; asserts nothing. Loopback only, bounded counts.

    .venv/bin/python bench/local_model.py [--runs 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable

import grpc

from aibattle.v1 import completions_pb2, completions_pb2_grpc, models_pb2, models_pb2_grpc
from server.app import AIBattleServer
from server.config import Config
from server.providers.local import LocalProvider

MODEL = "smollm2-135m"
ENDLESS = "Write a very long essay."  # greedy decoding runs to max_tokens


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def list_models_while_generating(
    models: models_pb2_grpc.ModelServiceStub, local: LocalProvider, samples: list[float]
) -> None:
    """Call ListModels every 10 ms for as long as the worker thread generates (back to back
    calls would measure how fast we can starve the worker of the GIL instead)."""
    while local.generating:
        probe = time.perf_counter()
        await models.ListModels(models_pb2.ListModelsRequest())
        samples.append(time.perf_counter() - probe)
        await asyncio.sleep(0.01)


async def cancel_to_stop(
    completions: completions_pb2_grpc.CompletionServiceStub, local: LocalProvider, run: int
) -> float:
    """Seconds from cancelling a stream to the worker thread going idle."""
    stream = completions.StreamCompletion(
        completions_pb2.StreamCompletionRequest(
            model=MODEL, prompt=f"{ENDLESS} ({run})", max_tokens=1500, temperature=0.0
        )
    )
    for _ in range(3):
        await stream.read()
    stream.cancel()
    cancelled = time.perf_counter()
    while local.generating:  # noqa: ASYNC110 - the flag belongs to a worker thread
        await asyncio.sleep(0.001)
    return time.perf_counter() - cancelled


async def timed_stream(
    completions: completions_pb2_grpc.CompletionServiceStub,
    request: completions_pb2.StreamCompletionRequest,
    on_first: Callable[[], None] | None = None,
) -> tuple[float, float]:
    """(seconds to the first chunk, tokens per second after it) of one StreamCompletion, read to its end;
    `on_first` is called when the first chunk arrives."""
    started = time.perf_counter()
    first = None
    final = None
    async for chunk in completions.StreamCompletion(request):
        if first is None:
            first = time.perf_counter()
            if on_first is not None:
                on_first()
        if chunk.is_final:
            final = chunk
    end = time.perf_counter()
    assert first is not None and final is not None
    tokens = final.usage.completion_tokens
    return first - started, tokens / (end - first) if tokens > 1 else 0.0


async def main(runs: int, max_tokens: int) -> None:
    server = AIBattleServer(Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": ""}}))
    await server.start()
    local = server.registry.providers["local"]
    assert isinstance(local, LocalProvider)
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            completions = completions_pb2_grpc.CompletionServiceStub(channel)
            models = models_pb2_grpc.ModelServiceStub(channel)
            ttft, rates, side_latency, stops = [], [], [], []
            for run in range(runs):
                request = completions_pb2.StreamCompletionRequest(
                    model=MODEL, prompt=f"Tell story number {run} about a lighthouse.", max_tokens=max_tokens
                )
                probers: list[asyncio.Task[None]] = []

                def probe() -> None:
                    probing = list_models_while_generating(models, local, side_latency)
                    probers.append(asyncio.create_task(probing))  # noqa: B023

                first, rate = await timed_stream(completions, request, on_first=probe)
                for prober in probers:
                    await prober
                ttft.append(first)
                rates.append(rate)
            for run in range(runs):
                stops.append(await cancel_to_stop(completions, local, run))
    finally:
        await server.stop(grace=1)

    print(f"local model {MODEL}: {runs} streams of up to {max_tokens} tokens")
    p50_ttft, max_ttft = statistics.median(ttft) * 1000, max(ttft) * 1000
    print(f"  time to first token   p50 {p50_ttft:7.1f} ms   max {max_ttft:7.1f} ms")
    print(f"  generation rate       p50 {statistics.median(rates):7.1f} tok/s min {min(rates):7.1f} tok/s")
    if side_latency:
        print(
            f"  ListModels mid-stream p50 {statistics.median(side_latency) * 1000:7.2f} ms   "
            f"p99 {percentile(side_latency, 0.99) * 1000:7.2f} ms   ({len(side_latency)} calls)"
        )
    print(
        f"  cancel → worker idle  p50 {statistics.median(stops) * 1000:7.1f} ms   "
        f"max {max(stops) * 1000:7.1f} ms   ({len(stops)} cancels)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()
    asyncio.run(main(args.runs, args.max_tokens))
