"""SQLite (WAL) behind the Store interface, through aiosqlite: queries run on its own thread, never
on the event loop.

One connection, serialized by aiosqlite; every write is one transaction (BEGIN IMMEDIATE), so a step's
state and its events are committed together or not at all. WAL lets readers (event followers) read
while a writer commits.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Sequence
from pathlib import Path

import aiosqlite

from server.storage.base import Lease, LeaseLost, Stored

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
    lease_until   REAL
);
CREATE INDEX IF NOT EXISTS resources_by_owner ON resources (kind, owner, created_at DESC);
CREATE TABLE IF NOT EXISTS events (
    resource_id TEXT NOT NULL REFERENCES resources (resource_id) ON DELETE CASCADE,
    sequence    INTEGER NOT NULL,
    body        BLOB NOT NULL,
    PRIMARY KEY (resource_id, sequence)
) WITHOUT ROWID;
"""
_COLUMNS = (
    "resource_id, kind, owner, status, body, last_sequence, created_at, updated_at, runner_id, lease_until"
)


class SqliteStore:
    """See the module docstring; `path` ":memory:" keeps everything in memory (tests)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: aiosqlite.Connection | None = None
        # One connection serves every task: without this lock two tasks' transactions interleave on it
        # ("cannot start a transaction within a transaction", and one's ROLLBACK undoes the other's
        # statements), and a read between another task's BEGIN and COMMIT sees uncommitted events.
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

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def create(
        self, kind: str, resource_id: str, *, owner: str, status: int, body: bytes, events: Sequence[bytes]
    ) -> int:
        async with self._lock:
            now = time.time()
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                await db.execute(
                    "INSERT INTO resources (resource_id, kind, owner, status, body, last_sequence,"
                    " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (resource_id, kind, owner, status, body, len(events), now, now),
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

    async def commit(
        self,
        resource_id: str,
        *,
        status: int,
        body: bytes,
        events: Sequence[bytes],
        runner_id: str | None = None,
    ) -> int:
        async with self._lock:
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
                    "UPDATE resources SET status = ?, body = ?, last_sequence = ?, updated_at = ?"
                    " WHERE resource_id = ?",
                    (status, body, last, time.time(), resource_id),
                )
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            return last

    async def get(self, resource_id: str, *, kind: str) -> Stored | None:
        async with self._lock:
            async with self.db.execute(
                f"SELECT {_COLUMNS} FROM resources WHERE resource_id = ? AND kind = ?", (resource_id, kind)
            ) as cursor:
                row = await cursor.fetchone()
            return None if row is None else Stored(*row)

    async def list(
        self, kind: str, *, owner: str, status: int | None, offset: int, limit: int
    ) -> builtins.list[Stored]:
        async with self._lock:
            query = f"SELECT {_COLUMNS} FROM resources WHERE kind = ? AND owner = ?"
            args: list[object] = [kind, owner]
            if status is not None:
                query += " AND status = ?"
                args.append(status)
            query += " ORDER BY created_at DESC, resource_id LIMIT ? OFFSET ?"
            args += [limit, offset]
            async with self.db.execute(query, args) as cursor:
                return [Stored(*row) async for row in cursor]

    async def delete(self, resource_id: str, *, kind: str) -> bool:
        async with self._lock:
            db = self.db
            await db.execute("BEGIN IMMEDIATE")
            try:
                cursor = await db.execute(
                    "DELETE FROM resources WHERE resource_id = ? AND kind = ?", (resource_id, kind)
                )
                deleted = cursor.rowcount > 0
                await db.execute("COMMIT")
            except BaseException:
                await db.execute("ROLLBACK")
                raise
            return deleted

    async def events(
        self, resource_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[tuple[int, bytes]]:
        async with self._lock:
            async with self.db.execute(
                "SELECT sequence, body FROM events WHERE resource_id = ? AND sequence > ?"
                " ORDER BY sequence LIMIT ?",
                (resource_id, after, limit),
            ) as cursor:
                return [(int(seq), bytes(body)) async for seq, body in cursor]

    async def acquire(self, resource_id: str, lease: Lease, *, now: float) -> bool:
        async with self._lock:
            cursor = await self.db.execute(
                "UPDATE resources SET runner_id = ?, lease_until = ? WHERE resource_id = ?"
                " AND (runner_id IS NULL OR runner_id = ? OR lease_until IS NULL OR lease_until < ?)",
                (lease.runner_id, lease.until, resource_id, lease.runner_id, now),
            )
            return cursor.rowcount > 0

    async def renew(self, resource_id: str, lease: Lease) -> bool:
        async with self._lock:
            cursor = await self.db.execute(
                "UPDATE resources SET lease_until = ? WHERE resource_id = ? AND runner_id = ?",
                (lease.until, resource_id, lease.runner_id),
            )
            return cursor.rowcount > 0

    async def release(self, resource_id: str, runner_id: str) -> None:
        async with self._lock:
            await self.db.execute(
                "UPDATE resources SET runner_id = NULL, lease_until = NULL"
                " WHERE resource_id = ? AND runner_id = ?",
                (resource_id, runner_id),
            )

    async def orphans(self, kind: str, *, statuses: Sequence[int], now: float) -> builtins.list[Stored]:
        async with self._lock:
            marks = ", ".join("?" for _ in statuses)
            async with self.db.execute(
                f"SELECT {_COLUMNS} FROM resources WHERE kind = ? AND status IN ({marks})"
                " AND (lease_until IS NULL OR lease_until < ?)",
                (kind, *statuses, now),
            ) as cursor:
                return [Stored(*row) async for row in cursor]


__all__ = ["LeaseLost", "SqliteStore"]
