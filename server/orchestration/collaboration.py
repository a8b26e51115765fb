"""Collaboration models (`[[collaborations]]`): a strategy over other models, called like a model.

A completion request for one starts a reasoning session (`ReasoningSessions.create`) owned by the
caller's key, with the session's `collaboration_model` set: the same storage, events, lifecycle and
resumability as a session created through ReasoningService. The call then follows the session's event
log and answers from it: each step's tokens as thinking, under a header naming the step and its model
and followed by a line naming its kind (the kind is known once the step is recorded), the final result
as content, and the whole run's usage.

Access: the caller must be allowed the collaboration's id and every member model (the run is the
server's work on the caller's behalf, so it may use no model the caller could not call itself).

Cost: before the session starts, the run's worst case is held from the key's budget (`worst_case_usd`,
`RunHold`), so a budget that cannot cover it is refused with BUDGET_EXCEEDED before any model is
called; each step's call is then metered as any call is, drawing from the hold, and what is left goes
back when the run ends.

Disconnects: a client that drops the call cancels the run (CANCELLED, as CancelReasoning does) unless
the collaboration sets `run_to_completion`; either way the session stays readable.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, cast

from google.rpc import error_details_pb2, status_pb2

from aibattle.v1 import common_pb2, completions_pb2, reasoning_pb2
from common.errors import (
    CANCELLED,
    MODEL_NOT_ALLOWED,
    UNSUPPORTED_PARAMETER,
    ApiError,
    InvalidArgument,
    PermissionDenied,
    shown,
    status_code,
)
from server.orchestration.reasoning.session import Event, EventType, is_terminal
from server.orchestration.reasoning.sessions import ReasoningSessions
from server.orchestration.reasoning.strategies import DEFAULT_SAMPLES, SAMPLED, worst_case_calls
from server.providers.base import PENALTIES
from server.providers.registry import ModelRegistry, may_use
from server.security.context import Caller
from server.security.metering import (
    COUNTS_CONTEXT_ITSELF,
    TEMPLATE_TOKENS,
    TEMPLATE_TOKENS_PER_MESSAGE,
    RunHold,
)
from server.settings import CollaborationConfig, ModelConfig

CompletionRequest = completions_pb2.CreateCompletionRequest | completions_pb2.StreamCompletionRequest

#: Bytes a strategy's own prompt text adds around the problem and the outputs it carries (the longest
#: template is about 1 KB), with room for strategies to grow.
PROMPT_ALLOWANCE_BYTES = 4096
#: An earlier step's output carried in a later prompt, in bytes per token it was generated with: the
#: bound of the worst case assumes no token of an output is longer (English text averages about 4); a
#: step past it reserves the rest from the budget as any call does.
BYTES_PER_OUTPUT_TOKEN = 4
#: Sampling options are the strategy's to choose: a request setting one is refused, not ignored.
SAMPLING_FIELDS = ("temperature", "top_p", "seed", *PENALTIES)
ROLE_NAMES = {"user": "User", "assistant": "Assistant"}


def worst_case_usd(
    collaboration: CollaborationConfig,
    reasoning: reasoning_pb2.CreateReasoningRequest,
    models: Sequence[ModelConfig],
) -> float:
    """The run's worst case in dollars: its most steps, each at the dearest model that may answer it
    (members and their fallbacks: `models`), with its longest prompt and its max_tokens."""
    seats = len(collaboration.members)
    samples = reasoning.samples if reasoning.HasField("samples") else DEFAULT_SAMPLES
    steps = worst_case_calls(collaboration.strategy, reasoning.max_iterations, samples, seats)
    # The most earlier outputs one prompt carries: every seat's (debate, mixture, vote), every sample's
    # (a vote's reader), or a draft and its critique.
    carried = max(seats, samples if collaboration.strategy in SAMPLED else 0, 2)
    # As Session._request: the session's max_tokens for every step, else each model's default.
    step_tokens = reasoning.max_tokens or max(m.default_max_tokens for m in models)
    fixed = (
        len(reasoning.system_instruction.encode())
        + len(reasoning.prompt.encode())
        + PROMPT_ALLOWANCE_BYTES
        + 2 * TEMPLATE_TOKENS_PER_MESSAGE
        + TEMPLATE_TOKENS
    )
    prompt = fixed + carried * step_tokens * BYTES_PER_OUTPUT_TOKEN
    worst_step = 0.0
    for model in models:
        bound = prompt
        if reasoning.HasField("file_data") or model.provider in COUNTS_CONTEXT_ITSELF:
            bound = (
                model.context_length if reasoning.HasField("file_data") else min(bound, model.context_length)
            )
        worst_step = max(worst_step, model.cost_usd(bound, min(step_tokens, model.context_length)))
    return steps * worst_step


@dataclass(frozen=True)
class Thinking:
    """Text of the steps, streamed as thinking."""

    text: str


@dataclass(frozen=True)
class Answer:
    """The final result, streamed as content."""

    text: str


@dataclass(frozen=True)
class Finished:
    """The end: the whole run's usage."""

    usage: common_pb2.Usage


Item = Thinking | Answer | Finished


@dataclass(frozen=True)
class Started:
    """A collaboration's session, begun for one call."""

    collaboration: CollaborationConfig
    reasoning_id: str
    caller: Caller | None


class Collaborations:
    """The configured collaboration models; see the module docstring."""

    def __init__(
        self,
        table: Sequence[CollaborationConfig],
        *,
        sessions: ReasoningSessions,
        registry: ModelRegistry,
    ) -> None:
        self._table = {c.id: c for c in sorted(table, key=lambda c: c.id)}
        self._sessions = sessions
        self._registry = registry
        self._tasks: set[asyncio.Task[object]] = set()

    def get(self, model_id: str) -> CollaborationConfig | None:
        return self._table.get(model_id)

    def may_use(self, caller: Caller | None, collaboration: CollaborationConfig) -> bool:
        """The collaboration's id and every member model (see the module docstring)."""
        try:
            self.check_access(collaboration, caller)
        except ApiError:
            return False
        return True

    def listed(self, caller: Caller | None) -> list[CollaborationConfig]:
        """The collaborations the caller may use, by id."""
        return [c for c in self._table.values() if self.may_use(caller, c)]

    def check_access(self, collaboration: CollaborationConfig, caller: Caller | None) -> None:
        """PERMISSION_DENIED unless the caller may use the collaboration and each member."""
        if not may_use(caller, collaboration.id):
            raise PermissionDenied(
                MODEL_NOT_ALLOWED,
                f"this API key may not use model {shown(collaboration.id)}",
                metadata={"model": collaboration.id},
            )
        for member in collaboration.members:
            try:
                self._registry.get(member, caller)  # by id or alias, as a call of it is checked
            except PermissionDenied:
                raise PermissionDenied(
                    MODEL_NOT_ALLOWED,
                    f"this API key may not use model {shown(member)}, a member of collaboration"
                    f" {shown(collaboration.id)}",
                    metadata={"model": member},
                ) from None

    async def start(
        self, collaboration: CollaborationConfig, request: CompletionRequest, caller: Caller | None
    ) -> Started:
        """Check the call, hold its worst case and start its session (refusals before any model call)."""
        self.check_access(collaboration, caller)
        reasoning = reasoning_request(collaboration, request)
        models: dict[str, ModelConfig] = {}
        for member in collaboration.members:
            model, _ = self._registry.get(member, caller)
            models.update((m.id, m) for m, _ in self._registry.chain(model, caller))
        hold = await RunHold.take(caller, worst_case_usd(collaboration, reasoning, list(models.values())))
        creating = asyncio.ensure_future(
            self._sessions.create(
                reasoning,
                caller if hold is None else hold.bound(),
                collaboration_model=collaboration.id,
                ended=None if hold is None else hold.release,
            )
        )
        try:
            # Shielded: a client leaving now must not leave a session running that nobody abandons.
            created = await asyncio.shield(creating)
        except asyncio.CancelledError:
            creating.add_done_callback(
                lambda done: self._created_for_nobody(done, collaboration, caller, hold)
            )
            raise
        except BaseException:
            if hold is not None:
                await hold.release()
            raise
        return Started(collaboration, created.reasoning_id, caller)

    def _created_for_nobody(
        self,
        done: asyncio.Future[reasoning_pb2.Reasoning],
        collaboration: CollaborationConfig,
        caller: Caller | None,
        hold: RunHold | None,
    ) -> None:
        """A session whose caller left while it was being created: abandoned as a dropped call's is."""
        if not done.cancelled() and done.exception() is None:
            self.abandon(Started(collaboration, done.result().reasoning_id, caller))
        elif hold is not None:
            self._background(hold.release(), "release a hold")

    def abandon(self, started: Started) -> None:
        """The client dropped the call: its run is cancelled (CancelReasoning's effect, in the background)
        unless the collaboration runs to completion."""
        if not started.collaboration.run_to_completion:
            self._background(
                self._sessions.cancel(started.reasoning_id, started.caller), f"cancel {started.reasoning_id}"
            )

    async def follow(self, started: Started) -> AsyncGenerator[Item, None]:
        """The session's steps, its answer and its usage, as it runs. Closed before the end (the client
        left), the run is cancelled unless the collaboration runs to completion."""
        finished = False
        try:
            events = cast(
                AsyncGenerator[Event, None],
                self._sessions.events(started.reasoning_id, started.caller, after=0),
            )
            steps = _Steps()
            async with aclosing(events) as stream:
                async for event in stream:
                    if event.type == EventType.REASONING_EVENT_TYPE_COMPLETION:
                        finished = True
                        yield Answer(event.final_result)
                        reasoning = await self._sessions.get(started.reasoning_id, started.caller)
                        yield Finished(run_usage(reasoning.usage))
                        return
                    if is_terminal(event.SerializeToString()):
                        finished = True
                        raise ended(event, started.reasoning_id)
                    if text := steps.text(event):
                        yield Thinking(text)
        finally:
            if not finished:
                self.abandon(started)

    def _background(self, work: Coroutine[Any, Any, object], name: str) -> None:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


class _Steps:
    """Events as the thinking text a client reads: per step a header "[step N · model]", its tokens, then
    "[kind · model]" once it is recorded (with its verdict and stuck signals when it has them)."""

    def __init__(self) -> None:
        self._open = 0  # the step whose tokens are streaming

    def text(self, event: Event) -> str:
        if event.type in (EventType.REASONING_EVENT_TYPE_TOKEN, EventType.REASONING_EVENT_TYPE_THINKING):
            if event.iteration_index == self._open:
                return event.delta
            self._open = event.iteration_index
            return f"[step {event.iteration_index} · {event.model}]\n{event.delta}"
        if event.type == EventType.REASONING_EVENT_TYPE_NEW_ITERATION:
            step = event.iteration
            body = ""
            if step.index != self._open:  # no tokens streamed for it (a replayed step): its whole text
                body = f"[step {step.index} · {step.model}]\n{step.content}"
            self._open = 0
            label = [step.kind, step.model]
            if step.verdict:
                label.append(f"verdict: {step.verdict}")
            if step.stuck_indicators:
                label.append(f"stuck: {', '.join(step.stuck_indicators)}")
            return f"{body}\n[{' · '.join(label)}]\n\n"
        return ""


def ended(event: Event, reasoning_id: str) -> ApiError:
    """The call's error for a session's end other than its completion: its error, a cancel, an
    interruption."""
    if event.type == EventType.REASONING_EVENT_TYPE_ERROR:
        return error_of(event.error)
    if event.status == common_pb2.RUN_STATUS_INTERRUPTED:
        return CANCELLED.error(
            f"reasoning {reasoning_id!r} was interrupted (the server stopped); ResumeReasoning continues it"
        )
    return CANCELLED.error(f"reasoning {reasoning_id!r} was cancelled")


def error_of(status: status_pb2.Status) -> ApiError:
    """A run's recorded error as the call's: its code, reason and metadata."""
    reason, metadata = "INTERNAL", {}
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reason, metadata = info.reason, dict(info.metadata)
    return ApiError(status_code(status.code), reason, status.message, metadata=metadata)


def run_usage(usage: reasoning_pb2.ReasoningUsage) -> common_pb2.Usage:
    """The whole run's usage as a completion's: every step's tokens and cost summed."""
    prompt = sum(m.usage.prompt_tokens for m in usage.by_model)
    completion = sum(m.usage.completion_tokens for m in usage.by_model)
    return common_pb2.Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        cost_usd=usage.cost_usd,
    )


def reasoning_request(
    collaboration: CollaborationConfig, request: CompletionRequest
) -> reasoning_pb2.CreateReasoningRequest:
    """The session a call asks for: the collaboration's settings, the call's problem (its prompt, or its
    conversation as a transcript) and its instructions after the collaboration's; what a strategy
    cannot honour is refused, naming the field."""
    for name in SAMPLING_FIELDS:
        if request.HasField(name):  # type: ignore[arg-type]  # names of optional fields of both
            raise InvalidArgument(
                name,
                f"collaboration model {collaboration.id!r} chooses its own sampling",
                reason=UNSUPPORTED_PARAMETER,
            )
    given = [n for n in ("tools", "stop") if getattr(request, n)]
    given += [n for n in ("tool_choice", "response_format") if request.HasField(n)]
    for name in given:
        raise InvalidArgument(
            name, f"collaboration model {collaboration.id!r} does not take it", reason=UNSUPPORTED_PARAMETER
        )
    system = [collaboration.instructions, request.system_instruction]
    turns: list[tuple[str, str]] = []
    for i, message in enumerate(request.messages):
        if message.file_data or message.tool_calls or message.tool_call_id:
            raise InvalidArgument(
                f"messages[{i}]",
                "a collaboration model reads text messages only (attach a file with file_data)",
                reason=UNSUPPORTED_PARAMETER,
            )
        if message.role == "system":
            system.append(message.content)
        elif message.role in ROLE_NAMES:
            turns.append((message.role, message.content))
        else:
            raise InvalidArgument(
                f"messages[{i}].role", f"{message.role!r} is not one of system, user, assistant"
            )
    if request.prompt:
        turns.append(("user", request.prompt))
    if not turns or not any(text.strip() for _, text in turns):
        raise InvalidArgument("prompt", "either prompt or a user message is required")
    if len(turns) == 1 and turns[0][0] == "user":
        problem = turns[0][1]
    else:
        problem = "\n\n".join(f"{ROLE_NAMES[role]}: {text}" for role, text in turns)
    max_tokens = collaboration.max_tokens
    if request.HasField("max_tokens"):
        max_tokens = min(max_tokens or request.max_tokens, request.max_tokens)
    reasoning = reasoning_pb2.CreateReasoningRequest(
        primary_model=collaboration.primary,
        secondary_model=collaboration.secondary,
        additional_models=collaboration.additional_models,
        prompt=problem,
        system_instruction="\n\n".join(s for s in system if s),
        collaboration_strategy=collaboration.strategy,
        max_iterations=collaboration.max_iterations,
    )
    if max_tokens is not None:
        reasoning.max_tokens = max_tokens
    if collaboration.samples is not None:
        reasoning.samples = collaboration.samples
    if request.HasField("file_data"):
        reasoning.file_data.CopyFrom(request.file_data)
    return reasoning
