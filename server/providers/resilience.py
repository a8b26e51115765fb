"""Retries, fallback and cooldown around every provider, decided in one place.

* **Retries**: an attempt that fails before its first token with a retryable upstream error
  (connection error, 429, 5xx, first-token timeout) is tried again, up to the model's `retries`,
  after an exponential backoff with jitter — or the upstream's Retry-After, if longer — as long as
  the caller's deadline leaves room for it.
* **Fallback**: when a model fails before its first token with a provider failure (not a fault of the
  request), its next deployment, then its `fallbacks` are tried in order (the chain, `ModelRegistry.chain`),
  passing over those that cannot take the request's tools or JSON format (`capabilities.takes`).
  After the first token nothing is retried and nothing falls back: two answers are never spliced; the
  stream ends with the error. `Answering` tells the caller which model (and deployment) answers, before
  its first item.
* **Mid-stream failover** (opt-in: the requested model's `failover_mid_stream`): when the answer had begun
  and its upstream fails with a failure that would have allowed fallback, the next of the chain continues
  it: it gets the text so far as the assistant's, and for providers that cannot prefill a trailing
  assistant message an instruction to continue without repeating. A second `Answering` with `switch`
  set comes before its items; the final Finish's usage adds the cut-off part's (estimated: no usage came)
  to its own. Never after a tool call (a half-streamed call cannot be continued by another model).
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
from dataclasses import dataclass, replace

from common.errors import INTERNAL, UPSTREAM_COOLDOWN, ApiError, UpstreamError
from common.observability import metrics
from server.providers.base import ChatMessage, ChatRequest, Delta, Finish, Provider, Role, StreamItem, Usage
from server.providers.capabilities import takes
from server.providers.text import estimate_prompt_tokens, estimate_tokens
from server.settings import ModelConfig, url_host_port

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
    """Consecutive failures per upstream, and until when each one is skipped; and the `load` of each
    deployment."""

    def __init__(self) -> None:
        self._failures: dict[tuple[str, str], int] = {}
        self._open_until: dict[tuple[str, str], float] = {}
        self.load = Load()

    @staticmethod
    def key(model: ModelConfig) -> tuple[str, str] | None:
        return (str(model.provider), model.upstream.base_url) if model.upstream.base_url else None

    @property
    def any_cooling(self) -> bool:
        """Whether an upstream may be in cooldown (one whose cooldown is over leaves on its next look-up)."""
        return bool(self._open_until)

    def cooling(self, model: ModelConfig) -> float:
        """Seconds this model's upstream stays skipped (0: usable)."""
        key = self.key(model)
        if key is None or (until := self._open_until.get(key)) is None:
            return 0.0
        left = until - time.monotonic()
        if left > 0:
            return left
        del self._open_until[key]
        return 0.0

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
    return url_host_port(base_url)


def backoff(model: ModelConfig, attempt: int, retry_after: float | None) -> float:
    """Exponential with full jitter around it (0.5x-1.5x), at least the upstream's Retry-After."""
    base = model.upstream.backoff_seconds * (2**attempt)
    return max(base * random.uniform(0.5, 1.5), retry_after or 0.0)


#: Providers whose API continues a trailing assistant message (prefill) rather than answering after it.
PREFILL = frozenset({"anthropic"})
CONTINUE = (
    "Your previous answer was cut off. Continue it exactly where it stopped, without repeating anything"
    " already written and without any preamble."
)


class Load:
    """What the routing strategies read of each deployment: answers in progress here, and an
    exponentially weighted moving average of its time to first token. Only deployments are counted (a
    model with none has nothing to choose)."""

    ALPHA = 0.3
    """Weight of the newest time to first token in the average."""

    def __init__(self) -> None:
        self._in_flight: dict[tuple[str, str], int] = {}
        self._ttft: dict[tuple[str, str], float] = {}

    def in_flight(self, deployment: ModelConfig) -> int:
        return self._in_flight.get((deployment.id, deployment.deployment), 0)

    def latency(self, deployment: ModelConfig) -> float:
        """Recent time to first token in seconds; 0 before the first (so each one gets measured)."""
        return self._ttft.get((deployment.id, deployment.deployment), 0.0)

    def began(self, deployment: ModelConfig) -> None:
        key = (deployment.id, deployment.deployment)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def ended(self, deployment: ModelConfig) -> None:
        key = (deployment.id, deployment.deployment)
        self._in_flight[key] -= 1

    def first_token(self, deployment: ModelConfig, seconds: float) -> None:
        key = (deployment.id, deployment.deployment)
        before = self._ttft.get(key)
        self._ttft[key] = seconds if before is None else before + self.ALPHA * (seconds - before)


class _Begun:
    """An answer cut off mid-stream, carried on to the next upstream (mid-stream failover)."""

    __slots__ = ("carried", "original", "text")

    def __init__(self, original: ChatRequest) -> None:
        self.original = original
        self.text: list[str] = []
        self.carried = Usage()
        """Usage of the parts already cut off (estimated: a cut-off answer reports none)."""

    def cut(self, asked: ChatRequest, part: list[str]) -> None:
        self.carried = Usage(
            self.carried.prompt_tokens + estimate_prompt_tokens(asked.messages),
            self.carried.completion_tokens + estimate_tokens("".join(part)),
        )
        self.text.extend(part)

    def request_for(self, model: ModelConfig) -> ChatRequest:
        """The original request, continuing the text so far."""
        text = "".join(self.text)
        if not text:
            return self.original
        if model.provider in PREFILL:
            # Anthropic refuses a final assistant turn ending in whitespace.
            messages: tuple[ChatMessage, ...] = (ChatMessage(Role.ASSISTANT, text.rstrip()),)
        else:
            messages = (ChatMessage(Role.ASSISTANT, text), ChatMessage(Role.USER, CONTINUE))
        return replace(
            self.original,
            messages=(*self.original.messages, *messages),
            max_tokens=max(1, self.original.max_tokens - estimate_tokens(text)),
        )

    def finish(self, item: Finish) -> Finish:
        usage = Usage(
            item.usage.prompt_tokens + self.carried.prompt_tokens,
            item.usage.completion_tokens + self.carried.completion_tokens,
        )
        return replace(item, usage=usage)


async def resilient_stream(
    chain: Sequence[tuple[ModelConfig, Provider]],
    request: ChatRequest,
    circuits: Circuits,
) -> AsyncGenerator[Answering | StreamItem, None]:
    """The first model of `chain` that answers; see the module docstring. `circuits.load` learns each
    deployment's answers in progress and time to first token (for `ModelRegistry.chain`'s routing)."""
    load = circuits.load
    last: ApiError | None = None
    failed: ModelConfig | None = None  # the model before this one: it failed (before its first token)
    failover = bool(chain) and chain[0][0].failover_mid_stream
    begun: _Begun | None = None  # the answer so far, once one was cut off (failover only)
    switch: Switch | None = None
    for model, provider in chain:
        if model is not chain[0][0] and not takes(model, request):
            continue  # a fallback that cannot take the tools or format asked for (the first was checked)
        if failed is not None and failed.id != model.id and metrics.enabled:
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
        asked = request if begun is None else begun.request_for(model)
        attempts = 1 + (model.upstream.retries if Circuits.key(model) else 0)
        counted = bool(model.deployment)
        cut = False  # its answer began, then failed over
        for attempt in range(attempts):
            started = False
            part: list[str] | None = [] if failover else None  # the text, while it may be carried on
            if counted:
                load.began(model)
                began = time.perf_counter()
            try:
                async with aclosing(provider.stream(model, asked)) as items:
                    async for item in items:
                        if not started:
                            started = True
                            if counted:
                                load.first_token(model, time.perf_counter() - began)
                            yield Answering(model, model.deployment, switch)
                        if part is not None and isinstance(item, Delta):
                            if item.tool_calls:
                                part = None  # a tool call is never continued elsewhere
                            else:
                                part.append(item.content)
                        elif begun is not None and isinstance(item, Finish):
                            item = begun.finish(item)
                        yield item
                circuits.succeeded(model)
                return
            except ApiError as exc:
                # The catalog says which failures are the provider's (another model may do better)
                # rather than the request's, and which another attempt may cure.
                if not exc.fallback or (started and part is None):
                    raise  # the request's fault; or begun, and never spliced (failover off, or a tool call)
                circuits.failed(model)
                last = exc
                if started:
                    assert part is not None
                    begun = begun or _Begun(request)
                    begun.cut(asked, part)
                    switch = Switch(model.id, model.deployment, exc.reason)
                    cut = True
                    log.info(
                        "answer cut off, failing over",
                        extra={"model": model.id, "deployment": model.deployment, "reason": exc.reason},
                    )
                    break
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
                    metrics.RETRIES.labels(model.id, str(model.provider), model.deployment).inc()
                await asyncio.sleep(pause)
            finally:
                if counted:
                    load.ended(model)
        if last is not None and len(chain) > 1 and not cut:
            log.info("model failed before its first token", extra={"model": model.id, "reason": last.reason})
    if last is None:  # an empty chain; the registry never builds one
        raise INTERNAL.error("no model to try")
    raise last
