"""The whole table in one run (`make bench`, first): every row of issue 18's list, each with its ratio
to the floor (or to the raw component), its target, and whether this run met it.

    .venv/bin/python bench/table.py [--seconds 5] [--quick] [--skip relay,litellm,burst,local]

It starts what `bench/quick.py` starts (the fake OpenAI upstream, the floor: a bare aiohttp relay, and
`python -m server` with an `openai` model on the fake and a scripted one), plus a second fake streaming
`--chunks` chunks per answer with a floor relay of its own in front of it (ours serves it as the model
`stream`), and measures, on 127.0.0.1:
  - non-stream, with wrk (quick.py's cells): the upstream, the floor, ours /v1/chat/completions and
    /api/v1/completions: p50 at c=1, req/s at c=32; ours over gRPC (unary CreateCompletion on the same
    `openai` model as /v1/chat/completions, so the upstream call is in it as in the floor's) with a
    grpc.aio client in this process (harness.measure), which saturates before wrk does;
  - the relay rates: chunks (SSE events, gRPC messages) per second received at c=8, each stream read to
    its end, by an aiohttp or grpc.aio client in this process: the fake directly, the floor, ours SSE
    (/v1/chat/completions stream=true and /api/v1/completions:stream) and ours gRPC (StreamCompletion);
  - the burst: `bench/burst.py` with `--burst` gRPC and SSE streams at once (its own server), the outcomes
    counted and the server's peak RSS;
  - LiteLLM (`bench/vs_litellm.py`'s cells: non-stream, c=1 and c=32, the targets taking turns), if
    build/litellm-venv exists (`.venv/bin/python bench/vs_litellm.py` makes it; this never installs it);
  - the embedded model: tokens/s of raw llama-cpp-python (the provider's own loaded Llama, `generate` and
    `detokenize` per token, greedy) against the same prompt through the stack (gRPC StreamCompletion,
    temperature 0), taken alternately.
It prints figures and asserts nothing; a whole run takes about two minutes (`--quick`: shorter cells).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import burst
import local_model
import quick
import vs_litellm
from harness import Child, CompletionCalls, machine, measure

RELAY_CONCURRENCY = 8
TARGET_RATE = 0.5  # ours /v1/chat/completions req/s at c=32, of the floor's
TARGET_ADDED = 1.5  # ours added p50 at c=1, at most this times the floor's
TARGET_SSE = 20_000  # chunks/s at c=8
TARGET_GRPC = 30_000
TARGET_LITELLM = 20.0  # LiteLLM's added p50 / ours, at c=1 and c=32
TARGET_LOCAL = 0.95  # the stack's tokens/s, of raw llama-cpp-python's


@dataclass
class Line:
    row: str
    figure: str
    ratio: str = ""
    target: str = ""
    met: str = ""


def yes(ok: bool) -> str:
    return "yes" if ok else "NO"


# --- relay rates -----------------------------------------------------------------------------------


async def timed_workers(
    work: Callable[[], Awaitable[int]], concurrency: int, seconds: float
) -> tuple[float, float]:
    """(chunks per second, chunks per stream): `concurrency` workers call `work` (one stream, its chunk
    count) until `seconds` have passed; every stream begun is read to its end and counted."""
    count = streams = 0

    async def worker() -> None:
        nonlocal count, streams
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:
            chunks = await work()  # not `count += await ...`: that would read count before the await
            count += chunks
            streams += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - began), count / max(1, streams)


async def sse_rate(url: str, body: dict[str, Any], concurrency: int, seconds: float) -> tuple[float, float]:
    """(SSE events per second, events per stream) at `concurrency`, after a half-second warm-up."""
    import aiohttp

    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one() -> int:
            async with session.post(url, data=data, headers=headers) as resp:
                if resp.status != 200:
                    raise SystemExit(f"{url}: HTTP {resp.status}: {(await resp.text())[:300]}")
                events, tail = 0, b""
                async for piece in resp.content.iter_any():
                    events += (tail + piece).count(b"\n\n")  # an event ends with a blank line
                    tail = piece[-1:]
            return events

        await timed_workers(one, concurrency, 0.5)
        return await timed_workers(one, concurrency, seconds)


async def grpc_rate(target: str, concurrency: int, seconds: float) -> tuple[float, float]:
    """(StreamCompletion messages per second, messages per stream) on the model quick.STREAM."""
    import grpc

    from aibattle.v1 import completions_pb2, completions_pb2_grpc

    request = completions_pb2.StreamCompletionRequest(model=quick.STREAM, prompt="benchmark")
    async with grpc.aio.insecure_channel(target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)

        async def one() -> int:
            messages = 0
            async for _ in stub.StreamCompletion(request):
                messages += 1
            return messages

        await timed_workers(one, concurrency, 0.5)
        return await timed_workers(one, concurrency, seconds)


async def relay_lines(targets: quick.Targets, seconds: float) -> list[Line]:
    c = RELAY_CONCURRENCY
    chat = {"messages": [{"role": "user", "content": "benchmark"}], "stream": True}
    direct, per = await sse_rate(
        f"{targets.stream_upstream}/v1/chat/completions", {**chat, "model": "fake-model"}, c, seconds
    )
    floor, floor_per = await sse_rate(
        f"{targets.stream_floor}/v1/chat/completions", {**chat, "model": "fake-model"}, c, seconds
    )
    sse, sse_per = await sse_rate(
        f"{targets.ours}/v1/chat/completions", {**chat, "model": quick.STREAM}, c, seconds
    )
    native, native_per = await sse_rate(
        f"{targets.ours}/api/v1/completions:stream",
        {"model": quick.STREAM, "prompt": "benchmark"},
        c,
        seconds,
    )
    grpc, grpc_per = await grpc_rate(targets.ours_grpc, c, seconds)

    def figure(rate: float, per_stream: float) -> str:
        return f"{rate:,.0f} chunks/s ({per_stream:.0f}/stream)"

    return [
        Line(f"SSE direct from the fake, c={c}", figure(direct, per), f"x{direct / floor:.2f}"),
        Line(f"SSE floor relay, c={c}", figure(floor, floor_per), "x1.00"),
        Line(
            f"SSE ours /v1/chat/completions, c={c}",
            figure(sse, sse_per),
            f"x{sse / floor:.2f}",
            f">= {TARGET_SSE:,} chunks/s",
            yes(sse >= TARGET_SSE),
        ),
        Line(
            f"SSE ours /api/v1/completions:stream, c={c}",
            figure(native, native_per),
            f"x{native / floor:.2f}",
            f">= {TARGET_SSE:,} chunks/s",
            yes(native >= TARGET_SSE),
        ),
        Line(
            f"gRPC ours StreamCompletion, c={c}",
            figure(grpc, grpc_per),
            f"x{grpc / floor:.2f}",
            f">= {TARGET_GRPC:,} chunks/s",
            yes(grpc >= TARGET_GRPC),
        ),
    ]


# --- non-stream ------------------------------------------------------------------------------------


async def grpc_row(targets: quick.Targets, row: quick.Row, requests: int) -> None:
    """Fill in `row` for unary CreateCompletion on quick.MODEL (the `openai` model), over gRPC."""
    async with CompletionCalls(targets.ours_grpc, targets.ours) as calls:
        row.p50 = statistics.median(await measure(calls.grpc_unary, requests=requests // 4, concurrency=1))
        began = time.perf_counter()
        await measure(calls.grpc_unary, requests=requests, concurrency=32, warmup=0)
        row.rate = requests / (time.perf_counter() - began)


def nonstream_lines(rows: list[quick.Row]) -> list[Line]:
    upstream, floor = rows[0], rows[1]
    floor_added = floor.p50 - upstream.p50
    lines = []
    for row in rows:
        figure = f"p50 {row.p50:.2f} ms, {row.rate:,.0f} req/s"
        ratio = f"p50 x{row.p50 / floor.p50:.2f}, req/s x{row.rate / floor.rate:.2f}"
        line = Line(row.name, figure + (f", {row.errors} errors" if row.errors else ""), ratio)
        if row.name.startswith("ours"):
            scripted = row.body == quick.NATIVE  # a scripted model: no upstream call, all of it is added
            added = row.p50 - (0 if scripted else upstream.p50)
            line.figure += f", +p50 {added:.2f} ms"
            line.ratio += f", +p50 x{added / floor_added:.2f}"
            line.target = f"req/s >= {TARGET_RATE:.2f}x, +p50 <= {TARGET_ADDED}x"
            line.met = (
                f"{yes(row.rate >= TARGET_RATE * floor.rate)}, {yes(added <= TARGET_ADDED * floor_added)}"
            )
        lines.append(line)
    return lines


# --- LiteLLM ---------------------------------------------------------------------------------------


async def litellm_lines(
    targets: quick.Targets, children: list[Child], args: argparse.Namespace
) -> list[Line]:
    cli = vs_litellm.LITELLM_VENV / "bin" / "litellm"
    if not cli.exists():
        reason = f"{cli.relative_to(quick.ROOT)} is missing (`.venv/bin/python bench/vs_litellm.py` makes it)"
        return [Line("LiteLLM", f"skipped: {reason}")]
    vs_litellm.WORK.mkdir(parents=True, exist_ok=True)
    try:
        child, base = await vs_litellm.start_litellm(cli, targets.upstream, 1)
    except RuntimeError as exc:
        return [Line("LiteLLM", f"skipped: it did not start: {str(exc).splitlines()[0]}")]
    children.append(child)
    version = vs_litellm.litellm_version(vs_litellm.LITELLM_VENV)
    compared = [
        vs_litellm.Target("direct", targets.upstream, vs_litellm.UPSTREAM_MODEL),
        vs_litellm.Target("ours", targets.ours, vs_litellm.MODEL),
        vs_litellm.Target("litellm", base, vs_litellm.MODEL),
    ]
    expected = "".join(vs_litellm.words(16))  # what quick.py's fake answers (its default)
    lines = []
    for concurrency, requests in ((1, args.litellm_requests // 5), (32, args.litellm_requests)):
        cells = await vs_litellm.compare(
            compared, targets.upstream, False, requests, concurrency, 3, expected
        )
        direct, ours, litellm = (statistics.median(cells[t.name].latencies) for t in compared)
        ours_added, litellm_added = ours - direct, litellm - direct
        errors = sum(cell.errors for cell in cells.values())
        lines.append(
            Line(
                f"LiteLLM {version} vs ours, +p50 c={concurrency}",
                f"ours +{ours_added:.2f} ms, LiteLLM +{litellm_added:.2f} ms"
                + (f", {errors} errors" if errors else ""),
                f"LiteLLM/ours x{litellm_added / ours_added:.1f}",
                f">= {TARGET_LITELLM:.0f}x",
                yes(litellm_added >= TARGET_LITELLM * ours_added),
            )
        )
    child.stop()
    return lines


# --- the burst and the local model -----------------------------------------------------------------


async def burst_line(n: int) -> Line:
    summary = await burst.bench(burst.parser().parse_args(["--grpc", str(n), "--sse", str(n)]))
    grpc, sse = summary["gRPC"], summary["SSE"]
    outcomes = "; ".join(
        f"{kind} {', '.join(f'{k}: {v}' for k, v in sorted(counts.items()))}"
        for kind, counts in (("gRPC", grpc), ("SSE", sse))
    )
    ok = grpc.get("OK", 0) == n and sse.get("200", 0) == n
    return Line(
        f"burst: {n} gRPC + {n} SSE streams",
        f"{outcomes}; peak RSS {summary['peak_mib']:.0f} MiB",
        "",
        "all OK",
        yes(ok),
    )


def raw_rate(loaded: Any, prompt: str, max_tokens: int, repeat_penalty: float) -> float:
    """Tokens per second after the first of llama-cpp-python alone: the prompt formatted as the provider
    does, greedy `generate`, and each token detokenized (what any streaming caller does)."""
    llm = loaded.llm
    tokens = llm.tokenize(
        loaded.format_prompt([{"role": "user", "content": prompt}]).encode(), add_bos=False, special=True
    )
    generated: list[int] = []
    first = 0.0
    for token in llm.generate(tokens, temp=0.0, repeat_penalty=repeat_penalty, reset=True):
        if token in loaded.end_tokens:
            break
        llm.detokenize([token], prev_tokens=tokens + generated)
        generated.append(token)
        first = first or time.perf_counter()
        if len(generated) >= max_tokens:
            break
    return len(generated) / (time.perf_counter() - first) if len(generated) > 1 else 0.0


async def local_line(runs: int, max_tokens: int) -> Line:
    import grpc

    from aibattle.v1 import completions_pb2, completions_pb2_grpc
    from server.app import AIBattleServer
    from server.config import Config

    server = AIBattleServer(
        Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}})
    )
    await server.start()
    provider = server.registry.providers["local"]
    raw: list[float] = []
    stack: list[float] = []
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            completions = completions_pb2_grpc.CompletionServiceStub(channel)
            request = completions_pb2.StreamCompletionRequest(
                model=local_model.MODEL, prompt=local_model.ENDLESS, max_tokens=max_tokens, temperature=0.0
            )
            await local_model.timed_stream(completions, request)  # warm-up
            for _ in range(runs):  # alternately
                raw.append(
                    raw_rate(
                        provider._model, local_model.ENDLESS, max_tokens, provider._config.repeat_penalty
                    )
                )
                stack.append((await local_model.timed_stream(completions, request))[1])
    finally:
        await server.stop(grace=1)
    r, s = statistics.median(raw), statistics.median(stack)
    return Line(
        f"{local_model.MODEL}: stack (gRPC stream) vs raw llama-cpp-python",
        f"stack {s:.1f} tok/s, raw {r:.1f} tok/s ({max_tokens} tokens, {runs} runs each)",
        f"x{s / r:.3f} of raw",
        f">= {TARGET_LOCAL:.2f}x",
        yes(s >= TARGET_LOCAL * r),
    )


# --- the table -------------------------------------------------------------------------------------


def print_table(lines: list[Line], header: str, footer: list[str]) -> None:
    heads = Line("row", "figure(s)", "ratio (to the floor, or the raw)", "target", "met")
    widths = [
        max(len(getattr(line, f)) for line in [heads, *lines]) for f in ("row", "figure", "ratio", "target")
    ]
    print()
    print(header)
    for line in [heads, *lines]:
        cells = (line.row, line.figure, line.ratio, line.target)
        print("  ".join(f"{cell:<{w}}" for cell, w in zip(cells, widths, strict=True)) + f"  {line.met}")
    for text in footer:
        print(text)


def progress(began: float, done: str) -> None:
    print(f"[table] {time.monotonic() - began:5.0f} s: {done}", flush=True)


async def bench(args: argparse.Namespace) -> None:
    began = time.monotonic()
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    load_before = machine(load=True)
    lines: list[Line] = []
    children: list[Child] = []
    try:
        targets = quick.start(children, stream_chunks=args.chunks)
        progress(began, "started the fake upstreams, the floors and ours")
        for row in targets.rows:
            await quick.measure_row(row, 32, args.seconds)
        row = quick.Row("ours gRPC CreateCompletion", "", "", targets.rows[2].pid)
        await grpc_row(targets, row, args.grpc_requests)
        lines += nonstream_lines([*targets.rows, row])
        progress(began, "non-stream rows")
        if "relay" not in args.skip:
            lines += await relay_lines(targets, args.relay_seconds)
            progress(began, "relay rates")
        if "litellm" not in args.skip:
            lines += await litellm_lines(targets, children, args)
            progress(began, "LiteLLM")
    finally:
        for child in reversed(children):
            child.stop()
    if "burst" not in args.skip:
        lines.append(await burst_line(args.burst))
        progress(began, "burst")
    if "local" not in args.skip:
        lines.append(await local_line(args.local_runs, args.max_tokens))
        progress(began, "local model")
    print_table(
        lines,
        f"bench/table.py, {when}: {load_before} at the start, load {machine(load=True).rsplit('load ', 1)[1]}"
        f" at the end; non-stream rows: {quick.load_tool()}, {args.seconds:g} s per cell",
        [
            "x: the row's figure / the floor's (the bare aiohttp relay in front of the same fake); +p50 = p50"
            " minus the fake's own (the scripted /api/v1 row has no upstream: its whole p50);",
            f"relay rows: the fake streams {args.chunks} chunks per answer, chunks = SSE events or gRPC"
            f" messages received at c={RELAY_CONCURRENCY} by a client in this process,"
            f" {args.relay_seconds:g} s each; the gRPC rows' client is grpc.aio in this process;",
            "every process shares this machine's CPUs with the load generator;"
            f" {time.monotonic() - began:.0f} s in all",
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk cell (quick.py's)")
    parser.add_argument("--relay-seconds", type=float, default=3.0, help="per relay-rate cell")
    parser.add_argument("--chunks", type=int, default=256, help="chunks per streamed answer of the fake")
    parser.add_argument("--grpc-requests", type=int, default=4000, help="unary gRPC calls at c=32")
    parser.add_argument("--litellm-requests", type=int, default=1000, help="per cell at c=32 (a fifth at 1)")
    parser.add_argument("--burst", type=int, default=1000, help="gRPC and SSE streams at once")
    parser.add_argument("--local-runs", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--skip", type=lambda s: set(s.split(",")), default=set(), help="relay,litellm,burst,local"
    )
    parser.add_argument("--quick", action="store_true", help="shorter cells and fewer calls (about 2 min)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.relay_seconds, args.grpc_requests = 2.0, 1.5, 1500
        args.litellm_requests, args.burst, args.local_runs = 300, 300, 2
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
