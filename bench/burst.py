"""Capacity under a burst: N simultaneous streams, counted by how each one ended, and the server's memory.

    python bench/burst.py [--grpc 3000] [--sse 3000] [--words 10] [--delay-ms 300] [--slow 0]
                          [--max-concurrent-streams N] [--clients 1] [--server-option KEY=VALUE ...]
                          [--gateway-option KEY=VALUE ...]

A child process serves the AI Battle server and its HTTP gateway (in-process, as `python -m server` runs
them) on 127.0.0.1, with one scripted model answering `--words` words `--delay-ms` apart. This process then
opens `--grpc` StreamCompletion calls at once, all on ONE gRPC channel, and afterwards `--sse` SSE
streams at once (`POST /api/v1/completions:stream`, one HTTP connection each, spread over `--clients`
client processes so the client is not what limits), and counts the outcomes: gRPC status codes, HTTP
statuses, and streams that started but did not end with the whole reply. It prints the server process's
peak resident memory (VmHWM) and the wall time. It prints figures and asserts nothing; each run is
bounded (`--timeout` seconds per burst).

`--slow N` first opens N SSE streams whose clients never read (an endless model of 200 KB chunks) and
prints what they cost the server in memory; they stay open during the bursts, which must not notice them.

`--server-option grpc.some_arg=1` sets a gRPC core argument of the server, `--gateway-option` one of the
gateway's channel (each may be given several times),
`--max-concurrent-streams` sets `[server] max_concurrent_streams` (0: none) — to compare configurations.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MODEL = "burst"
#: For `--slow`: 200 KB chunks, the same string each time, up to SLOW_CHUNKS of them.
ENDLESS = "burst-endless"
SLOW_CHUNKS = 2000


def config(args: argparse.Namespace) -> dict[str, Any]:
    server: dict[str, Any] = {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}
    if args.max_concurrent_streams is not None:
        server["max_concurrent_streams"] = args.max_concurrent_streams
    return {
        "server": server,
        "models": [
            {
                "id": MODEL,
                "provider": "scripted",
                "capabilities": ["text"],
                "script": [" ".join(f"word{i}" for i in range(args.words))],
                "chunk_delay_ms": args.delay_ms,
            },
            {"id": ENDLESS, "provider": "scripted", "capabilities": ["text"], "script": ["(see serve)"]},
        ],
    }


async def serve(args: argparse.Namespace) -> None:
    """Child process: server + gateway until stdin closes."""
    import logging

    from gateway import start_gateway
    from server.app import AIBattleServer
    from server.config import Config

    logging.disable(logging.INFO)  # 10,000 access lines would measure the logger
    if args.server_option:  # gRPC core arguments to compare, added to those the server sets
        import grpc

        extra = tuple(_option(o) for o in args.server_option)
        original = grpc.aio.server

        def with_options(*a: Any, options: Any = (), **kw: Any) -> Any:
            return original(*a, options=(*extra, *options), **kw)  # the first of a key wins

        grpc.aio.server = with_options
    if args.gateway_option:  # gRPC arguments to compare, added to those of the gateway's channel
        import grpc

        channel_extra = tuple(_option(o) for o in args.gateway_option)
        original_channel = grpc.aio.insecure_channel

        def channel_with_options(*a: Any, options: Any = (), **kw: Any) -> Any:
            return original_channel(*a, options=(*channel_extra, *options), **kw)

        grpc.aio.insecure_channel = channel_with_options
    _endless_model()
    server = AIBattleServer(Config.from_dict(config(args)))
    await server.start()
    gateway = await start_gateway(grpc_target=server.grpc_target, host="127.0.0.1", port=0)
    loop = asyncio.get_running_loop()
    kind = type(loop).__module__.partition(".")[0]  # uvloop or asyncio
    print(f"READY {server.grpc_target} {gateway.port} {os.getpid()} {kind}", flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # parent closes stdin to stop us
    await gateway.close()
    await server.stop(grace=0.5)


def _endless_model() -> None:
    """The scripted provider, answering ENDLESS with the same 200 KB chunk SLOW_CHUNKS times (a script
    that long would be copied into every stream, and the copies would be what RSS measures)."""
    from common.enums import FinishReason
    from server.providers.base import Delta, Finish, Usage
    from server.providers.scripted import ScriptedProvider

    chunk = Delta(content="x" * 200_000 + " ")
    original = ScriptedProvider.stream

    async def stream(self: ScriptedProvider, model: Any, request: Any) -> Any:
        if model.id != ENDLESS:
            async for item in original(self, model, request):
                yield item
            return
        for _ in range(SLOW_CHUNKS):
            yield chunk
        yield Finish(Usage(prompt_tokens=1, completion_tokens=SLOW_CHUNKS), FinishReason.STOP)

    ScriptedProvider.stream = stream  # type: ignore[method-assign]


def _option(text: str) -> tuple[str, int | str]:
    key, _, value = text.partition("=")
    return key, int(value) if value.lstrip("-").isdigit() else value


def rss_mib(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of `pid` in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


async def grpc_burst(target: str, n: int, words: int, seconds: float) -> collections.Counter[str]:
    import grpc

    from aibattle.v1 import completions_pb2, completions_pb2_grpc

    outcomes: collections.Counter[str] = collections.Counter()
    details: collections.Counter[str] = collections.Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.StreamCompletionRequest(model=MODEL, prompt="burst")

        async def one() -> None:
            chunks = 0
            try:
                async for _ in stub.StreamCompletion(request, timeout=seconds):
                    chunks += 1
            except grpc.aio.AioRpcError as exc:
                outcomes[exc.code().name] += 1
                details[f"{exc.code().name}: {exc.details()}"[:160]] += 1
                return
            outcomes["OK" if chunks >= words else "OK_SHORT"] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    for text, count in details.most_common(5):
        print(f"    {count:>6} × {text}")
    return outcomes


async def sse_burst(base: str, n: int, words: int, seconds: float) -> collections.Counter[str]:
    import aiohttp

    outcomes: collections.Counter[str] = collections.Counter()
    body = {"model": MODEL, "prompt": "burst"}
    headers = {"Accept": "text/event-stream"}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    client_timeout = aiohttp.ClientTimeout(total=seconds)
    async with aiohttp.ClientSession(connector=connector, timeout=client_timeout) as session:

        async def one() -> None:
            try:
                async with session.post(f"{base}/api/v1/completions:stream", json=body, headers=headers) as r:
                    if r.status != 200:
                        await r.read()
                        retry = " +Retry-After" if "Retry-After" in r.headers else ""
                        outcomes[f"{r.status}{retry}"] += 1
                        return
                    results = 0
                    error = b""
                    async for line in r.content:
                        if error == b"?":
                            error = line
                        elif line.startswith(b"event: error"):
                            error = b"?"
                        elif line.startswith(b"data: "):
                            results += 1
                    if error:
                        try:
                            status = json.loads(error.removeprefix(b"data: "))["error"]
                            code = f"{status['code']} {status.get('message', '')[:60]}"
                        except (ValueError, KeyError, TypeError):
                            code = error[:60].decode(errors="replace")
                        outcomes[f"200 then error {code}"] += 1
                    else:
                        outcomes["200" if results >= words else "200 cut short"] += 1
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                outcomes[f"{type(exc).__name__}: {str(exc)[:70]}"] += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return outcomes


def sse_client(base: str, n: int, words: int, timeout: float) -> None:
    """A client process's share of an SSE burst: its outcomes as one JSON line."""
    outcomes = asyncio.run(sse_burst(base, n, words, timeout))
    print(json.dumps(dict(outcomes)), flush=True)


async def sse_clients(base: str, args: argparse.Namespace) -> collections.Counter[str]:
    shares = [args.sse // args.clients + (i < args.sse % args.clients) for i in range(args.clients)]
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            "--sse-client",
            base,
            str(share),
            str(args.words),
            str(args.timeout),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        for share in shares
    ]
    total: collections.Counter[str] = collections.Counter()
    for proc in procs:
        out, _ = await proc.communicate()
        lines = out.decode().strip().splitlines()
        total.update(json.loads(lines[-1]) if lines else {"client failed": 1})
    return total


async def open_slow_readers(port: int, n: int) -> list[asyncio.StreamWriter]:
    """`n` SSE streams of the endless model whose clients read their headers, then nothing."""
    body = json.dumps({"model": ENDLESS, "prompt": "slow", "max_tokens": SLOW_CHUNKS}).encode()
    head = (
        "POST /api/v1/completions:stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    writers = []
    for _ in range(n):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body)
        await reader.readuntil(b"\r\n\r\n")
        writers.append(writer)
    return writers


async def steady_rss(pid: int) -> float:
    """The process's RSS once it has not moved by 1 MiB for a second (at most 30 s)."""
    last = rss_mib(pid)[0]
    for _ in range(30):
        await asyncio.sleep(1)
        now = rss_mib(pid)[0]
        if abs(now - last) < 1:
            return now
        last = now
    return last


async def watch_rss(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mib(pid)[0])
        await asyncio.sleep(0.2)


async def timed(name: str, pid: int, n: int, run: Any) -> collections.Counter[str]:
    peak = [0.0]
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_rss(pid, peak, stop))
    before = rss_mib(pid)[0]
    start = time.perf_counter()
    outcomes: collections.Counter[str] = await run
    elapsed = time.perf_counter() - start
    stop.set()
    await watcher
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items()))
    print(f"{name}: {n} at once, {elapsed:.1f} s: {counts}")
    print(f"    server RSS {before:.0f} MiB before, {peak[0]:.0f} MiB peak during the burst")
    return outcomes


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    """Run the bursts; return their outcomes ("gRPC", "SSE": Counters) and the server's peak RSS in MiB."""
    summary: dict[str, Any] = {}
    argv = [sys.executable, __file__, "--serve", "--words", str(args.words), "--delay-ms", str(args.delay_ms)]
    if args.max_concurrent_streams is not None:
        argv += ["--max-concurrent-streams", str(args.max_concurrent_streams)]
    for option in args.server_option:
        argv += ["--server-option", option]
    for option in args.gateway_option:
        argv += ["--gateway-option", option]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode().split()
    if not line or line[0] != "READY":
        raise SystemExit("the benchmark server did not start")
    grpc_target, http_port, pid, loop = line[1], int(line[2]), int(line[3]), line[4]
    limit = "default" if args.max_concurrent_streams is None else args.max_concurrent_streams
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(
        f"burst: scripted model, {args.words} words {args.delay_ms} ms apart; server pid {pid} ({loop}),"
        f" max_concurrent_streams={limit},"
        f" server options={args.server_option or 'none'},"
        f" gateway options={args.gateway_option or 'none'};"
        f" {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}, {when}"
    )
    slow: list[asyncio.StreamWriter] = []
    try:
        if args.slow:
            before = await steady_rss(pid)
            slow = await open_slow_readers(http_port, args.slow)
            held = await steady_rss(pid) - before
            print(
                f"{args.slow} slow readers (SSE of 200 KB chunks, never read): server RSS +{held:.0f} MiB,"
                f" {held / args.slow:.1f} MiB each; they stay open during what follows"
            )
        if args.grpc:
            summary["gRPC"] = await timed(
                "gRPC, one channel",
                pid,
                args.grpc,
                grpc_burst(grpc_target, args.grpc, args.words, args.timeout),
            )
        if args.sse:
            base = f"http://127.0.0.1:{http_port}"
            summary["SSE"] = await timed(
                f"SSE, {args.clients} client process(es)", pid, args.sse, sse_clients(base, args)
            )
        now, peak = rss_mib(pid)
        print(f"server RSS at the end {now:.0f} MiB, peak over the run (VmHWM) {peak:.0f} MiB")
        summary["peak_mib"] = peak
    finally:
        for writer in slow:
            writer.close()
        proc.stdin.close()
        await asyncio.wait_for(proc.wait(), 30)
    return summary


def main() -> None:
    if sys.argv[1:2] == ["--sse-client"]:
        base, n, words, timeout = sys.argv[2:6]
        sse_client(base, int(n), int(words), float(timeout))
        return
    args = parser().parse_args()
    if args.serve:
        from common import event_loop

        event_loop.run(serve(args))  # the loop python -m server runs on (uvloop's, by default)
    else:
        asyncio.run(bench(args))


def parser() -> argparse.ArgumentParser:
    """The options (bench/table.py parses its own burst's with it)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--grpc", type=int, default=3000, help="simultaneous gRPC streams (0: none)")
    parser.add_argument("--sse", type=int, default=3000, help="simultaneous SSE streams (0: none)")
    parser.add_argument("--words", type=int, default=10)
    parser.add_argument("--delay-ms", type=int, default=300)
    parser.add_argument("--max-concurrent-streams", type=int, default=None)
    parser.add_argument("--server-option", action="append", default=[])
    parser.add_argument("--gateway-option", action="append", default=[])
    parser.add_argument("--slow", type=int, default=0, help="slow readers held open during the bursts")
    parser.add_argument("--clients", type=int, default=1, help="client processes for the SSE burst")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds each stream may take")
    return parser


if __name__ == "__main__":
    main()
