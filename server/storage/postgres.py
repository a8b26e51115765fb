"""PostgreSQL behind the Store and KeyStore interfaces, through asyncpg: for replicas sharing one database.

A pool of connections; every write is one transaction on one of them, so a step's state and its events
are committed together or not at all, and many steps (of different resources) commit at once. What must
hold across connections (and replicas) is written as a conditional write in that transaction: a commit
locks its resource's row (`SELECT ... FOR UPDATE`) before it reads the last sequence and appends after
it, so sequences stay dense per resource; a claim is one `UPDATE ... WHERE <the state it decided from>
RETURNING`, which a concurrent claim waits on and then finds no longer true: exactly one wins.

Replicas learn of each other's commits through LISTEN/NOTIFY: every write that appends events notifies
`aibattle_events` in its own transaction (`RETURNING pg_notify(...)`, so PostgreSQL delivers it at commit
and never for a rollback), with the resource id and its last sequence as the payload; each process
holds one listener connection (`watch`) and hands them to its EventHub, whose followers then read from
their own last sequence. A notification carries no event, only where the log now ends: a lost one
costs a follower its poll interval (the hub's), never an event; a listener that reconnects tells the
hub to wake everyone (`on_gap`), and they re-read.

The database going away (a restart, a dropped connection) raises `StoreUnavailable`: the operation
did not happen, or may have; the caller never guesses (a run stops and is adopted once its lease
expires, which re-reads what was committed).

The schema is versioned (`schema_version`) and migrated at `open`, under a transaction-scoped advisory
lock, so replicas starting together migrate once; a database whose schema is newer than this code knows
is refused (`SchemaTooNew`) rather than written with assumptions that no longer hold.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable, Coroutine, Sequence
from time import perf_counter  # bound here, as in sqlite.py: a test may replace this module's `time`
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg  # type: ignore[import-untyped]

from common.observability import metrics
from server.storage.base import (
    KeyRow,
    Lease,
    LeaseLost,
    OnCommit,
    OnGap,
    SchemaTooNew,
    Stored,
    StoreUnavailable,
)

log = logging.getLogger(__name__)

#: The channel commits are announced on; the payload is "<resource id> <last sequence>".
CHANNEL = "aibattle_events"
_NOTIFY = f"pg_notify('{CHANNEL}', resource_id || ' ' || last_sequence)"
#: The listener connection's application_name (pg_stat_activity shows who it is).
LISTENER_NAME = "aibattle listener"
#: Seconds to wait for a connection (PostgreSQL's TCP port may be silent, not refusing).
CONNECT_TIMEOUT = 5.0
#: How often the listener checks its connection is alive when nothing arrives (a silent network
#: drop does not close a socket).
LISTENER_CHECK_SECONDS = 10.0
#: What "the database cannot be reached" looks like from asyncpg: a socket error, a refused or dropped
#: connection, the server shutting down or starting up, a connection attempt that timed out, and a
#: connection left mid-operation by its backend's death ("cannot switch to state ...": the pool then
#: discards it).
_UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,
)

#: The schema, one migration per version: a database at version n runs those after it, in order.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE resources (
        resource_id   TEXT PRIMARY KEY,
        kind          TEXT NOT NULL,
        owner         TEXT NOT NULL DEFAULT '',
        status        INTEGER NOT NULL,
        body          BYTEA NOT NULL,
        last_sequence BIGINT NOT NULL DEFAULT 0,
        created_at    DOUBLE PRECISION NOT NULL,
        updated_at    DOUBLE PRECISION NOT NULL,
        runner_id     TEXT,
        lease_until   DOUBLE PRECISION,
        traceparent   TEXT
    );
    -- Serves list(): its filter, its order and its keyset bound, (created_at, resource_id) < ($, $).
    CREATE INDEX resources_by_owner_age ON resources (kind, owner, created_at DESC, resource_id DESC);
    CREATE TABLE events (
        resource_id TEXT NOT NULL REFERENCES resources (resource_id) ON DELETE CASCADE,
        sequence    BIGINT NOT NULL,
        body        BYTEA NOT NULL,
        PRIMARY KEY (resource_id, sequence)
    );
    CREATE TABLE api_keys (
        key_id                 TEXT PRIMARY KEY,
        name                   TEXT NOT NULL,
        secret_hash            BYTEA NOT NULL,
        allowed_models         TEXT[] NOT NULL,
        rpm                    INTEGER NOT NULL,
        tpm                    INTEGER NOT NULL,
        max_concurrent_streams INTEGER NOT NULL,
        budget_usd             DOUBLE PRECISION NOT NULL,
        expire_time            DOUBLE PRECISION,
        created_at             DOUBLE PRECISION NOT NULL,
        revoked_at             DOUBLE PRECISION,
        spent_usd              DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX api_keys_by_age_id ON api_keys (created_at DESC, key_id DESC);
    """,
    # 2: serves orphans(), which every replica's sweep runs every few seconds: the few runs in progress,
    # without reading every resource ever stored.
    """
    CREATE INDEX resources_by_status ON resources (status, kind);
    """,
)
#: The schema version this code writes and reads.
SCHEMA_VERSION = len(_MIGRATIONS)
#: The advisory lock migrations hold (any constant both replicas agree on: "aibattle" in ASCII).
_MIGRATION_LOCK = 0x6169626174746C65

P = ParamSpec("P")
R = TypeVar("R")


def _observed(
    method: Callable[Concatenate[PostgresStore, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[PostgresStore, P], Coroutine[Any, Any, R]]:
    """Time the operation (`metrics.STORE_DURATION`, waiting for a connection included), and let a
    cancelled caller's transaction end before the cancellation goes through: abandoned midway, a COMMIT
    the server already made could be reported as failed, and the connection would go back to the pool
    still busy. A step is thus written whole or not at all, as on SQLite."""

    operation = method.__name__

    @functools.wraps(method)
    async def wrapper(self: PostgresStore, *args: P.args, **kwargs: P.kwargs) -> R:
        started = perf_counter()
        try:
            work = asyncio.ensure_future(method(self, *args, **kwargs))
            try:
                return await asyncio.shield(work)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await work
                raise
            except _UNREACHABLE as exc:
                raise StoreUnavailable(f"{operation}: {exc!r}") from exc
        finally:
            if metrics.enabled:
                metrics.STORE_DURATION.labels(operation).observe(perf_counter() - started)

    return wrapper


_COLUMNS = (
    "resource_id, kind, owner, status, body, last_sequence, created_at, updated_at, runner_id, lease_until,"
    " traceparent"
)
_KEY_COLUMNS = (
    "key_id, name, secret_hash, allowed_models, rpm, tpm, max_concurrent_streams, budget_usd,"
    " expire_time, created_at, revoked_at, spent_usd"
)


class PostgresStore:
    """See the module docstring; `url` is a postgresql:// (or postgres://) connection URL."""

    def __init__(self, url: str, *, max_connections: int = 10) -> None:
        self._url = url
        self._max_connections = max_connections
        self._pool: asyncpg.Pool | None = None
        self._listener: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("the store is not open")
        return self._pool

    async def open(self) -> None:
        try:
            pool = await asyncpg.create_pool(
                self._url, min_size=1, max_size=self._max_connections, timeout=CONNECT_TIMEOUT
            )
        except (*_UNREACHABLE, asyncpg.PostgresError) as exc:
            # OSError: a start-up error of one line (server/__main__.py), naming the database without
            # its password.
            raise OSError(f"cannot open the database {without_password(self._url)}: {exc}") from exc
        try:
            async with pool.acquire() as conn:
                await migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:  # gracefully: connections finish what they do; not forever, when the database is gone
                await asyncio.wait_for(pool.close(), CONNECT_TIMEOUT)
            except TimeoutError:
                pool.terminate()

    async def ping(self) -> bool:
        try:
            async with self.pool.acquire(timeout=CONNECT_TIMEOUT) as conn:
                await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
        except Exception:
            return False
        return True

    async def watch(self, on_commit: OnCommit, on_gap: OnGap) -> None:
        """One listener connection for this process (module docstring), kept until `close`."""
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen(on_commit, on_gap), name="database listener")

    async def _listen(self, on_commit: OnCommit, on_gap: OnGap) -> None:
        def notified(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            resource_id, _, sequence = payload.rpartition(" ")
            with contextlib.suppress(ValueError):  # not ours (someone's NOTIFY on our channel)
                on_commit(resource_id, int(sequence))

        connected_before = False
        delay = 0.25
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self._url, timeout=CONNECT_TIMEOUT, server_settings={"application_name": LISTENER_NAME}
                )
            except (*_UNREACHABLE, asyncpg.PostgresError) as exc:
                if delay == 0.25:  # once per outage
                    log.warning("database listener cannot connect; retrying", extra={"error": repr(exc)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            try:
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                await conn.add_listener(CHANNEL, notified)
                if connected_before:
                    # Commits made while we were not listening were never told: everyone re-reads.
                    log.info("database listener reconnected")
                    on_gap()
                connected_before, delay = True, 0.25
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), LISTENER_CHECK_SECONDS)
                        break
                    await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
            except Exception as exc:  # whatever broke the connection: a new one
                log.warning("database listener lost its connection", extra={"error": repr(exc)})
            finally:
                conn.terminate()

    @_observed
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
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                f"INSERT INTO resources ({_COLUMNS}) VALUES ({_marks(11)}) RETURNING {_NOTIFY}",
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
            )
            await _append(conn, resource_id, 0, events)
        return len(events)

    @_observed
    async def commit(
        self,
        resource_id: str,
        *,
        status: int,
        body: bytes | None,
        events: Sequence[bytes],
        runner_id: str | None = None,
    ) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            # The row lock orders concurrent commits of one resource: each appends after the last.
            row = await conn.fetchrow(
                "SELECT last_sequence, runner_id FROM resources WHERE resource_id = $1 FOR UPDATE",
                resource_id,
            )
            if row is None:
                raise KeyError(resource_id)
            last, holder = int(row[0]), row[1]
            if runner_id is not None and holder != runner_id:
                raise LeaseLost(resource_id)
            await _append(conn, resource_id, last, events)
            last += len(events)
            await conn.execute(
                "UPDATE resources SET status = $1, body = coalesce($2, body), last_sequence = $3,"
                f" updated_at = $4 WHERE resource_id = $5 RETURNING {_NOTIFY}",
                status,
                body,
                last,
                time.time(),
                resource_id,
            )
        return last

    @_observed
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
        last = expected_sequence + len(events)
        async with self.pool.acquire() as conn, conn.transaction():
            # One conditional UPDATE: a concurrent claim waits for this row, then re-checks the
            # condition against what this one wrote (the sequence moved on, the lease is live): no row.
            claimed = await conn.fetchval(
                "UPDATE resources SET runner_id = $1, lease_until = $2, status = $3, body = $4,"
                " last_sequence = $5, updated_at = $6, traceparent = coalesce($7, traceparent)"
                " WHERE resource_id = $8 AND last_sequence = $9"
                " AND (runner_id IS NULL OR lease_until IS NULL OR lease_until < $10)"
                f" RETURNING last_sequence, {_NOTIFY}",
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
            )
            if claimed is None:
                return None
            await _append(conn, resource_id, expected_sequence, events)
        return last

    @_observed
    async def get(self, resource_id: str, *, kind: str, owner: str | None = None) -> Stored | None:
        query = f"SELECT {_COLUMNS} FROM resources WHERE resource_id = $1 AND kind = $2"
        args: list[object] = [resource_id, kind]
        if owner is not None:
            query += " AND owner = $3"
            args.append(owner)
        row = await self.pool.fetchrow(query, *args)
        return None if row is None else _stored(row)

    @_observed
    async def list(
        self,
        kind: str,
        *,
        owner: str | None,
        status: int | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> builtins.list[Stored]:
        args: builtins.list[object] = [kind]
        query = f"SELECT {_COLUMNS} FROM resources WHERE kind = $1"
        if owner is not None:
            args.append(owner)
            query += f" AND owner = ${len(args)}"
        if status is not None:
            args.append(status)
            query += f" AND status = ${len(args)}"
        if after is not None:
            args += after
            query += f" AND (created_at, resource_id) < (${len(args) - 1}, ${len(args)})"
        args.append(limit)
        query += f" ORDER BY created_at DESC, resource_id DESC LIMIT ${len(args)}"
        return [_stored(row) for row in await self.pool.fetch(query, *args)]

    @_observed
    async def delete(self, resource_id: str, *, kind: str, owner: str | None = None) -> bool:
        query = "DELETE FROM resources WHERE resource_id = $1 AND kind = $2"
        args: list[object] = [resource_id, kind]
        if owner is not None:
            query += " AND owner = $3"
            args.append(owner)
        return await self.pool.fetchval(query + " RETURNING 1", *args) is not None

    @_observed
    async def events(
        self, resource_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[tuple[int, bytes]]:
        rows = await self.pool.fetch(
            "SELECT sequence, body FROM events WHERE resource_id = $1 AND sequence > $2"
            " ORDER BY sequence LIMIT $3",
            resource_id,
            after,
            limit,
        )
        return [(int(sequence), bytes(body)) for sequence, body in rows]

    @_observed
    async def acquire(self, resource_id: str, lease: Lease, *, now: float) -> bool:
        taken = await self.pool.fetchval(
            "UPDATE resources SET runner_id = $1, lease_until = $2 WHERE resource_id = $3"
            " AND (runner_id IS NULL OR runner_id = $1 OR lease_until IS NULL OR lease_until < $4)"
            " RETURNING 1",
            lease.runner_id,
            lease.until,
            resource_id,
            now,
        )
        return taken is not None

    @_observed
    async def renew(self, resource_id: str, lease: Lease) -> bool:
        renewed = await self.pool.fetchval(
            "UPDATE resources SET lease_until = $1 WHERE resource_id = $2 AND runner_id = $3 RETURNING 1",
            lease.until,
            resource_id,
            lease.runner_id,
        )
        return renewed is not None

    @_observed
    async def release(self, resource_id: str, runner_id: str) -> None:
        await self.pool.execute(
            "UPDATE resources SET runner_id = NULL, lease_until = NULL"
            " WHERE resource_id = $1 AND runner_id = $2",
            resource_id,
            runner_id,
        )

    @_observed
    async def orphans(self, kind: str, *, statuses: Sequence[int], now: float) -> builtins.list[Stored]:
        rows = await self.pool.fetch(
            f"SELECT {_COLUMNS} FROM resources WHERE kind = $1 AND status = ANY($2::integer[])"
            " AND (lease_until IS NULL OR lease_until < $3)",
            kind,
            list(statuses),
            now,
        )
        return [_stored(row) for row in rows]

    # ---- API keys (KeyStore)

    @_observed
    async def create_key(self, key: KeyRow) -> None:
        await self.pool.execute(
            f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES ({_marks(12)})",
            key.key_id,
            key.name,
            key.secret_hash,
            list(key.allowed_models),
            key.rpm,
            key.tpm,
            key.max_concurrent_streams,
            key.budget_usd,
            key.expire_time,
            key.created_at,
            key.revoked_at,
            key.spent_usd,
        )

    @_observed
    async def get_key(self, key_id: str) -> KeyRow | None:
        row = await self.pool.fetchrow(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = $1", key_id)
        return None if row is None else _key_row(row)

    @_observed
    async def list_keys(
        self, *, show_revoked: bool, after: tuple[float, str] | None, limit: int
    ) -> builtins.list[KeyRow]:
        conditions = [] if show_revoked else ["revoked_at IS NULL"]
        args: builtins.list[object] = []
        if after is not None:
            args += after
            conditions.append("(created_at, key_id) < ($1, $2)")
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        args.append(limit)
        rows = await self.pool.fetch(
            f"SELECT {_KEY_COLUMNS} FROM api_keys{where} ORDER BY created_at DESC, key_id DESC"
            f" LIMIT ${len(args)}",
            *args,
        )
        return [_key_row(row) for row in rows]

    @_observed
    async def revoke_key(self, key_id: str, *, at: float) -> KeyRow | None:
        # The first revocation's time is kept: coalesce, in the one statement that returns the row.
        row = await self.pool.fetchrow(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, $1) WHERE key_id = $2"
            f" RETURNING {_KEY_COLUMNS}",
            at,
            key_id,
        )
        return None if row is None else _key_row(row)

    @_observed
    async def add_key_spend(self, key_id: str, usd: float) -> None:
        await self.pool.execute(
            "UPDATE api_keys SET spent_usd = spent_usd + $1 WHERE key_id = $2", usd, key_id
        )


async def migrate(conn: asyncpg.Connection) -> int:
    """Bring the database's schema to `SCHEMA_VERSION`, under the migration lock; returns the version
    it found. Raises SchemaTooNew (changing nothing) if it is newer than this code knows."""
    async with conn.transaction():
        # Held until this transaction ends: a replica starting meanwhile waits here, then finds the
        # schema current and has nothing to do.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        found = await conn.fetchval("SELECT max(version) FROM schema_version")
        found = 0 if found is None else int(found)
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database's schema is version {found}, newer than this server knows"
                f" ({SCHEMA_VERSION}): it was migrated by a newer version; upgrade this server"
            )
        for version in range(found + 1, SCHEMA_VERSION + 1):
            await conn.execute(_MIGRATIONS[version - 1])
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return found


async def _append(conn: asyncpg.Connection, resource_id: str, last: int, events: Sequence[bytes]) -> None:
    """Insert `events` as the sequences after `last`, in the caller's transaction."""
    if events:
        await conn.executemany(
            "INSERT INTO events (resource_id, sequence, body) VALUES ($1, $2, $3)",
            [(resource_id, last + i, event) for i, event in enumerate(events, start=1)],
        )


def without_password(url: str) -> str:
    """The URL as it may be shown (logs, errors): its password replaced by ***."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _marks(n: int) -> str:
    return ", ".join(f"${i}" for i in range(1, n + 1))


def _stored(row: asyncpg.Record) -> Stored:
    values = list(row)
    values[4] = bytes(values[4])
    return Stored(*values)


def _key_row(row: asyncpg.Record) -> KeyRow:
    values = list(row)
    values[2] = bytes(values[2])
    values[3] = tuple(values[3])
    return KeyRow(*values)


__all__ = [
    "CHANNEL",
    "LISTENER_NAME",
    "SCHEMA_VERSION",
    "PostgresStore",
    "SchemaTooNew",
    "migrate",
    "without_password",
]
