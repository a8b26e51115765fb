"""Local PostgreSQL and Redis processes on 127.0.0.1: what the tests' fixtures and `make run-cluster` start.

No pytest here: `tests/postgres_testlib.py` and `tests/redis_testlib.py` wrap these in fixtures, and
`tools/run_cluster.py` runs them in front of the server's workers.

PostgreSQL: `initdb` into a directory (as the `postgres` user when we are root: PostgreSQL refuses to run
as root), then `postgres` on a free port of 127.0.0.1 with its socket in that directory, ready when its
log says so. Throwaway by default (a temporary directory, fsync off, removed by `stop()`); `directory=`
and `durable=True` keep the data between starts. Redis: `redis-server` on a free port of 127.0.0.1 that
saves nothing, ready when it answers PING.

`new_session=True` starts a server in a session of its own, so a Ctrl-C at the terminal (SIGINT to the
foreground process group) does not reach it: whoever started it stops it, after what depends on it.
`die_with_parent=True` has the kernel send it SIGTERM if the process that started it dies without
stopping it (a SIGKILL), so it never outlives its owner.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

#: prctl(2): the signal a process receives when its parent dies.
PR_SET_PDEATHSIG = 1

BIN = Path(os.environ.get("AIBATTLE_PG_BIN", "/usr/local/bin"))


def tool(name: str) -> str:
    """A PostgreSQL program: in BIN, on PATH, or where Debian keeps it (the newest version's)."""
    found = BIN / name
    if found.exists():
        return str(found)
    versions = [p for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if p.parts[-3].isdigit()]
    debian = sorted(versions, key=lambda p: int(p.parts[-3]))
    return shutil.which(name) or (str(debian[-1]) if debian else name)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def die_with_parent_hook() -> None:
    """In a child before it runs its program (`preexec_fn`): SIGTERM when its parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def as_postgres() -> list[str]:
    """The prefix that runs a PostgreSQL program as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _stop(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class PostgresServer:
    """One running PostgreSQL; `url(database)` connects to a database of it as the superuser."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)
    keep: bool = False
    """Keep `directory` (its data) when stopped; a throwaway server's is removed."""

    def __post_init__(self) -> None:
        self.log = self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def postmaster_pid(self) -> int | None:
        """The running postmaster's pid (the first line of its postmaster.pid), if it runs."""
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        return None

    def stop(self) -> None:
        """SIGTERM (a "smart" shutdown: it waits for its clients), SIGKILL after 10 s; a kept
        server gets SIGINT (a "fast" one: its clients are disconnected, its data checkpointed)."""
        if self.process is not None:
            sig = signal.SIGINT if self.keep else signal.SIGTERM
            # Signalled at the postmaster itself: as root it runs under runuser, which passes on
            # only a SIGTERM (and exits when the postmaster does).
            postmaster = self.postmaster_pid()
            if postmaster is not None and self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(postmaster, sig)
            _stop(self.process, sig, 10)
        self.process = None
        if not self.keep:
            shutil.rmtree(self.directory, ignore_errors=True)


def start_postgres(
    timeout: float = 60.0,
    *,
    directory: Path | None = None,
    port: int = 0,
    durable: bool = False,
    new_session: bool = False,
    die_with_parent: bool = False,
) -> PostgresServer:
    """initdb (unless `directory` already holds a cluster), start, and wait until it accepts
    connections; on any failure, stop it (and remove a throwaway directory).

    directory: None, a temporary directory removed by `stop()`; else kept (created if missing).
    port: 0, a free one. durable: fsync and synchronous commits on (off for throwaway data).
    """
    keep = directory is not None
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="aibattle-pg-"))
    else:
        directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
        directory.chmod(0o700)
    server = PostgresServer(directory, port or free_port(), keep=keep)
    try:
        data = directory / "data"
        if not (data / "PG_VERSION").exists():
            subprocess.run(
                [*as_postgres(), tool("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"]
                + ([] if durable else ["--no-sync"]),
                check=True,
                capture_output=True,
                env={**os.environ, "LC_ALL": "C"},
            )
        settings = ["listen_addresses=127.0.0.1", "max_connections=200"]
        if not durable:
            settings += ["fsync=off", "synchronous_commit=off", "full_page_writes=off"]
        # As the `postgres` user when we are root, through runuser rather than Popen(user=...): that
        # would fork (not vfork) this process, and a fork of a process running gRPC's threads (a test
        # session) can crash before it execs. `stop` signals the postmaster itself.
        with server.log.open("wb") as log:
            server.process = subprocess.Popen(
                [
                    *as_postgres(),
                    tool("postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(directory),
                    "-p",
                    str(server.port),
                    *(arg for setting in settings for arg in ("-c", setting)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
                preexec_fn=die_with_parent_hook if die_with_parent else None,
            )
        deadline = time.monotonic() + timeout
        # Its own words, not a connection attempt: a caller may not want an event loop of its own here.
        while b"ready to accept connections" not in server.log.read_bytes():
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not start: {server.log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGTERM, 10)
        self.process = None


class RedisMissing(RuntimeError):
    """redis-server is not installed."""


def start_redis(
    timeout: float = 20.0, *, port: int = 0, new_session: bool = False, die_with_parent: bool = False
) -> RedisServer:
    """Start `redis-server` (saving nothing) and wait for its PING; on any failure, stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisMissing("redis-server is not installed (make install brings Debian's)")
    server = RedisServer(port or free_port())
    try:
        server.process = subprocess.Popen(
            [binary, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=new_session,
            preexec_fn=die_with_parent_hook if die_with_parent else None,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=server.port, socket_timeout=1) as client:
                    if client.ping():
                        return server
            except redis.ConnectionError:
                pass
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
    except BaseException:
        server.stop()
        raise
