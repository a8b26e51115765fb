"""The store (SQLite and PostgreSQL) under the load reasoning puts on it: many runs committing at
once, runs cancelled mid-commit. (The store's own behaviour is tested in test_storage.py.)"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import pytest

from server.storage import SqliteStore, Store
from server.storage.postgres import PostgresStore
from tests.postgres_testlib import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures, for the tests on PostgreSQL


@pytest.fixture(params=["sqlite", "postgres"])
def opened(request: pytest.FixtureRequest) -> Callable[[], Awaitable[Store]]:
    """Opens a store of this test's backend (the test closes it)."""
    url: str = request.getfixturevalue("postgres_url") if request.param == "postgres" else ""

    async def open_one() -> Store:
        store: Store = PostgresStore(url) if url else SqliteStore(":memory:")
        await store.open()
        return store

    return open_one


async def consistent(store: Store, resource_id: str) -> int:
    """The resource's events are gapless and end at its last_sequence; returns that."""
    stored = await store.get(resource_id, kind="k")
    assert stored is not None
    sequences = [sequence for sequence, _ in await store.events(resource_id, after=0)]
    assert sequences == list(range(1, stored.last_sequence + 1))
    return stored.last_sequence


async def test_concurrent_commits_each_get_their_own_transaction(
    opened: Callable[[], Awaitable[Store]],
) -> None:
    store = await opened()
    try:
        for i in range(8):
            await store.create("k", f"r{i}", owner="", status=1, body=b"", events=[b"start"])
        commits = [store.commit(f"r{i % 8}", status=2, body=b"x", events=[b"a", b"b"]) for i in range(64)]
        await asyncio.gather(*commits)
        assert [await consistent(store, f"r{i}") for i in range(8)] == [1 + 8 * 2] * 8
    finally:
        await store.close()


async def test_a_commit_cancelled_midway_is_whole_or_absent_and_the_store_stays_usable(
    opened: Callable[[], Awaitable[Store]],
) -> None:
    store = await opened()
    try:
        await store.create("k", "r", owner="", status=1, body=b"", events=[])
        for i in range(40):
            task = asyncio.create_task(store.commit("r", status=2, body=b"x", events=[b"e1", b"e2"]))
            for _ in range(i % 8):  # cancel at a different statement of the transaction each time
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert (await consistent(store, "r")) % 2 == 0  # both events of a step, or neither
        before = await consistent(store, "r")
        assert await store.commit("r", status=3, body=b"y", events=[b"end"]) == before + 1
    finally:
        await store.close()
