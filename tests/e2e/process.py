"""Run `python -m server` as a real process, as `make run` does, and find its ports."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, NamedTuple

import pytest

from tests.postgres_testlib import database_of

ROOT = Path(__file__).resolve().parents[2]
#: A config of one scripted model, "echo", for a server process whose model does not matter.
ECHO_CONFIG = """
[[models]]
id = "echo"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["Hello from a scripted model."]
"""
BANNER = re.compile(r"serving gRPC on (\S+?)[,;]")
HTTP_BANNER = re.compile(r"HTTP on (http://\S+?)[,;]")
STARTUP_DEADLINE = 60.0
"""Seconds the server may take to print its banner (loading the local model included)."""


class Running(NamedTuple):
    proc: subprocess.Popen[str]
    grpc_target: str
    http_url: str
    """'' when the gateway is off (the default here: AIBATTLE_HTTP_ADDR='')."""


class Output:
    """What a child process writes, read by daemon threads: a silent child cannot block the
    test, and a chatty one cannot fill a pipe and stall."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._forward, args=(proc.stdout,), daemon=True),
            threading.Thread(target=self._collect, args=(proc.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _forward(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            self.lines.put(line)
        self.lines.put(None)  # end of stdout

    def _collect(self, stream: IO[str] | None) -> None:
        for line in stream or ():
            self._stderr.append(line)

    def join(self) -> None:
        """Wait for the pipes to close (the process is dead), so they can be closed safely."""
        for reader in self._readers:
            reader.join(timeout=10)

    def stderr(self) -> str:
        return "".join(self._stderr)


@contextmanager
def started(
    argv: list[str], env: dict[str, str] | None = None, *, group: bool = False
) -> Iterator[tuple[subprocess.Popen[str], Output]]:
    """A child process with its output read in the background; killed and reaped on exit. `group`: in a
    process group of its own (its pid), all of which is killed on exit (a supervisor and its workers)."""
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=group,
    )
    output = Output(proc)
    try:
        yield proc, output
    finally:
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        output.join()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def wait_for_line(
    proc: subprocess.Popen[str], output: Output, pattern: re.Pattern[str], deadline: float
) -> re.Match[str]:
    """The first stdout line matching pattern within `deadline` seconds; otherwise kill the
    process and fail with everything it printed."""
    seen: list[str] = []
    until = time.monotonic() + deadline
    while (left := until - time.monotonic()) > 0:
        try:
            line = output.lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:  # stdout closed: the process is exiting
            break
        seen.append(line)
        if match := pattern.search(line):
            return match
    proc.kill()
    proc.wait(timeout=10)
    output.join()
    raise AssertionError(
        f"no line matching {pattern.pattern!r} within {deadline} s (exit code {proc.returncode})\n"
        f"stdout: {''.join(seen)!r}\nstderr: {output.stderr()!r}"
    )


@contextmanager
def server_process(
    config_toml: str,
    tmp_path: Path,
    *,
    startup_deadline: float = STARTUP_DEADLINE,
    outputs: list[Output] | None = None,
    workers: int | None = None,
    **env: str,
) -> Iterator[Running]:
    """Start the server with this config (gRPC on a free port; no HTTP unless env sets
    AIBATTLE_HTTP_ADDR); yield it once it prints its banner, or fail after `startup_deadline`
    seconds with its output; kill it on exit if still running. `outputs` receives its Output (to read
    its logs on stderr). `workers`: `--workers N` (the database must then be PostgreSQL: AIBATTLE_DB), in
    a process group of its own, all killed on exit."""
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
    argv = [sys.executable, "-m", "server", *(["--workers", str(workers)] if workers is not None else [])]
    with started(argv, environment, group=workers is not None) as (proc, output):
        if outputs is not None:
            outputs.append(output)
        banner = wait_for_line(proc, output, BANNER, startup_deadline)
        http = HTTP_BANNER.search(banner.string)
        yield Running(proc, banner.group(1), http.group(1) if http else "")


SETUPS = ("one process", "2 workers")
"""The ways `served` runs the server: the e2e tests that take them pass against either."""


@contextmanager
def served(
    setup: str, request: pytest.FixtureRequest, config_toml: str, tmp_path: Path, **kwargs: Any
) -> Iterator[Running]:
    """`server_process(config_toml, tmp_path, **kwargs)` as one process, or as `--workers 2` on a fresh
    PostgreSQL database of the session's server (the test module imports the `postgres_server` fixture)."""
    if setup == "one process":
        with server_process(config_toml, tmp_path, **kwargs) as running:
            yield running
        return
    assert setup == "2 workers", setup
    postgres = request.getfixturevalue("postgres_server")
    # The workers' metrics here, not in a directory of /tmp that a killed supervisor would leave behind.
    metrics = tmp_path / "metrics"
    metrics.mkdir(exist_ok=True)
    kwargs.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics))
    with (
        database_of(postgres) as url,
        server_process(config_toml, tmp_path, workers=2, AIBATTLE_DB=url, **kwargs) as running,
    ):
        yield running
