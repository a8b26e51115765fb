"""A throwaway PostgreSQL for the tests: one server per test session, a fresh database per test.

The server is `tools.local_services`' (shared with `make run-cluster`): `initdb` into a temporary
directory (as the `postgres` user when the tests run as root: PostgreSQL refuses to run as root),
`postgres` on a free port of 127.0.0.1 with its socket in that directory, fsync off (nothing here must
survive a crash of the machine). Stopped, and its directory removed, at the end of the session, and also
when starting it fails; an `atexit` hook covers an interrupted run.

Use: import the fixtures into a test module (`from tests.postgres_testlib import postgres_url`) and
take `postgres_url` (a new, empty database's URL) as an argument; `postgres_server` is the session's.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest

from tools import local_services
from tools.local_services import PostgresServer

__all__ = ["PostgresServer", "fresh_database", "postgres_server", "postgres_url", "start_postgres"]


def start_postgres(timeout: float = 60.0) -> PostgresServer:
    """initdb, start, and wait until it accepts connections; on any failure, stop and clean up."""
    server = local_services.start_postgres(timeout)
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


@contextlib.contextmanager
def database_of(server: PostgresServer) -> Iterator[str]:
    """`fresh_database` for a synchronous fixture of any scope (a server process's, say): its own event
    loop, kept for the drop."""
    loop = asyncio.new_event_loop()
    database = fresh_database(server)
    try:
        url = loop.run_until_complete(database.__aenter__())
        try:
            yield url
        finally:
            loop.run_until_complete(database.__aexit__(None, None, None))
    finally:
        loop.close()
