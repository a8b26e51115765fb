"""SQLite (WAL) behind the Store interface, through aiosqlite: queries run on its own thread, never
on the event loop.

One connection, serialized by aiosqlite; every write is one transaction (BEGIN IMMEDIATE), so a step's
state and its events are committed together or not at all. aiosqlite serializes statements, not
transactions: two coroutines committing at once would interleave BEGINs on the one connection ("cannot
start a transaction within a transaction"), and a statement run between another's BEGIN and COMMIT
would join (and read) that transaction. So every operation holds `_lock` for its whole transaction.
WAL lets other connections (another process reading the file) read while a writer commits.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from time import perf_counter  # bound here: a test replaces this module's `time` with its clock
from typing import Any, Concatenate, ParamSpec, TypeVar

import aiosqlite

from common.observability import metrics
from server.storage.base import KeyRow, Lease, LeaseLost, OnCommit, OnGap, Stored

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    resource_id   TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    owner         TEXT NOT NULL DEFAULT '',
    status        INTEGER NOT NULL,
    body          BLOB NOT NULL,
    last_sequence INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    runner_id     TEXT,
    lease_until   REAL,
    traceparent   TEXT
);
-- Serves orphans(), which the sweep runs every few seconds: the few runs in progress, not every row.
CREATE INDEX IF NOT EXISTS resources_by_status ON resources (status, kind);
-- Serves list(): its filter, its order and its keyset bound, (created_at, resource_id) < (?, ?).
DROP INDEX IF EXISTS resources_by_owner;
CREATE INDEX IF NOT EXISTS resources_by_owner_age
    ON resources (kind, owner, created_at DESC, resource_id DESC);
CREATE TABLE IF NOT EXISTS events (
    resource_id TEXT NOT NULL REFERENCES resources (resource_id) ON DELETE CASCADE,
    sequence    INTEGER NOT NULL,
    body        BLOB NOT NULL,
    PRIMARY KEY (resource_id, sequence)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS api_keys (
    key_id                 TEXT PRIMARY KEY,
    name                   TEXT NOT NULL,
    secret_hash            BLOB NOT NULL,
    allowed_models         TEXT NOT NULL,
    rpm                    INTEGER NOT NULL,
    tpm                    INTEGER NOT NULL,
    max_concurrent_streams INTEGER NOT NULL,
    budget_usd             REAL NOT NULL,
    expire_time            REAL,
    created_at             REAL NOT NULL,
    revoked_at             REAL,
    spent_usd              REAL NOT NULL DEFAULT 0
);
DROP INDEX IF EXISTS api_keys_by_age;
CREATE INDEX IF NOT EXISTS api_keys_by_age_id ON api_keys (created_at DESC, key_id DESC);
"""
#: Columns added since the first schema, added to an older database when it opens: (table, column, type).
_ADDED_COLUMNS = (("resources", "traceparent", "TEXT"),)
P = ParamSpec("P")
R = TypeVar("R")


def _serialized(
    method: Callable[Concatenate[SqliteStore, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[SqliteStore, P], Coroutine[Any, Any, R]]:
    """Run the method holding the store's lock: one transaction at a time (see the module docstring).

    A caller cancelled mid-transaction (a cancelled run) waits for the transaction to end before the
    cancellation goes through: the statement already runs on the database thread, and abandoning it
    would roll back a COMMIT that in fact succeeded ("no transaction is active") and leave the
    connection inside a transaction for the next caller.
    """

    operation = method.__name__

    @functools.wraps(method)
    async def wrapper(self: SqliteStore, *args: P.args, **kwargs: P.kwargs) -> R:
        started = perf_counter()
        try:
            async with self._lock:
                work = asyncio.ensure_future(method(self, *args, **kwargs))
                try:
                    return await asyncio.shield(work)
                except asyncio.CancelledError:
                    with contextlib.suppress(Exception):
                        await work
                    raise
        finally:
            if metrics.enabled:  # waiting for the lock included: what the caller waited
                metrics.STORE_DURATION.labels(operation).observe(perf_counter() - started)

    return wrapper


_COLUMNS = (
    "resource_id, kind, owner, status, body, last_sequence, created_at, updated_at, runner_id, lease_until,"
    " traceparent"
)


class SqliteStore:
    """See the module docstring; `path` ":memory:" keeps everything in memory (tests)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    async def open(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self._path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across a process crash
        await self._db.execute("PRAGMA foreign_keys=ON")
        await self._db.execute("PRAGMA busy_timeout=5000")
        await self._db.executescript(_SCHEMA)
        await self._migrate()

    async def _migrate(self) -> None:
        """Columns a database created by an earlier version lacks (`_ADDED_COLUMNS`)."""
        for table, column, kind in _ADDED_COLUMNS:
            async with self.db.execute(f"PRAGMA table_info({table})") as cursor:
                present = {row[1] async for row in cursor}
            if column not in present:
                await self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def ping(self) -> bool:
        return self._db is not None  # a file of this process's: there while it is open

    async def watch(self, on_commit: OnCommit, on_gap: OnGap) -> None:
        """Nothing to watch: one process uses the file, and its commits reach its hub directly."""

    @_serialized
    async def create(
        self,
        kind: str,
        resource_id: str,
        *,
        owner: str,
        status: int,
        body: bytes,
        events: Sequence[bytes],
        lease: Lease | None = None,
        traceparent: str | None = None,
    ) -> int:
        now = time.time()
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            await db.execute(
                f"INSERT INTO resources ({_COLUMNS}) VALUES ({', '.join('?' * 11)})",
                (
                    resource_id,
                    kind,
                    owner,
                    status,
                    body,
                    len(events),
                    now,
                    now,
                    None if lease is None else lease.runner_id,
                    None if lease is None else lease.until,
                    traceparent,
                ),
            )
            await db.executemany(
                "INSERT INTO events (resource_id, sequence, body) VALUES (?, ?, ?)",
                [(resource_id, i, event) for i, event in enumerate(events, start=1)],
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return len(events)

    @_serialized
    async def commit(
        self,
        resource_id: str,
        *,
        status: int,
        body: bytes | None,
        events: Sequence[bytes],
        runner_id: str | None = None,
    ) -> int:
        db = self.db
        await db.execute("BEGIN IMMEDIATE")
        try:
            async with db.execute(
                "SELECT last_sequence, runner_id FROM resources WHERE resource_id = ?", (resource_id,)
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                raise KeyError(resource_id)
            last, holder = int(row[0]), row[1]
            if runner_id is not None and holder != runner_id:
                raise LeaseLost(resource_id)
            await db.executemany(
                "INSERT INTO events (resource_id, sequence, body) VALUES (?, ?, ?)",
                [(resource_id, last + i, event) for i, event in enumerate(events, start=1)],
            )
            last += len(events)
            await db.execute(
                "UPDATE resources SET status = ?, body = coalesce(?, body), last_sequence = ?,"
                " updated_at = ? WHERE resource_id = ?",
                (status, body, last, time.time(), resource_id),
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return last

    @_serialized
    async def claim(
        self,
        resource_id: str,
        lease: Lease,
        *,
        expected_sequence: int,
        status: int,
        body: bytes,
        events: Sequence[bytes],
        now: float,
        traceparent: str | None = None,
    ) -> int | None:
        db = self.db
        last = expected_sequence + len(events)
        await db.execute("BEGIN IMMEDIATE")
        try:
            cursor = await db.execute(
                "UPDATE resources SET runner_id = ?, lease_until = ?, status = ?, body = ?,"
                " last_sequence = ?, updated_at = ?, traceparent = coalesce(?, traceparent)"
                " WHERE resource_id = ? AND last_sequence = ?"
                " AND (runner_id IS NULL OR lease_until IS NULL OR lease_until < ?)",
                (
                    lease.runner_id,
                    lease.until,
                    status,
                    body,
                    last,
                    now,
                    traceparent,
                    resource_id,
                    expected_sequence,
                    now,
                ),
            )
            if cursor.rowcount == 0:
                await db.execute("ROLLBACK")
                return None
            await db.executemany(
                "INSERT INTO events (resource_id, sequence, body) VALUES (?, ?, ?)",
                [(resource_id, expected_sequence + i, e) for i, e in enumerate(events, start=1)],
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return last

    @_serialized
    async def get(self, resource_id: str, *, kind: str, owner: str | None = None) -> Stored | None:
        query, args = (
            f"SELECT {_COLUMNS} FROM resources WHERE resource_id = ? AND kind = ?",
            [resource_id, kind],
        )
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        async with self.db.execute(query, args) as cursor:
            row = await cursor.fetchone()
        return None if row is None else Stored(*row)

    @_serialized
    async def list(
        self,
        kind: str,
        *,
        owner: str | None,
        status: int | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> builtins.list[Stored]:
        query = f"SELECT {_COLUMNS} FROM resources WHERE kind = ?"
        args: list[object] = [kind]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        if status is not None:
            query += " AND status = ?"
            args.append(status)
        if after is not None:
            query += " AND (created_at, resource_id) < (?, ?)"
            args += after
        query += " ORDER BY created_at DESC, resource_id DESC LIMIT ?"
        args.append(limit)
        async with self.db.execute(query, args) as cursor:
            return [Stored(*row) async for row in cursor]

    @_serialized
    async def delete(self, resource_id: str, *, kind: str, owner: str | None = None) -> bool:
        db = self.db
        query, args = "DELETE FROM resources WHERE resource_id = ? AND kind = ?", [resource_id, kind]
        if owner is not None:
            query += " AND owner = ?"
            args.append(owner)
        await db.execute("BEGIN IMMEDIATE")
        try:
            cursor = await db.execute(query, args)
            deleted = cursor.rowcount > 0
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        return deleted

    @_serialized
    async def events(
        self, resource_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[tuple[int, bytes]]:
        async with self.db.execute(
            "SELECT sequence, body FROM events WHERE resource_id = ? AND sequence > ?"
            " ORDER BY sequence LIMIT ?",
            (resource_id, after, limit),
        ) as cursor:
            return [(int(seq), bytes(body)) async for seq, body in cursor]

    @_serialized
    async def acquire(self, resource_id: str, lease: Lease, *, now: float) -> bool:
        cursor = await self.db.execute(
            "UPDATE resources SET runner_id = ?, lease_until = ? WHERE resource_id = ?"
            " AND (runner_id IS NULL OR runner_id = ? OR lease_until IS NULL OR lease_until < ?)",
            (lease.runner_id, lease.until, resource_id, lease.runner_id, now),
        )
        return cursor.rowcount > 0

    @_serialized
    async def renew(self, resource_id: str, lease: Lease) -> bool:
        cursor = await self.db.execute(
            "UPDATE resources SET lease_until = ? WHERE resource_id = ? AND runner_id = ?",
            (lease.until, resource_id, lease.runner_id),
        )
        return cursor.rowcount > 0

    @_serialized
    async def release(self, resource_id: str, runner_id: str) -> None:
        await self.db.execute(
            "UPDATE resources SET runner_id = NULL, lease_until = NULL"
            " WHERE resource_id = ? AND runner_id = ?",
            (resource_id, runner_id),
        )

    @_serialized
    async def orphans(self, kind: str, *, statuses: Sequence[int], now: float) -> builtins.list[Stored]:
        marks = ", ".join("?" for _ in statuses)
        async with self.db.execute(
            f"SELECT {_COLUMNS} FROM resources WHERE kind = ? AND status IN ({marks})"
            " AND (lease_until IS NULL OR lease_until < ?)",
            (kind, *statuses, now),
        ) as cursor:
            return [Stored(*row) async for row in cursor]

    # ---- API keys (KeyStore)

    @_serialized
    async def create_key(self, key: KeyRow) -> None:
        await self.db.execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ({', '.join('?' * 12)})",
            (
                key.key_id,
                key.name,
                key.secret_hash,
                json.dumps(list(key.allowed_models)),
                key.rpm,
                key.tpm,
                key.max_concurrent_streams,
                key.budget_usd,
                key.expire_time,
                key.created_at,
                key.revoked_at,
                key.spent_usd,
            ),
        )

    @_serialized
    async def get_key(self, key_id: str) -> KeyRow | None:
        async with self.db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _key_row(row)

    @_serialized
    async def list_keys(
        self, *, show_revoked: bool, after: tuple[float, str] | None, limit: int
    ) -> builtins.list[KeyRow]:
        conditions = [] if show_revoked else ["revoked_at IS NULL"]
        args: list[object] = []
        if after is not None:
            conditions.append("(created_at, key_id) < (?, ?)")
            args += after
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        async with self.db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at DESC, key_id DESC LIMIT ?",
            (*args, limit),
        ) as cursor:
            return [_key_row(row) async for row in cursor]

    @_serialized
    async def revoke_key(self, key_id: str, *, at: float) -> KeyRow | None:
        await self.db.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (at, key_id)
        )
        async with self.db.execute(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = ?", (key_id,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _key_row(row)

    @_serialized
    async def add_key_spend(self, key_id: str, usd: float) -> None:
        await self.db.execute("UPDATE api_keys SET spent_usd = spent_usd + ? WHERE key_id = ?", (usd, key_id))


_KEY_COLUMNS = (
    "key_id, name, secret_hash, allowed_models, rpm, tpm, max_concurrent_streams, budget_usd,"
    " expire_time, created_at, revoked_at, spent_usd"
)


def _key_row(row: Sequence[Any]) -> KeyRow:
    values = list(row)
    values[2] = bytes(values[2])
    values[3] = tuple(json.loads(values[3]))
    return KeyRow(*values)


__all__ = ["LeaseLost", "SqliteStore"]
