"""The storage interface: narrow enough that another database can implement it."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


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

    async def create(
        self, kind: str, resource_id: str, *, owner: str, status: int, body: bytes, events: Sequence[bytes]
    ) -> int:
        """Insert a new resource with its first events (sequences 1..n); returns the last sequence."""
        ...

    async def commit(
        self,
        resource_id: str,
        *,
        status: int,
        body: bytes,
        events: Sequence[bytes],
        runner_id: str | None = None,
    ) -> int:
        """One step, atomically: the new state and its events (next sequences); returns the last one.

        With `runner_id`, the commit is refused (LeaseLost) unless that runner still holds the lease:
        a run that lost its lease must not write over the one that took over.
        """
        ...

    async def get(self, resource_id: str, *, kind: str) -> Stored | None: ...

    async def list(
        self, kind: str, *, owner: str, status: int | None, offset: int, limit: int
    ) -> builtins.list[Stored]:
        """Resources of a kind and owner, newest first."""
        ...

    async def delete(self, resource_id: str, *, kind: str) -> bool:
        """Remove a resource and its events; False if there was none."""
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
