"""Side by side with LiteLLM's proxy: added latency (p50/p99) and throughput of an OpenAI chat completion.

    .venv/bin/python bench/vs_litellm.py [--requests 200] [--requests-concurrent 2000] [--concurrency 1,32]

Three child processes on 127.0.0.1, each with its own event loop:
  - a fake OpenAI upstream (aiohttp, this file with --fake-upstream): POST /v1/chat/completions answers
    a fixed reply as one `chat.completion` or as SSE `chat.completion.chunk`s (a usage chunk when
    `stream_options.include_usage`, then `data: [DONE]`), with no delay unless --chunk-delay-ms;
  - ours: `python -m server` with one model of provider "openai" whose base_url is the fake, measured
    through our gateway's OpenAI-compatible /v1/chat/completions (skipped, saying why, if it cannot
    start: e.g. without server/providers/http/openai.py);
  - LiteLLM: `litellm --config <yaml>` (one uvicorn worker unless --litellm-workers, no database, a
    master key checked in memory, its remote lookups switched to the bundled copies), an
    `openai/<name>` model whose api_base is the fake, measured through its /v1/chat/completions.
    LiteLLM lives in its own venv (default build/litellm-venv, created here on first use), never in
    the project's.
This process (an aiohttp client) sends the same requests to the fake directly and through each proxy,
cell by cell: {whole, stream} x {concurrency}, each cell's calls split into --rounds turns in which
the targets take turns (each turn warms up first); bounded counts. "+p50"/"+p99" are the
proxy's percentile minus the direct one: the latency the proxy adds. It prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import Child, machine

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "vs-litellm"
LITELLM_VENV = ROOT / "build" / "litellm-venv"
LITELLM_SPEC = "litellm[proxy]==1.106.2"  # the version these figures were first taken with
MODEL = "bench"  # the id clients ask both proxies for
UPSTREAM_MODEL = "fake-model"  # the name the fake sees
PROMPT = "benchmark"
KEY = "sk-bench-" + os.urandom(16).hex()  # LiteLLM refuses to start without a strong master key
BANNER = re.compile(r"HTTP on (http://\S+?);")


# --- the fake upstream (child process) -------------------------------------------------------------


def words(n: int) -> list[str]:
    return [f"word{i} " for i in range(n)]


async def fake_upstream(chunks: int, chunk_delay: float) -> None:
    """Serve the fake OpenAI API on a free loopback port; print `READY <port>`; run until stdin closes."""
    from aiohttp import web

    pieces = words(chunks)
    content = "".join(pieces)
    created = int(time.time())
    usage = {
        "prompt_tokens": 9,
        "completion_tokens": chunks,
        "total_tokens": 9 + chunks,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }
    cache: dict[tuple[str, bool, bool], Any] = {}
    served = {"whole": 0, "stream": 0}

    def whole(model: str) -> bytes:
        return json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {
                            "role": "assistant",
                            "content": content,
                            "refusal": None,
                            "annotations": [],
                        },
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": "fp_bench",
            }
        ).encode()

    def events(model: str, include_usage: bool) -> list[bytes]:
        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            out: dict[str, Any] = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "service_tier": "default",
                "system_fingerprint": "fp_bench",
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if include_usage:
                out["usage"] = None
            return out

        out = [chunk({"role": "assistant", "content": "", "refusal": None}, None)]
        out += [chunk({"content": piece}, None) for piece in pieces]
        out.append(chunk({}, "stop"))
        if include_usage:
            last = chunk({}, None)
            last["choices"] = []
            last["usage"] = usage
            out.append(last)
        return [b"data: " + json.dumps(c).encode() + b"\n\n" for c in out] + [b"data: [DONE]\n\n"]

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model", ""))
        stream = bool(body.get("stream"))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        key = (model, stream, include_usage)
        served["stream" if stream else "whole"] += 1
        if key not in cache:
            cache[key] = events(model, include_usage) if stream else whole(model)
        if not stream:
            return web.Response(body=cache[key], content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await response.prepare(request)
        for i, event in enumerate(cache[key]):
            if chunk_delay and 0 < i <= chunks:
                await asyncio.sleep(chunk_delay)
            await response.write(event)
        await response.write_eof()
        return response

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(served)

    app = web.Application()
    app.router.add_get("/stats", stats)
    app.router.add_post("/v1/chat/completions", completions)
    app.router.add_post("/chat/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"READY {port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # parent closes stdin
    await runner.cleanup()


# --- children --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(name: str, argv: list[str], env: dict[str, str], stdin: bool = False) -> Child:
    log = WORK / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Child(name, proc, log)


async def wait_for_log(child: Child, pattern: re.Pattern[str], within: float) -> re.Match[str]:
    until = time.monotonic() + within
    while time.monotonic() < until and child.proc.poll() is None:
        if match := pattern.search(child.log.read_text(errors="replace")):
            return match
        await asyncio.sleep(0.1)
    raise child.failed()


def start_fake(args: argparse.Namespace) -> tuple[Child, str]:
    argv = [sys.executable, __file__, "--fake-upstream", "--chunks", str(args.chunks)]
    argv += ["--chunk-delay-ms", str(args.chunk_delay_ms)]
    child = spawn("fake-upstream", argv, dict(os.environ), stdin=True)
    until = time.monotonic() + 30
    while time.monotonic() < until and child.proc.poll() is None:
        if match := re.search(r"READY (\d+)", child.log.read_text()):
            return child, f"http://127.0.0.1:{match.group(1)}"
        time.sleep(0.05)
    child.stop()
    raise SystemExit(f"the fake upstream did not start:\n{child.tail()}")


async def start_ours(upstream: str) -> tuple[Child, str]:
    config = WORK / "aibattle.toml"
    db = WORK / "aibattle.db"
    for stale in WORK.glob("aibattle.db*"):
        stale.unlink()
    config.write_text(
        f"""[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
database = "{db}"
log_level = "warning"

[[models]]
id = "{MODEL}"
provider = "openai"
base_url = "{upstream}/v1"
upstream_model = "{UPSTREAM_MODEL}"
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIBATTLE_")}
    env["PYTHONPATH"] = str(ROOT)
    child = spawn("ours", [sys.executable, "-m", "server", "--config", str(config)], env)
    try:
        match = await wait_for_log(child, BANNER, 60)
    except RuntimeError:
        child.stop()
        raise
    return child, match.group(1)


def ensure_litellm(venv: Path, spec: str) -> Path:
    """The litellm CLI in its own venv, created (with `spec` from PyPI) if missing."""
    cli = venv / "bin" / "litellm"
    if cli.exists():
        return cli
    print(
        f"LiteLLM is not installed: creating {venv.relative_to(ROOT) if venv.is_relative_to(ROOT) else venv}"
    )
    python = shutil.which("python3") or sys.executable
    steps = [
        [python, "-m", "venv", str(venv)],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", spec],
    ]
    for step in steps:
        print("  $ " + " ".join(step), flush=True)
        subprocess.run(step, check=True)
    return cli


def litellm_version(venv: Path) -> str:
    found = sorted(venv.glob("lib/python*/site-packages/litellm-*.dist-info"))
    return found[-1].name.removeprefix("litellm-").removesuffix(".dist-info") if found else "?"


async def start_litellm(cli: Path, upstream: str, workers: int) -> tuple[Child, str]:
    config = WORK / "litellm.yaml"
    config.write_text(
        f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: openai/{UPSTREAM_MODEL}
      api_base: {upstream}/v1
      api_key: sk-bench
litellm_settings:
  telemetry: false
  set_verbose: false
  num_retries: 0
  request_timeout: 60
general_settings:
  disable_spend_logs: true
  disable_error_logs: true
"""
    )
    # No DATABASE_URL: LiteLLM runs without a database (the master key is checked in memory). Its
    # remote lookups (model cost map, Anthropic beta headers, blog posts, policy templates, autorouter
    # presets) use the copies bundled with the package; LITELLM_LOG=ERROR also silences uvicorn's
    # access log.
    drop = {"DATABASE_URL", "STORE_MODEL_IN_DB", "REDIS_HOST", "REDIS_URL"}
    env = {k: v for k, v in os.environ.items() if k not in drop and k != "VIRTUAL_ENV"}
    env.update(
        LITELLM_LOCAL_MODEL_COST_MAP="True",
        LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS="True",
        LITELLM_LOCAL_BLOG_POSTS="True",
        LITELLM_LOCAL_POLICY_TEMPLATES="True",
        LITELLM_LOCAL_AUTOROUTER_PRESETS="True",
        LITELLM_MASTER_KEY=KEY,
        LITELLM_LOG="ERROR",
        LITELLM_DONT_SHOW_FEEDBACK_BOX="True",
        DISABLE_ADMIN_UI="True",
        NO_DOCS="True",
    )
    port = free_port()
    argv = [str(cli), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", str(workers)]
    child = spawn("litellm", argv, env)
    base = f"http://127.0.0.1:{port}"
    import aiohttp

    until = time.monotonic() + 180
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until and child.proc.poll() is None:
            try:
                async with session.get(f"{base}/health/liveliness") as resp:
                    if resp.status == 200:
                        return child, base
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.25)
    child.stop()
    raise child.failed()


# --- measuring -------------------------------------------------------------------------------------


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


@dataclass
class Cell:
    latencies: list[float] = field(default_factory=list)  # ms, whole request (a stream: up to [DONE])
    first: list[float] = field(default_factory=list)  # ms to the first content delta (streams)
    errors: int = 0
    first_error: str = ""
    calls: int = 0  # all calls made, warm-up included
    seconds: float = 0.0

    def add(self, other: Cell) -> None:
        self.latencies += other.latencies
        self.first += other.first
        self.errors += other.errors
        self.first_error = self.first_error or other.first_error
        self.seconds += other.seconds
        self.calls += other.calls

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def body(stream: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 64,
    }
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


async def upstream_served(upstream: str) -> dict[str, int]:
    """How many whole and streamed completions the fake has answered so far."""
    import aiohttp

    async with aiohttp.ClientSession() as session, session.get(f"{upstream}/stats") as resp:
        served: dict[str, int] = await resp.json()
        return served


async def measure(
    base: str, model: str, stream: bool, requests: int, concurrency: int, expected: str
) -> Cell:
    """`requests` calls, `concurrency` at a time, after a warm-up at the same concurrency."""
    import aiohttp

    payload = json.dumps({**body(stream), "model": model}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    url = f"{base}/v1/chat/completions"
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def call(cell: Cell) -> None:
            start = time.perf_counter()
            first = 0.0
            try:
                async with session.post(url, data=payload, headers=headers) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:300]}")
                    if not stream:
                        text = (await resp.json())["choices"][0]["message"]["content"]
                    else:
                        parts: list[str] = []
                        done = False
                        async for line in resp.content:  # to the end, so the connection is reused
                            if done or not line.startswith(b"data: "):
                                continue
                            data = line[6:].strip()
                            if data == b"[DONE]":
                                done = True
                                continue
                            event = json.loads(data)
                            if "error" in event:
                                raise RuntimeError(f"stream error: {event['error']}")
                            for choice in event.get("choices") or ():
                                if piece := (choice.get("delta") or {}).get("content"):
                                    if not parts:
                                        first = time.perf_counter()
                                    parts.append(piece)
                        if not done:
                            raise RuntimeError("stream ended without data: [DONE]")
                        text = "".join(parts)
                    if text != expected:
                        raise RuntimeError(f"unexpected content {text[:80]!r}")
            except Exception as exc:  # counted and shown, not raised: a benchmark reports
                cell.errors += 1
                cell.first_error = cell.first_error or f"{type(exc).__name__}: {exc}"
                return
            end = time.perf_counter()
            cell.latencies.append((end - start) * 1000)
            if first:
                cell.first.append((first - start) * 1000)

        async def run(cell: Cell, count: int) -> None:
            remaining = count

            async def worker() -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await call(cell)

            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            cell.seconds = time.perf_counter() - began

        warm_up = max(20, 2 * concurrency)
        await run(Cell(), warm_up)  # connections, caches, lazy imports
        cell = Cell(calls=warm_up + requests)
        await run(cell, requests)
        return cell


@dataclass
class Target:
    name: str
    base: str
    model: str


async def compare(
    targets: list[Target],
    upstream: str,
    stream: bool,
    requests: int,
    concurrency: int,
    rounds: int,
    expected: str,
) -> dict[str, Cell]:
    """One cell for each target: `requests` calls at `concurrency`, split into `rounds` turns in which the
    targets take turns (so a burst of load elsewhere hits all alike)."""
    cells = {target.name: Cell() for target in targets}
    rounds = max(1, min(rounds, requests))
    for i in range(rounds):
        share = requests // rounds + (i < requests % rounds)
        for target in targets:
            before = await upstream_served(upstream)
            part = await measure(target.base, target.model, stream, share, concurrency, expected)
            after = await upstream_served(upstream)
            cells[target.name].add(part)
            seen = {kind: after[kind] - before[kind] for kind in after}
            if seen != {"whole": 0, "stream": 0, ("stream" if stream else "whole"): part.calls}:
                print(f"  {target.name}: the upstream answered {seen} for {part.calls} calls")
    return cells


async def bench(args: argparse.Namespace) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    targets: list[Target] = []
    children: list[Child] = []
    skipped: list[str] = []
    cli = None
    if "litellm" in args.only:
        try:
            cli = ensure_litellm(args.litellm_venv, args.litellm_spec)
        except (OSError, subprocess.CalledProcessError) as exc:
            skipped.append(f"litellm: skipped, it could not be installed in {args.litellm_venv}: {exc}")
    fake, upstream = start_fake(args)
    children.append(fake)
    targets.append(Target("direct", upstream, UPSTREAM_MODEL))
    try:
        if "ours" in args.only:
            try:
                child, base = await start_ours(upstream)
                children.append(child)
                targets.append(Target("ours", base, MODEL))
            except RuntimeError as exc:
                skipped.append(f"ours: skipped, {exc}")
        if cli is not None:
            version = litellm_version(args.litellm_venv)
            try:
                child, base = await start_litellm(cli, upstream, args.litellm_workers)
                children.append(child)
                workers = f" x{args.litellm_workers}" if args.litellm_workers > 1 else ""
                targets.append(Target(f"litellm {version}{workers}", base, MODEL))
            except RuntimeError as exc:
                skipped.append(f"litellm: skipped, {exc}")
        for line in skipped:
            print(line, file=sys.stderr)

        expected = "".join(words(args.chunks))
        print(
            f"OpenAI chat completions on 127.0.0.1: {machine(load=True)}; a fake upstream answering"
            f" {args.chunks} content chunks, chunk delay {args.chunk_delay_ms} ms"
        )
        print(
            "whole = one JSON chat.completion; stream = SSE until data: [DONE]; ttft = to the first content "
            "delta; +p50/+p99/+ttft50 = the proxy's figure minus the direct one"
        )
        heads = f"{'target':<20}{'shape':<7}{'conc':>5}{'reqs':>6}{'p50':>9}{'p99':>9}{'+p50':>9}{'+p99':>9}"
        heads += f"{'ttft50':>9}{'+ttft50':>9}{'req/s':>9}{'errors':>7}"
        print(heads)
        for stream in (False, True):
            for concurrency in args.concurrency:
                requests = args.requests if concurrency == 1 else args.requests_concurrent
                base50 = base99 = basettft = 0.0
                cells = await compare(targets, upstream, stream, requests, concurrency, args.rounds, expected)
                for target in targets:
                    cell = cells[target.name]
                    p50, p99 = percentile(cell.latencies, 0.5), percentile(cell.latencies, 0.99)
                    ttft = percentile(cell.first, 0.5) if stream else float("nan")
                    if target.name == "direct":
                        base50, base99, basettft = p50, p99, ttft
                        added = ("", "", "")
                    else:
                        added = (
                            f"{p50 - base50:+.2f}",
                            f"{p99 - base99:+.2f}",
                            f"{ttft - basettft:+.2f}" if stream else "",
                        )
                    row = (
                        f"{target.name:<20}{'stream' if stream else 'whole':<7}{concurrency:>5}{requests:>6}"
                    )
                    row += f"{p50:>9.2f}{p99:>9.2f}{added[0]:>9}{added[1]:>9}"
                    shown = f"{ttft:.2f}" if stream else ""
                    row += f"{shown:>9}{added[2]:>9}{cell.rate:>9.0f}{cell.errors:>7}"
                    print(row, flush=True)
                    if cell.errors:
                        print(f"  first error: {cell.first_error}", flush=True)
        print(
            "latencies in ms; the client, the proxy and the fake upstream share this machine's CPUs "
            f"(1-minute load average now {os.getloadavg()[0]:.2f})"
        )
        for line in skipped:
            print(line.splitlines()[0])
    finally:
        for child in reversed(children):
            child.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="measured calls per cell at concurrency 1")
    parser.add_argument(
        "--requests-concurrent", type=int, default=2000, help="measured calls per cell above 1"
    )
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32])
    parser.add_argument("--rounds", type=int, default=3, help="turns each cell's calls are split into")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks the fake upstream answers")
    parser.add_argument("--chunk-delay-ms", type=float, default=0.0, help="the fake's pause between chunks")
    parser.add_argument(
        "--only", type=lambda s: set(s.split(",")), default={"ours", "litellm"}, help="ours,litellm"
    )
    parser.add_argument("--litellm-venv", type=Path, default=LITELLM_VENV, help="created on first use")
    parser.add_argument("--litellm-spec", default=LITELLM_SPEC, help="what pip installs there")
    parser.add_argument(
        "--litellm-workers", type=int, default=1, help="its --num_workers (ours is 1 process)"
    )
    parser.add_argument("--fake-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fake_upstream:
        asyncio.run(fake_upstream(args.chunks, args.chunk_delay_ms / 1000))
    else:
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
