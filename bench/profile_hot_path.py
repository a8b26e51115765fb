"""Where a request's CPU goes: py-spy samples of `python -m server` under load, summed per layer.

    .venv/bin/python bench/profile_hot_path.py [--path /v1/chat/completions] [--seconds 15] [--raw FILE]

Starts what bench/quick.py starts (the fake OpenAI upstream and ours, with an openai-provider model
on it and a scripted one), loads one non-stream endpoint at concurrency 32 with wrk, and records the
server process (gateway and server in one) with `py-spy record --format raw` (py-spy is in the dev
extras; on Linux it needs ptrace, which root or `kernel.yama.ptrace_scope=0` allows). Each sample goes to
the layer of the innermost frame that belongs to one (LAYERS, in order); time in C with no Python
frame of ours above it (grpc-core, the event loop, the kernel's socket calls) is its own row.
`--raw FILE` summarises a recording made before instead. The table is gateway/README.md's "What a
request costs".
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import quick

#: (layer, a pattern of the frames that belong to it), innermost-first order of precedence.
LAYERS: tuple[tuple[str, str], ...] = (
    ("server: RequestContextInterceptor, initial-metadata write", r"_Rpc\.echo \("),
    (
        "server: RequestContextInterceptor, the rest",
        r"RequestContextInterceptor|_Rpc\.|_record \(server/interceptors|_server_span|_incoming",
    ),
    ("server: ErrorInterceptor", r"ErrorInterceptor|_abort \(server"),
    ("server: AdmissionInterceptor", r"server/admission"),
    ("server: AuthInterceptor", r"server/security/interceptor"),
    ("server: BoundsInterceptor", r"BoundsInterceptor|common/bounds"),
    ("server: RequestParsingInterceptor", r"RequestParsingInterceptor|_tolerant"),
    ("server: grpc-interceptor's wrappers", r"grpc_interceptor/"),
    ("provider: its HTTP call (aiohttp client)", r"aiohttp/client|aiohttp/connector|aiohttp/payload"),
    (
        "provider: adapter, resilience, metering",
        r"server/providers|server/security/(metering|observed|limits)",
    ),
    ("server: handler", r"server/services"),
    ("gateway: gRPC client (loopback)", r"grpc/aio/_call|grpc/aio/_channel|gateway/upstream"),
    ("gateway: proto → JSON", r"compat/openai\.py.*_usage|transcode.*(response_json|dumps)|json/encoder"),
    (
        "gateway: JSON → proto",
        r"compat/core.*(read_object|to_request|chat_messages|text_of|optional)|parse_json|json/decoder|Keys\.check",
    ),
    ("gateway: HTTP response write", r"web_response|http_writer|selector_events.py:10[45]"),
    (
        "gateway: middlewares, observe, metrics",
        r"gateway/(web_middlewares|web_cors|observe|access|metadata|web_state)|prometheus_client",
    ),
    ("gateway: route", r"gateway/router|web_urldispatcher"),
    ("gateway: endpoint (compat / REST glue, awaiting the call)", r"gateway/(web_rest|web_app|compat)"),
    (
        "gateway: HTTP parse (aiohttp server)",
        r"aiohttp/web_protocol|aiohttp/http_parser|aiohttp/web_request|aiohttp/web_app|aiohttp/streams",
    ),
    ("other threads (grpc's poller, executors)", r"Thread\.run|threading"),
)
UNATTRIBUTED = "C with no frame of ours above it (event loop, grpc-core, sockets)"
_COMPILED = [(name, re.compile(pattern)) for name, pattern in LAYERS]


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in _COMPILED:
            if pattern.search(frame):
                return name
    return UNATTRIBUTED


def summarise(raw: Path) -> dict[str, float]:
    """Each layer's share (%) of the samples in a py-spy raw (collapsed stacks) file."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if stack:
            counts[layer_of(stack.split(";"))] += int(n)
    total = sum(counts.values()) or 1
    return {name: 100 * counts[name] / total for name, _ in (*LAYERS, (UNATTRIBUTED, ""))}


def record(path: str, seconds: int, out: Path) -> None:
    quick.WORK.mkdir(parents=True, exist_ok=True)
    fake = quick.spawn(
        "upstream", [sys.executable, str(quick.ROOT / "bench" / "vs_litellm.py"), "--fake-upstream"]
    )
    children = [fake]
    try:
        upstream = f"http://127.0.0.1:{quick.wait_for(fake, quick.READY, 30).group(1)}"
        ours = quick.start_ours(upstream)
        children.append(ours)
        base = quick.wait_for(ours, quick.BANNER, 60).group(1)
        body = quick.CHAT if "chat" in path else quick.NATIVE
        quick.wrk(base + path, body, 32, 2)  # warm-up
        spy = Path(sys.executable).parent / "py-spy"
        argv = [str(spy), "record", "-p", str(ours.proc.pid), "-d", str(seconds), "-r", "250"]
        argv += ["-f", "raw", "-o", str(out), "--nonblocking"]
        sampler = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p50, rate, errors, _ = quick.wrk(base + path, body, 32, seconds + 2)
        sampler.wait()
        print(f"POST {path} at c=32 under py-spy: {rate:.0f} req/s, p50 {p50:.2f} ms, {errors} errors")
    finally:
        for child in reversed(children):
            child.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", default="/v1/chat/completions", help="or /api/v1/completions")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--raw", type=Path, help="summarise this py-spy raw file instead of recording")
    args = parser.parse_args()
    raw = args.raw
    if raw is None:
        raw = Path(tempfile.mkdtemp()) / "profile.raw"
        record(args.path, args.seconds, raw)
    for name, share in summarise(raw).items():
        print(f"{share:5.1f}%  {name}")


if __name__ == "__main__":
    main()
