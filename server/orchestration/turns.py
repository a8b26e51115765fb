"""What a conversation is, as data: seats, turns, perspective and status, with no I/O.

**Seats and turns.** Participants are seats in speaking order. Turn k of the transcript (system message
aside) is spoken by seat k % n, so a round is one turn of every seat and `completed_rounds` is
turns // n. The initial prompt is the first seat's turn of round 1. Which seats are people:

* `human-ai` (default): seats whose role is "human" or "user" are people, their turns come from
  AddMessage or Converse; every other seat is its model. At least one of each.
* `ai-ai`: seed 000's two-model dialogue; both seats are models, the "human" one included.
* `round-robin`: two or more seats, every one a model, in order.

**Perspective.** Each model sees the system instruction, then the transcript from its own side: its own
turns as `assistant`, every other seat's as `user`, prefixed with the speaker's label, "<name>: " (the
participant's name, or its role when unnamed), so names survive in a multi-party chat. Consecutive
`user` turns are joined into one message (blank line between), since several chat templates and APIs
want roles to alternate. A turn in which a model called tools reads as its text followed by one line per
call, `[called get_weather({"city": "Paris"})]`, for every seat, the caller included: the conversation
runs no tools, so there is no result to pair a call with, and providers refuse an assistant's tool call
left without one.

**Status.** PENDING (created with auto_run false, next turn a model's), IN_PROGRESS (a run is taking AI
turns), WAITING_FOR_INPUT (the next turn is a person's), COMPLETED (rounds done; RunConversation with
additional_rounds continues), CANCELLED (a client cancelled), FAILED (a provider failed; `error`),
INTERRUPTED (the server stopped while it ran). All but COMPLETED can be run again. `next_model` /
`next_role` name the next seat, empty once COMPLETED.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from google.protobuf import timestamp_pb2
from google.rpc import status_pb2

from aibattle.v1 import common_pb2, conversations_pb2
from server.providers.attachments import chat_message
from server.providers.base import Attachment, ChatMessage, Role

MODES = ("human-ai", "ai-ai", "round-robin")
HUMAN_ROLES = frozenset({"human", "user"})

S = common_pb2.RunStatus
E = conversations_pb2.ConversationEventType
Conversation = conversations_pb2.Conversation
Event = conversations_pb2.ConversationEvent
Participant = conversations_pb2.Participant

#: Statuses after which a stream ends: the conversation stopped and nobody continues it unless asked.
ENDS_STREAM = frozenset({S.RUN_STATUS_COMPLETED, S.RUN_STATUS_FAILED, S.RUN_STATUS_CANCELLED})


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
            messages.append(chat_message(Role.ASSISTANT, said(message), files))
            continue
        current = chat_message(Role.USER, f"{label(conv.models[speaker])}: {said(message)}", files)
        if messages and messages[-1].role == Role.USER:
            previous = messages.pop()
            current = ChatMessage(
                Role.USER,
                f"{previous.content}\n\n{current.content}",
                previous.attachments + current.attachments,
            )
        messages.append(current)
    return tuple(messages)


def said(message: common_pb2.Message) -> str:
    """What a message says in a model's prompt: its content, then a line per tool call it made."""
    calls = [f"[called {c.name}({c.arguments})]" for c in message.tool_calls]
    return "\n".join(part for part in (message.content, *calls) if part)


def now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def message(
    role: str, model: str, content: str, files: Sequence[common_pb2.FileData] = ()
) -> common_pb2.Message:
    return common_pb2.Message(
        message_id=f"msg-{uuid.uuid4().hex[:16]}",
        role=role,
        model=model,
        content=content,
        created_at=now(),
        file_data=files,
    )


def status_event(status: common_pb2.RunStatus.ValueType) -> Event:
    return Event(type=E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED, status=status)


def settle_events(conv: Conversation, before: int) -> list[Event]:
    """STATUS_CHANGED when the status moved, and COMPLETION (last: it is terminal) once completed."""
    events = [] if conv.status == before else [status_event(conv.status)]
    if conv.status == S.RUN_STATUS_COMPLETED:
        events.append(Event(type=E.CONVERSATION_EVENT_TYPE_COMPLETION, status=S.RUN_STATUS_COMPLETED))
    return events


def ends_stream(body: bytes) -> bool:
    event = Event.FromString(body)
    return event.type in (E.CONVERSATION_EVENT_TYPE_COMPLETION, E.CONVERSATION_EVENT_TYPE_ERROR) or (
        event.type == E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED and event.status == S.RUN_STATUS_CANCELLED
    )


def add_usage(conv: Conversation, model: str, usage: common_pb2.Usage) -> None:
    for entry in conv.usage:
        if entry.model == model:
            break
    else:
        entry = conv.usage.add(model=model)
    entry.usage.prompt_tokens += usage.prompt_tokens
    entry.usage.completion_tokens += usage.completion_tokens
    entry.usage.total_tokens += usage.total_tokens
    entry.usage.cost_usd += usage.cost_usd


def ended(
    body: bytes, status: common_pb2.RunStatus.ValueType, error: status_pb2.Status | None
) -> tuple[bytes, list[bytes]]:
    """A run's end other than reaching a resting point, as stored and announced: STATUS_CHANGED, then
    ERROR carrying the error when it failed. The turn in progress is not recorded (its deltas stay in
    the log); running again redoes it."""
    conv = Conversation.FromString(body)
    conv.status = status
    conv.updated_at.CopyFrom(now())
    events = [status_event(status)]
    if error is not None:
        conv.error.CopyFrom(error)
        events.append(Event(type=E.CONVERSATION_EVENT_TYPE_ERROR, error=error))
    for event in events:
        event.conversation_id = conv.conversation_id
        event.created_at.CopyFrom(conv.updated_at)
    return conv.SerializeToString(), [e.SerializeToString() for e in events]


def take_queued(conv: Conversation, seat_index: int) -> common_pb2.Message | None:
    """The queued message that speaks this (person's) seat's turn, moved into the transcript."""
    seat = conv.models[seat_index]
    if not conv.queued_messages or not is_person(conv, seat):
        return None
    waiting = conv.queued_messages[0]
    if (waiting.role, waiting.model) != (seat.role, seat.id):
        return None
    spoken = common_pb2.Message()
    spoken.CopyFrom(waiting)
    del conv.queued_messages[0]
    spoken.queued = False
    conv.messages.append(spoken)
    return spoken
