"""Conversations as durable resources: what RPCs do to them, and the run that takes the AI turns.

What a conversation is (seats, turns, perspective, statuses) is `turns`; how a run starts, commits,
ends and is recovered is `lifecycle`. This module decides, for each request, the next state:

* RPCs that change a resting conversation record the change by a conditional write
  (`Lifecycle.claim`), starting the run when models speak next; of concurrent changes one wins.
* A person may post ahead of their turn while models speak (seed 000 posts right after creating a
  `human-ai` conversation): the message is queued (`queued_messages`, a MESSAGE event with
  `queued`), and the run speaks it when that seat's turn comes, then goes on.
* Input is checked on arrival: a prompt longer than `max_prompt_chars`, a text attachment that is not
  UTF-8, or a message that would take the conversation past `max_conversation_bytes` (so that it could
  no longer be read in one response) is refused at once rather than failing every later turn.

**Events.** Every step commits its state and events in one transaction: TURN_STARTED, TOKEN/THINKING
deltas (batched), a TOOL_USE per tool the model called (model, role, tool, tool_call), MESSAGE with the
whole message (its `tool_calls` too) and its usage, STATUS_CHANGED, and COMPLETION or ERROR last. A
stream ends after COMPLETION, ERROR, or a change to CANCELLED; WAITING_FOR_INPUT and INTERRUPTED do not
end it. A deleted conversation ends its followers with NOT_FOUND.

**Tools.** `tools` (checked as a completion's, and refused with CAPABILITY_MISSING unless every model
seat can call tools) are stored with the conversation and offered to each model on its turn. The
conversation runs none: a call is recorded and announced for a client to act on, and the models read
it as text (see `turns`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from google.rpc import status_pb2

from aibattle.v1 import common_pb2, conversations_pb2
from common.errors import (
    CONVERSATION_COMPLETED,
    CONVERSATION_RUNNING,
    CONVERSATION_TOO_LONG,
    NOT_YOUR_TURN,
    PROMPT_TOO_LONG,
    QUEUE_FULL,
    ApiError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    shown,
)
from server.orchestration.lifecycle import TOKEN, DeltaEvent, Lifecycle, owner_of, stream_model
from server.orchestration.runs import Run
from server.orchestration.turns import (
    ENDS_STREAM,
    MODES,
    Conversation,
    E,
    Event,
    S,
    add_usage,
    ends_stream,
    is_person,
    message,
    next_seat,
    now,
    perspective,
    refresh,
    resting_status,
    said,
    settle_events,
    status_event,
    take_queued,
)
from server.orchestration.turns import ended as turns_ended
from server.providers.attachments import chat_message
from server.providers.base import ChatRequest, Role
from server.providers.capabilities import TOOLS, require
from server.providers.convert import attachment_for, usage_proto
from server.providers.registry import ModelRegistry
from server.providers.tools import call_proto, tool_specs
from server.security.context import Caller
from server.storage import Stored

log = logging.getLogger(__name__)

KIND = "conversation"
DEFAULT_MODE = "human-ai"
MAX_NAME = 64
MAX_QUEUED = 8
LABEL_ALLOWANCE = MAX_NAME + 4
"""Characters a message may gain in a model's prompt: its speaker's label, ": ", a blank line."""
_ROLE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")


class Conversations:
    """The conversations of this process (module docstring); the lifecycle's "conversation" resource."""

    kind = KIND

    def __init__(
        self,
        *,
        lifecycle: Lifecycle,
        registry: ModelRegistry,
        max_prompt_chars: int = 200_000,
        max_conversation_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        self._lifecycle = lifecycle
        self._store = lifecycle.store
        self._runs = lifecycle.runs
        self._registry = registry
        self._max_prompt_chars = max_prompt_chars
        self._max_bytes = max_conversation_bytes
        # Changes made by RPCs are serialized per conversation in this process (across processes the
        # conditional write decides). Weak: a lock lives while someone holds or awaits it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # The state each run here works on: a message queued while it runs joins it there.
        self._live: dict[str, Conversation] = {}
        self._deleted: dict[str, asyncio.Event] = {}
        lifecycle.register(self)

    # ---- state in the store

    async def stored(self, conversation_id: str, caller: Caller | None) -> Stored:
        return await self._lifecycle.stored(self, conversation_id, caller)

    async def get(self, conversation_id: str, caller: Caller | None) -> Conversation:
        return read(await self.stored(conversation_id, caller))

    async def _commit(
        self, run: Run | None, conv: Conversation, events: Sequence[Event], *, state: bool = True
    ) -> None:
        """One step of a run (in its name), stamped and committed with its events; with `state`
        False (token deltas) only the events are written, not the whole transcript again."""
        body, serialized = _stamped(conv, events) if state else (None, _stamped_events(conv, events))
        conv.last_sequence = await self._lifecycle.commit(
            run, conv.conversation_id, status=conv.status, body=body, events=serialized
        )

    async def _change(
        self, stored: Stored, conv: Conversation, events: Sequence[Event], caller: Caller | None
    ) -> None:
        """A change decided from `stored` by an RPC of `caller`, recorded by a conditional write; the run
        starts, in the caller's name, when models speak next (IN_PROGRESS)."""
        body, serialized = _stamped(conv, events)
        running = conv.status == S.RUN_STATUS_IN_PROGRESS
        conv.last_sequence = await self._lifecycle.claim(
            self,
            stored,
            caller,
            status=conv.status,
            body=body,
            events=serialized,
            work=self._work if running else None,
        )
        if running:
            self._hand_over(conv)

    def _lock(self, conversation_id: str) -> asyncio.Lock:
        return self._locks.setdefault(conversation_id, asyncio.Lock())

    async def _settled(self, conversation_id: str, caller: Caller | None) -> Stored:
        """The conversation once a run here that is ending has ended: one that committed its resting
        status is only releasing its lease (a client answering the MESSAGE it just saw must not be
        refused), and one that decided to rest but has not committed it yet must not be handed a
        message it would leave in the queue."""
        stored = await self.stored(conversation_id, caller)
        live = self._live.get(conversation_id)
        ending = live is not None and live.status != S.RUN_STATUS_IN_PROGRESS
        if self._runs.running(conversation_id) and (stored.status != S.RUN_STATUS_IN_PROGRESS or ending):
            await self._runs.wait(conversation_id)
            stored = await self.stored(conversation_id, caller)
        return stored

    # ---- RPCs

    async def create(
        self, request: conversations_pb2.CreateConversationRequest, caller: Caller | None
    ) -> Conversation:
        conv = self._validate(request, caller)
        conv.conversation_id = f"conv-{uuid.uuid4().hex[:16]}"
        conv.created_at.CopyFrom(now())
        if request.system_instruction:
            conv.messages.append(message("system", "", request.system_instruction))
        if request.initial_prompt or request.HasField("file_data"):
            first = conv.models[0]
            files = [request.file_data] if request.HasField("file_data") else []
            conv.messages.append(message(first.role, first.id, request.initial_prompt, files))
        events = [Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=m) for m in conv.messages]
        refresh(conv)
        conv.status = resting_status(conv)
        auto_run = not request.HasField("auto_run") or request.auto_run
        if conv.status == S.RUN_STATUS_PENDING and auto_run:
            conv.status = S.RUN_STATUS_IN_PROGRESS
        events.append(status_event(conv.status))
        body, serialized = _stamped(conv, events)
        running = conv.status == S.RUN_STATUS_IN_PROGRESS
        conv.last_sequence = await self._lifecycle.create(
            self,
            conv.conversation_id,
            caller,
            status=conv.status,
            body=body,
            events=serialized,
            work=self._work if running else None,
        )
        if running:
            self._hand_over(conv)
        if running and request.wait:
            await self._runs.wait(conv.conversation_id)
            return await self.get(conv.conversation_id, caller)
        return conv

    def _validate(
        self, request: conversations_pb2.CreateConversationRequest, caller: Caller | None
    ) -> Conversation:
        mode = request.mode or DEFAULT_MODE
        if mode not in MODES:
            raise InvalidArgument("mode", f"{shown(request.mode)} is not one of {', '.join(MODES)}")
        seats = list(request.models)  # 2 to 8: the schema's bounds, checked before the call reaches us
        for i, seat in enumerate(seats):
            if not seat.id:
                raise InvalidArgument(f"models[{i}].id", "is required")
            self._registry.get(seat.id, caller)  # NotFound names the model
            if not _ROLE.fullmatch(seat.role):
                raise InvalidArgument(
                    f"models[{i}].role",
                    f"{shown(seat.role)}: 1 to 32 letters, digits, '-' or '_', starting with a letter",
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
            models=seats,
            mode=mode,
            rounds=request.rounds or 1,
            system_instruction=request.system_instruction,
            tools=request.tools,
        )
        if tool_specs(request.tools):  # checked as a completion's tools are
            for seat in seats:
                if not is_person(conv, seat):
                    require(self._registry.get(seat.id, caller)[0], TOOLS, "tools")
        people = [s for s in seats if is_person(conv, s)]
        if mode == "human-ai" and (not people or len(people) == len(seats)):
            raise InvalidArgument(
                "models", "human-ai needs a participant with role 'human' and one played by a model"
            )
        if not is_person(conv, seats[0]) and not (request.initial_prompt or request.HasField("file_data")):
            raise InvalidArgument(
                "initial_prompt", f"is required when the first participant is a model (mode {mode})"
            )
        chars = len(request.system_instruction) + len(request.initial_prompt)
        if chars > self._max_prompt_chars:
            raise InvalidArgument(
                "initial_prompt",
                f"with the system instruction it has {chars} characters; at most"
                f" {self._max_prompt_chars} are accepted",
                reason=PROMPT_TOO_LONG,
            )
        if request.HasField("file_data"):
            self._check_attachment(conv, request.initial_prompt, request.file_data, "file_data", caller)
        return conv

    def _check_attachment(
        self, conv: Conversation, content: str, data: common_pb2.FileData, field: str, caller: Caller | None
    ) -> None:
        """Every model seat will read it: each must have the capability it needs, and a text
        attachment must decode (refused now, not by every later turn)."""
        attachment = None
        for seat in conv.models:
            if not is_person(conv, seat):
                attachment = attachment_for(data, field, self._registry.get(seat.id, caller)[0])
        if attachment is not None:
            chat_message(Role.USER, content, [attachment])

    def _check_size(
        self, conv: Conversation, content: str, files: Sequence[common_pb2.FileData], field: str
    ) -> None:
        """A message too long for a prompt, or that would take the conversation past what its models
        can be sent (`max_prompt_chars`, the whole transcript with its speakers' labels) or past what
        one response can carry, is refused on arrival: otherwise every later turn would fail."""
        if len(content) > self._max_prompt_chars:
            raise InvalidArgument(
                field,
                f"{len(content)} characters; at most {self._max_prompt_chars} are accepted",
                reason=PROMPT_TOO_LONG,
            )
        texts = [said(m) for m in (*conv.messages, *conv.queued_messages)] + [content]
        chars = sum(len(text) + LABEL_ALLOWANCE for text in texts)
        size = conv.ByteSize() + len(content.encode()) + sum(len(f.content) for f in files)
        if chars > self._max_prompt_chars or size > self._max_bytes:
            raise FailedPrecondition(
                CONVERSATION_TOO_LONG,
                "this message would take the conversation past what its models can be sent"
                f" ({self._max_prompt_chars} characters) or one response can carry ({self._max_bytes}"
                " bytes); start a new conversation",
            )

    async def list_page(
        self, caller: Caller | None, *, status: int, size: int, token: str
    ) -> tuple[list[Conversation], str]:
        rows, next_token = await self._lifecycle.page(
            self, caller, listing="ListConversations", status=status, size=size, token=token
        )
        page = []
        for stored in rows:
            conv = read(stored)
            conv.ClearField("messages")
            page.append(conv)
        return page, next_token

    async def delete(self, conversation_id: str, caller: Caller | None) -> None:
        await self.stored(conversation_id, caller)
        async with self._lock(conversation_id):
            if self._runs.cancel(conversation_id):
                await self._runs.wait(conversation_id)
            if not await self._store.delete(conversation_id, kind=KIND, owner=owner_of(caller)):
                raise NotFound("conversation", conversation_id)
        gone = self._deleted.pop(conversation_id, None)
        if gone is not None:
            gone.set()

    async def add_message(
        self, request: conversations_pb2.AddMessageRequest, caller: Caller | None
    ) -> common_pb2.Message:
        cid = request.conversation_id
        async with self._lock(cid):
            stored = await self._settled(cid, caller)
            conv = read(stored)
            seat_index = next_seat(conv)
            if seat_index is None:
                raise _completed(conv)
            named = [
                i
                for i, s in enumerate(conv.models)
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
            if not request.content and not request.HasField("file_data"):
                raise InvalidArgument("content", "is required")
            files = [request.file_data] if request.HasField("file_data") else []
            self._check_size(conv, request.content, files, "content")
            if request.HasField("file_data"):
                self._check_attachment(conv, request.content, request.file_data, "file_data", caller)
            seat = conv.models[seat_index]
            auto_run = not request.HasField("auto_run") or request.auto_run
            running = conv.status == S.RUN_STATUS_IN_PROGRESS
            if running or conv.queued_messages:
                # While models speak, or while others' words wait, a person's words join the queue:
                # spoken in the order they came, each on its seat's turn.
                queue_for = self._queue_seat(conv, named)
                if queue_for is None:
                    raise FailedPrecondition(
                        CONVERSATION_RUNNING if running else NOT_YOUR_TURN,
                        f"conversation {cid!r} is running ({conv.next_role} {conv.next_model!r} speaks"
                        " next); wait for it or cancel it"
                        if running
                        else "messages wait for their turn; only a person's may join them",
                    )
                return await self._queue(
                    stored, conv, conv.models[queue_for], request.content, files, caller, auto_run=auto_run
                )
            speaks_now = seat_index in named and (
                bool(request.role or request.model) or is_person(conv, seat)
            )
            if not speaks_now:
                raise FailedPrecondition(
                    NOT_YOUR_TURN,
                    f"it is models[{seat_index}]'s turn ({seat.role} {seat.id!r})"
                    + ("" if is_person(conv, seat) else "; RunConversation runs it"),
                    metadata={"next_role": seat.role, "next_model": seat.id},
                )
            spoken = message(seat.role, seat.id, request.content, files)
            conv.messages.append(spoken)
            before = conv.status
            refresh(conv)
            conv.ClearField("error")
            conv.status = resting_status(conv)
            if conv.status == S.RUN_STATUS_PENDING and auto_run:
                conv.status = S.RUN_STATUS_IN_PROGRESS
            events = [
                Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=spoken),
                *settle_events(conv, before),
            ]
            await self._change(stored, conv, events, caller)
            return spoken

    def _queue_seat(self, conv: Conversation, named: list[int]) -> int | None:
        """The person's seat a message posted ahead of its turn will speak for, if any: people may
        queue their next words while models speak; they never jump the order."""
        people = [i for i in named if is_person(conv, conv.models[i])]
        return people[0] if len(people) == 1 or (people and len(named) == len(people)) else None

    async def _queue(
        self,
        stored: Stored,
        conv: Conversation,
        seat: conversations_pb2.Participant,
        content: str,
        files: list[common_pb2.FileData],
        caller: Caller | None,
        *,
        auto_run: bool,
    ) -> common_pb2.Message:
        if len(conv.queued_messages) >= MAX_QUEUED:
            raise FailedPrecondition(
                QUEUE_FULL,
                f"{MAX_QUEUED} messages already wait for their turn; wait for the models to answer",
            )
        queued = message(seat.role, seat.id, content, files)
        queued.queued = True
        events = [Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=queued)]
        live = self._live.get(conv.conversation_id)
        run = self._runs.get(conv.conversation_id)
        if live is not None and run is not None:
            # The run here works on `live` (still taking turns: `_settled` let an ending run end);
            # the message joins it there, committed in the run's name.
            live.queued_messages.append(queued)
            await self._commit(run, live, events)
            return queued
        conv.queued_messages.append(queued)
        if conv.status != S.RUN_STATUS_IN_PROGRESS and auto_run and take_queued_first(conv):
            before = conv.status  # resting with words waiting for the next seat: run to speak them
            conv.status = S.RUN_STATUS_IN_PROGRESS
            conv.ClearField("error")
            events += settle_events(conv, before)
        await self._change(stored, conv, events, caller)
        return queued

    async def run(
        self, conversation_id: str, caller: Caller | None, *, additional_rounds: int, wait: bool
    ) -> Conversation:
        async with self._lock(conversation_id):
            stored = await self._settled(conversation_id, caller)
            conv = read(stored)
            if conv.status == S.RUN_STATUS_IN_PROGRESS and self._runs.running(conversation_id):
                if additional_rounds:
                    raise FailedPrecondition(
                        CONVERSATION_RUNNING,
                        "additional_rounds cannot change a running conversation; wait for it or cancel it",
                    )
            else:
                if next_seat(conv) is None and not additional_rounds:
                    raise _completed(conv)
                conv.rounds += additional_rounds
                before = conv.status
                refresh(conv)
                conv.ClearField("error")
                conv.status = resting_status(conv)
                if conv.status == S.RUN_STATUS_PENDING or take_queued_first(conv):
                    conv.status = S.RUN_STATUS_IN_PROGRESS
                events = settle_events(conv, before) if conv.status != before else []
                await self._change(stored, conv, events, caller)
        if wait:
            await self._runs.wait(conversation_id)
            conv = await self.get(conversation_id, caller)
        return conv

    async def cancel(self, conversation_id: str, caller: Caller | None) -> Conversation:
        async with self._lock(conversation_id):
            # A run: stopped, CANCELLED recorded.
            await self._lifecycle.cancel(self, conversation_id, caller)
            stored = await self._settled(conversation_id, caller)
            conv = read(stored)
            if conv.status not in (S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED):
                conv.status = S.RUN_STATUS_CANCELLED  # resting (waiting, pending, interrupted)
                await self._change(stored, conv, [status_event(conv.status)], caller)
            return await self.get(conversation_id, caller)

    async def events(
        self, conversation_id: str, caller: Caller | None, *, after: int, session: bool = False
    ) -> AsyncIterator[Event]:
        """Events after `after`, then live ones; see the module docstring for when it ends.

        `session` (Converse) never ends at a terminal event: the client may run the conversation again.
        """
        stored = await self.stored(conversation_id, caller)
        gone = self._deleted.setdefault(conversation_id, asyncio.Event())
        logged = self._lifecycle.follow(
            stored,
            after=after,
            finished=not session and stored.status in ENDS_STREAM,
            is_terminal=(lambda _: False) if session else ends_stream,
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

    async def settled(self, conversation_id: str, caller: Caller | None) -> int:
        """Wait until no run here takes turns; the last sequence then."""
        await self._runs.wait(conversation_id)
        return (await self.get(conversation_id, caller)).last_sequence

    # ---- the lifecycle's

    def ended(
        self, body: bytes, status: common_pb2.RunStatus.ValueType, error: status_pb2.Status | None
    ) -> tuple[bytes, list[bytes]]:
        return turns_ended(body, status, error)

    def strategy(self, body: bytes) -> str:
        return Conversation.FromString(body).mode or DEFAULT_MODE

    async def adopt(self, run: Run, stored: Stored) -> None:
        """An orphan continues from its transcript: the turn in progress when its runner died is
        taken again."""
        await self._work(run)

    # ---- the run

    def _hand_over(self, conv: Conversation) -> None:
        """The state a run just started here works on, registered before any other request can come
        in (no await since the run's start), so a message posted at once joins it."""
        live = Conversation()
        live.CopyFrom(conv)
        self._live[conv.conversation_id] = live

    async def _work(self, run: Run) -> None:
        conv = self._live.get(run.resource_id)
        if conv is None:  # adopted: nobody here handed it over
            conv = await self.get(run.resource_id, run.caller)
            self._live[run.resource_id] = conv
        try:
            while conv.status == S.RUN_STATUS_IN_PROGRESS:
                seat = next_seat(conv)
                if seat is None:
                    return  # completed with the last turn
                if is_person(conv, conv.models[seat]):
                    if not await self._speak_queued(run, conv, seat):
                        return  # waiting for the person, committed with the last turn
                    continue
                await self._turn(run, conv, seat)
        finally:
            if self._live.get(run.resource_id) is conv:
                del self._live[run.resource_id]

    async def _speak_queued(self, run: Run, conv: Conversation, seat: int) -> bool:
        spoken = take_queued(conv, seat)
        if spoken is None:
            return False
        await self._settle(run, conv, [Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=spoken)])
        return True

    async def _settle(self, run: Run, conv: Conversation, events: list[Event]) -> None:
        """Commit a new turn with the status it leaves the conversation in."""
        before = conv.status
        refresh(conv)
        conv.status = resting_status(conv)
        if conv.status == S.RUN_STATUS_PENDING or take_queued_first(conv):
            conv.status = S.RUN_STATUS_IN_PROGRESS
        await self._commit(run, conv, [*events, *settle_events(conv, before)])

    async def _turn(self, run: Run, conv: Conversation, seat_index: int) -> None:
        seat = conv.models[seat_index]
        model, _ = self._registry.get(seat.id, run.caller)
        await self._commit(
            run, conv, [Event(type=E.CONVERSATION_EVENT_TYPE_TURN_STARTED, model=seat.id, role=seat.role)]
        )
        chat = ChatRequest(
            messages=perspective(conv, seat_index),
            max_tokens=model.default_max_tokens,
            tools=tool_specs(conv.tools),
        )

        async def flush(deltas: list[DeltaEvent]) -> None:
            kinds = {TOKEN: E.CONVERSATION_EVENT_TYPE_TOKEN}
            events = [
                Event(type=kinds.get(d.kind, E.CONVERSATION_EVENT_TYPE_THINKING), delta=d.text)
                for d in deltas
            ]
            await self._commit(run, conv, events, state=False)

        reply = await stream_model(self._registry, model, chat, flush, run.caller)
        spoken = message(seat.role, reply.model.id, reply.text)
        spoken.thinking = reply.thinking
        spoken.tool_calls.extend(call_proto(c) for c in reply.tool_calls)
        spoken.usage.CopyFrom(usage_proto(reply.model, reply.usage))
        size = conv.ByteSize() + spoken.ByteSize()
        if size > self._max_bytes:
            raise FailedPrecondition(
                CONVERSATION_TOO_LONG,
                f"the next reply would take the conversation to {size} bytes, past its bound of"
                f" {self._max_bytes}; start a new conversation",
            )
        conv.messages.append(spoken)
        add_usage(conv, reply.model.id, spoken.usage)
        uses = [
            Event(
                type=E.CONVERSATION_EVENT_TYPE_TOOL_USE,
                model=reply.model.id,
                role=seat.role,
                tool=call.name,
                tool_call=call,
            )
            for call in spoken.tool_calls
        ]
        await self._settle(run, conv, [*uses, Event(type=E.CONVERSATION_EVENT_TYPE_MESSAGE, message=spoken)])


def take_queued_first(conv: Conversation) -> bool:
    """Whether the conversation waits for a person whose words are already queued (the run speaks
    them and goes on)."""
    seat = next_seat(conv)
    if seat is None or not conv.queued_messages:
        return False
    head = conv.queued_messages[0]
    return (head.role, head.model) == (conv.models[seat].role, conv.models[seat].id)


def read(stored: Stored) -> Conversation:
    conv = Conversation.FromString(stored.body)
    conv.status = stored.status  # type: ignore[assignment]
    conv.last_sequence = stored.last_sequence
    return conv


def _stamped(conv: Conversation, events: Sequence[Event]) -> tuple[bytes, list[bytes]]:
    """The state to store, stamped now, and its events."""
    serialized = _stamped_events(conv, events)
    conv.updated_at.CopyFrom(now())
    body = Conversation()
    body.CopyFrom(conv)
    body.ClearField("last_sequence")  # the log's, stamped when read
    return body.SerializeToString(), serialized


def _stamped_events(conv: Conversation, events: Sequence[Event]) -> list[bytes]:
    stamp = now()
    for event in events:
        event.conversation_id = conv.conversation_id
        event.created_at.CopyFrom(stamp)
    return [e.SerializeToString() for e in events]


def _completed(conv: Conversation) -> ApiError:
    return FailedPrecondition(
        CONVERSATION_COMPLETED,
        f"conversation {conv.conversation_id!r} completed its {conv.rounds} round(s);"
        " RunConversation with additional_rounds continues it",
    )
