"""A throwaway PostgreSQL for the tests: one server per test session, a fresh database per test.

`initdb` into a temporary directory (as the `postgres` user when the tests run as root: PostgreSQL
refuses to run as root), `postgres` on a free port of 127.0.0.1 with its socket in that directory,
fsync off (nothing here must survive a crash of the machine). Stopped, and its directory removed, at
the end of the session, and also when starting it fails; an `atexit` hook covers an interrupted run.

Use: import the fixtures into a test module (`from tests.postgres_testlib import postgres_url`) and
take `postgres_url` (a new, empty database's URL) as an argument; `postgres_server` is the session's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

BIN = Path(os.environ.get("AIBATTLE_PG_BIN", "/usr/local/bin"))


def _tool(name: str) -> str:
    """A PostgreSQL program: in BIN, on PATH, or where Debian keeps it (the newest version's)."""
    found = BIN / name
    if found.exists():
        return str(found)
    versions = [p for p in Path("/usr/lib/postgresql").glob(f"*/bin/{name}") if p.parts[-3].isdigit()]
    debian = sorted(versions, key=lambda p: int(p.parts[-3]))
    return shutil.which(name) or (str(debian[-1]) if debian else name)


@dataclass
class PostgresServer:
    """One running PostgreSQL; `url(database)` connects to a database of it as the superuser."""

    directory: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # SIGTERM: a "smart" shutdown... then fast if it lingers
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres() -> list[str]:
    """The prefix that runs a PostgreSQL program as the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def start_postgres(timeout: float = 60.0) -> PostgresServer:
    """initdb, start, and wait until it accepts connections; on any failure, stop and clean up."""
    directory = Path(tempfile.mkdtemp(prefix="aibattle-pg-"))
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    server = PostgresServer(directory, _free_port())
    try:
        data = directory / "data"
        subprocess.run(
            [*_as_postgres(), _tool("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"],
            check=True,
            capture_output=True,
            env={**os.environ, "LC_ALL": "C"},
        )
        with server.log.open("wb") as log:
            server.process = subprocess.Popen(
                [
                    *_as_postgres(),
                    _tool("postgres"),
                    "-D",
                    str(data),
                    "-k",
                    str(directory),
                    "-p",
                    str(server.port),
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=200",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        # Its own words, not a connection attempt: a fixture must not run an event loop of its own.
        while b"ready to accept connections" not in server.log.read_bytes():
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL did not start: {server.log.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.1)
    except BaseException:
        server.stop()
        raise
    atexit.register(server.stop)
    return server


_started: list[PostgresServer] = []


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """The session's PostgreSQL: one for every module that imports this fixture."""
    if not _started:
        _started.append(start_postgres())
    try:
        yield _started[0]
    finally:
        if _started:
            _started.pop().stop()


@contextlib.asynccontextmanager
async def fresh_database(server: PostgresServer) -> AsyncIterator[str]:
    """A new, empty database of `server`, dropped afterwards (its connections closed by force)."""
    name = f"t_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(server.url())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield server.url(name)
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def postgres_url(postgres_server: PostgresServer) -> AsyncIterator[str]:
    """A new, empty database for this test (dropped after it)."""
    async with fresh_database(postgres_server) as url:
        yield url
