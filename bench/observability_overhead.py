"""What observability costs: p50/p99 of the same calls with metrics off, metrics on, and metrics + tracing.

    .venv/bin/python bench/observability_overhead.py [--requests 600] [--concurrency 1,8] [--rounds 6]

Three `python -m server` processes, each with the in-process gateway and one scripted model (no model
time, so what is measured is our own), all on 127.0.0.1, started as `make run` starts one:
  - off:     [server].metrics = false and no OTEL_* variable: nothing recorded, nothing traced;
  - metrics: [server].metrics = true (recorded; nothing scrapes them during the run);
  - +traces: metrics on, and OpenTelemetry exporting over OTLP/HTTP to a sink this script runs in a
             child process of its own (aiohttp, this file with --sink: it accepts and discards POSTs
             to /v1/traces and /v1/metrics), every request sampled (OTEL_TRACES_SAMPLER=always_on).
This process sends the same completion (unary and a 32-chunk stream, over gRPC and through the REST
gateway, bench/harness.py) to the three, cell by cell: each cell's calls are split into --rounds turns
in which the servers take turns (each turn warms up first), so drift on a shared machine hits all three
alike. It prints p50/p99 and what metrics, and metrics + tracing, add to "off"; then what each server
recorded and what the sink received, to show each mode did what it says. Bounded counts, loopback
only; it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from harness import SCRIPTED_MODEL, Child, CompletionCalls, measure, percentile

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "observability-bench"
BANNER = re.compile(r"serving gRPC on ([^\s,;]+), HTTP on (http://[^\s,;]+)")
MODES = ("off", "metrics", "+traces")


# --- the OTLP/HTTP sink (child process) ------------------------------------------------------------


async def sink() -> None:
    """Accept and discard OTLP/HTTP exports on a free loopback port; print `READY <port>`; when stdin
    closes, print what was received as one JSON line and exit."""
    from aiohttp import web

    received: dict[str, dict[str, int]] = {}

    async def export(request: web.Request) -> web.Response:
        body = await request.read()
        counts = received.setdefault(request.path, {"posts": 0, "bytes": 0})
        counts["posts"] += 1
        counts["bytes"] += len(body)
        # An empty Export*ServiceResponse: a full success.
        return web.Response(body=b"", content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", export)
    app.router.add_post("/v1/metrics", export)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # the parent closes stdin
    print(json.dumps(received), flush=True)
    await runner.cleanup()


# --- children --------------------------------------------------------------------------------------


def clean_env() -> dict[str, str]:
    """This environment without our settings or OpenTelemetry's: each mode sets exactly its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIBATTLE_", "OTEL_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def spawn(name: str, argv: list[str], env: dict[str, str]) -> Child:
    """A child whose stdout is read here (its banner) and whose stderr (its log) goes to a file."""
    log = WORK / f"{name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
        )
    return Child(name, proc, log)


def first_line(child: Child, pattern: re.Pattern[str], within: float) -> re.Match[str]:
    """The child's first stdout line matching `pattern` (read in a thread: a silent child cannot hang)."""
    assert child.proc.stdout is not None
    stdout = child.proc.stdout
    found: list[re.Match[str]] = []

    def read() -> None:
        for line in stdout:
            if match := pattern.search(line):
                found.append(match)
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(within)
    if not found:
        child.stop()
        raise SystemExit(f"{child.name} did not start (exit code {child.proc.poll()}):\n{child.tail()}")
    return found[0]


def start_sink() -> tuple[Child, str]:
    child = spawn("otlp-sink", [sys.executable, __file__, "--sink"], clean_env())
    port = first_line(child, re.compile(r"READY (\d+)"), 30).group(1)
    return child, f"http://127.0.0.1:{port}"


def sink_received(child: Child) -> dict[str, dict[str, int]]:
    """Close the sink's stdin (communicate does); what it received (its last stdout line)."""
    try:
        out, _ = child.proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        child.stop()
        return {}
    lines = out.strip().splitlines()
    received: dict[str, dict[str, int]] = json.loads(lines[-1]) if lines else {}
    return received


def start_server(mode: str, otlp: str) -> tuple[Child, str, str]:
    """`python -m server` for one mode; its gRPC target and HTTP base."""
    name = {"off": "off", "metrics": "metrics", "+traces": "traces"}[mode]
    db = WORK / f"{name}.db"
    for stale in WORK.glob(f"{name}.db*"):
        stale.unlink()
    config = WORK / f"{name}.toml"
    model = SCRIPTED_MODEL
    config.write_text(
        f"""[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
database = "{db}"
metrics = {"false" if mode == "off" else "true"}

[[models]]
id = "{model["id"]}"
provider = "{model["provider"]}"
capabilities = {json.dumps(model["capabilities"])}
script = {json.dumps(model["script"])}
"""
    )
    env = clean_env()
    if mode == "+traces":
        env.update(
            OTEL_EXPORTER_OTLP_ENDPOINT=otlp,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_SERVICE_NAME=f"aibattle-bench-{name}",
            OTEL_TRACES_SAMPLER="always_on",
            OTEL_METRIC_EXPORT_INTERVAL="5000",  # the GenAI metrics go out during the run, not only at exit
        )
    child = spawn(name, [sys.executable, "-m", "server", "--config", str(config)], env)
    banner = first_line(child, BANNER, 60)
    return child, banner.group(1), banner.group(2)


# --- measuring -------------------------------------------------------------------------------------


async def cell(
    calls: dict[str, Callable[[], Awaitable[None]]], *, requests: int, concurrency: int, rounds: int
) -> dict[str, list[float]]:
    """Latencies (ms) of `requests` calls to each mode, in `rounds` turns where the modes take turns."""
    latencies: dict[str, list[float]] = {mode: [] for mode in MODES}
    per_turn = max(1, requests // rounds)
    for turn in range(rounds):
        order = MODES if turn % 2 == 0 else tuple(reversed(MODES))  # no mode always goes first
        for mode in order:
            latencies[mode] += await measure(calls[mode], requests=per_turn, concurrency=concurrency)
    return latencies


async def recorded(http_base: str) -> str:
    """What a server's /metrics says about the bench's requests: a status, or the count recorded."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{http_base}/metrics") as resp:
        if resp.status != 200:
            return f"/metrics answers {resp.status}"
        text = await resp.text()
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("aibattle_requests_total{")
    )
    return f"/metrics counts {total:.0f} requests (aibattle_requests_total, every surface)"


async def bench(args: argparse.Namespace) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    children: list[Child] = []
    sink_child, otlp = start_sink()
    children.append(sink_child)
    clients: dict[str, CompletionCalls] = {}
    bases: dict[str, str] = {}
    try:
        for mode in MODES:
            child, grpc_target, http_base = start_server(mode, otlp)
            children.append(child)
            bases[mode] = http_base
            clients[mode] = CompletionCalls(grpc_target, http_base, connections=max(args.concurrency) * 2)

        today = datetime.date.today().isoformat()
        print(
            f"observability overhead ({today}): {args.requests} calls per cell and mode in {args.rounds}"
            " rounds, 127.0.0.1, scripted model, in-process gateway"
        )
        heads = ("off p50", "p99", "metrics p50", "+p50", "p99", "+p99", "+traces p50", "+p50", "p99", "+p99")
        widths = (9, 9, 12, 9, 9, 9, 12, 9, 9, 9)
        print(f"{'call':<14}{'conc':>5}" + "".join(f"{h:>{w}}" for h, w in zip(heads, widths, strict=True)))
        shapes = (
            ("gRPC unary", "grpc_unary"),
            ("gRPC stream32", "grpc_stream"),
            ("REST unary", "http_unary"),
            ("REST stream32", "http_stream"),
        )
        for label, method in shapes:
            for concurrency in args.concurrency:
                calls = {mode: getattr(clients[mode], method) for mode in MODES}
                result = await cell(
                    calls, requests=args.requests, concurrency=concurrency, rounds=args.rounds
                )
                off50, off99 = (percentile(result["off"], q) for q in (0.5, 0.99))
                row = [f"{off50:.2f}", f"{off99:.2f}"]
                for mode in MODES[1:]:
                    p50, p99 = (percentile(result[mode], q) for q in (0.5, 0.99))
                    row += [f"{p50:.2f}", f"{p50 - off50:+.2f}", f"{p99:.2f}", f"{p99 - off99:+.2f}"]
                print(
                    f"{label:<14}{concurrency:>5}"
                    + "".join(f"{v:>{w}}" for v, w in zip(row, widths, strict=True))
                )
        print(
            "ms; stream32 = the whole 32-chunk stream of one completion; +p50/+p99 = that mode's minus off's;"
            " client, servers and sink share this machine"
        )
        for mode in MODES:
            print(f"  {mode:<8} {await recorded(bases[mode])}")
    finally:
        for client in clients.values():
            await client.close()
        for child in children[1:]:
            child.stop()
        received = sink_received(sink_child)
    exports = ", ".join(
        f"{path}: {c['posts']} POSTs, {c['bytes'] / 1024:.0f} KiB" for path, c in received.items()
    )
    print(f"  the OTLP sink received {exports or 'nothing'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--requests", type=int, default=600, help="calls per (shape, concurrency) cell and mode"
    )
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--rounds", type=int, default=6, help="turns the modes take in each cell")
    parser.add_argument("--sink", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    started = time.monotonic()
    asyncio.run(sink() if args.sink else bench(args))
    if not args.sink:
        print(f"  ({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
