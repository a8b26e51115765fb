"""`make run-cluster` as a newcomer runs it: it serves over HTTP and gRPC from PostgreSQL, and one Ctrl-C
(SIGINT to its process group, as a terminal sends it) stops the server, Redis and PostgreSQL, leaving no
process behind; a second start finds what the first one stored."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
BANNER = re.compile(r"AI Battle serving gRPC on (\S+), HTTP on (\S+); models: .*; workers: 2")
CONFIG = """
[server]
grpc_addr = "127.0.0.1:0"
http_addr = "127.0.0.1:0"
shutdown_grace_seconds = 5

[[models]]
id = "echo"
provider = "scripted"
script = ["Hello from the cluster."]
"""

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("make") is None, reason="needs make and redis-server"
)


@dataclass
class Cluster:
    proc: subprocess.Popen[str]
    grpc_target: str
    http_url: str
    lines: list[str]
    reader: threading.Thread

    def descendants(self) -> dict[int, str]:
        """Every process below make (the server's workers, redis-server, postgres and its backends),
        with its command line."""
        parents: dict[int, int] = {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                text = stat.read_text()
            except OSError:
                continue
            parents[int(stat.parent.name)] = int(text.rsplit(")", 1)[1].split()[1])
        found: dict[int, str] = {}
        frontier = [self.proc.pid]
        while frontier:
            pid = frontier.pop()
            for child, parent in parents.items():
                if parent == pid and child not in found:
                    found[child] = _cmdline(child)
                    frontier.append(child)
        return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int, cmdline: str) -> bool:
    """Still running (not a zombie) as the same program."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and _cmdline(pid) == cmdline


_running: list[Cluster] = []


@pytest.fixture
def cluster_dir() -> Iterator[Path]:
    """The cluster's directory; afterwards, a cluster the test left running is stopped all the same."""
    # Not under pytest's tmp_path: as root, PostgreSQL runs as `postgres`, who must reach the directory.
    directory = Path(tempfile.mkdtemp(prefix="aibattle-cluster-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        while _running:
            cluster = _running.pop()
            if cluster.proc.poll() is None:
                with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                    ctrl_c(cluster)
        shutil.rmtree(directory, ignore_errors=True)


def start(cluster_dir: Path, config: Path) -> Cluster:
    # -o: never (re)install here; PY: this interpreter (the venv's, as make's default is).
    argv = ["make", "-s", "-o", ".venv/.installed-stamp", "run-cluster", f"PY={sys.executable}"]
    proc = subprocess.Popen(
        [*argv, f"CLUSTER_DIR={cluster_dir}"],
        cwd=ROOT,
        env={**os.environ, "AIBATTLE_CONFIG": str(config)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal gives a foreground job
    )
    seen: list[str] = []
    banner: queue.Queue[re.Match[str] | None] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if match := BANNER.search(line):
                banner.put(match)
        banner.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        match = banner.get(timeout=90)
    except queue.Empty:
        match = None
    if match is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(10)
        assert proc.stdout is not None
        proc.stdout.close()
        raise AssertionError("make run-cluster did not serve:\n" + "".join(seen[-40:]))
    cluster = Cluster(proc, match[1], match[2], seen, reader)
    _running.append(cluster)
    return cluster


def ctrl_c(cluster: Cluster) -> dict[int, str]:
    """SIGINT to the process group, as a terminal's Ctrl-C; returns the processes that were running
    below make and still are once make has exited (killed then, so that nothing outlives the test)."""
    processes = cluster.descendants()
    os.killpg(cluster.proc.pid, signal.SIGINT)
    try:
        # make dies of the signal once its child is done, as with `make run`.
        assert cluster.proc.wait(60) == -signal.SIGINT
    finally:
        if cluster.proc.poll() is None:
            os.killpg(cluster.proc.pid, signal.SIGKILL)
            cluster.proc.wait()
        cluster.reader.join(10)
        assert cluster.proc.stdout is not None
        cluster.proc.stdout.close()
        left = {pid: cmd for pid, cmd in processes.items() if _alive(pid, cmd)}
        for pid in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return left


def completion(cluster: Cluster) -> dict[str, object]:
    request = urllib.request.Request(
        f"{cluster.http_url}/api/v1/completions",
        data=json.dumps({"model": "echo", "prompt": "hi"}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def test_make_run_cluster_serves_and_one_ctrl_c_stops_all_of_it(cluster_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "aibattle.toml"
    config.write_text(CONFIG)
    cluster = start(cluster_dir, config)
    output = "".join(cluster.lines)
    assert re.search(r"PostgreSQL on postgresql://postgres@127\.0\.0\.1:\d+/aibattle", output), output
    assert re.search(r"Redis on redis://127\.0\.0\.1:\d+/0", output), output

    assert completion(cluster)["content"] == "Hello from the cluster."
    with grpc.insecure_channel(cluster.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        reply = stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="echo", prompt="hi"))
    assert reply.content == "Hello from the cluster."
    with urllib.request.urlopen(f"{cluster.http_url}/readyz", timeout=10) as response:
        assert response.status == 200

    processes = cluster.descendants()
    programs = " | ".join(processes.values())
    assert "redis-server" in programs and "postgres" in programs and "-m server" in programs, programs
    # The supervisor and its two workers.
    assert sum("-m server" in cmd for cmd in processes.values()) == 3, programs

    started = time.monotonic()
    left = ctrl_c(cluster)
    assert not left, left
    assert time.monotonic() - started < 30
    output = "".join(cluster.lines)
    assert "server exited (0)" in output and "cluster stopped" in output, output[-3000:]
    assert (cluster_dir / "postgres" / "data" / "PG_VERSION").exists()  # the data is kept


def test_a_second_start_finds_the_first_ones_conversation(cluster_dir: Path, tmp_path: Path) -> None:
    config = tmp_path / "aibattle.toml"
    config.write_text(CONFIG)
    body = {"models": [{"id": "echo", "role": "a"}, {"id": "echo", "role": "b"}], "initial_prompt": "Go"}
    cluster = start(cluster_dir, config)
    request = urllib.request.Request(
        f"{cluster.http_url}/api/v1/conversations",
        data=json.dumps({**body, "mode": "ai-ai", "rounds": 1, "wait": True}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        conversation = json.load(response)
    assert not ctrl_c(cluster)

    cluster = start(cluster_dir, config)
    try:
        url = f"{cluster.http_url}/api/v1/conversations/{conversation['conversation_id']}"
        with urllib.request.urlopen(url, timeout=10) as response:
            again = json.load(response)
        assert again["messages"] == conversation["messages"]
        assert again["messages"][-1]["content"] == "Hello from the cluster."
    finally:
        assert not ctrl_c(cluster)


def test_a_sigkill_to_its_process_group_leaves_nothing_behind(cluster_dir: Path, tmp_path: Path) -> None:
    """PostgreSQL and Redis run in sessions of their own (out of Ctrl-C's reach), yet die with the
    cluster script: the kernel tells them when it dies."""
    config = tmp_path / "aibattle.toml"
    config.write_text(CONFIG)
    cluster = start(cluster_dir, config)
    processes = cluster.descendants()
    os.killpg(cluster.proc.pid, signal.SIGKILL)
    cluster.proc.wait(10)
    deadline = time.monotonic() + 20
    while (left := {p: c for p, c in processes.items() if _alive(p, c)}) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    cluster.reader.join(10)
    assert cluster.proc.stdout is not None
    cluster.proc.stdout.close()
    assert not left, left
