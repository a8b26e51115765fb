"""`[server] workers`, AIBATTLE_WORKERS and `--workers N`: how many processes serve, and the one database
several of them can share; the supervisor's ports and metrics directory (tests/e2e/test_workers.py runs
the processes)."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from server import workers
from server.config import ConfigError, load_config

PG = "postgresql://u@127.0.0.1:5432/aibattle"


def test_one_worker_by_default() -> None:
    config = load_config(env={})
    assert (config.server.workers, config.server.worker_count) == (1, 1)


def test_the_variable_is_a_number_and_the_flag_wins(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text(f'[server]\nworkers = 3\ndatabase = "{PG}"\n')
    assert load_config(path, env={}).server.workers == 3
    assert load_config(path, env={"AIBATTLE_WORKERS": "2"}).server.workers == 2
    assert load_config(path, env={"AIBATTLE_WORKERS": "2"}, workers=4).server.workers == 4


def test_zero_is_one_per_core() -> None:
    config = load_config(env={"AIBATTLE_WORKERS": "0", "AIBATTLE_DB": PG})
    assert config.server.worker_count == (os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("env", "workers", "line"),
    [
        ({"AIBATTLE_WORKERS": "x"}, None, "AIBATTLE_WORKERS: Input should be a valid integer, got 'x'"),
        ({}, -1, "--workers: Input should be greater than or equal to 0, got -1"),
    ],
)
def test_a_bad_count_names_where_it_came_from(env: dict[str, str], workers: int | None, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(env=env, workers=workers)
    assert caught.value.lines == (line,)


def test_several_workers_on_sqlite_are_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text("[server]\nworkers = 2\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    (line,) = caught.value.lines
    assert line.startswith(f"config file {path}: server.workers: 2 workers need a postgresql:// database")
    assert "followers" in line and "limits" in line
    assert load_config(path, env={"AIBATTLE_DB": PG}).server.worker_count == 2
    assert load_config(path, env={}, workers=1).server.worker_count == 1


def test_a_port_0_is_resolved_once_and_held_for_the_workers() -> None:
    reserved: list[socket.socket] = []
    try:
        addr = workers._resolve("127.0.0.1:0", reserved)
        assert workers._resolve("127.0.0.1:8080", reserved) == "127.0.0.1:8080"  # a port given is kept
        host, port = addr.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0 and len(reserved) == 1
        # A worker binds it too, and listens; a process without SO_REUSEPORT cannot take it.
        worker = socket.socket()
        worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        worker.bind(("127.0.0.1", int(port)))
        worker.listen()
        worker.close()
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(("127.0.0.1", int(port)))
    finally:
        for sock in reserved:
            sock.close()


def test_a_dead_supervisors_metrics_directory_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = subprocess.Popen(["true"])
    dead.wait()
    mine = tmp_path / f"{workers.METRICS_PREFIX}{os.getpid()}-abc"
    orphan = tmp_path / f"{workers.METRICS_PREFIX}{dead.pid}-def"
    other = tmp_path / f"{workers.METRICS_PREFIX}xyz"
    for directory in (mine, orphan, other):
        directory.mkdir()
    workers._remove_orphaned_metrics()
    assert (mine.exists(), orphan.exists(), other.exists()) == (True, False, True)
