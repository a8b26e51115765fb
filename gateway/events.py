"""Event streams: server streams of sequenced events, recognised from their descriptors.

An RPC is an event stream when its response carries an integer field named `sequence` (at the top or
inside a singular message field: `{event: {sequence, …}}`); it is resumable when its request has a
top-level integer field named `after_sequence`. Nothing here names an RPC: StreamConversationEvents,
Converse and StreamReasoningEvents qualify by their shape, and so would any later stream built the
same way. The gateway uses this for SSE `id:` lines, `Last-Event-ID` resumption and the flat
WebSocket dialect's event frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from common.errors import INVALID_HEADER, InvalidArgument, shown
from gateway.descriptors import Rpc, message_type

SEQUENCE_FIELD = "sequence"
RESUME_FIELD = "after_sequence"
LAST_EVENT_ID = "Last-Event-ID"

_INTEGERS = frozenset(
    {
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_SINT32,
    }
)


def _is_integer(field: FieldDescriptor) -> bool:
    return field.type in _INTEGERS and not field.is_repeated


@dataclass(frozen=True)
class EventStream:
    """Where an RPC's responses keep their sequence, and which request field resumes after one."""

    #: Field names from the response to the event message holding the sequence ((): the response itself).
    event_path: tuple[str, ...]
    #: The request's `after_sequence` field, or None when the stream cannot be resumed.
    resume_field: FieldDescriptor | None

    def event(self, response: Message) -> Message:
        """The event message inside a response (the response itself when the sequence is top-level)."""
        current = response
        for name in self.event_path:
            current = getattr(current, name)
        return current

    def sequence(self, response: Message) -> int:
        """The response's sequence number (0 when unset)."""
        return int(getattr(self.event(response), SEQUENCE_FIELD))

    def resume(self, request: Message, last_event_id: str | None) -> None:
        """Apply a `Last-Event-ID` header to a request: it wins over an `after_sequence` in the URL,
        because a reconnecting EventSource repeats its first URL but sends the newest id it saw."""
        if last_event_id is None or self.resume_field is None:
            return
        value = last_event_id.strip()
        # 19 digits hold every int64; longer is out of range, and int() of 4,300 digits raises.
        if not value.isascii() or not value.isdigit() or len(value) > 19:
            raise InvalidArgument(
                LAST_EVENT_ID,
                f"{LAST_EVENT_ID} {shown(last_event_id)} is not an event sequence number"
                " (a non-negative integer below 2^63)",
                reason=INVALID_HEADER,
                prefix=False,
            )
        number = int(value)
        if number >= 2**63:
            raise InvalidArgument(
                LAST_EVENT_ID,
                f"{LAST_EVENT_ID} {shown(last_event_id)} is out of range",
                reason=INVALID_HEADER,
                prefix=False,
            )
        setattr(request, self.resume_field.name, number)


def event_stream(rpc: Rpc) -> EventStream | None:
    """The event-stream shape of a streaming RPC, or None when its responses carry no sequence."""
    if not rpc.method.server_streaming:
        return None
    path = _sequence_path(rpc.method.output_type)
    if path is None:
        return None
    resume = rpc.method.input_type.fields_by_name.get(RESUME_FIELD)
    return EventStream(
        event_path=path, resume_field=resume if resume is not None and _is_integer(resume) else None
    )


def _sequence_path(message: Descriptor) -> tuple[str, ...] | None:
    """(…, holder) fields leading to an integer `sequence`: top-level first, then one message down."""
    own = message.fields_by_name.get(SEQUENCE_FIELD)
    if own is not None and _is_integer(own):
        return ()
    for field in message.fields:
        sub = message_type(field)
        if sub is None or field.is_repeated or sub.full_name.startswith("google."):
            continue
        nested = sub.fields_by_name.get(SEQUENCE_FIELD)
        if nested is not None and _is_integer(nested):
            return (field.name,)
    return None


def enum_short_name(descriptor: Any, number: int) -> str:
    """An enum value's name without its enum's prefix, lower-cased: CONVERSATION_EVENT_TYPE_TURN_STARTED
    → "turn_started" (buf's ENUM_VALUE_PREFIX makes every value start with the enum's name)."""
    value = descriptor.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = _snake_upper(descriptor.name) + "_"
    name: str = value.name
    return (name[len(prefix) :] if name.startswith(prefix) else name).lower()


def _snake_upper(camel: str) -> str:
    out = []
    for i, char in enumerate(camel):
        if char.isupper() and i and not camel[i - 1].isupper():
            out.append("_")
        out.append(char.upper())
    return "".join(out)
