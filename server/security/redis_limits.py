"""`RedisLimiter`: the per-key counters of `server.security.limits` shared by every replica through Redis.

Each check-and-take is one Lua script (read, refill, test and update in one atomic step on the Redis
server, whose clock they all read), so two replicas can never both pass a limit that only one fits:

* rpm and tpm are token buckets (capacity 2x the per-minute rate, refilled continuously), a hash
  `{level, at}` per key and kind that expires once it would be full again;
* open streams are leases: a sorted set of slot ids scored by their expiry. A replica renews the
  leases it holds every third of `lease_seconds`; one that crashes stops renewing, and its slots come
  back `lease_seconds` after its last renewal;
* a budget is `spent` (a hash) plus its reservations in flight, each one a lease too (its amount in a
  hash, its expiry in a sorted set): a reservation whose replica died expires like a stream slot, and
  `reserve` counts only the live ones.

The `Limiter` interface hands `close_stream` and `settle` no handle, so each replica remembers the slot
and reservation ids it took (its calls' reservations of one amount are interchangeable).

While Redis cannot be reached, a key with a limit fails closed: its check raises UNAVAILABLE
`LIMITS_UNAVAILABLE` (retry after a second), so no limit is ever granted blind; a key without limits
does not touch Redis. A settle or release that fails is logged and dropped: its lease expires, and the
cost is still recorded in the key's `spent_usd` by the metering.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.errors import (
    LIMITS_UNAVAILABLE,
    ApiError,
)
from server.security.limits import (
    BURST,
    EPSILON,
    KeyLimits,
    Limiter,
    MemoryLimiter,
    budget_exceeded,
    rate_limited,
    token_rate_limited,
    too_many_streams,
)

log = logging.getLogger(__name__)

#: How long a stream slot or budget reservation outlives its replica's last renewal.
LEASE_SECONDS = 30.0
#: How long a key's `spent` stays in Redis unused; then it starts again from the key's `spent_usd`.
SPENT_TTL_MS = 7 * 24 * 3600 * 1000
#: Seconds a call waits for Redis before the limits count as unavailable.
TIMEOUT_SECONDS = 2.0

_NOW_MS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: bucket hash. ARGV: capacity, rate per ms, amount, 'take' (refuse below amount) or 'give'.
# Returns {granted, level, ms to wait for amount}, numbers as strings (Lua numbers become integers).
_BUCKET = (
    _NOW_MS
    + """
local capacity, rate, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local level = capacity
local state = redis.call('HMGET', KEYS[1], 'level', 'at')
if state[1] then
  level = math.min(capacity, tonumber(state[1]) + math.max(0, now - tonumber(state[2])) * rate)
end
local granted = 1
if ARGV[4] == 'take' then
  if level < amount then granted = 0 else level = level - amount end
else
  level = level + amount
end
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level), 'at', now)
redis.call('PEXPIRE', KEYS[1], math.max(1000, math.ceil((capacity - level) / rate) + 1000))
return {granted, string.format('%.17g', level), string.format('%.17g', math.max(0, (amount - level) / rate))}
"""
)

# KEYS: slots sorted set. ARGV: limit, slot id, lease ms. Returns 1 (taken) or 0 (all held).
_OPEN_STREAM = (
    _NOW_MS
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) + 1000)
return 1
"""
)

# KEYS: spent hash, reservations' expiry (sorted set), reservations' amounts (hash).
_PURGE = """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, id in ipairs(expired) do redis.call('HDEL', KEYS[3], id) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
"""

# ARGV: budget, amount, reservation id, lease ms, spent before Redis knew the key, epsilon.
# Returns {granted, spent, reserved by the others}.
_RESERVE = (
    _NOW_MS
    + _PURGE
    + """
redis.call('HSETNX', KEYS[1], 'spent', ARGV[5])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[7]))
local spent = tonumber(redis.call('HGET', KEYS[1], 'spent'))
local reserved = 0
for _, v in ipairs(redis.call('HVALS', KEYS[3])) do reserved = reserved + tonumber(v) end
local amount = tonumber(ARGV[2])
local granted = 0
if spent + reserved + amount <= tonumber(ARGV[1]) + tonumber(ARGV[6]) then
  granted = 1
  local lease = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], now + lease, ARGV[3])
  redis.call('HSET', KEYS[3], ARGV[3], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], lease + 1000)
  redis.call('PEXPIRE', KEYS[3], lease + 1000)
end
return {granted, string.format('%.17g', spent), string.format('%.17g', reserved)}
"""
)

# ARGV: reservation id ('' for none), cost, spent before Redis knew the key, spent's ttl. Returns spent.
_SETTLE = """
redis.call('HSETNX', KEYS[1], 'spent', ARGV[3])
local spent = redis.call('HINCRBYFLOAT', KEYS[1], 'spent', ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return spent
"""

# KEYS[1]: a sorted set of leases, then keys that live as long as they do. ARGV: lease ms, ids.
_RENEW = (
    _NOW_MS
    + """
local lease = tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', now + lease, ARGV[i]) end
for _, key in ipairs(KEYS) do redis.call('PEXPIRE', key, lease + 1000) end
return 1
"""
)


def make_limiter(redis_url: str) -> Limiter:
    """The limiter `[server].redis_url` asks for: empty, `MemoryLimiter` (this process); else this."""
    return RedisLimiter(redis_url) if redis_url else MemoryLimiter()


class RedisLimiter:
    """Limiter shared through Redis by every replica that names the same server (module docstring)."""

    def __init__(
        self, url: str, *, lease_seconds: float = LEASE_SECONDS, prefix: str = "aibattle:limits:"
    ) -> None:
        self._redis: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=TIMEOUT_SECONDS,
            socket_connect_timeout=TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 1),
        )
        self._lease_ms = max(1, round(lease_seconds * 1000))
        self._prefix = prefix
        self._bucket = self._redis.register_script(_BUCKET)
        self._open_stream = self._redis.register_script(_OPEN_STREAM)
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)
        self._renew = self._redis.register_script(_RENEW)
        # What this replica holds and renews: slot ids per key, (reservation id, amount) per key.
        self._slots: dict[str, list[str]] = {}
        self._reservations: dict[str, list[tuple[str, float]]] = {}
        self._spent: dict[str, float] = {}
        self._renewer: asyncio.Task[None] | None = None

    def _key(self, key_id: str, what: str) -> str:
        # The key id in braces: one Redis Cluster slot for all of a key's counters.
        return f"{self._prefix}{{{key_id}}}:{what}"

    def _budget_keys(self, key_id: str) -> list[str]:
        return [self._key(key_id, "spent"), self._key(key_id, "held"), self._key(key_id, "held_usd")]

    async def _call(self, script: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        try:
            return await script(keys=list(keys), args=list(args))
        except (RedisError, OSError) as exc:
            log.warning("the limits' Redis cannot be reached", extra={"error": repr(exc)})
            raise LIMITS_UNAVAILABLE.error(
                "this API key's limits cannot be checked now (their store, Redis, cannot be reached); "
                "retry shortly",
                retry_after=1.0,
            ) from exc

    async def _take(self, key: str, per_minute: int, amount: float) -> tuple[bool, float, float]:
        capacity = BURST * per_minute
        granted, level, wait_ms = await self._call(
            self._bucket, [key], [repr(capacity), repr(per_minute / 60_000.0), repr(amount), "take"]
        )
        return bool(granted), float(level), float(wait_ms) / 1000.0

    async def take_request(self, caller: KeyLimits) -> None:
        if not caller.rpm:
            return
        granted, _, wait = await self._take(self._key(caller.key_id, "rpm"), caller.rpm, 1.0)
        if not granted:
            raise rate_limited(caller, wait)

    async def reserve_tokens(self, caller: KeyLimits, tokens: int) -> int:
        if not caller.tpm:
            return 0
        needed = min(float(tokens), BURST * caller.tpm)
        granted, level, wait = await self._take(self._key(caller.key_id, "tpm"), caller.tpm, needed)
        if not granted:
            raise token_rate_limited(caller, tokens, level, wait)
        return math.ceil(needed)

    async def settle_tokens(self, caller: KeyLimits, reserved: int, used: int) -> None:
        if not caller.tpm:
            return
        # Below zero is a debt: a call larger than the burst is paid back before the next one.
        args = [repr(BURST * caller.tpm), repr(caller.tpm / 60_000.0), repr(float(reserved - used)), "give"]
        try:
            await self._call(self._bucket, [self._key(caller.key_id, "tpm")], args)
        except ApiError:
            log.warning("unused tokens not given back", extra={"key_id": caller.key_id})

    async def open_stream(self, caller: KeyLimits) -> None:
        if not caller.max_concurrent_streams:
            return
        slot = uuid.uuid4().hex
        args = [caller.max_concurrent_streams, slot, self._lease_ms]
        if not await self._call(self._open_stream, [self._key(caller.key_id, "streams")], args):
            raise too_many_streams(caller)
        self._slots.setdefault(caller.key_id, []).append(slot)
        self._renew_soon()

    async def close_stream(self, caller: KeyLimits) -> None:
        slots = self._slots.get(caller.key_id)
        if not caller.max_concurrent_streams or not slots:
            return
        slot = slots.pop()
        if not slots:
            del self._slots[caller.key_id]
        try:
            await self._redis.zrem(self._key(caller.key_id, "streams"), slot)
        except (RedisError, OSError):
            log.warning("stream slot left to expire", extra={"key_id": caller.key_id})

    def spent(self, caller: KeyLimits) -> float:
        """What this replica last read of the key's spend (Redis holds the count)."""
        return self._spent.get(caller.key_id, caller.spent_usd)

    async def reserve(self, caller: KeyLimits, usd: float) -> None:
        if not caller.budget_usd:
            return
        held = uuid.uuid4().hex
        args = [
            repr(caller.budget_usd),
            repr(usd),
            held,
            self._lease_ms,
            repr(caller.spent_usd),
            repr(EPSILON),
            SPENT_TTL_MS,
        ]
        granted, spent_s, reserved_s = await self._call(self._reserve, self._budget_keys(caller.key_id), args)
        spent, reserved = float(spent_s), float(reserved_s)
        self._spent[caller.key_id] = spent
        if not granted:
            raise budget_exceeded(caller, spent, reserved, usd)
        self._reservations.setdefault(caller.key_id, []).append((held, usd))
        self._renew_soon()

    async def settle(self, caller: KeyLimits, reserved: float, cost: float) -> None:
        if not caller.budget_usd:
            return
        held = ""
        mine = self._reservations.get(caller.key_id, [])
        for i, (rid, amount) in enumerate(mine):
            if amount == reserved:
                held = rid
                del mine[i]
                break
        if not mine:
            self._reservations.pop(caller.key_id, None)
        args = [held, repr(cost), repr(caller.spent_usd), SPENT_TTL_MS]
        try:
            spent = await self._call(self._settle, self._budget_keys(caller.key_id), args)
        except ApiError:
            log.warning("cost not added to the shared budget", extra={"key_id": caller.key_id, "cost": cost})
            return
        self._spent[caller.key_id] = float(spent)

    def _renew_soon(self) -> None:
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.get_running_loop().create_task(self._renew_leases())

    async def _renew_leases(self) -> None:
        """Every third of a lease, while this replica holds any."""
        while self._slots or self._reservations:
            await asyncio.sleep(self._lease_ms / 3000.0)
            for key_id, slots in list(self._slots.items()):
                await self._renew_quietly([self._key(key_id, "streams")], slots)
            for key_id, held in list(self._reservations.items()):
                keys = self._budget_keys(key_id)
                await self._renew_quietly([keys[1], keys[2]], [rid for rid, _ in held])

    async def _renew_quietly(self, keys: list[str], ids: list[str]) -> None:
        if not ids:
            return
        try:
            await self._renew(keys=keys, args=[self._lease_ms, *ids])
        except (RedisError, OSError) as exc:
            log.warning("leases not renewed", extra={"error": repr(exc)})

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), TIMEOUT_SECONDS))
        except Exception:
            return False

    async def aclose(self) -> None:
        """Stop renewing (what is still held expires) and close the connections."""
        if self._renewer is not None:
            self._renewer.cancel()
            await asyncio.gather(self._renewer, return_exceptions=True)
            self._renewer = None
        await self._redis.aclose()
