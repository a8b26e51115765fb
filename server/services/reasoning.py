"""ReasoningService: collaborative reasoning sessions as durable, resumable resources.

Create validates, stores the session IN_PROGRESS with its first event and starts its run in the
background (`Runs`, under a lease), answering at once unless `wait` is set. The run
(`server.orchestration.reasoning`) commits each step with its events; Get, List and the event stream
read only the store, so they see exactly what is committed, here or after a restart. Sessions left
IN_PROGRESS by a process that died (their lease expired) are marked INTERRUPTED at start-up and by a
periodic sweep — never left "running" with nobody running them. Resume runs an INTERRUPTED, FAILED or
CANCELLED session again from its last committed step (the replay is described in `session.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator

import grpc

from aibattle.v1 import reasoning_pb2, reasoning_pb2_grpc
from common.errors import ApiError, InvalidArgument, NotFound
from server.orchestration.reasoning import KIND, MULTI_MODEL, STRATEGIES, Session, is_terminal
from server.orchestration.reasoning.session import (
    CANCELLED,
    FAILED,
    FINISHED,
    IN_PROGRESS,
    INTERRUPTED,
    now,
)
from server.orchestration.runs import LEASE_SECONDS, Runs
from server.pagination import keyset_page
from server.providers.attachments import chat_message
from server.providers.base import Attachment, Role
from server.providers.registry import ModelRegistry
from server.services.completions import attachment_for
from server.storage import EventHub, Store, follow

log = logging.getLogger(__name__)

DEFAULT_STRATEGY = "iterative_refinement"
DEFAULT_ITERATIONS = 5
RESUMABLE = frozenset({INTERRUPTED, FAILED, CANCELLED})
Event = reasoning_pb2.ReasoningEvent
EventType = reasoning_pb2.ReasoningEventType


class ReasoningServicer(reasoning_pb2_grpc.ReasoningServiceServicer):
    """See the module docstring. `recover()` once at start-up, `start()` the sweep, `close()` it."""

    def __init__(
        self,
        *,
        store: Store,
        hub: EventHub,
        runs: Runs,
        registry: ModelRegistry,
        sweep_seconds: float = LEASE_SECONDS / 3,
    ) -> None:
        self._store = store
        self._hub = hub
        self._runs = runs
        self._registry = registry
        self._sweep_seconds = sweep_seconds
        self._sessions: dict[str, Session] = {}
        self._sweeper: asyncio.Task[None] | None = None

    # -- RPCs ---------------------------------------------------------------------------------------

    async def CreateReasoning(
        self, request: reasoning_pb2.CreateReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.CreateReasoningResponse:
        reasoning, attachments = self._validate(request)
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
        last = await self._store.create(
            KIND,
            reasoning.reasoning_id,
            owner="",
            status=IN_PROGRESS,
            body=reasoning.SerializeToString(),
            events=[started.SerializeToString()],
        )
        self._hub.notify(reasoning.reasoning_id, last)
        session = self._session(reasoning, attachments)
        self._sessions[session.id] = session
        if not await self._runs.start(session.id, lambda: self._run(session)):
            # Nobody else can hold the lease of a session created a moment ago; if it happens anyway,
            # say so rather than leave a session nobody runs.
            self._sessions.pop(session.id, None)
            raise ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", "the new session could not be started")
        if request.wait:
            await self._runs.wait(session.id)
        return reasoning_pb2.CreateReasoningResponse(reasoning=await self._load(session.id))

    async def GetReasoning(
        self, request: reasoning_pb2.GetReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.GetReasoningResponse:
        return reasoning_pb2.GetReasoningResponse(reasoning=await self._load(request.reasoning_id))

    async def ListReasonings(
        self, request: reasoning_pb2.ListReasoningsRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.ListReasoningsResponse:
        rows, next_token = await keyset_page(
            lambda after, limit: self._store.list(
                KIND, owner="", status=request.status or None, after=after, limit=limit
            ),
            lambda stored: (stored.created_at, stored.resource_id),
            size=request.page_size,
            token=request.page_token,
            filters=["ListReasonings", request.status],
            default=20,
            maximum=100,
        )
        response = reasoning_pb2.ListReasoningsResponse(next_page_token=next_token)
        for stored in rows:
            reasoning = response.reasonings.add()
            reasoning.ParseFromString(stored.body)
            reasoning.ClearField("iterations")
            reasoning.status = stored.status  # type: ignore[assignment]
            reasoning.last_sequence = stored.last_sequence
        return response

    async def CancelReasoning(
        self, request: reasoning_pb2.CancelReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.CancelReasoningResponse:
        reasoning_id = request.reasoning_id
        current = await self._load(reasoning_id)
        if current.status in FINISHED:
            # Cancelling finished work changes nothing and is not an error (a retried cancel).
            return reasoning_pb2.CancelReasoningResponse(reasoning=current)
        session = self._sessions.get(reasoning_id)
        if session is not None and self._runs.running(reasoning_id):
            session.cancel_requested = True
            self._runs.cancel(reasoning_id)
            # The run's own cleanup commits CANCELLED; the provider stream is closed on the way out.
            await self._runs.wait(reasoning_id)
        if (await self._load(reasoning_id)).status == IN_PROGRESS:
            # Nobody runs it here (an orphan), or its run was cancelled before it began.
            await self._mark(reasoning_id, CANCELLED, only_if_orphaned=False)
        return reasoning_pb2.CancelReasoningResponse(reasoning=await self._load(reasoning_id))

    async def ResumeReasoning(
        self, request: reasoning_pb2.ResumeReasoningRequest, context: grpc.aio.ServicerContext
    ) -> reasoning_pb2.ResumeReasoningResponse:
        reasoning_id = request.reasoning_id
        self._check_resumable(await self._load(reasoning_id))
        await self._runs.wait(reasoning_id)  # a run here that just recorded its end is still closing
        lease = self._runs.lease()
        if not await self._store.acquire(reasoning_id, lease, now=time.time()):
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "RUNNING_ELSEWHERE",
                f"reasoning {reasoning_id!r} is being run by another server",
            )
        try:
            # Under the lease: a concurrent resume has either not begun or already moved it on.
            reasoning = await self._load(reasoning_id)
            self._check_resumable(reasoning)
            attachments = self._attachments(reasoning)
            session = self._session(reasoning, attachments)  # our runner: the lease's
            reasoning.status = IN_PROGRESS
            await session.commit(
                [session.event(EventType.REASONING_EVENT_TYPE_STATUS_CHANGED, status=IN_PROGRESS)]
            )
            session.rewind()
            self._sessions[reasoning_id] = session
            # Same runner: Runs takes over the lease we hold.
            started = await self._runs.start(reasoning_id, lambda: self._run(session))
        except BaseException:
            await self._store.release(reasoning_id, lease.runner_id)
            raise
        if not started:
            self._sessions.pop(reasoning_id, None)
            await self._store.release(reasoning_id, lease.runner_id)  # the sweep marks it INTERRUPTED
            raise ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", "the session could not be resumed")
        if request.wait:
            await self._runs.wait(reasoning_id)
        return reasoning_pb2.ResumeReasoningResponse(reasoning=await self._load(reasoning_id))

    def _session(
        self, reasoning: reasoning_pb2.Reasoning, attachments: list[tuple[str, Attachment]]
    ) -> Session:
        """A session run by this process's runner."""
        return Session(
            store=self._store,
            hub=self._hub,
            registry=self._registry,
            runner_id=self._runs.runner_id,
            reasoning=reasoning,
            attachments=attachments,
        )

    @staticmethod
    def _check_resumable(reasoning: reasoning_pb2.Reasoning) -> None:
        if reasoning.status in RESUMABLE:
            return
        state = "running" if reasoning.status == IN_PROGRESS else "completed"
        raise ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_RESUMABLE",
            f"reasoning {reasoning.reasoning_id!r} is {state}; only an interrupted, failed or cancelled"
            " session can be resumed",
        )

    def _attachments(self, reasoning: reasoning_pb2.Reasoning) -> list[tuple[str, Attachment]]:
        """The stored attachment as the primary model reads it (every model was checked at create)."""
        if not reasoning.HasField("file_data"):
            return []
        model, _ = self._registry.get(reasoning.primary_model)
        return [attachment_for(reasoning.file_data, "file_data", model)]

    async def StreamReasoningEvents(
        self, request: reasoning_pb2.StreamReasoningEventsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[reasoning_pb2.StreamReasoningEventsResponse]:
        await self._load(request.reasoning_id)  # NOT_FOUND before the stream starts
        events = follow(
            self._store,
            self._hub,
            request.reasoning_id,
            after=request.after_sequence,
            is_terminal=is_terminal,
        )
        async for sequence, body in events:
            event = Event.FromString(body)
            event.sequence = sequence
            yield reasoning_pb2.StreamReasoningEventsResponse(event=event)

    # -- runs, recovery -----------------------------------------------------------------------------

    async def _run(self, session: Session) -> None:
        try:
            await session.run(STRATEGIES[session.reasoning.collaboration_strategy])
        finally:
            self._sessions.pop(session.id, None)

    async def recover(self) -> int:
        """Mark INTERRUPTED every session left IN_PROGRESS whose lease expired; how many were."""
        orphans = await self._store.orphans(KIND, statuses=[IN_PROGRESS], now=time.time())
        count = 0
        for stored in orphans:
            if not self._runs.running(stored.resource_id):
                count += await self._mark(stored.resource_id, INTERRUPTED, only_if_orphaned=True)
        if count:
            log.info("reasoning sessions interrupted", extra={"count": count})
        return count

    async def _mark(self, reasoning_id: str, status: int, *, only_if_orphaned: bool) -> int:
        """Give a session nobody runs its final status, holding its lease meanwhile so that two
        processes recovering at once do not both write it. 1 if marked, 0 if someone runs it."""
        lease = self._runs.lease()
        if not await self._store.acquire(reasoning_id, lease, now=time.time()):
            if only_if_orphaned:
                return 0
            raise ApiError(
                grpc.StatusCode.FAILED_PRECONDITION,
                "RUNNING_ELSEWHERE",
                f"reasoning {reasoning_id!r} is being run by another server; cancel it there",
            )
        try:
            stored = await self._store.get(reasoning_id, kind=KIND)
            if stored is None or stored.status != IN_PROGRESS:
                return 0
            reasoning = reasoning_pb2.Reasoning.FromString(stored.body)
            reasoning.status = status  # type: ignore[assignment]
            reasoning.updated_at.CopyFrom(now())
            event = Event(
                reasoning_id=reasoning_id,
                type=EventType.REASONING_EVENT_TYPE_STATUS_CHANGED,
                status=status,  # type: ignore[arg-type]
                created_at=reasoning.updated_at,
            )
            last = await self._store.commit(
                reasoning_id,
                status=status,
                body=reasoning.SerializeToString(),
                events=[event.SerializeToString()],
                runner_id=lease.runner_id,
            )
            self._hub.notify(reasoning_id, last)
            return 1
        finally:
            await self._store.release(reasoning_id, lease.runner_id)

    def start(self) -> None:
        """Sweep for orphans every `sweep_seconds`: a session whose runner died after our start-up (a
        replica, or a process killed just before ours started) is found once its lease expires."""
        self._sweeper = asyncio.create_task(self._sweep(), name="reasoning orphan sweep")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_seconds)
            try:
                await self.recover()
            except Exception:
                log.exception("reasoning orphan sweep failed")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None

    # -- helpers ------------------------------------------------------------------------------------

    async def _load(self, reasoning_id: str) -> reasoning_pb2.Reasoning:
        if not reasoning_id:
            raise InvalidArgument("reasoning_id", "is required")
        stored = await self._store.get(reasoning_id, kind=KIND)
        if stored is None:
            raise NotFound("reasoning", reasoning_id)
        reasoning = reasoning_pb2.Reasoning.FromString(stored.body)
        reasoning.status = stored.status  # type: ignore[assignment]
        reasoning.last_sequence = stored.last_sequence
        return reasoning

    def _validate(
        self, request: reasoning_pb2.CreateReasoningRequest
    ) -> tuple[reasoning_pb2.Reasoning, list[tuple[str, Attachment]]]:
        """The session a valid request describes, and its attachment; errors name the field."""
        if not request.primary_model:
            raise InvalidArgument("primary_model", "is required")
        if not request.prompt.strip():
            raise InvalidArgument("prompt", "is required and must not be blank")
        strategy = request.collaboration_strategy or DEFAULT_STRATEGY
        if strategy not in STRATEGIES:
            raise InvalidArgument(
                "collaboration_strategy", f"{strategy!r} is not one of {', '.join(STRATEGIES)}"
            )
        # Ranges (max_iterations, max_tokens, how many additional_models) are the schema's bounds,
        # checked before the call reaches us.
        iterations = request.max_iterations or DEFAULT_ITERATIONS
        if request.additional_models and strategy not in MULTI_MODEL:
            raise InvalidArgument(
                "additional_models", f"only {' and '.join(sorted(MULTI_MODEL))} use more than two models"
            )
        secondary = request.secondary_model or request.primary_model
        fields = [
            ("primary_model", request.primary_model),
            ("secondary_model", secondary),
            *((f"additional_models[{i}]", m) for i, m in enumerate(request.additional_models)),
        ]
        attachments: list[tuple[str, Attachment]] = []
        for i, (_, model_id) in enumerate(fields):
            model, _ = self._registry.get(model_id)  # NotFound names the model
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
        )
        if request.HasField("file_data"):
            reasoning.file_data.CopyFrom(request.file_data)  # a resumed run reads it again
        return reasoning, attachments
