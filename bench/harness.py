"""What the transport benchmarks share: a scripted completion, the four ways to call it, and latencies.

`gateway_overhead.py` and `observability_overhead.py` import it (they run as scripts, so this folder is
on their path). Everything here stays on 127.0.0.1 and makes a bounded number of calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

MODEL = "bench"
REPLY = " ".join(f"word{i}" for i in range(32))  # a 32-chunk stream
SCRIPTED_MODEL: dict[str, Any] = {
    "id": MODEL,
    "provider": "scripted",
    "capabilities": ["text"],
    "script": [REPLY],
}
"""A model with no model time: what is measured is our own."""
BODY = {"model": MODEL, "prompt": "benchmark"}


def machine(*, load: bool = False) -> str:
    """The machine a figure comes from: CPUs and their model, Python, and (`load`) the load average."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    described = f"{os.cpu_count()} CPUs ({cpu}), Python {sys.version.split()[0]}"
    return described + (f", load {os.getloadavg()[0]:.2f}" if load else "")


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


async def measure(
    call: Callable[[], Awaitable[None]], *, requests: int, concurrency: int, warmup: int = 20
) -> list[float]:
    """Latencies in ms of `requests` calls, `concurrency` at a time (after a short warm-up)."""
    for _ in range(min(warmup, requests)):
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


class CompletionCalls:
    """The same scripted completion four ways: unary and streamed, directly over gRPC and through the
    HTTP gateway (JSON for unary, NDJSON for the stream). Each call reads the whole answer."""

    def __init__(self, grpc_target: str, http_base: str, *, connections: int = 64) -> None:
        import aiohttp
        import grpc

        from aibattle.v1 import completions_pb2, completions_pb2_grpc

        self._pb = completions_pb2
        self._channel = grpc.aio.insecure_channel(grpc_target)
        self._stub = completions_pb2_grpc.CompletionServiceStub(self._channel)
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections))
        self._base = http_base

    async def grpc_unary(self) -> None:
        await self._stub.CreateCompletion(self._pb.CreateCompletionRequest(**BODY))

    async def grpc_stream(self) -> None:
        async for _ in self._stub.StreamCompletion(self._pb.StreamCompletionRequest(**BODY)):
            pass

    async def http_unary(self) -> None:
        async with self._session.post(f"{self._base}/api/v1/completions", json=BODY) as resp:
            assert resp.status == 200, resp.status
            await resp.read()

    async def http_stream(self) -> None:
        async with self._session.post(f"{self._base}/api/v1/completions:stream", json=BODY) as resp:
            assert resp.status == 200, resp.status
            async for raw in resp.content:
                json.loads(raw)

    async def close(self) -> None:
        await self._session.close()
        await self._channel.close()

    async def __aenter__(self) -> CompletionCalls:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


@dataclass
class Child:
    """A process a benchmark started: its name, its log file, and how to stop it."""

    name: str
    proc: subprocess.Popen[Any]
    log: Path

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def failed(self) -> RuntimeError:
        """Why it did not start: its last line, then the end of its log."""
        tail = self.tail()
        last = tail.splitlines()[-1] if tail else "(no output)"
        return RuntimeError(
            f"{self.name} did not start (exit code {self.proc.poll()}): {last}\n{self.log}:\n{tail}"
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
