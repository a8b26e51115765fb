"""`python -m server` with the in-process gateway, on free loopback ports, with scripted models."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HTTP_BANNER = re.compile(r"AI Battle serving gRPC on \S+, HTTP on (http://127\.0\.0\.1:\d+);")

#: Scripted models (tests/conftest.py's, in TOML): deterministic, no real model needed.
CONFIG = """
[server]
shutdown_grace_seconds = 1

[[models]]
id = "scripted-echo"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["Hello there, friend. This is a scripted reply."]

[[models]]
id = "scripted-fail"
provider = "scripted"
script = ["one two three four"]
error_after_chunks = 2

[[models]]
id = "scripted-vision"
provider = "scripted"
capabilities = ["text", "image"]
script = ["I see."]
"""


@contextmanager
def live_server(tmp_path: Path, *, start_timeout: float = 30) -> Iterator[str]:
    """Start the server (gRPC and HTTP on port 0); yield the gateway's base URL; stop it (SIGTERM)."""
    config = tmp_path / "aibattle.toml"
    config.write_text(CONFIG)
    out, err = tmp_path / "server.out", tmp_path / "server.err"
    env = {
        **os.environ,
        "AIBATTLE_CONFIG": str(config),
        "AIBATTLE_GRPC_ADDR": "127.0.0.1:0",
        "AIBATTLE_HTTP_ADDR": "127.0.0.1:0",
        "AIBATTLE_DB": str(tmp_path / "aibattle.db"),
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), str(ROOT / "gen"), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    # Output goes to files: a pipe nobody drains would stall the server once its buffer fills.
    with out.open("w") as stdout, err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server"], cwd=ROOT, env=env, stdout=stdout, stderr=stderr
        )
    try:
        deadline = time.monotonic() + start_timeout
        while (match := HTTP_BANNER.search(out.read_text())) is None:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{out.read_text()}\n{err.read_text()[-4000:]}")
            time.sleep(0.1)
        yield match.group(1)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
