"""Run `python -m server` as a real process, as `make run` does, and find its ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"serving gRPC on (\S+?)[,;]")
HTTP_BANNER = re.compile(r"HTTP on (http://\S+?);")


class Running(NamedTuple):
    proc: subprocess.Popen[str]
    grpc_target: str
    http_url: str
    """'' when the gateway is off (the default here: AIBATTLE_HTTP_ADDR='')."""


@contextmanager
def server_process(config_toml: str, tmp_path: Path, **env: str) -> Iterator[Running]:
    """Start the server with this config (gRPC on a free port; no HTTP unless env sets
    AIBATTLE_HTTP_ADDR); yield it; kill it on exit if still running."""
    config = tmp_path / "aibattle.toml"
    config.write_text(config_toml)
    environment = {
        **os.environ,
        "AIBATTLE_CONFIG": str(config),
        "AIBATTLE_GRPC_ADDR": "127.0.0.1:0",
        "AIBATTLE_HTTP_ADDR": "",
        "AIBATTLE_DB": str(tmp_path / "aibattle.db"),
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = BANNER.search(line)
        if match is None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(
                f"server did not start: {line!r}\n{proc.stderr.read() if proc.stderr else ''}"
            )
        http = HTTP_BANNER.search(line)
        yield Running(proc, match.group(1), http.group(1) if http else "")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
