"""One reasoning session as it runs: model calls, stuck checks, and every step committed with its events.

The strategies (`strategies/`) decide who speaks and when; this module does the rest the same way for
all of them:

* `generate` streams one model call, committing TOKEN/THINKING deltas in batches as they come
  (`lifecycle.stream_model`);
* `check` runs stuck detection on a draft against that seat's earlier drafts and the critiques so far;
* `record` appends the iteration, adds its usage to the session's, and commits state + NEW_ITERATION
  (+ STUCK_DETECTED, + HANDOFF) in one commit, then wakes the followers;
* `run_strategy` runs a strategy and commits COMPLETION with the strategy's `Outcome` (the final
  result and why it stopped); every other end (an error, a cancel, the server stopping) is the
  lifecycle's (`server.orchestration.lifecycle`), recorded as `ended` says.

A step is either committed whole or not at all, so a session that dies mid-step keeps every earlier
iteration and loses only the step in progress.

Resuming (ResumeReasoning, or the adoption of an orphaned run) replays: `rewind` turns the committed
iterations into a journal, and the strategy runs again from the start. While the journal lasts,
`generate` answers each call with the recorded step instead of calling a model and `record` re-appends
it without committing or emitting anything; strategies decide only from replies, so they reach the
same point, and the first call past the journal is the step that was lost. Nothing is paid for twice
and the event log gains no copies.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from aibattle.v1 import common_pb2, reasoning_pb2
from common.errors import NOT_RESUMABLE, FailedPrecondition
from common.observability import conventions, metrics, tracing
from server.orchestration import stuck, telemetry
from server.orchestration.lifecycle import THINKING, DeltaEvent, Lifecycle, stream_model
from server.orchestration.runs import Run
from server.providers.attachments import chat_message
from server.providers.base import Attachment, ChatMessage, ChatRequest, Role
from server.providers.convert import usage_proto
from server.providers.registry import ModelRegistry
from server.security.context import Caller
from server.settings import ModelConfig

log = logging.getLogger(__name__)

KIND = "reasoning"
Event = reasoning_pb2.ReasoningEvent
EventType = reasoning_pb2.ReasoningEventType
IN_PROGRESS = common_pb2.RUN_STATUS_IN_PROGRESS
COMPLETED = common_pb2.RUN_STATUS_COMPLETED
CANCELLED = common_pb2.RUN_STATUS_CANCELLED
FAILED = common_pb2.RUN_STATUS_FAILED
INTERRUPTED = common_pb2.RUN_STATUS_INTERRUPTED
FINISHED = frozenset({COMPLETED, CANCELLED, FAILED, INTERRUPTED})


def is_terminal(body: bytes) -> bool:
    """Whether a stored event ends the session's stream: COMPLETION, ERROR, or a final status."""
    event = Event.FromString(body)
    if event.type in (EventType.REASONING_EVENT_TYPE_COMPLETION, EventType.REASONING_EVENT_TYPE_ERROR):
        return True
    return event.type == EventType.REASONING_EVENT_TYPE_STATUS_CHANGED and event.status in FINISHED


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


@dataclass(frozen=True)
class Seat:
    """A place at the table: "primary", "secondary" or "additional[i]", and the model in it. The seat,
    not the model, is what usage and stuck history are kept by: one model may sit in two seats."""

    name: str
    model: str


@dataclass(frozen=True)
class Reply:
    """One finished model call."""

    text: str
    model: str
    """The model that answered (a fallback, if the seat's model failed before its first token)."""
    usage: common_pb2.Usage


@dataclass(frozen=True)
class Outcome:
    """How a strategy ended: its final result and why it stopped (`Reasoning.stop_reason`)."""

    final: str
    stop_reason: str


@dataclass
class Session:
    """A running session's state and plumbing; see the module docstring."""

    lifecycle: Lifecycle
    registry: ModelRegistry
    reasoning: reasoning_pb2.Reasoning
    attachments: Sequence[tuple[str, Attachment]] = ()
    run: Run | None = None
    """The attempt this session runs in (whose lease its commits need)."""
    drafts: dict[str, list[str]] = field(default_factory=dict)
    critiques: list[str] = field(default_factory=list)
    journal: list[reasoning_pb2.ReasoningIteration] = field(default_factory=list)
    """Committed iterations still to replay (see the module docstring), oldest first."""

    def rewind(self) -> None:
        """Prepare a resumed run: the iterations become the journal; usage is rebuilt by the replay."""
        self.journal = [
            reasoning_pb2.ReasoningIteration.FromString(i.SerializeToString())
            for i in self.reasoning.iterations
        ]
        del self.reasoning.iterations[:]
        self.reasoning.ClearField("usage")
        self.reasoning.ClearField("final_result")
        self.reasoning.ClearField("error")
        self.reasoning.ClearField("stop_reason")
        self.reasoning.ClearField("vote")

    @property
    def id(self) -> str:
        return self.reasoning.reasoning_id

    @property
    def caller(self) -> Caller | None:
        """Who the session's model calls are for: its run's caller."""
        return None if self.run is None else self.run.caller

    def model(self, model_id: str) -> ModelConfig:
        """A model this session's caller may use (PERMISSION_DENIED once its key no longer may)."""
        return self.registry.get(model_id, self.caller)[0]

    @property
    def problem(self) -> str:
        return self.reasoning.prompt

    @property
    def primary(self) -> Seat:
        return Seat("primary", self.reasoning.primary_model)

    @property
    def secondary(self) -> Seat:
        return Seat("secondary", self.reasoning.secondary_model)

    @property
    def seats(self) -> list[Seat]:
        """Everyone: primary, secondary, then the additional models."""
        extra = [Seat(f"additional[{i}]", m) for i, m in enumerate(self.reasoning.additional_models)]
        return [self.primary, self.secondary, *extra]

    def event(self, type_: reasoning_pb2.ReasoningEventType.ValueType, **fields: object) -> Event:
        return Event(reasoning_id=self.id, type=type_, created_at=now(), **fields)  # type: ignore[arg-type]

    async def commit(self, events: Sequence[Event], *, state: bool = True) -> int:
        """The session's state (unless `state` is False: token deltas change none) and these events,
        in one transaction; followers are woken after it."""
        body = None
        if state:
            self.reasoning.updated_at.CopyFrom(now())
            self.reasoning.ClearField("last_sequence")  # the log's, stamped when read
            body = self.reasoning.SerializeToString()
        return await self.lifecycle.commit(
            self.run,
            self.id,
            status=self.reasoning.status,
            body=body,
            events=[e.SerializeToString() for e in events],
        )

    def _request(
        self, seat: Seat, prompt: str, max_tokens: int | None, temperature: float | None
    ) -> ChatRequest:
        model = self.model(seat.model)
        messages: list[ChatMessage] = []
        if self.reasoning.system_instruction:
            messages.append(ChatMessage(Role.SYSTEM, self.reasoning.system_instruction))
        messages.append(chat_message(Role.USER, prompt, self.attachments))
        limit = self.reasoning.max_tokens or model.default_max_tokens
        if max_tokens is not None:
            limit = min(limit, max_tokens)
        return ChatRequest(messages=tuple(messages), max_tokens=limit, temperature=temperature, stream=True)

    async def generate(
        self,
        seat: Seat,
        prompt: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        reads: Sequence[Seat] = (),
    ) -> Reply:
        """One call of the seat's model, its deltas committed as TOKEN/THINKING events in batches.

        `temperature`: unset means the model's own default. `reads`: the seats whose output the
        prompt carries (counted as handoffs to this seat)."""
        if self.journal:
            step = self.journal[0]
            return Reply(step.content, step.model, step.usage)
        self._handed(reads, seat)
        model = self.model(seat.model)
        index = len(self.reasoning.iterations) + 1

        async def flush(deltas: list[DeltaEvent]) -> None:
            await self.commit(
                [
                    self.event(
                        EventType.REASONING_EVENT_TYPE_THINKING
                        if d.kind == THINKING
                        else EventType.REASONING_EVENT_TYPE_TOKEN,
                        delta=d.text,
                        model=d.model,
                        iteration_index=index,
                    )
                    for d in deltas
                ],
                state=False,
            )

        request = self._request(seat, prompt, max_tokens, temperature)
        reply = await stream_model(self.registry, model, request, flush, self.caller)
        return Reply(reply.text.strip(), reply.model.id, usage_proto(reply.model, reply.usage))

    def _handed(self, sources: Sequence[Seat], seat: Seat) -> None:
        """Another seat's output handed to this one as input: a handoff, for the metrics and the span."""
        strategy = self.reasoning.collaboration_strategy
        for source in sources:
            if source.name == seat.name:
                continue
            if metrics.enabled:
                metrics.HANDOFFS.labels(strategy).inc()
            telemetry.event(
                conventions.EVENT_HANDOFF,
                {conventions.HANDOFF_FROM: source.model, conventions.HANDOFF_TO: seat.model},
            )

    def escalated(self, to: Seat) -> None:
        """A cascade escalating to `to` (counted once: not again when a resumed run replays it)."""
        if self.journal:
            return
        if metrics.enabled:
            metrics.ESCALATIONS.labels(self.reasoning.collaboration_strategy).inc()
        telemetry.event(conventions.EVENT_ESCALATION, {conventions.HANDOFF_TO: to.model})

    def check(self, seat: Seat, draft: str) -> list[str]:
        """Stuck signals of a draft, against this seat's earlier drafts and every critique so far."""
        earlier = self.drafts.setdefault(seat.name, [])
        names = [s.name for s in stuck.detect(draft, previous=earlier, critiques=self.critiques)]
        earlier.append(draft)
        return names

    async def record(
        self,
        seat: Seat,
        kind: str,
        reply: Reply,
        *,
        focus_areas: Sequence[str] = (),
        verdict: str = "",
        stuck_indicators: Sequence[str] = (),
        handoff_to: Seat | None = None,
        handoff_from: Seat | None = None,
    ) -> reasoning_pb2.ReasoningIteration:
        """Append an iteration and commit it with NEW_ITERATION, then STUCK_DETECTED and HANDOFF (from
        `handoff_from`, by default the step's own seat, to `handoff_to`)."""
        if self.journal:
            return self._replayed(seat, kind, reply)
        iteration = self.reasoning.iterations.add(
            model=reply.model,
            content=reply.text,
            stuck_indicators=stuck_indicators,
            focus_areas=focus_areas,
            index=len(self.reasoning.iterations) + 1,
            kind=kind,
            usage=reply.usage,
            created_at=now(),
            verdict=verdict,
        )
        self._add_usage(seat, reply)
        events = [
            self.event(EventType.REASONING_EVENT_TYPE_NEW_ITERATION, iteration=iteration, model=reply.model)
        ]
        for signal in stuck_indicators:
            if metrics.enabled:
                metrics.STUCK_SIGNALS.labels(signal).inc()
            telemetry.event(
                conventions.EVENT_STUCK,
                {conventions.STUCK_SIGNAL: signal, conventions.EVENT_MODEL: reply.model},
            )
        if stuck_indicators:
            events.append(
                self.event(
                    EventType.REASONING_EVENT_TYPE_STUCK_DETECTED,
                    model=reply.model,
                    stuck_indicators=stuck_indicators,
                )
            )
        if handoff_to is not None:
            events.append(
                self.event(
                    EventType.REASONING_EVENT_TYPE_HANDOFF,
                    model=(handoff_from or seat).model,
                    to_model=handoff_to.model,
                )
            )
        await self.commit(events)
        return iteration

    def _replayed(self, seat: Seat, kind: str, reply: Reply) -> reasoning_pb2.ReasoningIteration:
        """A journal step re-appended as it was committed (no commit, no events)."""
        step = self.journal.pop(0)
        if step.kind != kind:
            # Only a change of strategy code between runs can get here: say so rather than guess.
            raise FailedPrecondition(
                NOT_RESUMABLE,
                f"reasoning {self.id!r} cannot be resumed: step {step.index} was a {step.kind!r}, the"
                f" strategy now asks for a {kind!r}",
            )
        iteration = self.reasoning.iterations.add()
        iteration.CopyFrom(step)
        self._add_usage(seat, reply)
        return iteration

    def _add_usage(self, seat: Seat, reply: Reply) -> None:
        usage, step = self.reasoning.usage, reply.usage
        usage.total_tokens += step.total_tokens
        usage.cost_usd += step.cost_usd
        if seat.name == "primary":
            usage.primary_model_tokens += step.total_tokens
        elif seat.name == "secondary":
            usage.secondary_model_tokens += step.total_tokens
        for entry in usage.by_model:
            if entry.model == reply.model:
                break
        else:
            entry = usage.by_model.add(model=reply.model)
        entry.usage.prompt_tokens += step.prompt_tokens
        entry.usage.completion_tokens += step.completion_tokens
        entry.usage.total_tokens += step.total_tokens
        entry.usage.cost_usd += step.cost_usd

    async def run_strategy(self, strategy: Callable[[Session], Awaitable[Outcome]]) -> None:
        """The strategy to its end, and COMPLETION committed with its result and stop reason; the
        lifecycle records any other end."""
        try:
            outcome = await strategy(self)
        finally:
            tracing.set_attributes({conventions.WORKFLOW_ITERATIONS: len(self.reasoning.iterations)})
        self.reasoning.final_result = outcome.final
        self.reasoning.stop_reason = outcome.stop_reason
        self.reasoning.status = COMPLETED
        await self.commit(
            [
                self.event(
                    EventType.REASONING_EVENT_TYPE_COMPLETION,
                    final_result=outcome.final,
                    stop_reason=outcome.stop_reason,
                    status=COMPLETED,
                )
            ]
        )


def ended(
    body: bytes, status: common_pb2.RunStatus.ValueType, error: status_pb2.Status | None
) -> tuple[bytes, list[bytes]]:
    """A session's end other than completion, as stored and announced: ERROR (FAILED) carrying the
    error, or STATUS_CHANGED to CANCELLED or INTERRUPTED."""
    reasoning = reasoning_pb2.Reasoning.FromString(body)
    reasoning.status = status
    reasoning.updated_at.CopyFrom(now())
    event = Event(reasoning_id=reasoning.reasoning_id, created_at=reasoning.updated_at, status=status)
    if error is not None:
        reasoning.error.CopyFrom(error)
        event.type = EventType.REASONING_EVENT_TYPE_ERROR
        event.error.CopyFrom(error)
    else:
        event.type = EventType.REASONING_EVENT_TYPE_STATUS_CHANGED
    return reasoning.SerializeToString(), [event.SerializeToString()]
