"""The store as the caller sees it: only the conversations and reasoning sessions its key created.

Services and orchestration keep calling the Store interface as before; this wrapper stamps the
caller's key id as the owner of what it creates, and makes every other owner's resource look like a
missing one — `get` returns None, `list` shows none of them, `delete` finds nothing — so each RPC,
route, event stream and WebSocket answers NOT_FOUND exactly as for an id that never existed. Work with
no caller (recovery at start-up, the orphan sweep) sees every resource.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence

from server.security import context
from server.storage import Lease, Store, Stored


def _owner() -> str | None:
    caller = context.current()
    return None if caller is None else caller.key_id


class OwnerScopedStore:
    """A Store seen through the current caller's ownership (see the module docstring)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    async def open(self) -> None:
        await self._inner.open()

    async def close(self) -> None:
        await self._inner.close()

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
    ) -> int:
        mine = _owner()
        return await self._inner.create(
            kind,
            resource_id,
            owner=owner if mine is None else mine,
            status=status,
            body=body,
            events=events,
            lease=lease,
        )

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
    ) -> int | None:
        return await self._inner.claim(
            resource_id,
            lease,
            expected_sequence=expected_sequence,
            status=status,
            body=body,
            events=events,
            now=now,
        )

    async def commit(
        self,
        resource_id: str,
        *,
        status: int,
        body: bytes | None,
        events: Sequence[bytes],
        runner_id: str | None = None,
    ) -> int:
        return await self._inner.commit(
            resource_id, status=status, body=body, events=events, runner_id=runner_id
        )

    async def get(self, resource_id: str, *, kind: str) -> Stored | None:
        stored = await self._inner.get(resource_id, kind=kind)
        mine = _owner()
        if stored is None or (mine is not None and stored.owner != mine):
            return None
        return stored

    async def list(
        self, kind: str, *, owner: str, status: int | None, after: tuple[float, str] | None, limit: int
    ) -> builtins.list[Stored]:
        mine = _owner()
        return await self._inner.list(
            kind, owner=owner if mine is None else mine, status=status, after=after, limit=limit
        )

    async def delete(self, resource_id: str, *, kind: str, owner: str | None = None) -> bool:
        mine = _owner()
        return await self._inner.delete(resource_id, kind=kind, owner=owner if mine is None else mine)

    async def events(
        self, resource_id: str, *, after: int, limit: int = 1000
    ) -> builtins.list[tuple[int, bytes]]:
        # Callers reach a resource's events only after get() found it theirs; a follower keeps reading
        # after the resource is deleted, and must see the end rather than an error.
        return await self._inner.events(resource_id, after=after, limit=limit)

    async def acquire(self, resource_id: str, lease: Lease, *, now: float) -> bool:
        return await self._inner.acquire(resource_id, lease, now=now)

    async def renew(self, resource_id: str, lease: Lease) -> bool:
        return await self._inner.renew(resource_id, lease)

    async def release(self, resource_id: str, runner_id: str) -> None:
        await self._inner.release(resource_id, runner_id)

    async def orphans(self, kind: str, *, statuses: Sequence[int], now: float) -> builtins.list[Stored]:
        return await self._inner.orphans(kind, statuses=statuses, now=now)
