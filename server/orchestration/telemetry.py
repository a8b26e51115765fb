"""What a run tells the metrics and the trace: `RunWatch`, one per attempt at running a resource.

Metrics (when on): `aibattle_runs_in_progress{kind}` while the attempt works here, and
`aibattle_runs_total{kind,strategy,status}` when it ends (the strategy is a reasoning session's
collaboration strategy, a conversation's mode; the status how the run ended: completed, failed,
cancelled, interrupted, waiting_for_input, ..., or lease_lost when another runner took it over).

Trace (when on): each attempt is an `invoke_workflow {strategy}` span. A run outlives the request that
started it, so its span begins a trace of its own, *linked* to that request's span, rather than its
child; a run adopted after a restart (or resumed) links to the trace of the run it continues, whose
`traceparent` is stored with the resource. While it works the span is current, so its model calls are
its children, and its stuck signals, handoffs and escalations are events on it (`event`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from aibattle.v1 import common_pb2
from common import errors
from common.observability import conventions, metrics, tracing

LEASE_LOST = "lease_lost"


def status_name(status: int | None) -> str:
    """A run status as a label: RUN_STATUS_WAITING_FOR_INPUT is "waiting_for_input"."""
    if status is None:
        return "ended"
    return common_pb2.RunStatus.Name(status).removeprefix("RUN_STATUS_").lower()  # type: ignore[arg-type]


class RunWatch:
    """One attempt at running a resource, observed; see the module docstring."""

    def __init__(
        self, kind: str, resource_id: str, strategy: str, *, earlier_traceparent: str | None = None
    ) -> None:
        self.kind = kind
        self.strategy = strategy
        self._working = False
        self._ended = False
        attributes: dict[str, Any] = {
            conventions.OPERATION_NAME: conventions.OPERATION_INVOKE_WORKFLOW,
            conventions.WORKFLOW_NAME: strategy,
            conventions.WORKFLOW_KIND: kind,
            conventions.WORKFLOW_STRATEGY: strategy,
            conventions.WORKFLOW_ID: resource_id,
        }
        if kind == "conversation":
            attributes[conventions.CONVERSATION_ID] = resource_id
        # Its own trace (an empty parent), linked to the request that starts it and the run it continues.
        self.span = tracing.start_span(
            f"{conventions.OPERATION_INVOKE_WORKFLOW} {strategy}",
            kind=SpanKind.INTERNAL,
            parent=otel_context.Context(),
            attributes=attributes,
            links=tracing.links(earlier_traceparent, current=True),
        )

    @property
    def traceparent(self) -> str | None:
        """The run's trace context, stored with the resource (None when tracing is off)."""
        return tracing.traceparent(self.span)

    @contextlib.contextmanager
    def working(self) -> Iterator[None]:
        """The attempt at work here: counted in progress, its span current (and nothing else of the
        request that started it)."""
        self._working = True
        if metrics.enabled:
            metrics.RUNS_IN_PROGRESS.labels(self.kind).inc()
        try:
            with tracing.use(self.span, detach_from_current=True):
                yield
        finally:
            if metrics.enabled:
                metrics.RUNS_IN_PROGRESS.labels(self.kind).dec()

    def failed(self, exc: BaseException) -> None:
        tracing.fail(self.span, exc.reason if isinstance(exc, errors.ApiError) else errors.INTERNAL.name)

    def ended(self, status: str) -> None:
        """The attempt's end, once: counted by its status, its span ended."""
        if self._ended:
            return
        self._ended = True
        if metrics.enabled and self._working:
            metrics.RUNS.labels(self.kind, self.strategy, status).inc()
        if self.span is not None:
            self.span.set_attribute(conventions.WORKFLOW_STATUS, status)
            self.span.end()

    def abandon(self) -> None:
        """The attempt never started (its resource could not be stored or claimed): its span ends,
        nothing is counted."""
        self.ended("not_started")


def event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """An event on the current run's span: a stuck signal, a handoff, an escalation."""
    tracing.add_event(name, attributes)
