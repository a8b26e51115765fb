"""Per-key counters: request and token rates (token buckets, 2x burst), open streams, budget.

`Limiter` is the interface; `server.security.redis_limits.make_limiter` picks its implementation
from `[server].redis_url`:

* empty: `MemoryLimiter` keeps the counters in this process, which is exact for one replica. Every
  method of a check-and-take is one synchronous step (no await between the test and the update), so
  concurrent calls on the event loop cannot both pass a limit that only one fits.
* a `redis://` URL: `server.security.redis_limits.RedisLimiter` keeps them in Redis, shared by every
  replica (else each would grant the whole limit: LiteLLM's rate limits "multiply with the replica
  count"), one Lua script per check-and-take; see its docstring and the README's Security section.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

from common.errors import BUDGET_EXCEEDED, RATE_LIMITED, TOKEN_RATE_LIMITED, TOO_MANY_STREAMS, LimitExceeded
from common.observability import metrics

BURST = 2.0
"""Buckets hold twice the per-minute rate (seed 003's 2x burst)."""
STREAM_RETRY_SECONDS = 1.0
# Float sums of prices (0.1 + 0.2) must not refuse a call that fits the budget exactly.
EPSILON = 1e-9


class KeyLimits(Protocol):
    """What the counters read of a caller (server.security.context.Caller): its key, and the limits
    set on it (0: none)."""

    @property
    def key_id(self) -> str: ...
    @property
    def rpm(self) -> int: ...
    @property
    def tpm(self) -> int: ...
    @property
    def max_concurrent_streams(self) -> int: ...
    @property
    def budget_usd(self) -> float: ...
    @property
    def spent_usd(self) -> float:
        """Spent before this process first saw the key (its budget's count starts from it)."""
        ...


class Limiter(Protocol):
    """The counters of every key; each method raises LimitExceeded when the key is over."""

    async def take_request(self, caller: KeyLimits) -> None:
        """One request against the key's rpm."""
        ...

    async def reserve_tokens(self, caller: KeyLimits, tokens: int) -> int:
        """Take a call's worst-case tokens from the tpm bucket before it starts, or refuse; returns
        what was taken (at most the bucket's capacity: a call bigger than the burst needs it full)."""
        ...

    async def settle_tokens(self, caller: KeyLimits, reserved: int, used: int) -> None:
        """Give back what a finished call reserved and did not use (or take what it used beyond)."""
        ...

    async def open_stream(self, caller: KeyLimits) -> None: ...

    async def close_stream(self, caller: KeyLimits) -> None: ...

    async def reserve(self, caller: KeyLimits, usd: float) -> None:
        """Set aside a call's worst-case cost, or refuse if the budget cannot cover it."""
        ...

    async def settle(self, caller: KeyLimits, reserved: float, cost: float) -> None:
        """Replace a reservation by what the call actually cost."""
        ...

    def spent(self, caller: KeyLimits) -> float: ...

    async def ping(self) -> bool:
        """Whether the counters can be reached now (readiness); never raises."""
        ...

    async def aclose(self) -> None:
        """Release what the limiter holds (connections, tasks); the server calls it as it stops."""
        ...


class _Bucket:
    def __init__(self, per_minute: int) -> None:
        self.capacity = BURST * per_minute
        self.level = self.capacity
        self.rate = per_minute / 60.0
        self.at = time.monotonic()

    def refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
        self.at = now

    def wait_for(self, amount: float) -> float:
        """Seconds until `amount` is available."""
        return max(0.0, (amount - self.level) / self.rate)


class MemoryLimiter:
    """Limiter for one process (see the module docstring)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._streams: dict[str, int] = {}
        self._spent: dict[str, float] = {}
        self._reserved: dict[str, float] = {}

    def _bucket(self, caller: KeyLimits, kind: str, per_minute: int) -> _Bucket:
        bucket = self._buckets.get((caller.key_id, kind))
        if bucket is None:
            bucket = self._buckets[caller.key_id, kind] = _Bucket(per_minute)
        bucket.refill()
        return bucket

    async def take_request(self, caller: KeyLimits) -> None:
        if not caller.rpm:
            return
        bucket = self._bucket(caller, "rpm", caller.rpm)
        if bucket.level < 1:
            raise rate_limited(caller, bucket.wait_for(1))
        bucket.level -= 1

    async def reserve_tokens(self, caller: KeyLimits, tokens: int) -> int:
        if not caller.tpm:
            return 0
        bucket = self._bucket(caller, "tpm", caller.tpm)
        needed = min(float(tokens), bucket.capacity)
        if bucket.level < needed:
            raise token_rate_limited(caller, tokens, bucket.level, bucket.wait_for(needed))
        bucket.level -= needed
        return math.ceil(needed)

    async def settle_tokens(self, caller: KeyLimits, reserved: int, used: int) -> None:
        if caller.tpm:
            # Below zero is a debt: a call larger than the burst is paid back before the next one.
            self._bucket(caller, "tpm", caller.tpm).level += reserved - used

    async def open_stream(self, caller: KeyLimits) -> None:
        if not caller.max_concurrent_streams:
            return
        open_now = self._streams.get(caller.key_id, 0)
        if open_now >= caller.max_concurrent_streams:
            raise too_many_streams(caller)
        self._streams[caller.key_id] = open_now + 1

    async def close_stream(self, caller: KeyLimits) -> None:
        if caller.max_concurrent_streams:
            self._streams[caller.key_id] = max(0, self._streams.get(caller.key_id, 0) - 1)

    def spent(self, caller: KeyLimits) -> float:
        return self._spent.setdefault(caller.key_id, caller.spent_usd)

    async def reserve(self, caller: KeyLimits, usd: float) -> None:
        if not caller.budget_usd:
            return
        spent = self.spent(caller)
        reserved = self._reserved.get(caller.key_id, 0.0)
        if spent + reserved + usd > caller.budget_usd + EPSILON:
            raise budget_exceeded(caller, spent, reserved, usd)
        self._reserved[caller.key_id] = reserved + usd

    async def settle(self, caller: KeyLimits, reserved: float, cost: float) -> None:
        self._spent[caller.key_id] = self.spent(caller) + cost
        if caller.budget_usd:
            self._reserved[caller.key_id] = max(0.0, self._reserved.get(caller.key_id, 0.0) - reserved)

    async def ping(self) -> bool:
        return True  # this process's memory

    async def aclose(self) -> None:
        return None


# ---- the refusals, the same from every limiter


def rate_limited(caller: KeyLimits, wait: float) -> LimitExceeded:
    return refused(
        LimitExceeded(
            RATE_LIMITED,
            f"this API key's limit of {caller.rpm} requests per minute is reached",
            limit="rpm",
            retry_after=seconds(wait),
        )
    )


def token_rate_limited(caller: KeyLimits, tokens: int, available: float, wait: float) -> LimitExceeded:
    return refused(
        LimitExceeded(
            TOKEN_RATE_LIMITED,
            f"this API key's limit of {caller.tpm} tokens per minute is reached: this call may use"
            f" up to {tokens} tokens, {max(0, math.floor(available))} are available now",
            limit="tpm",
            retry_after=seconds(wait),
        )
    )


def too_many_streams(caller: KeyLimits) -> LimitExceeded:
    return refused(
        LimitExceeded(
            TOO_MANY_STREAMS,
            f"this API key may hold {caller.max_concurrent_streams} streams at once; close one first",
            limit="max_concurrent_streams",
            retry_after=STREAM_RETRY_SECONDS,
        )
    )


def budget_exceeded(caller: KeyLimits, spent: float, reserved: float, usd: float) -> LimitExceeded:
    """No RetryInfo: waiting refills no budget."""
    return refused(
        LimitExceeded(
            BUDGET_EXCEEDED,
            f"this API key's budget of ${caller.budget_usd:.6g} cannot cover this call: "
            f"${spent:.6g} spent, ${reserved:.6g} held by calls in flight, and this one may cost"
            f" up to ${usd:.6g} (its max_tokens at the model's price)",
            limit="budget_usd",
        )
    )


def refused(error: LimitExceeded) -> LimitExceeded:
    """A refusal, counted by the limit it hit (`aibattle_limit_refusals_total`); raise what it returns."""
    if metrics.enabled:
        metrics.LIMIT_REFUSALS.labels(error.metadata.get("limit", "")).inc()
    return error


def seconds(wait: float) -> float:
    """Whole seconds, at least one: what Retry-After can say, and never 'now'."""
    return float(max(1, math.ceil(wait)))
