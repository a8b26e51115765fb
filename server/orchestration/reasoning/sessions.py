"""Reasoning sessions as durable resources: created, resumed, cancelled, adopted, read.

Create validates, then stores the session IN_PROGRESS with its first event, leased to its run, in one
transaction (`Lifecycle.create`); the run commits each step with its events (`session.Session`). Get,
List and the event stream read only the store, so they see exactly what is committed, here or after a
restart. Resume runs an INTERRUPTED, FAILED or CANCELLED session again from its last committed step by
replaying its journal (`Session.rewind`); an orphaned run (its server died) is adopted the same way by
the lifecycle's recovery.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing

from google.rpc import status_pb2

from aibattle.v1 import common_pb2, reasoning_pb2
from common.errors import NOT_RESUMABLE, FailedPrecondition, InvalidArgument, shown
from server.orchestration.lifecycle import Lifecycle, Work
from server.orchestration.reasoning.session import (
    CANCELLED,
    FAILED,
    FINISHED,
    IN_PROGRESS,
    INTERRUPTED,
    KIND,
    Event,
    EventType,
    Session,
    ended,
    is_terminal,
    now,
)
from server.orchestration.reasoning.strategies import (
    DEFAULT_ITERATIONS,
    DEFAULT_SAMPLES,
    MULTI_MODEL,
    SAMPLED,
    STRATEGIES,
)
from server.orchestration.runs import Run
from server.providers.attachments import chat_message
from server.providers.base import Attachment, Role
from server.providers.convert import attachment_for
from server.providers.registry import ModelRegistry
from server.security.context import Caller
from server.storage import Stored

DEFAULT_STRATEGY = next(iter(STRATEGIES))
RESUMABLE = frozenset({INTERRUPTED, FAILED, CANCELLED})


class ReasoningSessions:
    """See the module docstring; registered with the lifecycle as the "reasoning" resource."""

    kind = KIND

    def __init__(self, *, lifecycle: Lifecycle, registry: ModelRegistry) -> None:
        self._lifecycle = lifecycle
        self._store = lifecycle.store
        self._registry = registry
        lifecycle.register(self)

    # ---- reading

    async def stored(self, reasoning_id: str, caller: Caller | None) -> Stored:
        return await self._lifecycle.stored(self, reasoning_id, caller)

    async def get(self, reasoning_id: str, caller: Caller | None) -> reasoning_pb2.Reasoning:
        return read(await self.stored(reasoning_id, caller))

    async def list_page(
        self, caller: Caller | None, *, status: int, size: int, token: str
    ) -> tuple[list[reasoning_pb2.Reasoning], str]:
        rows, next_token = await self._lifecycle.page(
            self, caller, listing="ListReasonings", status=status, size=size, token=token
        )
        page = []
        for stored in rows:
            reasoning = read(stored)
            reasoning.ClearField("iterations")
            page.append(reasoning)
        return page, next_token

    async def events(self, reasoning_id: str, caller: Caller | None, *, after: int) -> AsyncIterator[Event]:
        """Every event after `after`, then live ones, until the session ends (`Lifecycle.follow`)."""
        stored = await self.stored(reasoning_id, caller)  # NOT_FOUND before the stream starts
        followed = self._lifecycle.follow(
            stored, after=after, finished=stored.status in FINISHED, is_terminal=is_terminal
        )
        async with aclosing(followed) as items:
            async for sequence, body in items:
                event = Event.FromString(body)
                event.sequence = sequence
                yield event

    # ---- changing

    async def create(
        self,
        request: reasoning_pb2.CreateReasoningRequest,
        caller: Caller | None,
        *,
        collaboration_model: str = "",
        ended: Callable[[], Awaitable[None]] | None = None,
    ) -> reasoning_pb2.Reasoning:
        """A new session, run in the background (waited for with `request.wait`). For a client calling
        a collaboration model: `collaboration_model` is recorded on it, and `ended` runs when its run
        ends, however it ends (not if it never started: this raised)."""
        reasoning, attachments = self._validate(request, caller)
        reasoning.collaboration_model = collaboration_model
        reasoning.reasoning_id = f"reas-{uuid.uuid4().hex[:24]}"
        reasoning.status = IN_PROGRESS
        reasoning.created_at.CopyFrom(now())
        reasoning.updated_at.CopyFrom(reasoning.created_at)
        started = Event(
            reasoning_id=reasoning.reasoning_id,
            type=EventType.REASONING_EVENT_TYPE_STATUS_CHANGED,
            status=IN_PROGRESS,
            created_at=reasoning.created_at,
        )
        session = self._session(reasoning, attachments)
        await self._lifecycle.create(
            self,
            reasoning.reasoning_id,
            caller,
            status=IN_PROGRESS,
            body=reasoning.SerializeToString(),
            events=[started.SerializeToString()],
            work=session_work(session, ended),
        )
        if request.wait:
            await self._lifecycle.runs.wait(reasoning.reasoning_id)
        return await self.get(reasoning.reasoning_id, caller)

    async def resume(
        self, reasoning_id: str, caller: Caller | None, *, wait: bool
    ) -> reasoning_pb2.Reasoning:
        stored = await self.stored(reasoning_id, caller)
        reasoning = read(stored)
        if reasoning.status not in RESUMABLE:
            state = "running" if reasoning.status == IN_PROGRESS else "completed"
            raise FailedPrecondition(
                NOT_RESUMABLE,
                f"reasoning {reasoning_id!r} is {state}; only an interrupted, failed or cancelled"
                " session can be resumed",
            )
        session = self._session(reasoning, self._attachments(reasoning, caller))
        reasoning.status = IN_PROGRESS
        reasoning.ClearField("last_sequence")  # the log's, stamped when read
        reasoning.updated_at.CopyFrom(now())
        body = reasoning.SerializeToString()  # its committed steps stay visible while they replay
        event = session.event(EventType.REASONING_EVENT_TYPE_STATUS_CHANGED, status=IN_PROGRESS)
        session.rewind()
        # The conditional write: of concurrent resumes of this state, one wins, the rest are refused.
        await self._lifecycle.claim(
            self,
            stored,
            caller,
            status=IN_PROGRESS,
            body=body,
            events=[event.SerializeToString()],
            work=session_work(session),
        )
        if wait:
            await self._lifecycle.runs.wait(reasoning_id)
        return await self.get(reasoning_id, caller)

    async def cancel(self, reasoning_id: str, caller: Caller | None) -> reasoning_pb2.Reasoning:
        current = await self.get(reasoning_id, caller)
        if current.status not in FINISHED:
            await self._lifecycle.cancel(self, reasoning_id, caller)
        # Cancelling finished work changes nothing and is not an error (a retried cancel).
        return await self.get(reasoning_id, caller)

    # ---- the lifecycle's

    def ended(
        self, body: bytes, status: common_pb2.RunStatus.ValueType, error: status_pb2.Status | None
    ) -> tuple[bytes, list[bytes]]:
        return ended(body, status, error)

    def strategy(self, body: bytes) -> str:
        return reasoning_pb2.Reasoning.FromString(body).collaboration_strategy

    async def adopt(self, run: Run, stored: Stored) -> None:
        """An orphan, continued from its last committed step by replaying its journal."""
        reasoning = read(stored)
        session = self._session(reasoning, self._attachments(reasoning, run.caller))
        session.rewind()
        await session_work(session)(run)

    # ---- helpers

    def _session(
        self, reasoning: reasoning_pb2.Reasoning, attachments: list[tuple[str, Attachment]]
    ) -> Session:
        return Session(
            lifecycle=self._lifecycle, registry=self._registry, reasoning=reasoning, attachments=attachments
        )

    def _attachments(
        self, reasoning: reasoning_pb2.Reasoning, caller: Caller | None
    ) -> list[tuple[str, Attachment]]:
        """The stored attachment as the primary model reads it (every model was checked at create)."""
        if not reasoning.HasField("file_data"):
            return []
        model, _ = self._registry.get(reasoning.primary_model, caller)
        return [attachment_for(reasoning.file_data, "file_data", model)]

    def _validate(
        self, request: reasoning_pb2.CreateReasoningRequest, caller: Caller | None
    ) -> tuple[reasoning_pb2.Reasoning, list[tuple[str, Attachment]]]:
        """The session a valid request describes, and its attachment; errors name the field."""
        if not request.primary_model:
            raise InvalidArgument("primary_model", "is required")
        if not request.prompt.strip():
            raise InvalidArgument("prompt", "is required and must not be blank")
        strategy = request.collaboration_strategy or DEFAULT_STRATEGY
        if strategy not in STRATEGIES:
            raise InvalidArgument(
                "collaboration_strategy", f"{shown(strategy)} is not one of {', '.join(STRATEGIES)}"
            )
        # Ranges (max_iterations, max_tokens, how many additional_models) are the schema's bounds,
        # checked before the call reaches us.
        iterations = request.max_iterations or DEFAULT_ITERATIONS
        if request.additional_models and strategy not in MULTI_MODEL:
            raise InvalidArgument(
                "additional_models", f"only {', '.join(sorted(MULTI_MODEL))} use more than two models"
            )
        if request.HasField("samples") and strategy not in SAMPLED:
            raise InvalidArgument(
                "samples", f"only {', '.join(sorted(SAMPLED))} draws samples, not {shown(strategy)}"
            )
        secondary = request.secondary_model or request.primary_model
        fields = [
            ("primary_model", request.primary_model),
            ("secondary_model", secondary),
            *((f"additional_models[{i}]", m) for i, m in enumerate(request.additional_models)),
        ]
        attachments: list[tuple[str, Attachment]] = []
        for i, (_, model_id) in enumerate(fields):
            model, _ = self._registry.get(model_id, caller)  # NotFound names the model
            if request.HasField("file_data"):
                # Every model reads the problem, so every model must be able to read its attachment.
                attachment = attachment_for(request.file_data, "file_data", model)
                if i == 0:
                    attachments.append(attachment)
        if attachments:
            chat_message(Role.USER, request.prompt, attachments)  # undecodable text fails here, not mid-run
        reasoning = reasoning_pb2.Reasoning(
            primary_model=request.primary_model,
            secondary_model=secondary,
            prompt=request.prompt,
            system_instruction=request.system_instruction,
            collaboration_strategy=strategy,
            max_iterations=iterations,
            additional_models=request.additional_models,
            max_tokens=request.max_tokens if request.HasField("max_tokens") else 0,
            samples=(request.samples or DEFAULT_SAMPLES) if strategy in SAMPLED else 0,
        )
        if request.HasField("file_data"):
            reasoning.file_data.CopyFrom(request.file_data)  # a resumed run reads it again
        return reasoning, attachments


def read(stored: Stored) -> reasoning_pb2.Reasoning:
    """A stored session as clients see it: the log's status and last sequence stamped in."""
    reasoning = reasoning_pb2.Reasoning.FromString(stored.body)
    reasoning.status = stored.status  # type: ignore[assignment]
    reasoning.last_sequence = stored.last_sequence
    return reasoning


def session_work(session: Session, ended: Callable[[], Awaitable[None]] | None = None) -> Work:
    """The run of a session: its strategy, in the attempt it is given; then `ended`, however it ends."""

    async def work(run: Run) -> None:
        session.run = run
        try:
            await session.run_strategy(STRATEGIES[session.reasoning.collaboration_strategy].run)
        finally:
            if ended is not None:
                await ended()

    return work
