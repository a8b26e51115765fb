"""The hot path in under 90 seconds: ours against the Python floor, as ratios (`make bench-quick`).

    .venv/bin/python bench/quick.py [--seconds 5] [--concurrency 32]

Four targets on 127.0.0.1, each a process of its own:
  - upstream: the fake OpenAI upstream of bench/vs_litellm.py (aiohttp; a fixed `chat.completion`);
  - floor: a bare aiohttp relay in front of it (read the body, POST it upstream with one shared client
    session, answer its bytes): what any Python proxy on aiohttp pays at least;
  - ours chat: `python -m server` with one model of provider "openai" on the fake, through the
    gateway's OpenAI-compatible POST /v1/chat/completions (gateway → loopback gRPC → server →
    the provider's HTTP call → back);
  - ours native: the same server's POST /api/v1/completions on a scripted model (no upstream call: the
    gateway and gRPC alone);
  - ours Connect: the same call as Connect unary JSON, POST /aibattle.v1.CompletionService/CreateCompletion.
Each is measured at concurrency 1 (p50) and at --concurrency (requests per second, and the target
process's CPU time per request over that cell, from /proc: the figure other load on the machine
disturbs least), non-stream, with wrk when it is installed (`make install` puts it there) and with an
aiohttp client otherwise. Every row shows its ratio to the floor: p50 and CPU per request / the
floor's (lower is better), req/s / the floor's (higher is better). Run it before and after any change to
the hot path; it prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import Child, machine, percentile

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "bench-quick"
MODEL = "bench"
SCRIPTED = "scripted"
STREAM = "stream"  # bench/table.py's model on a fake upstream that streams many chunks
CHAT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "benchmark"}], "max_tokens": 64})
NATIVE = json.dumps({"model": SCRIPTED, "prompt": "benchmark"})
#: The same call as NATIVE over Connect (JSON unary, the Content-Type wrk sends): REST's cost vs Connect's.
CONNECT_CREATE = "/aibattle.v1.CompletionService/CreateCompletion"
BANNER = re.compile(r"gRPC on (\S+?), HTTP on (http://\S+?);")
READY = re.compile(r"READY (\d+)")


# --- the floor (child process) ---------------------------------------------------------------------


async def relay(upstream: str) -> None:
    """A bare aiohttp relay of POST /v1/chat/completions to `upstream` (a `"stream": true` body's answer
    relayed as its bytes arrive); `READY <port>`; until stdin closes."""
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256))
    target = f"{upstream}/v1/chat/completions"

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(target, data=body, headers={"Content-Type": "application/json"}) as resp:
            if b'"stream": true' not in body and b'"stream":true' not in body:
                return web.Response(
                    body=await resp.read(), status=resp.status, content_type="application/json"
                )
            out = web.StreamResponse(status=resp.status, headers={"Content-Type": resp.content_type})
            await out.prepare(request)
            async for data in resp.content.iter_any():  # a stream: its bytes as they come
                await out.write(data)
            await out.write_eof()
            return out

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # the parent closes stdin
    await session.close()
    await runner.cleanup()


# --- children --------------------------------------------------------------------------------------


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
    log = WORK / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env or dict(os.environ),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Child(name, proc, log)


def wait_for(child: Child, pattern: re.Pattern[str], within: float) -> re.Match[str]:
    until = time.monotonic() + within
    while time.monotonic() < until and child.proc.poll() is None:
        if match := pattern.search(child.log.read_text(errors="replace")):
            return match
        time.sleep(0.05)
    raise child.failed()


def start_ours(upstream: str, stream_upstream: str = "") -> Child:
    """`python -m server` with the models above; with `stream_upstream`, also STREAM: an openai model on
    that upstream."""
    config = WORK / "aibattle.toml"
    for stale in WORK.glob("aibattle.db*"):
        stale.unlink()
    config.write_text(
        f"""[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
database = "{WORK / "aibattle.db"}"
log_level = "warning"

[[models]]
id = "{MODEL}"
provider = "openai"
base_url = "{upstream}/v1"
upstream_model = "fake-model"

[[models]]
id = "{SCRIPTED}"
provider = "scripted"
script = ["{" ".join(f"word{i}" for i in range(16))}"]
"""
    )
    if stream_upstream:
        with config.open("a") as out:
            out.write(
                f'\n[[models]]\nid = "{STREAM}"\nprovider = "openai"\nbase_url = "{stream_upstream}/v1"\n'
                'upstream_model = "fake-model"\n'
            )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIBATTLE_")}
    env["PYTHONPATH"] = str(ROOT)
    return spawn("ours", [sys.executable, "-m", "server", "--config", str(config)], env)


# --- measuring -------------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    url: str
    body: str
    pid: int  # the process serving it
    p50: float = float("nan")  # ms at concurrency 1
    rate: float = float("nan")  # requests per second at --concurrency
    cpu: float = float("nan")  # ms of the serving process's CPU per request at --concurrency
    errors: int = 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its threads (Linux; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, body: str, connections: int, seconds: float) -> tuple[float, float, int, int]:
    """(p50 ms, req/s, errors, requests) from one wrk run; one thread per connection up to the CPUs."""
    script = WORK / "post.lua"
    script.write_text(
        f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
    )
    threads = max(1, min(connections, os.cpu_count() or 1))
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    rate = re.search(r"^Requests/sec:\s+([\d.]+)", out, re.M)
    count = re.search(r"^\s*(\d+) requests in ", out, re.M)
    if p50 is None or rate is None or count is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    if socket := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(n) for n in socket.groups())
    return float(p50.group(1)) * _UNITS[p50.group(2)], float(rate.group(1)), errors, int(count.group(1))


async def aiohttp_load(
    url: str, body: str, connections: int, seconds: float
) -> tuple[float, float, int, int]:
    """The same with an aiohttp client in this process (when wrk is missing): slower, so lower ceilings."""
    import aiohttp

    data = body.encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        until = time.perf_counter() + seconds

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < until:
                start = time.perf_counter()
                async with session.post(url, data=data, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
                        continue
                latencies.append((time.perf_counter() - start) * 1000)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    return percentile(latencies, 0.5), len(latencies) / elapsed, errors, len(latencies) + errors


async def load(url: str, body: str, connections: int, seconds: float) -> tuple[float, float, int, int]:
    if shutil.which("wrk"):
        return await asyncio.to_thread(wrk, url, body, connections, seconds)
    return await aiohttp_load(url, body, connections, seconds)


async def check(url: str, body: str) -> None:
    """One call that must answer 200 (so a broken target is a message, not a row of fast 4xx)."""
    import aiohttp

    headers = {"Content-Type": "application/json"}  # as wrk sends it (Connect reads it)
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=body.encode(), headers=headers) as resp,
    ):
        if resp.status != 200:
            raise SystemExit(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")


@dataclass
class Targets:
    """What `start` started: the fake upstream, the floor and ours (HTTP base and gRPC target), and the
    rows of the table; with `stream_chunks`, a second fake streaming that many chunks and a
    second floor in front of it (ours serves it as the model STREAM)."""

    upstream: str
    floor: str
    ours: str
    ours_grpc: str
    rows: list[Row]
    stream_upstream: str = ""
    stream_floor: str = ""


def start(children: list[Child], *, stream_chunks: int = 0) -> Targets:
    """The processes of the table (appended to `children`, which the caller stops)."""
    WORK.mkdir(parents=True, exist_ok=True)
    fake_argv = [sys.executable, str(ROOT / "bench" / "vs_litellm.py"), "--fake-upstream"]
    fake = spawn("upstream", fake_argv)
    children.append(fake)
    upstream = f"http://127.0.0.1:{wait_for(fake, READY, 30).group(1)}"
    stream_upstream = stream_floor = ""
    if stream_chunks:
        streamer = spawn("stream-upstream", [*fake_argv, "--chunks", str(stream_chunks)])
        children.append(streamer)
        stream_upstream = f"http://127.0.0.1:{wait_for(streamer, READY, 30).group(1)}"
        stream_relay = spawn("stream-floor", [sys.executable, __file__, "--relay", stream_upstream])
        children.append(stream_relay)
        stream_floor = f"http://127.0.0.1:{wait_for(stream_relay, READY, 30).group(1)}"
    floor = spawn("floor", [sys.executable, __file__, "--relay", upstream])
    children.append(floor)
    ours = start_ours(upstream, stream_upstream)
    children.append(ours)
    floor_base = f"http://127.0.0.1:{wait_for(floor, READY, 30).group(1)}"
    ours_grpc, ours_base = wait_for(ours, BANNER, 60).groups()
    upstream_chat = CHAT.replace(f'"{MODEL}"', '"fake-model"')
    rows = [
        Row("upstream (fake OpenAI)", f"{upstream}/v1/chat/completions", upstream_chat, fake.proc.pid),
        Row("floor (bare aiohttp relay)", f"{floor_base}/v1/chat/completions", CHAT, floor.proc.pid),
        Row("ours /v1/chat/completions", f"{ours_base}/v1/chat/completions", CHAT, ours.proc.pid),
        Row("ours /api/v1/completions", f"{ours_base}/api/v1/completions", NATIVE, ours.proc.pid),
        Row("ours Connect unary", f"{ours_base}{CONNECT_CREATE}", NATIVE, ours.proc.pid),
    ]
    return Targets(upstream, floor_base, ours_base, ours_grpc, rows, stream_upstream, stream_floor)


async def measure_row(row: Row, concurrency: int, seconds: float) -> None:
    """Fill in `row`: p50 at concurrency 1, then req/s and CPU per request at `concurrency`."""
    await check(row.url, row.body)
    await load(row.url, row.body, concurrency, 1.0)  # warm-up: connections, lazy imports
    row.p50, _, e1, _ = await load(row.url, row.body, 1, seconds)
    cpu = cpu_seconds(row.pid)
    _, row.rate, e2, count = await load(row.url, row.body, concurrency, seconds)
    row.cpu = (cpu_seconds(row.pid) - cpu) * 1000 / max(1, count)
    row.errors = e1 + e2


def load_tool() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp client (no wrk)"


async def bench(args: argparse.Namespace) -> None:
    children: list[Child] = []
    began = time.monotonic()
    try:
        rows = start(children).rows
        print(f"bench-quick: {machine()}; load: {load_tool()}, {args.seconds:g} s per cell; non-stream")
        for row in rows:
            await measure_row(row, args.concurrency, args.seconds)
        base = rows[1]
        c = args.concurrency
        heads = f"{'target':<28}{'p50 c=1':>10}{'x floor':>9}{f'req/s c={c}':>13}{'x floor':>9}"
        print(heads + f"{'CPU/req':>10}{'x floor':>9}{'errors':>8}")
        for row in rows:
            print(
                f"{row.name:<28}{row.p50:>8.2f}ms{row.p50 / base.p50:>9.2f}{row.rate:>13.0f}"
                f"{row.rate / base.rate:>9.2f}{row.cpu:>8.3f}ms{row.cpu / base.cpu:>9.2f}{row.errors:>8}"
            )
        print(
            "x floor: p50 and CPU/req (the serving process's CPU time per request at c="
            f"{c}) / the floor's (lower is better), req/s / the floor's (higher is better); the load "
            f"generator and every target share this machine; {time.monotonic() - began:.0f} s in all"
        )
    finally:
        for child in reversed(children):
            child.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per cell (each target: c=1, then c=N)")
    parser.add_argument("--concurrency", type=int, default=32, help="connections for the req/s cell")
    parser.add_argument("--relay", metavar="UPSTREAM", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.relay:
        asyncio.run(relay(args.relay))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
