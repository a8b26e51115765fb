"""The storage spine: atomic steps, gapless sequences, leases, and followers that lose and double nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from server.orchestration.runs import Run, Runs
from server.storage import EventHub, Lease, SqliteStore, Store, follow
from server.storage.base import LeaseLost
from server.storage.postgres import PostgresStore
from tests.postgres_testlib import postgres_server, postgres_url

__all__ = ["postgres_server", "postgres_url"]  # fixtures, for the tests on PostgreSQL

TERMINAL = b"end"


@pytest.fixture(params=["sqlite", "postgres"])
def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], SqliteStore | PostgresStore]:
    """Makes a store (not yet opened) on this test's database: each call, the same database."""
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
        return lambda: PostgresStore(url)
    path = str(tmp_path / "state.db")
    return lambda: SqliteStore(path)


@pytest.fixture
async def store(new_store: Callable[[], Store]) -> AsyncIterator[Store]:
    db = new_store()
    await db.open()
    yield db
    await db.close()


async def test_sequences_start_at_one_and_have_no_gaps(store: Store) -> None:
    assert await store.create("thing", "t1", owner="", status=1, body=b"v0", events=[b"a", b"b"]) == 2
    assert await store.commit("t1", status=2, body=b"v1", events=[b"c"]) == 3
    assert await store.commit("t1", status=2, body=b"v2", events=[]) == 3
    assert [s for s, _ in await store.events("t1", after=0)] == [1, 2, 3]
    assert await store.events("t1", after=2) == [(3, b"c")]
    stored = await store.get("t1", kind="thing")
    assert stored is not None and (stored.body, stored.status, stored.last_sequence) == (b"v2", 2, 3)
    assert await store.get("t1", kind="other") is None


async def test_a_failed_step_writes_nothing(store: Store) -> None:
    await store.create("thing", "t1", owner="", status=1, body=b"v0", events=[b"a"])
    await store.acquire("t1", Lease("runner-a", time.time() + 60), now=time.time())
    with pytest.raises(LeaseLost):
        await store.commit("t1", status=2, body=b"stolen", events=[b"x"], runner_id="runner-b")
    stored = await store.get("t1", kind="thing")
    assert stored is not None and stored.body == b"v0" and stored.last_sequence == 1
    assert await store.events("t1", after=0) == [(1, b"a")]


async def test_state_and_events_survive_reopening(new_store: Callable[[], Store]) -> None:
    first = new_store()
    await first.open()
    await first.create("thing", "t1", owner="k", status=1, body=b"v0", events=[b"a"])
    await first.commit("t1", status=4, body=b"done", events=[b"b"])
    await first.close()
    again = new_store()
    await again.open()
    stored = await again.get("t1", kind="thing")
    assert stored is not None and stored.body == b"done" and stored.owner == "k"
    assert [b for _, b in await again.events("t1", after=0)] == [b"a", b"b"]
    await again.close()


async def test_list_is_per_owner_newest_first_with_status_filter(store: Store) -> None:
    for i, (owner, status) in enumerate([("a", 1), ("a", 4), ("b", 4), ("a", 4)]):
        await store.create("thing", f"t{i}", owner=owner, status=status, body=b"", events=[])
        await asyncio.sleep(0.01)  # distinct creation times
    everything = await store.list("thing", owner="a", status=None, after=None, limit=10)
    assert [s.resource_id for s in everything] == ["t3", "t1", "t0"]
    done = await store.list("thing", owner="a", status=4, after=None, limit=1)
    assert [s.resource_id for s in done] == ["t3"]
    rest = await store.list("thing", owner="a", status=4, after=(done[0].created_at, "t3"), limit=10)
    assert [s.resource_id for s in rest] == ["t1"]
    assert await store.delete("t3", kind="thing") and not await store.delete("t3", kind="thing")
    assert await store.events("t3", after=0) == []


async def test_leases_exclude_other_runners_until_they_expire(store: Store) -> None:
    await store.create("thing", "t1", owner="", status=2, body=b"", events=[])
    now = time.time()
    assert await store.acquire("t1", Lease("a", now + 60), now=now)
    assert not await store.acquire("t1", Lease("b", now + 60), now=now)
    assert await store.orphans("thing", statuses=[2], now=now) == []
    later = now + 120  # a's lease has expired: nobody runs t1
    assert [s.resource_id for s in await store.orphans("thing", statuses=[2], now=later)] == ["t1"]
    assert await store.acquire("t1", Lease("b", later + 60), now=later)
    assert not await store.renew("t1", Lease("a", later + 60))


async def test_a_follower_gets_every_event_once_across_replay_and_live(store: Store) -> None:
    """The classic gap: events committed while the follower replays must be sent once, in order."""
    hub = EventHub()
    await store.create("thing", "t1", owner="", status=2, body=b"", events=[b"e1", b"e2"])

    async def writer() -> None:
        for i in range(3, 41):
            last = await store.commit("t1", status=2, body=b"", events=[f"e{i}".encode()])
            hub.notify("t1", last)
            await asyncio.sleep(0)
        hub.notify("t1", await store.commit("t1", status=4, body=b"", events=[TERMINAL]))

    async def reader(after: int) -> list[int]:
        return [
            s async for s, _ in follow(store, hub, "t1", after=after, is_terminal=lambda b: b == TERMINAL)
        ]

    results = await asyncio.gather(reader(0), reader(1), reader(0), writer())
    assert results[0] == list(range(1, 42)) and results[2] == list(range(1, 42))
    assert results[1] == list(range(2, 42))
    # A watcher that comes back after the end replays exactly the rest, then stops.
    assert await reader(39) == [40, 41]


async def test_runs_hold_a_lease_and_cancel(store: Store) -> None:
    runs = Runs(store, lease_seconds=0.3)
    lease = runs.lease()
    await store.create("thing", "t1", owner="", status=2, body=b"", events=[], lease=lease)
    started = asyncio.Event()

    async def work(run: Run) -> None:
        started.set()
        await asyncio.sleep(3600)

    run = runs.start("t1", lease, work)
    await started.wait()
    assert runs.running("t1") and run.runner_id == lease.runner_id
    assert runs.lease().runner_id != lease.runner_id  # one runner id per attempt, not per process
    await asyncio.sleep(0.5)  # beyond the first lease: renewed, still ours
    assert not await store.acquire("t1", Lease("other", time.time() + 60), now=time.time())
    assert runs.cancel("t1") and run.cancel_requested
    await runs.wait("t1")
    assert not runs.running("t1")
    stored = await store.get("t1", kind="thing")
    assert stored is not None and stored.runner_id is None  # released
    await runs.close()


async def test_a_lost_lease_stops_the_run(store: Store) -> None:
    runs = Runs(store, lease_seconds=0.3)
    lease = runs.lease()
    await store.create("thing", "t1", owner="", status=2, body=b"", events=[], lease=lease)

    async def work(run: Run) -> None:
        await asyncio.sleep(3600)

    run = runs.start("t1", lease, work)
    # Another runner takes over (the lease had expired while this one stalled, say).
    await store.release("t1", lease.runner_id)
    assert await store.acquire("t1", Lease("other", time.time() + 60), now=time.time())
    await runs.wait("t1")
    assert run.lease_lost and not runs.running("t1")
    stored = await store.get("t1", kind="thing")
    assert stored is not None and stored.runner_id == "other"  # the new holder's lease is left alone


async def test_claim_is_a_conditional_write_exactly_one_wins(store: Store) -> None:
    await store.create("thing", "t1", owner="", status=5, body=b"v1", events=[b"e1"])
    now = time.time()
    results = await asyncio.gather(
        *(
            store.claim(
                "t1",
                Lease(f"r{i}", now + 60),
                expected_sequence=1,
                status=2,
                body=b"v2",
                events=[b"e2"],
                now=now,
            )
            for i in range(6)
        )
    )
    assert sorted(results, key=lambda r: r or 0) == [None] * 5 + [2]
    stored = await store.get("t1", kind="thing")
    assert stored is not None and stored.body == b"v2" and stored.last_sequence == 2
    assert [body for _, body in await store.events("t1", after=0)] == [b"e1", b"e2"]
    # A stale state (the log moved on) or a live lease refuses too, and writes nothing.
    assert (
        await store.claim(
            "t1", Lease("x", now + 60), expected_sequence=1, status=2, body=b"", events=[b"z"], now=now
        )
        is None
    )
    assert (
        await store.claim(
            "t1", Lease("x", now + 60), expected_sequence=2, status=2, body=b"", events=[b"z"], now=now
        )
        is None
    )
    assert (await store.get("t1", kind="thing")).last_sequence == 2  # type: ignore[union-attr]


async def test_create_with_a_lease_is_never_an_orphan(store: Store) -> None:
    now = time.time()
    await store.create("thing", "t1", owner="", status=2, body=b"", events=[], lease=Lease("r", now + 60))
    await store.create("thing", "t2", owner="", status=2, body=b"", events=[])
    assert [s.resource_id for s in await store.orphans("thing", statuses=[2], now=now)] == ["t2"]
