"""Conversations: participants take turns for a number of rounds; the server runs the AI turns.

**Seats and turns.** Participants are seats in speaking order. Turn k of the transcript (system message
aside) is spoken by seat k % n, so a round is one turn of every seat and `completed_rounds` is
turns // n. The initial prompt is the first seat's turn of round 1. Which seats are people:

* `human-ai` (default): seats whose role is "human" or "user" are people, their turns come from
  AddMessage or Converse; every other seat is its model. At least one of each.
* `ai-ai`: seed 000's two-model dialogue; both seats are models, the "human" one included.
* `round-robin`: two or more seats, every one a model, in order.

AddMessage always speaks the *next* turn (a person may also speak for a model seat whose turn is next
while nothing runs); turns are never out of order, which keeps the seat of every message exact.

**Perspective.** Each model sees the system instruction, then the transcript from its own side: its own
turns as `assistant`, every other seat's as `user`, prefixed with the speaker's label, "<name>: " (the
participant's name, or its role when unnamed), so names survive in a multi-party chat. Consecutive
`user` turns are joined into one message (blank line between), since several chat templates and APIs
want roles to alternate.

**Status.** PENDING (created with auto_run false, next turn a model's), IN_PROGRESS (a run is taking AI
turns), WAITING_FOR_INPUT (the next turn is a person's), COMPLETED (rounds done; RunConversation with
additional_rounds continues), CANCELLED (a client cancelled), FAILED (a provider failed; `error`),
INTERRUPTED (the server stopped while it ran; found at start-up by its expired lease). All but COMPLETED
can be run again. `next_model` / `next_role` name the next seat, empty once COMPLETED.

**Events.** Every step commits its state and events in one `Store.commit`, then notifies the hub:
TURN_STARTED, TOKEN/THINKING deltas (batched, see `TokenBatch`), MESSAGE with the whole message and
its usage, STATUS_CHANGED, and COMPLETION or ERROR last. A turn that is cancelled or fails is not
recorded as a message (its deltas stay in the log); running again redoes that seat's turn.

**Following.** A stream ends after COMPLETION, ERROR, or a status change to CANCELLED: the conversation
stopped and nobody will continue it unless asked. WAITING_FOR_INPUT and INTERRUPTED do not end it:
a watcher of a conversation waiting for a person keeps following until it is done or cancelled.
A deleted conversation ends its followers with NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any, cast

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from aibattle.v1 import common_pb2, conversations_pb2
from common.errors import ApiError, InvalidArgument, NotFound
from server.pagination import keyset_page
from server.providers.attachments import chat_message
from server.providers.base import Attachment, ChatMessage, ChatRequest, Delta, Finish, Role, Usage
from server.providers.registry import ModelRegistry
from server.providers.resilience import Answering, resilient_stream
from server.services.completions import attachment_for, usage_proto
from server.storage import EventHub, Store, follow
from server.storage.base import LeaseLost

from .runs import Runs

log = logging.getLogger(__name__)

KIND = "conversation"
MODES = ("human-ai", "ai-ai", "round-robin")
DEFAULT_MODE = "human-ai"
HUMAN_ROLES = frozenset({"human", "user"})
MAX_NAME = 64
_ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")

S = common_pb2.RunStatus
E = conversations_pb2.ConversationEventType
Conversation = conversations_pb2.Conversation
Event = conversations_pb2.ConversationEvent
Participant = conversations_pb2.Participant

#: Statuses after which a stream ends (see the module docstring).
_ENDS_STREAM = frozenset({S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED})


class TokenBatch:
    """Deltas of a turn, committed a batch at a time.

    One transaction per token would make the database, not the model, the bottleneck (a commit is a
    WAL append and an fsync-free but still serialized write, shared by every run of the process);
    batching for at most `SECONDS` or `SIZE` deltas keeps watchers within a few tens of milliseconds
    of the model while cutting commits tenfold on a fast model. Consecutive deltas of one kind are
    joined into one event: replay gives the same text, in order, from the log.
    """

    SECONDS = 0.02
    SIZE = 16

    def __init__(self) -> None:
        self._parts: list[tuple[int, str]] = []
        self._since = 0.0

    def add(self, kind: int, text: str) -> None:
        if not text:
            return
        if not self._parts:
            self._since = time.monotonic()
        self._parts.append((kind, text))

    def due(self) -> bool:
        return len(self._parts) >= self.SIZE or (
            bool(self._parts) and time.monotonic() - self._since >= self.SECONDS
        )

    def wait(self) -> float | None:
        """How long the next delta may be waited for before the pending ones must go out anyway."""
        return None if not self._parts else max(0.0, self._since + self.SECONDS - time.monotonic())

    def take(self) -> list[Event]:
        events: list[Event] = []
        for kind, text in self._parts:
            if events and events[-1].type == kind:
                events[-1].delta += text
            else:
                events.append(Event(type=kind, delta=text))  # type: ignore[arg-type]
        self._parts.clear()
        return events


def is_person(conv: Conversation, seat: Participant) -> bool:
    """Whether a seat's turns come from a person (only in human-ai mode)."""
    return conv.mode == "human-ai" and seat.role.lower() in HUMAN_ROLES


def turns(conv: Conversation) -> int:
    return sum(1 for m in conv.messages if m.role != "system")


def next_seat(conv: Conversation) -> int | None:
    """Index of the seat whose turn is next; None once the rounds are done."""
    done = turns(conv)
    return None if done >= conv.rounds * len(conv.models) else done % len(conv.models)


def refresh(conv: Conversation) -> None:
    """Derive completed_rounds and next_* from the transcript."""
    conv.completed_rounds = turns(conv) // len(conv.models)
    seat = next_seat(conv)
    conv.next_model = "" if seat is None else conv.models[seat].id
    conv.next_role = "" if seat is None else conv.models[seat].role


def resting_status(conv: Conversation) -> common_pb2.RunStatus.ValueType:
    """The status when no run is taking turns: completed, waiting for a person, or ready to run."""
    seat = next_seat(conv)
    if seat is None:
        return S.RUN_STATUS_COMPLETED
    return S.RUN_STATUS_WAITING_FOR_INPUT if is_person(conv, conv.models[seat]) else S.RUN_STATUS_PENDING


def label(seat: Participant) -> str:
    return seat.name or seat.role


def perspective(conv: Conversation, seat_index: int) -> tuple[ChatMessage, ...]:
    """What the model of `seat_index` is sent: see the module docstring."""
    messages: list[ChatMessage] = []
    if conv.system_instruction:
        messages.append(ChatMessage(Role.SYSTEM, conv.system_instruction))
    n = len(conv.models)
    turn = 0
    for index, message in enumerate(conv.messages):
        if message.role == "system":
            continue
        speaker = turn % n
        turn += 1
        files = [
            (
                f"messages[{index}].file_data[{j}]",
                Attachment(type=f.type, mime_type=f.mime_type, content=f.content, path=f.path),
            )
            for j, f in enumerate(message.file_data)
        ]
        if speaker == seat_index:
            messages.append(chat_message(Role.ASSISTANT, message.content, files))
            continue
        said = f"{label(conv.models[speaker])}: {message.content}"
        current = chat_message(Role.USER, said, files)
        if messages and messages[-1].role == Role.USER:
            previous = messages.pop()
            current = ChatMessage(
                Role.USER,
                f"{previous.content}\n\n{current.content}",
                previous.attachments + current.attachments,
            )
        messages.append(current)
    return tuple(messages)


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _message(
    role: str, model: str, content: str, files: Sequence[common_pb2.FileData] = ()
) -> common_pb2.Message:
    return common_pb2.Message(
        message_id=f"msg-{uuid.uuid4().hex[:16]}",
        role=role,
        model=model,
        content=content,
        created_at=_now(),
        file_data=files,
    )


def _status_event(status: common_pb2.RunStatus.ValueType) -> Event:
    return Event(type=E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED, status=status)


def _settle_events(conv: Conversation, before: int) -> list[Event]:
    """STATUS_CHANGED when the status moved, and COMPLETION (last: it is terminal) once completed."""
    events = [] if conv.status == before else [_status_event(conv.status)]
    if conv.status == S.RUN_STATUS_COMPLETED:
        events.append(Event(type=E.CONVERSATION_EVENT_TYPE_COMPLETION, status=S.RUN_STATUS_COMPLETED))
    return events


def ends_stream(body: bytes) -> bool:
    event = Event.FromString(body)
    return event.type in (E.CONVERSATION_EVENT_TYPE_COMPLETION, E.CONVERSATION_EVENT_TYPE_ERROR) or (
        event.type == E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED and event.status == S.RUN_STATUS_CANCELLED
    )


def _add_usage(conv: Conversation, model: str, usage: common_pb2.Usage) -> None:
    for entry in conv.usage:
        if entry.model == model:
            break
    else:
        entry = conv.usage.add(model=model)
    entry.usage.prompt_tokens += usage.prompt_tokens
    entry.usage.completion_tokens += usage.completion_tokens
    entry.usage.total_tokens += usage.total_tokens
    entry.usage.cost_usd += usage.cost_usd


class Conversations:
    """The conversations of this process: validation, state changes and runs (module docstring)."""

    def __init__(self, *, store: Store, hub: EventHub, runs: Runs, registry: ModelRegistry) -> None:
        self._store = store
        self._hub = hub
        self._runs = runs
        self._registry = registry
        # Changes made by RPCs (not by runs) are serialized per conversation; a run owns the state
        # while it is IN_PROGRESS, and RPCs refuse to change it then.
        # Weak: a conversation's lock lives while someone holds or awaits it, not for the process.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._cancelled: set[str] = set()
        self._deleted: dict[str, asyncio.Event] = {}

    # ---- state in the store

    async def get(self, conversation_id: str) -> Conversation:
        if not conversation_id:
            raise InvalidArgument("conversation_id", "is required")
        stored = await self._store.get(conversation_id, kind=KIND)
        if stored is None:
            raise NotFound("conversation", conversation_id)
        conv = Conversation.FromString(stored.body)
        conv.last_sequence = stored.last_sequence
        return conv

    async def _commit(self, conv: Conversation, events: Sequence[Event], *, run: bool = False) -> None:
        """One step: the state and its events in one transaction, then wake the followers.

        Shielded: a cancellation arriving mid-commit must not leave the transaction half done; the
        run's cleanup, queued behind it on the store, then sees the committed state.
        """
        now = _now()
        conv.updated_at.CopyFrom(now)
        for event in events:
            event.conversation_id = conv.conversation_id
            event.created_at.CopyFrom(now)
        body = Conversation()
        body.CopyFrom(conv)
        body.ClearField("last_sequence")
        last = await asyncio.shield(
            self._store.commit(
                conv.conversation_id,
                status=conv.status,
                body=body.SerializeToString(),
                events=[e.SerializeToString() for e in events],
                runner_id=self._runs.runner_id if run else None,
            )
        )
        conv.last_sequence = last
        self._hub.notify(conv.conversation_id, last)

    def _lock(self, conversation_id: str) -> asyncio.Lock:
        return self._locks.setdefault(conversation_id, asyncio.Lock())

    async def _idle(self, conversation_id: str) -> Conversation:
        """The conversation once no run here is taking turns; FAILED_PRECONDITION while one is.

        A run that already committed its resting status is only releasing its lease: wait for it, so
        a client answering the MESSAGE it just saw is not refused.
        """
        conv = await self.get(conversation_id)
        if self._runs.running(conversation_id):
            if conv.status == S.RUN_STATUS_IN_PROGRESS:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "CONVERSATION_RUNNING",
                    f"conversation {conversation_id!r} is running ({conv.next_role} {conv.next_model!r}"
                    " speaks next); wait for it or cancel it",
                )
            await self._runs.wait(conversation_id)
            conv = await self.get(conversation_id)
        return conv

    # ---- RPCs

    async def create(self, request: conversations_pb2.CreateConversationRequest) -> Conversation:
        conv = self._validate(request)
        conv.conversation_id = f"conv-{uuid.uuid4().hex[:16]}"
        conv.created_at.CopyFrom(_now())
        conv.updated_at.CopyFrom(conv.created_at)
        events: list[Event] = []
        if request.system_instruction:
            conv.messages.append(_message("system", "", request.system_instruction))
        if request.initial_prompt or request.HasField("file_data"):
            first = conv.models[0]
            files = [request.file_data] if request.HasField("file_data") else []
            conv.messages.append(_message(first.role, first.id, request.initial_prompt, files))
        for message in conv.messages:
            events.append(Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=message))
        refresh(conv)
        conv.status = resting_status(conv)
        auto_run = not request.HasField("auto_run") or request.auto_run
        if conv.status == S.RUN_STATUS_PENDING and auto_run:
            conv.status = S.RUN_STATUS_IN_PROGRESS
        events.append(_status_event(conv.status))
        now = _now()
        for event in events:
            event.conversation_id = conv.conversation_id
            event.created_at.CopyFrom(now)
        conv.last_sequence = await self._store.create(
            KIND,
            conv.conversation_id,
            owner="",
            status=conv.status,
            body=conv.SerializeToString(),
            events=[e.SerializeToString() for e in events],
        )
        self._hub.notify(conv.conversation_id, conv.last_sequence)
        if conv.status == S.RUN_STATUS_IN_PROGRESS:
            await self._start(conv)
            if request.wait:
                await self._runs.wait(conv.conversation_id)
                return await self.get(conv.conversation_id)
        return conv

    def _validate(self, request: conversations_pb2.CreateConversationRequest) -> Conversation:
        mode = request.mode or DEFAULT_MODE
        if mode not in MODES:
            raise InvalidArgument("mode", f"{request.mode!r} is not one of {', '.join(MODES)}")
        seats = list(request.models)  # 2 to 8: the schema's bounds, checked before the call reaches us
        for i, seat in enumerate(seats):
            if not seat.id:
                raise InvalidArgument(f"models[{i}].id", "is required")
            self._registry.get(seat.id)  # NotFound names the model
            if not _ROLE.fullmatch(seat.role):
                raise InvalidArgument(
                    f"models[{i}].role",
                    f"{seat.role!r}: 1 to 32 letters, digits, '-' or '_', starting with a letter",
                )
            if seat.role == "system":
                raise InvalidArgument(
                    f"models[{i}].role", "'system' is the system instruction's, not a seat's"
                )
            if len(seat.name) > MAX_NAME or any(c in seat.name for c in "\r\n:"):
                raise InvalidArgument(
                    f"models[{i}].name", f"at most {MAX_NAME} characters, no ':' or line breaks"
                )
        if mode == "ai-ai" and len(seats) != 2:
            raise InvalidArgument(
                "models", f"ai-ai is a dialogue of 2 models; use round-robin for {len(seats)}"
            )
        conv = Conversation(
            models=seats, mode=mode, rounds=request.rounds or 1, system_instruction=request.system_instruction
        )
        people = [s for s in seats if is_person(conv, s)]
        if mode == "human-ai" and (not people or len(people) == len(seats)):
            raise InvalidArgument(
                "models", "human-ai needs a participant with role 'human' and one played by a model"
            )
        if not is_person(conv, seats[0]) and not (request.initial_prompt or request.HasField("file_data")):
            raise InvalidArgument(
                "initial_prompt", f"is required when the first participant is a model (mode {mode})"
            )
        if request.HasField("file_data"):
            self._check_attachment(conv, request.file_data, "file_data")
        return conv

    def _check_attachment(self, conv: Conversation, data: common_pb2.FileData, field: str) -> None:
        """Every model seat will read it: each must have the capability it needs."""
        for seat in conv.models:
            if not is_person(conv, seat):
                attachment_for(data, field, self._registry.get(seat.id)[0])

    async def list(self, *, status: int, size: int, token: str) -> tuple[list[Conversation], str]:
        rows, next_token = await keyset_page(
            lambda after, limit: self._store.list(
                KIND, owner="", status=status or None, after=after, limit=limit
            ),
            lambda stored: (stored.created_at, stored.resource_id),
            size=size,
            token=token,
            filters=["ListConversations", status],
            default=20,
            maximum=100,
        )
        page = []
        for stored in rows:
            conv = Conversation.FromString(stored.body)
            conv.last_sequence = stored.last_sequence
            conv.ClearField("messages")
            page.append(conv)
        return page, next_token

    async def delete(self, conversation_id: str) -> None:
        await self.get(conversation_id)
        async with self._lock(conversation_id):
            await self._stop(conversation_id)
            if not await self._store.delete(conversation_id, kind=KIND):
                raise NotFound("conversation", conversation_id)
        self._locks.pop(conversation_id, None)
        gone = self._deleted.pop(conversation_id, None)
        if gone is not None:
            gone.set()

    async def add_message(self, request: conversations_pb2.AddMessageRequest) -> common_pb2.Message:
        async with self._lock(request.conversation_id):
            conv = await self._idle(request.conversation_id)
            seat_index = next_seat(conv)
            if seat_index is None:
                raise _completed(conv)
            seat = conv.models[seat_index]
            named = [
                s
                for s in conv.models
                if (not request.role or s.role == request.role)
                and (not request.model or s.id == request.model)
            ]
            if not named:
                field = "model" if request.model else "role"
                raise InvalidArgument(
                    field,
                    f"no participant with role {request.role!r}"
                    + (f" and model {request.model!r}" if request.model else ""),
                )
            if seat not in named or (not request.role and not request.model and not is_person(conv, seat)):
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "NOT_YOUR_TURN",
                    f"it is models[{seat_index}]'s turn ({seat.role} {seat.id!r})"
                    + ("" if is_person(conv, seat) else "; RunConversation runs it"),
                    metadata={"next_role": seat.role, "next_model": seat.id},
                )
            if not request.content and not request.HasField("file_data"):
                raise InvalidArgument("content", "is required")
            if request.HasField("file_data"):
                self._check_attachment(conv, request.file_data, "file_data")
            files = [request.file_data] if request.HasField("file_data") else []
            message = _message(seat.role, seat.id, request.content, files)
            conv.messages.append(message)
            before = conv.status
            refresh(conv)
            conv.error.Clear()
            conv.ClearField("error")
            conv.status = resting_status(conv)
            auto_run = not request.HasField("auto_run") or request.auto_run
            if conv.status == S.RUN_STATUS_PENDING and auto_run:
                conv.status = S.RUN_STATUS_IN_PROGRESS
            events = [
                Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=message),
                *_settle_events(conv, before),
            ]
            await self._commit(conv, events)
            if conv.status == S.RUN_STATUS_IN_PROGRESS:
                await self._start(conv)
            return message

    async def run(self, conversation_id: str, *, additional_rounds: int, wait: bool) -> Conversation:
        async with self._lock(conversation_id):
            conv = await self.get(conversation_id)
            if self._runs.running(conversation_id) and conv.status == S.RUN_STATUS_IN_PROGRESS:
                if additional_rounds:
                    raise ApiError(
                        grpc.StatusCode.FAILED_PRECONDITION,
                        "CONVERSATION_RUNNING",
                        "additional_rounds cannot change a running conversation; wait for it or cancel it",
                    )
            else:
                conv = await self._idle(conversation_id)
                if next_seat(conv) is None and not additional_rounds:
                    raise _completed(conv)
                conv.rounds += additional_rounds
                before = conv.status
                refresh(conv)
                conv.ClearField("error")
                conv.status = resting_status(conv)
                if conv.status == S.RUN_STATUS_PENDING:
                    conv.status = S.RUN_STATUS_IN_PROGRESS
                await self._commit(conv, _settle_events(conv, before) if conv.status != before else [])
                if conv.status == S.RUN_STATUS_IN_PROGRESS:
                    await self._start(conv)
        if wait:
            await self._runs.wait(conversation_id)
            conv = await self.get(conversation_id)
        return conv

    async def cancel(self, conversation_id: str) -> Conversation:
        await self.get(conversation_id)
        async with self._lock(conversation_id):
            await self._stop(conversation_id)
            return await self.get(conversation_id)

    async def _stop(self, conversation_id: str) -> None:
        """Cancel the run here (its cleanup records CANCELLED), or mark a resting one CANCELLED."""
        if self._runs.running(conversation_id):
            self._cancelled.add(conversation_id)
            self._runs.cancel(conversation_id)
            await self._runs.wait(conversation_id)
        conv = await self.get(conversation_id)
        if conv.status in (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED):
            return
        conv.status = S.RUN_STATUS_CANCELLED
        await self._commit(conv, [_status_event(conv.status)])

    async def recover(self) -> int:
        """Start-up: IN_PROGRESS conversations whose lease expired have nobody running them: INTERRUPTED."""
        found = await self._store.orphans(KIND, statuses=[S.RUN_STATUS_IN_PROGRESS], now=time.time())
        for stored in found:
            conv = Conversation.FromString(stored.body)
            conv.last_sequence = stored.last_sequence
            conv.status = S.RUN_STATUS_INTERRUPTED
            await self._commit(conv, [_status_event(conv.status)])
            log.info("conversation interrupted", extra={"conversation_id": conv.conversation_id})
        return len(found)

    async def events(
        self, conversation_id: str, *, after: int, session: bool = False
    ) -> AsyncIterator[Event]:
        """Events after `after`, then live ones; see the module docstring for when it ends.

        `session` (Converse) never ends at a terminal event: the client may run the conversation again.
        """
        conv = await self.get(conversation_id)
        if not session and conv.status in _ENDS_STREAM and conv.last_sequence <= after:
            return
        gone = self._deleted.setdefault(conversation_id, asyncio.Event())
        terminal = (lambda _: False) if session else ends_stream
        # follow() is an async generator (typed as an iterator): closed here, its store reads stop.
        logged = cast(
            AsyncGenerator[tuple[int, bytes], None],
            follow(self._store, self._hub, conversation_id, after=after, is_terminal=terminal),
        )
        async with aclosing(logged) as log_:
            while True:
                step = asyncio.ensure_future(anext(log_))
                deleted = asyncio.ensure_future(gone.wait())
                done: set[asyncio.Future[Any]] = set()
                try:
                    done, _ = await asyncio.wait({step, deleted}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    deleted.cancel()
                    if step not in done:
                        step.cancel()
                        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                            await step
                if step not in done:
                    raise NotFound("conversation", conversation_id)
                try:
                    sequence, body = step.result()
                except StopAsyncIteration:
                    return
                event = Event.FromString(body)
                event.sequence = sequence
                yield event

    async def settled(self, conversation_id: str) -> int:
        """Wait until no run here takes turns; the last sequence then."""
        await self._runs.wait(conversation_id)
        return (await self.get(conversation_id)).last_sequence

    # ---- runs

    async def _start(self, conv: Conversation) -> None:
        cid = conv.conversation_id
        self._cancelled.discard(cid)
        if not await self._runs.start(cid, lambda: self._work(cid)):
            conv.status = S.RUN_STATUS_PENDING
            await self._commit(conv, [_status_event(conv.status)])
            raise ApiError(
                grpc.StatusCode.ABORTED, "CONVERSATION_BUSY", f"conversation {cid!r} is being run elsewhere"
            )

    async def _work(self, conversation_id: str) -> None:
        conv = await self.get(conversation_id)
        try:
            while conv.status == S.RUN_STATUS_IN_PROGRESS:
                seat = next_seat(conv)
                if seat is None or is_person(conv, conv.models[seat]):  # committed with the last turn
                    return
                await self._turn(conv, seat)
        except asyncio.CancelledError:
            await self._stopped(conversation_id)
            raise
        except LeaseLost:
            log.warning(
                "conversation lease lost; another runner continues",
                extra={"conversation_id": conversation_id},
            )
        except Exception as exc:
            if isinstance(exc, ApiError):
                error = exc.to_status()
            else:
                log.exception("conversation run failed", extra={"conversation_id": conversation_id})
                error = status_pb2.Status(code=grpc.StatusCode.INTERNAL.value[0], message="internal error")
            conv = await self.get(conversation_id)
            conv.status = S.RUN_STATUS_FAILED
            conv.error.CopyFrom(error)
            await self._commit(
                conv,
                [_status_event(conv.status), Event(type=E.CONVERSATION_EVENT_TYPE_ERROR, error=error)],
                run=True,
            )

    async def _stopped(self, conversation_id: str) -> None:
        """A cancelled run's cleanup: CANCELLED when a client asked, INTERRUPTED at shutdown."""
        conv = await self.get(conversation_id)
        if conv.status != S.RUN_STATUS_IN_PROGRESS:
            return
        asked = conversation_id in self._cancelled
        self._cancelled.discard(conversation_id)
        conv.status = S.RUN_STATUS_CANCELLED if asked else S.RUN_STATUS_INTERRUPTED
        with contextlib.suppress(LeaseLost):
            await self._commit(conv, [_status_event(conv.status)], run=True)

    async def _turn(self, conv: Conversation, seat_index: int) -> None:
        seat = conv.models[seat_index]
        model, _ = self._registry.get(seat.id)
        await self._commit(
            conv,
            [Event(type=E.CONVERSATION_EVENT_TYPE_TURN_STARTED, model=seat.id, role=seat.role)],
            run=True,
        )
        chat = ChatRequest(messages=perspective(conv, seat_index), max_tokens=model.default_max_tokens)
        content: list[str] = []
        thinking: list[str] = []
        finish = Finish(Usage())
        answered = model
        batch = TokenBatch()
        stream = resilient_stream(self._registry.chain(model), chat, self._registry.circuits)
        async with aclosing(stream) as items:
            # The next item is awaited in a task so that deltas waiting in the batch go out on time
            # even when the model pauses (a slow first token after a burst, a long thinking phase).
            pending: asyncio.Future[Answering | Delta | Finish] | None = None
            try:
                while True:
                    if pending is None:
                        pending = asyncio.ensure_future(anext(items))
                    done, _ = await asyncio.wait({pending}, timeout=batch.wait())
                    if not done:
                        await self._commit(conv, batch.take(), run=True)
                        continue
                    try:
                        item = pending.result()
                    except StopAsyncIteration:
                        break
                    finally:
                        pending = None
                    if isinstance(item, Answering):
                        answered = item.model
                    elif isinstance(item, Delta):
                        content.append(item.content)
                        thinking.append(item.thinking)
                        batch.add(E.CONVERSATION_EVENT_TYPE_THINKING, item.thinking)
                        batch.add(E.CONVERSATION_EVENT_TYPE_TOKEN, item.content)
                        if batch.due():
                            await self._commit(conv, batch.take(), run=True)
                    else:
                        finish = item
            finally:
                if pending is not None:  # cancelled or failed while the model was producing
                    pending.cancel()
                    with contextlib.suppress(BaseException):
                        await pending
        events = batch.take()
        message = _message(seat.role, answered.id, "".join(content))
        message.thinking = "".join(thinking)
        message.usage.CopyFrom(usage_proto(answered, finish.usage))
        conv.messages.append(message)
        _add_usage(conv, answered.id, message.usage)
        before = conv.status
        refresh(conv)
        conv.status = resting_status(conv)
        if conv.status == S.RUN_STATUS_PENDING:
            conv.status = S.RUN_STATUS_IN_PROGRESS
        events += [
            Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=message),
            *_settle_events(conv, before),
        ]
        await self._commit(conv, events, run=True)


def _completed(conv: Conversation) -> ApiError:
    return ApiError(
        grpc.StatusCode.FAILED_PRECONDITION,
        "CONVERSATION_COMPLETED",
        f"conversation {conv.conversation_id!r} completed its {conv.rounds} round(s);"
        " RunConversation with additional_rounds continues it",
    )
