"""Several processes on one PostgreSQL: a commit made through one store wakes the followers of another
(LISTEN/NOTIFY), a dropped listener reconnects and has everyone re-read, and the database going away is
UNAVAILABLE (STORE_UNAVAILABLE) to callers and NOT_SERVING to health, never a lost commit.

Each "replica" here is a store and a hub of its own, as two server processes have. Followers poll only
once an hour, so an event that arrives at all arrived because of a notification.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.errors import STORE_UNAVAILABLE
from server.app import AIBattleServer
from server.storage import EventHub, follow
from server.storage.base import StoreUnavailable
from server.storage.postgres import LISTENER_NAME, PostgresStore, without_password
from tests.conftest import make_config
from tests.postgres_testlib import postgres_server, postgres_url
from tests.redis_testlib import RedisServer, redis_server
from tools.local_services import start_redis

__all__ = ["postgres_server", "postgres_url", "redis_server"]  # fixtures

NEVER = 3600.0  # a follower's poll: the test is over long before it
WITHIN = 30.0  # how long a test waits for what must happen, before failing


@contextlib.asynccontextmanager
async def replica(url: str) -> AsyncIterator[tuple[PostgresStore, EventHub]]:
    store = PostgresStore(url)
    await store.open()
    hub = EventHub()
    await store.watch(hub.notify, hub.wake_all)
    try:
        yield store, hub
    finally:
        await store.close()


async def listening(url: str, count: int) -> None:
    """Until `count` connections LISTEN on the channel (a replica's watch has connected)."""
    conn = await asyncpg.connect(url)
    try:
        while True:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                LISTENER_NAME,
            )
            if found >= count:
                return
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def collect(
    store: PostgresStore, hub: EventHub, resource_id: str, *, after: int, count: int
) -> list[int]:
    seen: list[int] = []
    async for sequence, _ in follow(
        store, hub, resource_id, after=after, is_terminal=lambda _: False, poll=NEVER
    ):
        seen.append(sequence)
        if len(seen) == count:
            break
    return seen


async def test_a_commit_on_one_replica_wakes_followers_on_another(postgres_url: str) -> None:
    async with replica(postgres_url) as (a, _), replica(postgres_url) as (b, hub_b):
        await asyncio.wait_for(listening(postgres_url, 2), WITHIN)
        await a.create("conversation", "r1", owner="", status=1, body=b"{}", events=[b"e1"])
        following = asyncio.create_task(collect(b, hub_b, "r1", after=0, count=5))
        for i in range(2, 6):
            await asyncio.sleep(0.05)  # the follower is waiting, live, for each
            await a.commit("r1", status=1, body=None, events=[f"e{i}".encode()])
        assert await asyncio.wait_for(following, WITHIN) == [1, 2, 3, 4, 5]
        assert hub_b.latest("r1") == 5  # heard of from the database, not committed here


async def test_a_notification_heard_twice_or_late_wakes_nobody_again() -> None:
    hub = EventHub()
    hub.notify("r", 3)
    waiter = asyncio.create_task(hub.wait_beyond("r", 3, within=NEVER))
    await asyncio.sleep(0)
    hub.notify("r", 3)  # our own commit, echoed by the database
    hub.notify("r", 2)  # an older one, late
    await asyncio.sleep(0.05)
    assert not waiter.done()
    hub.notify("r", 4)
    await asyncio.wait_for(waiter, WITHIN)


async def test_the_hub_remembers_a_bounded_number_of_resources() -> None:
    hub = EventHub(remembered=3)
    for i in range(10):
        hub.notify(f"r{i}", 1)
    assert [hub.latest(f"r{i}") for i in range(10)] == [0] * 7 + [1] * 3


async def test_a_listener_that_lost_its_connection_reconnects_and_has_everyone_read_again(
    postgres_url: str,
) -> None:
    async with replica(postgres_url) as (a, _), replica(postgres_url) as (b, hub_b):
        await asyncio.wait_for(listening(postgres_url, 2), WITHIN)
        await a.create("conversation", "r1", owner="", status=1, body=b"{}", events=[b"e1"])
        following = asyncio.create_task(collect(b, hub_b, "r1", after=1, count=2))
        await asyncio.sleep(0.05)
        admin = await asyncpg.connect(postgres_url)
        try:  # every listener's connection dropped, as a network blip or a proxy would
            dropped = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                LISTENER_NAME,
            )
        finally:
            await admin.close()
        assert dropped == 2
        # Committed while nobody listens: no notification ever reaches b for this one...
        await a.commit("r1", status=1, body=None, events=[b"e2"])
        await asyncio.wait_for(listening(postgres_url, 2), WITHIN)
        # ...yet its follower reads it (woken at the reconnect), and hears of the next as before.
        await a.commit("r1", status=1, body=None, events=[b"e3"])
        assert await asyncio.wait_for(following, WITHIN) == [2, 3]


async def test_a_database_that_went_away_is_unavailable_then_serves_again(postgres_url: str) -> None:
    async with replica(postgres_url) as (a, _):
        await a.create("conversation", "r1", owner="", status=1, body=b"{}", events=[b"e1"])
        admin = await asyncpg.connect(postgres_url)
        try:  # the pool's connections dropped, as a restart of PostgreSQL does
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        # A dropped connection is StoreUnavailable (UNAVAILABLE, STORE_UNAVAILABLE), or a fresh one
        # serves at once: never another error, never a half-done commit.
        for _ in range(10):
            try:
                await a.commit("r1", status=1, body=None, events=[b"e2"])
                break
            except StoreUnavailable as exc:
                assert exc.code == grpc.StatusCode.UNAVAILABLE and exc.reason == STORE_UNAVAILABLE.name
                assert exc.retry_after == 1.0
        else:
            pytest.fail("ten commits in a row met the database gone")
        assert [s for s, _ in await a.events("r1", after=0)] == [1, 2]
        assert await a.ping()


async def test_an_unreachable_database_is_a_one_line_start_error_without_its_password() -> None:
    store = PostgresStore("postgresql://aibattle:s3cret-pw@127.0.0.1:1/aibattle")
    with pytest.raises(OSError) as caught:
        await store.open()
    message = str(caught.value)
    assert message.startswith("cannot open the database postgresql://aibattle:***@127.0.0.1:1/aibattle:")
    assert "s3cret" not in message and "\n" not in message
    assert without_password("postgres://u@h/db") == "postgres://u@h/db"


async def health_of(server: AIBattleServer) -> int:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return int((await stub.Check(health_pb2.HealthCheckRequest())).status)


async def until_health(server: AIBattleServer, status: int) -> None:
    while True:
        if await health_of(server) == status:
            return
        await asyncio.sleep(0.1)


async def test_health_is_not_serving_while_the_limits_redis_is_gone_and_recovers(
    postgres_url: str, redis_server: RedisServer
) -> None:
    server = AIBattleServer(make_config(database=postgres_url, redis_url=redis_server.url))
    await server.start()
    again = None
    try:
        assert await health_of(server) == health_pb2.HealthCheckResponse.SERVING
        redis_server.stop()
        await asyncio.wait_for(until_health(server, health_pb2.HealthCheckResponse.NOT_SERVING), WITHIN)
        again = start_redis(port=redis_server.port)  # back, on the same address, empty
        await asyncio.wait_for(until_health(server, health_pb2.HealthCheckResponse.SERVING), WITHIN)
    finally:
        await server.stop(0)
        if again is not None:
            again.stop()
