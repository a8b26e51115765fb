"""Retries, fallback and cooldown around every provider, decided in one place.

* **Retries**: an attempt that fails before its first token with a retryable upstream error
  (connection error, 429, 5xx, first-token timeout) is tried again, up to the model's `retries`,
  after an exponential backoff with jitter — or the upstream's Retry-After, if longer — as long as
  the caller's deadline leaves room for it.
* **Fallback**: when a model fails before its first token with a provider failure (not a fault of the
  request), its `fallbacks` are tried in order. After the first token nothing is retried and nothing
  falls back: two answers are never spliced; the stream ends with the error. `Answering` tells the
  caller which model answers, before its first item.
* **Cooldown**: an upstream (provider + base_url) that failed `cooldown_after_failures` attempts in
  a row is skipped for `cooldown_seconds`; its models fall back at once, or fail fast with
  UNAVAILABLE and a RetryInfo.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from urllib.parse import urlsplit

from common.addresses import join_host_port
from common.errors import INTERNAL, UPSTREAM_COOLDOWN, ApiError, UpstreamError
from common.observability import metrics
from server.providers.base import ChatRequest, Provider, StreamItem
from server.settings import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Switch:
    """Why and from where an answer moved after it had begun (mid-stream failover)."""

    from_model: str
    from_deployment: str
    reason: str


@dataclass(frozen=True)
class Answering:
    """Yielded before the first item: the model (and deployment) whose answer follows. With mid-stream
    failover (opt-in per model) it is yielded again, with `switch` set, when another deployment or model
    takes over an answer already begun: the items that follow continue it."""

    model: ModelConfig
    deployment: str = ""
    """The deployment's name, when the model has several ("" otherwise)."""
    switch: Switch | None = None


class Circuits:
    """Consecutive failures per upstream, and until when each one is skipped."""

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], int] = {}
        self._open_until: dict[tuple[str, str], float] = {}

    @staticmethod
    def key(model: ModelConfig) -> tuple[str, str] | None:
        return (str(model.provider), model.upstream.base_url) if model.upstream.base_url else None

    def cooling(self, model: ModelConfig) -> float:
        """Seconds this model's upstream stays skipped (0: usable)."""
        key = self.key(model)
        return 0.0 if key is None else max(0.0, self._open_until.get(key, 0.0) - time.monotonic())

    def succeeded(self, model: ModelConfig) -> None:
        if (key := self.key(model)) is not None:
            self._failures.pop(key, None)

    def failed(self, model: ModelConfig) -> None:
        key = self.key(model)
        if key is None:
            return
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        if failures >= model.upstream.cooldown_after_failures:
            seconds = model.upstream.cooldown_seconds
            self._open_until[key] = time.monotonic() + seconds
            self._failures[key] = 0
            log.warning(
                "upstream in cooldown", extra={"provider": key[0], "model": model.id, "seconds": seconds}
            )
            if metrics.enabled:
                metrics.COOLDOWN.labels(key[0], upstream_label(key[1])).set(1)
                asyncio.get_running_loop().call_later(seconds, self._cooled, key)

    def _cooled(self, key: tuple[str, str]) -> None:
        """The cooldown gauge back to 0 once the upstream is usable again (unless it went back in)."""
        if self._open_until.get(key, 0.0) <= time.monotonic():
            metrics.COOLDOWN.labels(key[0], upstream_label(key[1])).set(0)


def upstream_label(base_url: str) -> str:
    """An upstream as the metrics name it: host:port of its base URL, never its path or credentials."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    return join_host_port(host, parts.port or (443 if parts.scheme == "https" else 80))


def backoff(model: ModelConfig, attempt: int, retry_after: float | None) -> float:
    """Exponential with full jitter around it (0.5x-1.5x), at least the upstream's Retry-After."""
    base = model.upstream.backoff_seconds * (2**attempt)
    return max(base * random.uniform(0.5, 1.5), retry_after or 0.0)


async def resilient_stream(
    chain: Sequence[tuple[ModelConfig, Provider]], request: ChatRequest, circuits: Circuits
) -> AsyncGenerator[Answering | StreamItem, None]:
    """The first model of `chain` that answers; see the module docstring."""
    last: ApiError | None = None
    failed: ModelConfig | None = None  # the model before this one: it failed before its first token
    for model, provider in chain:
        if failed is not None and metrics.enabled:
            metrics.FALLBACKS.labels(failed.id, model.id).inc()
        failed = model  # until it answers
        if (cooling := circuits.cooling(model)) > 0:
            last = UpstreamError(
                str(model.provider),
                model.id,
                UPSTREAM_COOLDOWN,
                f"upstream skipped for {cooling:.0f} s after repeated failures",
                retry_after=cooling,
            )
            continue
        attempts = 1 + (model.upstream.retries if Circuits.key(model) else 0)
        for attempt in range(attempts):
            started = False
            try:
                async with aclosing(provider.stream(model, request)) as items:
                    async for item in items:
                        if not started:
                            started = True
                            yield Answering(model)
                        yield item
                circuits.succeeded(model)
                return
            except ApiError as exc:
                if started:
                    raise  # never splice two answers
                # The catalog says which failures are the provider's (another model may do better)
                # rather than the request's, and which another attempt may cure.
                if not exc.fallback:
                    raise
                circuits.failed(model)
                last = exc
                if not exc.retryable or attempt + 1 == attempts or circuits.cooling(model) > 0:
                    break
                pause = backoff(model, attempt, exc.retry_after)
                left = request.time_left()
                if left is not None and pause >= left:
                    break
                log.info(
                    "retrying upstream",
                    extra={"model": model.id, "attempt": attempt + 1, "reason": exc.reason, "pause": pause},
                )
                if metrics.enabled:
                    metrics.RETRIES.labels(model.id, str(model.provider)).inc()
                await asyncio.sleep(pause)
        if last is not None and len(chain) > 1:
            log.info("model failed before its first token", extra={"model": model.id, "reason": last.reason})
    if last is None:  # an empty chain; the registry never builds one
        raise INTERNAL.error("no model to try")
    raise last
