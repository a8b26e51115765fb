"""Scale-out on one machine: one server process against `--workers 2`, and what a limited key's Redis costs.

    python bench/scale_out.py [--requests 2000] [--concurrency 32] [--rounds 3] [--latency-requests 600]

Starts a throwaway PostgreSQL and Redis on 127.0.0.1 (tools/local_services.py, as `make run-cluster`
does), then `python -m server` processes on them with a scripted model (no model time, so what is
measured is ours) and an admin key. Two figures, in one run:

(a) Requests per second of `POST /api/v1/completions` at a fixed concurrency, one process against
    `--workers 2` (each takes the same calls in turn, `--rounds` times): the same PostgreSQL, the same
    Redis, the same request, by a key with an rpm and a tpm limit (high enough never to refuse), so each
    call reads its key from PostgreSQL and takes from its two buckets in Redis, as behind a load
    balancer. The load generator (aiohttp, one process) shares the machine's cores with the servers.

(b) The cross-replica cost of a limited key's request: unary gRPC `CreateCompletion`, one call at a
    time, p50 and p99, on one process: a key without limits, a limited key counted in memory (no
    redis_url: exact only for one replica), and the same limited key counted in Redis (redis_url set:
    shared by every replica). The difference between the last two is the Redis round-trips.

It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import sys
import time
from pathlib import Path

import aiohttp
import asyncpg  # type: ignore[import-untyped]
import grpc
import redis
from harness import MODEL, SCRIPTED_MODEL, measure, percentile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tools.local_services import start_postgres, start_redis  # noqa: E402

ADMIN_KEY = "bench-admin-key-0123456789"
BANNER = re.compile(r"AI Battle serving gRPC on (\S+), HTTP on (\S+?)[,;]")
CONFIG = f"""
[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
shutdown_grace_seconds = 2

[[models]]
id = "{MODEL}"
provider = "scripted"
script = [{SCRIPTED_MODEL["script"][0]!r}]
"""
BODY = {"model": MODEL, "prompt": "benchmark", "max_tokens": 64}
HIGH = 1_000_000_000  # an rpm and a tpm that are limits, but never refuse


class Server:
    """One `python -m server` (with `--workers N` when N > 1) on the bench's database, logs to a file."""

    def __init__(self, name: str, env: dict[str, str], workers: int, log: Path) -> None:
        self.name, self.env, self.workers, self.log = name, env, workers, log
        self.proc: asyncio.subprocess.Process | None = None
        self.grpc_target = self.http_url = ""

    async def __aenter__(self) -> Server:
        argv = [
            sys.executable,
            "-m",
            "server",
            *(["--workers", str(self.workers)] if self.workers > 1 else []),
        ]
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=ROOT, env=self.env, stdout=asyncio.subprocess.PIPE, stderr=log
            )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), deadline - time.monotonic())
            if not raw:
                break
            if match := BANNER.search(raw.decode()):
                self.grpc_target, self.http_url = match[1], match[2]
                return self
        tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"{self.name} did not start; {self.log}:\n{tail}")

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def create_keys(grpc_target: str) -> dict[str, str]:
    """An unlimited key and a limited one (rpm and tpm), made with the admin key; their secrets."""
    from aibattle.v1 import keys_pb2, keys_pb2_grpc

    admin = (("authorization", f"Bearer {ADMIN_KEY}"),)
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        stub = keys_pb2_grpc.KeyServiceStub(channel)
        plain = await stub.CreateKey(keys_pb2.CreateKeyRequest(name="unlimited"), metadata=admin)
        limited = await stub.CreateKey(
            keys_pb2.CreateKeyRequest(name="limited", rpm=HIGH, tpm=HIGH), metadata=admin
        )
    return {"unlimited": plain.secret, "limited": limited.secret}


async def throughput(
    base: str, secret: str, *, requests: int, concurrency: int
) -> tuple[float, float, float]:
    """Requests per second, p50 and p99 (ms) of `requests` completions over HTTP, `concurrency` at a time
    on as many connections (each worker gets its share: the kernel spreads connections, not calls)."""
    headers = {"Authorization": f"Bearer {secret}"}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:

        async def call() -> None:
            async with session.post(f"{base}/api/v1/completions", json=BODY) as resp:
                if resp.status != 200:
                    raise SystemExit(f"HTTP {resp.status}: {await resp.text()}")
                await resp.read()

        await asyncio.gather(*(call() for _ in range(concurrency * 4)))  # warm every connection
        start = time.perf_counter()
        latencies = await measure(call, requests=requests, concurrency=concurrency, warmup=0)
        elapsed = time.perf_counter() - start
    return requests / elapsed, percentile(latencies, 0.5), percentile(latencies, 0.99)


class Caller:
    """Unary gRPC completions by one key on one channel, one at a time; `samples` in ms."""

    def __init__(self, grpc_target: str, secret: str) -> None:
        from aibattle.v1 import completions_pb2, completions_pb2_grpc

        self._channel = grpc.aio.insecure_channel(grpc_target)
        self._stub = completions_pb2_grpc.CompletionServiceStub(self._channel)
        self._request = completions_pb2.CreateCompletionRequest(
            model=MODEL, prompt="benchmark", max_tokens=64
        )
        self._metadata = (("authorization", f"Bearer {secret}"),)
        self.samples: list[float] = []

    async def run(self, requests: int) -> None:
        for _ in range(requests):
            start = time.perf_counter()
            await self._stub.CreateCompletion(self._request, metadata=self._metadata)
            self.samples.append((time.perf_counter() - start) * 1000)

    async def __aenter__(self) -> Caller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._channel.close()


def cpu_seconds(server: Server) -> float:
    """CPU time (user + system) used so far by a server's processes: it, and its workers if any."""
    assert server.proc is not None
    stats: dict[int, list[str]] = {}
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            stats[int(path.parent.name)] = path.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
    tree = {server.proc.pid} | {pid for pid, fields in stats.items() if int(fields[1]) == server.proc.pid}
    ticks = sum(int(stats[pid][11]) + int(stats[pid][12]) for pid in tree if pid in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def redis_scripts(url: str) -> int:
    """Lua scripts Redis has run so far (EVAL, EVALSHA): one round-trip each. The commands a script
    runs inside are counted by Redis too, so the total of commands would overstate the round-trips."""
    with redis.Redis.from_url(url) as client:
        stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("eval", "evalsha"))


async def bench(args: argparse.Namespace) -> None:
    started = time.monotonic()
    work = ROOT / "build" / "scale-out-bench"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    config = work / "aibattle.toml"
    config.write_text(CONFIG)
    postgres = start_postgres()
    cache = start_redis()
    try:
        admin = await asyncpg.connect(postgres.url())
        await admin.execute('CREATE DATABASE "bench"')
        await admin.close()
        base: dict[str, str] = {
            **{k: v for k, v in os.environ.items() if not k.startswith("AIBATTLE_")},
            "PYTHONPATH": str(ROOT),
            "AIBATTLE_CONFIG": str(config),
            "AIBATTLE_DB": postgres.url("bench"),
            "AIBATTLE_ADMIN_KEY": ADMIN_KEY,
        }
        shared = {**base, "AIBATTLE_REDIS_URL": cache.url}
        log = work / "servers.log"

        def say(text: str) -> None:
            print(text, flush=True)

        loadavg = " ".join(f"{x:.2f}" for x in os.getloadavg())
        say(
            f"scale-out ({time.strftime('%Y-%m-%d')}): {os.cpu_count()} CPUs, load average {loadavg}; "
            "127.0.0.1, scripted model, PostgreSQL and Redis local"
        )
        say(
            f"(a) POST /api/v1/completions, {args.requests} calls at concurrency {args.concurrency}, "
            f"a limited key (rpm+tpm in Redis), {args.rounds} rounds taking turns"
        )
        results: dict[str, list[tuple[float, float, float, float, float]]] = {
            "1 process": [],
            "--workers 2": [],
        }
        secrets: dict[str, str] = {}
        for _ in range(args.rounds):
            for name, workers in (("1 process", 1), ("--workers 2", 2)):
                async with Server(name, shared, workers, log) as server:
                    if not secrets:
                        secrets = await create_keys(server.grpc_target)
                    cpu_before = cpu_seconds(server), os.times()
                    rps, p50, p99 = await throughput(
                        server.http_url,
                        secrets["limited"],
                        requests=args.requests,
                        concurrency=args.concurrency,
                    )
                    cpu_after = cpu_seconds(server), os.times()
                    calls = args.requests + args.concurrency * 4
                    server_ms = (cpu_after[0] - cpu_before[0]) / calls * 1000
                    client_ms = (
                        (cpu_after[1].user + cpu_after[1].system - cpu_before[1].user - cpu_before[1].system)
                        / calls
                        * 1000
                    )
                    results[name].append((rps, p50, p99, server_ms, client_ms))
        say(
            f"{'':<14}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'server CPU':>12}{'client CPU':>12}"
            "   (best round; every round's req/s)"
        )
        best: dict[str, float] = {}
        for name, rounds in results.items():
            rps, p50, p99, server_ms, client_ms = max(rounds)
            best[name] = rps
            each = ", ".join(f"{r[0]:.0f}" for r in rounds)
            cpu = f"{server_ms:>7.2f} ms{client_ms:>9.2f} ms"
            say(f"{name:<14}{rps:>9.0f}{p50:>9.2f}{p99:>9.2f}{cpu:>24}   ({each})")
        say(f"--workers 2 / 1 process: x{best['--workers 2'] / best['1 process']:.2f}")

        say(
            f"(b) unary gRPC CreateCompletion, one call at a time, {args.latency_requests} calls per cell "
            f"in {args.rounds * 2} blocks taking turns; one process without redis_url, one with it"
        )
        async with (
            Server("in-memory limits", base, 1, log) as memory_server,
            Server("redis limits", shared, 1, log) as redis_server,
        ):
            async with (
                Caller(memory_server.grpc_target, secrets["unlimited"]) as unlimited,
                Caller(memory_server.grpc_target, secrets["limited"]) as in_memory,
                Caller(redis_server.grpc_target, secrets["limited"]) as in_redis,
            ):
                cells = {
                    "key without limits": unlimited,
                    "limited, in memory": in_memory,
                    "limited, Redis": in_redis,
                }
                for caller in cells.values():
                    await caller.run(50)  # warm-up, not kept
                    caller.samples.clear()
                blocks = args.rounds * 2
                before = redis_scripts(cache.url)
                for _ in range(blocks):
                    for caller in cells.values():
                        await caller.run(args.latency_requests // blocks)
                per_call = (redis_scripts(cache.url) - before) / len(in_redis.samples)
        say(f"{'':<20}{'p50 ms':>9}{'p99 ms':>9}")
        for name, caller in cells.items():
            samples = caller.samples
            say(f"{name:<20}{percentile(samples, 0.5):>9.3f}{percentile(samples, 0.99):>9.3f}")
        memory, shared_ = in_memory.samples, in_redis.samples
        say(
            f"Redis - in memory: {percentile(shared_, 0.5) - percentile(memory, 0.5):+.3f} ms p50, "
            f"{percentile(shared_, 0.99) - percentile(memory, 0.99):+.3f} ms p99; "
            f"{per_call:.1f} Redis round-trips (Lua scripts) per call"
        )
        say(f"({time.monotonic() - started:.0f} s; servers' logs in {log})")
    finally:
        cache.stop()
        postgres.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-requests", type=int, default=600)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
