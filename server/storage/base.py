"""The storage interface: narrow enough that another database can implement it."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from common.errors import STORE_UNAVAILABLE, ApiError


@dataclass(frozen=True)
class Stored:
    """A resource as stored: its serialized proto (without `last_sequence`, which is the log's)."""

    resource_id: str
    kind: str
    owner: str
    status: int
    body: bytes
    last_sequence: int
    created_at: float
    updated_at: float
    runner_id: str | None
    lease_until: float | None
    traceparent: str | None = None
    """The W3C trace context of the resource's latest run (its workflow span), so a run adopted after
    a restart links back to the trace of the one it continues; None when tracing was off."""


class StoreUnavailable(ApiError):
    """The database cannot be reached (down, restarting, a dropped connection): the operation did not
    happen, or its outcome is unknown. Nothing committed is lost; a run that meets this stops without
    writing and is adopted once its lease expires (server/orchestration/lifecycle.py)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            STORE_UNAVAILABLE.code,
            STORE_UNAVAILABLE,
            "the database cannot be reached now; nothing committed is lost: retry shortly",
            retry_after=1.0,
        )
        self.detail = detail


#: Told the (resource id, last sequence) of a commit made anywhere: `EventHub.notify`.
OnCommit = Callable[[str, int], None]
#: Told that commits may have been missed (a dropped listener reconnected): `EventHub.wake_all`.
OnGap = Callable[[], None]


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer version of the server: this one refuses to use it."""


@dataclass(frozen=True)
class Lease:
    """Who runs a resource, and until when that claim holds unless renewed."""

    runner_id: str
    until: float


class Store(Protocol):
    """Resources and their event logs. Bodies and events are opaque bytes (serialized protos)."""

    async def open(self) -> None:
        """Create or upgrade the schema; called once before use."""

    async def close(self) -> None: ...

    async def ping(self) -> bool:
        """Whether the database answers now (readiness); never raises."""
        ...

    async def watch(self, on_commit: OnCommit, on_gap: OnGap) -> None:
        """Be told of the commits other processes make (replicas sharing the database), until close:
        PostgreSQL's LISTEN/NOTIFY. `on_gap` when some may have been missed. A store only one process
        uses has nothing to tell (its own commits reach the hub directly) and does nothing."""
        ...

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
        """Insert a new resource with its first events (sequences 1..n); returns the last sequence.

        With `lease`, the resource is created already leased to that runner, in the same transaction:
        nobody (an orphan sweep) ever sees it IN_PROGRESS without a live lease. `traceparent`: its
        run's trace context (`Stored.traceparent`).
        """
        ...

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
        """Take the run of a resource and record it, atomically, or do nothing and return None.

        A conditional write: it succeeds only if nobody holds a live lease and the resource's log still
        ends at `expected_sequence` (the state the caller decided from is still the current one). Of
        several callers claiming the same state at once exactly one wins. Returns the last sequence.
        `traceparent`, when given, replaces the stored one (the new run's trace context).
        """
        ...

    async def commit(
        self,
        resource_id: str,
        *,
        status: int,
        body: bytes | None,
        events: Sequence[bytes],
        runner_id: str | None = None,
    ) -> int:
        """One step, atomically: the new state and its events (next sequences); returns the last one.

        `body` None keeps the stored body: a step that only adds events (a batch of token deltas) writes
        the events, not a whole transcript again.

        With `runner_id`, the commit is refused (LeaseLost) unless that runner still holds the lease:
        a run that lost its lease must not write over the one that took over.
        """
        ...

    async def get(self, resource_id: str, *, kind: str, owner: str | None = None) -> Stored | None:
        """A resource, or None if there is none of that kind (and of that owner, if given: another
        owner's resource is none of the caller's)."""
        ...

    async def list(
        self,
        kind: str,
        *,
        owner: str | None,
        status: int | None,
        after: tuple[float, str] | None,
        limit: int,
    ) -> builtins.list[Stored]:
        """Resources of a kind and owner (None: every owner's), newest first: by (created_at,
        resource_id) descending.

        With `after`, only those strictly below that key (the last row of the previous page): keyset
        pagination, which rows created or deleted meanwhile cannot shift.
        """
        ...

    async def delete(self, resource_id: str, *, kind: str, owner: str | None = None) -> bool:
        """Remove a resource and its events; False if there was none (of that owner, if given)."""
        ...

    async def events(
        self, resource_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[tuple[int, bytes]]:
        """Events with sequence > after, in order."""
        ...

    async def acquire(self, resource_id: str, lease: Lease, *, now: float) -> bool:
        """Take the run of a resource if nobody holds an unexpired lease on it (or we already do)."""
        ...

    async def renew(self, resource_id: str, lease: Lease) -> bool:
        """Extend our lease; False if it is no longer ours."""
        ...

    async def release(self, resource_id: str, runner_id: str) -> None: ...

    async def orphans(self, kind: str, *, statuses: Sequence[int], now: float) -> builtins.list[Stored]:
        """Resources in one of `statuses` whose lease expired (or that have none): nobody runs them."""
        ...


class LeaseLost(Exception):
    """The runner no longer holds the resource's lease (it expired and another runner took it)."""


@dataclass(frozen=True)
class KeyRow:
    """An API key as stored: its settings and the hash of its secret (never the secret)."""

    key_id: str
    name: str
    secret_hash: bytes
    allowed_models: tuple[str, ...]
    rpm: int
    tpm: int
    max_concurrent_streams: int
    budget_usd: float
    expire_time: float | None
    created_at: float
    revoked_at: float | None
    spent_usd: float


class KeyStore(Protocol):
    """API keys: created, looked up by id, listed, revoked, and their spend recorded."""

    async def create_key(self, key: KeyRow) -> None: ...

    async def get_key(self, key_id: str) -> KeyRow | None: ...

    async def list_keys(
        self, *, show_revoked: bool, after: tuple[float, str] | None, limit: int
    ) -> builtins.list[KeyRow]:
        """Newest first, by (created_at, key_id) descending; with `after`, only those below that key."""
        ...

    async def revoke_key(self, key_id: str, *, at: float) -> KeyRow | None:
        """Mark revoked (the first revocation's time is kept); None if there is no such key."""
        ...

    async def add_key_spend(self, key_id: str, usd: float) -> None:
        """Add to the key's spent_usd, atomically."""
        ...
