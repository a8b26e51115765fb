"""The per-key limits, in this process (`MemoryLimiter`) and shared through Redis (`RedisLimiter`).

The Limiter contract runs against both; then what only Redis does: two limiters on one Redis (two
replicas) grant no more than one limit together, a crashed replica's stream slots and reservations come
back after their lease, Redis gone fails closed; and a server with `redis_url` set enforces a key's rpm.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from aibattle.v1 import models_pb2, models_pb2_grpc
from common.errors import ApiError, LimitExceeded
from common.observability import metrics
from server.app import AIBattleServer
from server.config import ConfigError, load_config
from server.security.limits import Limiter, MemoryLimiter
from server.security.redis_limits import RedisLimiter, make_limiter
from tests.conftest import error_info
from tests.redis_testlib import RedisServer, redis_server
from tests.security_testlib import bearer, new_key, secure_config

__all__ = ["redis_server"]  # the fixture, imported for the tests below


@dataclass(frozen=True)
class Key:
    key_id: str = "k1"
    rpm: int = 0
    tpm: int = 0
    max_concurrent_streams: int = 0
    budget_usd: float = 0.0
    spent_usd: float = 0.0


@pytest.fixture
async def replicas(redis_server: RedisServer) -> AsyncIterator[Callable[..., RedisLimiter]]:
    """Makes RedisLimiters on the test's Redis (each its own client: a replica), closed afterwards."""
    made: list[RedisLimiter] = []

    def make(**options: float) -> RedisLimiter:
        limiter = RedisLimiter(redis_server.url, **options)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        await limiter.aclose()


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    made = make_limiter(server.url)
    assert isinstance(made, RedisLimiter)
    yield made
    await made.aclose()


async def refusal(call: object) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        await call  # type: ignore[misc]
    return caught.value


# ---- the Limiter contract, both implementations


async def test_requests_per_minute_burst_twice_the_rate(limiter: Limiter) -> None:
    key = Key(rpm=2)
    before = metrics.LIMIT_REFUSALS.labels("rpm")._value.get()
    for _ in range(4):
        await limiter.take_request(key)
    error = await refusal(limiter.take_request(key))
    assert (error.reason, error.metadata["limit"], error.retry_after) == ("RATE_LIMITED", "rpm", 30.0)
    assert "limit of 2 requests per minute" in str(error)
    assert metrics.LIMIT_REFUSALS.labels("rpm")._value.get() == before + 1
    await limiter.take_request(Key(key_id="other", rpm=2))  # another key is not affected
    await limiter.take_request(Key(rpm=0))  # nor a key without the limit


async def test_tokens_are_reserved_then_settled(limiter: Limiter) -> None:
    key = Key(tpm=4)  # a bucket of 8
    assert await limiter.reserve_tokens(key, 20) == 8  # at most the whole bucket
    error = await refusal(limiter.reserve_tokens(key, 1))
    assert (error.reason, error.metadata["limit"]) == ("TOKEN_RATE_LIMITED", "tpm")
    assert "up to 1 tokens, 0 are available now" in str(error) and error.retry_after == 15.0
    await limiter.settle_tokens(key, 8, 2)  # 6 unused come back
    assert await limiter.reserve_tokens(key, 6) == 6
    await refusal(limiter.reserve_tokens(key, 1))
    assert await limiter.reserve_tokens(Key(tpm=0), 10**6) == 0


async def test_tokens_used_beyond_the_reservation_are_a_debt(limiter: Limiter) -> None:
    key = Key(tpm=4)
    await limiter.reserve_tokens(key, 8)
    await limiter.settle_tokens(key, 8, 20)  # 12 more than reserved: the bucket is at -12
    error = await refusal(limiter.reserve_tokens(key, 1))
    assert error.retry_after is not None and 194 <= error.retry_after <= 196  # 13 tokens at 4 a minute


async def test_concurrent_streams(limiter: Limiter) -> None:
    key = Key(max_concurrent_streams=2)
    await limiter.open_stream(key)
    await limiter.open_stream(key)
    error = await refusal(limiter.open_stream(key))
    assert (error.reason, error.metadata["limit"], error.retry_after) == (
        "TOO_MANY_STREAMS",
        "max_concurrent_streams",
        1.0,
    )
    await limiter.close_stream(key)
    await limiter.open_stream(key)
    await refusal(limiter.open_stream(key))


async def test_budget_reserve_then_settle(limiter: Limiter) -> None:
    key = Key(budget_usd=1.0, spent_usd=0.25)
    await limiter.reserve(key, 0.5)
    error = await refusal(limiter.reserve(key, 0.5))
    assert (error.reason, error.metadata["limit"], error.retry_after) == (
        "BUDGET_EXCEEDED",
        "budget_usd",
        None,
    )
    assert "$0.25 spent, $0.5 held by calls in flight, and this one may cost up to $0.5" in str(error)
    await limiter.settle(key, 0.5, 0.1)
    assert limiter.spent(key) == pytest.approx(0.35)
    await limiter.reserve(key, 0.65)  # fits exactly
    await refusal(limiter.reserve(key, 0.01))
    await limiter.settle(key, 0.65, 0.0)  # failed before its first token: nothing spent
    await limiter.reserve(key, 0.65)


async def test_fifty_simultaneous_reservations_hold_to_the_budget(limiter: Limiter) -> None:
    key = Key(budget_usd=1.0)
    results = await asyncio.gather(*(limiter.reserve(key, 0.1) for _ in range(50)), return_exceptions=True)
    assert sum(r is None for r in results) == 10
    assert all(isinstance(r, LimitExceeded) for r in results if r is not None)


# ---- shared through Redis: two replicas


async def test_two_replicas_grant_one_budget_together(replicas: Callable[..., RedisLimiter]) -> None:
    a, b = replicas(), replicas()
    key = Key(budget_usd=1.0)
    results = await asyncio.gather(
        *((a if i % 2 else b).reserve(key, 0.1) for i in range(50)), return_exceptions=True
    )
    granted = [i for i, r in enumerate(results) if r is None]
    assert len(granted) == 10
    assert {i % 2 for i in granted} == {0, 1}  # both replicas took part
    # Each settles what it holds at half its reservation: half the budget is spent, and free again.
    await asyncio.gather(*((a if i % 2 else b).settle(key, 0.1, 0.05) for i in granted))
    results = await asyncio.gather(
        *((a if i % 2 else b).reserve(key, 0.1) for i in range(50)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 5
    assert a.spent(key) + b.spent(key) > 0


async def test_two_replicas_share_the_request_rate(replicas: Callable[..., RedisLimiter]) -> None:
    a, b = replicas(), replicas()
    key = Key(rpm=3)  # a bucket of 6
    results = await asyncio.gather(
        *((a if i % 2 else b).take_request(key) for i in range(20)), return_exceptions=True
    )
    assert sum(r is None for r in results) == 6
    tokens = await asyncio.gather(
        *((a if i % 2 else b).reserve_tokens(Key(tpm=5), 1) for i in range(30)), return_exceptions=True
    )
    assert sum(isinstance(t, int) for t in tokens) == 10


async def test_a_crashed_replicas_stream_slot_comes_back(replicas: Callable[..., RedisLimiter]) -> None:
    crashed, alive = replicas(lease_seconds=0.5), replicas(lease_seconds=0.5)
    key = Key(max_concurrent_streams=1, budget_usd=1.0)
    await crashed.open_stream(key)
    await crashed.reserve(key, 0.8)
    await crashed.aclose()  # never released, never renewed again
    await refusal(alive.open_stream(key))
    await refusal(alive.reserve(key, 0.5))
    await asyncio.sleep(0.7)
    await alive.open_stream(key)
    await alive.reserve(key, 0.5)


async def test_leases_are_renewed_while_held(replicas: Callable[..., RedisLimiter]) -> None:
    holder, other = replicas(lease_seconds=0.3), replicas(lease_seconds=0.3)
    key = Key(max_concurrent_streams=1, budget_usd=1.0)
    await holder.open_stream(key)
    await holder.reserve(key, 0.8)
    await asyncio.sleep(1.0)  # three leases long
    await refusal(other.open_stream(key))
    await refusal(other.reserve(key, 0.5))
    await holder.close_stream(key)
    await holder.settle(key, 0.8, 0.0)
    await other.open_stream(key)
    await other.reserve(key, 0.5)


async def test_redis_down_fails_closed(
    redis_server: RedisServer, replicas: Callable[..., RedisLimiter]
) -> None:
    limiter = replicas()
    key = Key(rpm=10, tpm=10, max_concurrent_streams=2, budget_usd=1.0)
    await limiter.open_stream(key)
    await limiter.reserve(key, 0.1)
    redis_server.stop()
    for call in (
        limiter.take_request(key),
        limiter.reserve_tokens(key, 5),
        limiter.open_stream(key),
        limiter.reserve(key, 0.1),
    ):
        with pytest.raises(ApiError) as caught:
            await call
        error = caught.value
        assert (error.code, error.reason, error.retry_after) == (
            grpc.StatusCode.UNAVAILABLE,
            "LIMITS_UNAVAILABLE",
            1.0,
        )
    # Releases do not fail the call that ends (their leases expire), and a key without limits passes.
    await limiter.close_stream(key)
    await limiter.settle(key, 0.1, 0.05)
    await limiter.settle_tokens(key, 5, 1)
    await limiter.take_request(Key())


# ---- configuration and the server


def test_redis_url_from_the_environment() -> None:
    config = load_config(env={"AIBATTLE_REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert config.server.redis_url == "redis://127.0.0.1:6379/0"
    assert load_config(env={}).server.redis_url == ""
    with pytest.raises(ConfigError, match="AIBATTLE_REDIS_URL: a redis:"):
        load_config(env={"AIBATTLE_REDIS_URL": "http://127.0.0.1:6379"})
    assert isinstance(make_limiter(""), MemoryLimiter)


async def test_replicas_with_redis_url_share_a_keys_rpm(redis_server: RedisServer, tmp_path: Path) -> None:
    """Two servers on one database and one Redis: a key's rpm (2, a burst of 4) holds across both."""
    database = str(tmp_path / "keys.db")
    servers = [AIBattleServer(secure_config(database=database, redis_url=redis_server.url)) for _ in range(2)]
    for server in servers:
        await server.start()
    try:
        assert all(isinstance(s.limiter, RedisLimiter) for s in servers)
        async with (
            grpc.aio.insecure_channel(servers[0].grpc_target) as first,
            grpc.aio.insecure_channel(servers[1].grpc_target) as second,
        ):
            _, secret = await new_key(first, rpm=2)
            stubs = [models_pb2_grpc.ModelServiceStub(c) for c in (first, second)]
            for i in range(4):
                await stubs[i % 2].ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))
            for stub in stubs:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))
                error = caught.value
                assert (error.code(), error_info(error).reason) == (
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "RATE_LIMITED",
                )
    finally:
        for server in servers:
            await server.stop(grace=0.5)
