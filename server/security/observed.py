"""What one model call tells the metrics, the trace and the request it serves (`ModelCall`).

Every model call passes `server.security.metering.MeteredProvider.stream`, which opens a `ModelCall`
for it (each attempt of a fallback chain is one call) and hands it the provider's items as they come
(`next`): how long it waited for them (the upstream duration, which the request's overhead excludes),
its first chunk, its usage and finish reason. When the call ends (`end`):

* metrics, when on (`aibattle_model_calls_total`, upstream duration, TTFT, time per output token,
  tokens, cost; the key's cost with the opt-in key series);
* the request's `Observation` (`requests.add_upstream`, `requests.note_usage`): its access line and
  the upstream wait the gateway subtracts for its overhead header;
* when tracing is on, the `chat {model}` CLIENT span (GenAI conventions: model, provider, request
  options, usage, finish reasons, time to first chunk; the prompt and the completion only when content
  capture is on), current while the provider works (so an HTTP provider's request is its child), and
  the GenAI OTLP histograms (token usage by type, operation duration).
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from opentelemetry.trace import Span, SpanKind

from common import errors
from common.observability import conventions, metrics, requests, tracing
from server.providers.base import ChatRequest, Delta, Finish, Role, StreamItem
from server.settings import ModelConfig


@functools.cache
def series(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: prometheus-client's labels() costs microseconds a call,
    and every request records several. Labels here are bounded (routes, models, codes), so is this."""
    return metric.labels(*labels)


_CANCELLED = ("CANCELLED", "caller_cancelled")
"""A call closed before its end: the client went away (or its run was cancelled)."""


class ModelCall:
    """One model call, observed; see the module docstring."""

    __slots__ = (
        "_completion",
        "_error",
        "_first",
        "_last",
        "_reported",
        "_started",
        "charged_usd",
        "finish",
        "key_id",
        "model",
        "provider",
        "request",
        "span",
        "upstream",
    )

    def __init__(self, model: ModelConfig, request: ChatRequest, key_id: str) -> None:
        self.model = model
        self.request = request
        self.provider = str(model.provider)
        self.key_id = key_id
        self._started = time.perf_counter()
        self._first: float | None = None
        self._last = self._started
        self.upstream = 0.0
        """Seconds spent awaiting the provider's items."""
        self._reported = 0.0
        """How much of it the request's observation has been told."""
        self.finish: Finish | None = None
        self.charged_usd: float | None = None
        """What a limited key was charged for it, once settled (None: no key's budget was held)."""
        self._error: tuple[str, str] | None = None
        """How it failed: (error.type for the span, error_type for the metrics)."""
        self._completion: list[str] | None = None
        self.span: Span | None = None
        if tracing.enabled():
            self.span = tracing.start_span(
                f"{conventions.OPERATION_CHAT} {model.id}",
                kind=SpanKind.CLIENT,
                attributes=self._attributes(),
            )
            if tracing.capture_content():
                self._completion = []
                _capture_prompt(self.span, request)

    def _attributes(self) -> dict[str, Any]:
        request = self.request
        attributes: dict[str, Any] = {
            **self._metric_attributes(),
            conventions.MODEL_ID: self.model.id,
            conventions.REQUEST_MAX_TOKENS: request.max_tokens,
        }
        if request.temperature is not None:
            attributes[conventions.REQUEST_TEMPERATURE] = request.temperature
        if request.top_p is not None:
            attributes[conventions.REQUEST_TOP_P] = request.top_p
        return attributes

    def _metric_attributes(self) -> dict[str, Any]:
        name = self.model.upstream_model or self.model.id
        return {
            conventions.OPERATION_NAME: conventions.OPERATION_CHAT,
            conventions.PROVIDER_NAME: conventions.PROVIDER_NAMES.get(self.provider, self.provider),
            conventions.REQUEST_MODEL: name,
            conventions.RESPONSE_MODEL: name,
        }

    @property
    def started(self) -> bool:
        """Whether the provider produced anything."""
        return self._first is not None

    async def next(self, items: AsyncIterator[StreamItem]) -> StreamItem | None:
        """The provider's next item (None at its end), awaited with the call's span current and the
        wait counted: the request's observation learns the wait up to the first item at once, the rest
        at the end."""
        before = time.perf_counter()
        try:
            if self.span is None:
                item = await anext(items)
            else:
                with tracing.use(self.span):
                    item = await anext(items)
        except StopAsyncIteration:
            return None
        finally:
            now = time.perf_counter()
            self.upstream += now - before
        self._last = now
        if self._first is None:
            self._first = now
            self._reported = self.upstream
            requests.add_upstream(self.upstream)  # a stream's first message reports the wait up to it
        if isinstance(item, Finish):
            self.finish = item
        elif self._completion is not None and isinstance(item, Delta):
            self._completion.append(item.content)
        return item

    def failed(self, exc: BaseException) -> None:
        """The call ends with `exc` (unless it already finished: a consumer closing it after its Finish)."""
        if self.finish is not None:
            return
        if isinstance(exc, errors.ApiError):
            self._error = (exc.reason, metrics.error_type(exc.code, exc.reason))
        elif isinstance(exc, GeneratorExit | asyncio.CancelledError):
            self._error = _CANCELLED
        else:
            self._error = (errors.INTERNAL.name, "gateway_internal")

    def end(self) -> None:
        """Record the call: metrics, the request's observation, the span (see the module docstring)."""
        finish = self.finish
        error = self._error if finish is None else None
        if finish is None and error is None:
            error = _CANCELLED  # closed before its end without an exception reaching us
        prompt = 0 if finish is None else finish.usage.prompt_tokens
        completion = 0 if finish is None else finish.usage.completion_tokens
        # What a limited key was charged (a call cut short: its reservation), else the reported usage's.
        cost = self.charged_usd if self.charged_usd is not None else self.model.cost_usd(prompt, completion)
        now = time.perf_counter()
        requests.add_upstream(self.upstream - self._reported)
        if finish is not None:
            requests.note_usage(self.model.id, self.provider, prompt, completion, cost)
        if metrics.enabled:
            self._record(error, prompt, completion, cost)
        if self.span is not None:
            self._end_span(error, prompt, completion, now)

    def _record(self, error: tuple[str, str] | None, prompt: int, completion: int, cost: float) -> None:
        model, provider, deployment = self.model.id, self.provider, self.model.deployment
        series(metrics.MODEL_CALLS, model, provider, deployment, "" if error is None else error[1]).inc()
        if self._first is not None or self.upstream:
            series(metrics.UPSTREAM_DURATION, model, provider, deployment).observe(self.upstream)
        if self._first is not None:
            series(metrics.TIME_TO_FIRST_TOKEN, model, provider, deployment).observe(
                self._first - self._started
            )
            if completion > 1:
                per_token = (self._last - self._first) / (completion - 1)
                series(metrics.TIME_PER_OUTPUT_TOKEN, model, provider, deployment).observe(per_token)
        if prompt:
            series(metrics.TOKENS, model, provider, deployment, "input").inc(prompt)
        if completion:
            series(metrics.TOKENS, model, provider, deployment, "output").inc(completion)
        if cost:
            series(metrics.COST, model, provider, deployment).inc(cost)
            if metrics.key_label and self.key_id:
                metrics.KEY_COST.labels(self.key_id).inc(cost)

    def _end_span(self, error: tuple[str, str] | None, prompt: int, completion: int, now: float) -> None:
        span = self.span
        assert span is not None
        attributes = self._metric_attributes()
        finish = self.finish
        if finish is not None:
            span.set_attributes(
                {
                    conventions.USAGE_INPUT_TOKENS: prompt,
                    conventions.USAGE_OUTPUT_TOKENS: completion,
                    conventions.RESPONSE_FINISH_REASONS: [finish.reason.value],
                }
            )
            tracing.TOKEN_USAGE.record(
                prompt, {**attributes, conventions.TOKEN_TYPE: conventions.TOKEN_TYPE_INPUT}
            )
            tracing.TOKEN_USAGE.record(
                completion, {**attributes, conventions.TOKEN_TYPE: conventions.TOKEN_TYPE_OUTPUT}
            )
            if self._completion is not None:
                output = [
                    {
                        "role": Role.ASSISTANT.value,
                        "parts": [{"type": "text", "content": "".join(self._completion)}],
                        "finish_reason": finish.reason.value,
                    }
                ]
                span.set_attribute(conventions.OUTPUT_MESSAGES, json.dumps(output))
        if self._first is not None:
            span.set_attribute(conventions.RESPONSE_TIME_TO_FIRST_CHUNK, self._first - self._started)
        if error is not None:
            tracing.fail(span, error[0])
            attributes[conventions.ERROR_TYPE] = error[0]
        tracing.OPERATION_DURATION.record(now - self._started, attributes)
        span.end()


def _capture_prompt(span: Span | None, request: ChatRequest) -> None:
    """The prompt on the span, in the conventions' JSON shapes (only with content capture on)."""
    if span is None:
        return
    system = [{"type": "text", "content": m.content} for m in request.messages if m.role == Role.SYSTEM]
    messages = [
        {"role": m.role.value, "parts": [{"type": "text", "content": m.content}]}
        for m in request.messages
        if m.role != Role.SYSTEM
    ]
    if system:
        span.set_attribute(conventions.SYSTEM_INSTRUCTIONS, json.dumps(system))
    span.set_attribute(conventions.INPUT_MESSAGES, json.dumps(messages))
