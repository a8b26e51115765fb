"""The request being served, as the metrics, the trace and the access line see it.

`begin()` opens an `Observation` where a request arrives (the gateway's middleware, the server's
request interceptor) and puts it in a context variable; code that learns a fact notes it there: the
model call adds the time it waited on its provider (`add_upstream`), its model, tokens and cost; the
error path its reason. The end of the request reads it for the access line, the metrics, and the
overhead (`overhead_seconds`: the request's own time, excluding the providers').
"""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass


@dataclass
class Observation:
    surface: str
    route: str
    started: float
    upstream_seconds: float = 0.0
    """Time spent waiting on model providers (summed over the request's model calls)."""
    model: str = ""
    provider: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reason: str = ""
    """The ErrorInfo reason of the failure that ended it, if any."""

    def elapsed(self, now: float | None = None) -> float:
        return (time.perf_counter() if now is None else now) - self.started

    def overhead_seconds(self, now: float | None = None) -> float:
        return max(0.0, self.elapsed(now) - self.upstream_seconds)


_current: contextvars.ContextVar[Observation | None] = contextvars.ContextVar("observation", default=None)


def begin(surface: str, route: str) -> tuple[Observation, contextvars.Token[Observation | None]]:
    observation = Observation(surface, route, time.perf_counter())
    return observation, _current.set(observation)


def end(token: contextvars.Token[Observation | None]) -> None:
    _current.reset(token)


def current() -> Observation | None:
    return _current.get()


def add_upstream(seconds: float) -> None:
    if (observation := _current.get()) is not None:
        observation.upstream_seconds += seconds


def note_usage(model: str, provider: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
    """A model call's usage: the request's model is the last that answered; tokens and cost add up."""
    if (observation := _current.get()) is not None:
        observation.model, observation.provider = model, provider
        observation.input_tokens += input_tokens
        observation.output_tokens += output_tokens
        observation.cost_usd += cost_usd


def note_reason(reason: str) -> None:
    if (observation := _current.get()) is not None:
        observation.reason = reason
