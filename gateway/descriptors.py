"""Descriptor helpers: what the gateway reads off protobuf descriptors (call shapes, message classes,
field paths, field behaviour), for routes, transcoding, the compat endpoints and OpenAPI alike.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from google.api import field_behavior_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message


class RouteError(ValueError):
    """An HTTP or WebSocket rule that can't be served (bad template, unknown field…)."""


class Shape(enum.Enum):
    """gRPC call shape of a method."""

    UNARY = "unary"
    SERVER_STREAMING = "server_streaming"
    CLIENT_STREAMING = "client_streaming"
    BIDI_STREAMING = "bidi_streaming"

    @property
    def streams_requests(self) -> bool:
        return self in (Shape.CLIENT_STREAMING, Shape.BIDI_STREAMING)

    @property
    def streams_responses(self) -> bool:
        return self in (Shape.SERVER_STREAMING, Shape.BIDI_STREAMING)


#: Message types whose proto-JSON form is a single string or scalar, so a query parameter can set them.
SCALAR_LIKE_MESSAGES = frozenset(
    {
        "google.protobuf.Timestamp",
        "google.protobuf.Duration",
        "google.protobuf.FieldMask",
        "google.protobuf.DoubleValue",
        "google.protobuf.FloatValue",
        "google.protobuf.Int64Value",
        "google.protobuf.UInt64Value",
        "google.protobuf.Int32Value",
        "google.protobuf.UInt32Value",
        "google.protobuf.BoolValue",
        "google.protobuf.StringValue",
        "google.protobuf.BytesValue",
    }
)


@dataclass(frozen=True, eq=False)
class Rpc:
    """One RPC as the gateway calls it: its gRPC path and message classes."""

    method: MethodDescriptor
    request_cls: type[Message]
    response_cls: type[Message]

    @classmethod
    def of(cls, method: MethodDescriptor) -> Rpc:
        """The Rpc of a method descriptor, with message classes from its pool."""
        return cls(
            method=method,
            request_cls=message_factory.GetMessageClass(method.input_type),
            response_cls=message_factory.GetMessageClass(method.output_type),
        )

    @property
    def full_name(self) -> str:
        return self.method.full_name

    @property
    def grpc_path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"

    @property
    def shape(self) -> Shape:
        if self.method.client_streaming:
            return Shape.BIDI_STREAMING if self.method.server_streaming else Shape.CLIENT_STREAMING
        return Shape.SERVER_STREAMING if self.method.server_streaming else Shape.UNARY

    @property
    def required_fields(self) -> frozenset[str]:
        """Top-level request fields marked `(google.api.field_behavior) = REQUIRED`."""
        return frozenset(
            f.name
            for f in self.method.input_type.fields
            if field_behavior_pb2.REQUIRED in f.GetOptions().Extensions[field_behavior_pb2.field_behavior]
        )


def message_type(field: FieldDescriptor) -> Descriptor | None:
    """The message type of a message field (None for scalars and enums)."""
    return field.message_type if field.type == FieldDescriptor.TYPE_MESSAGE else None


def resolve_field_path(
    message: Descriptor, path: Sequence[str], *, context: str, json_names: bool = False
) -> list[FieldDescriptor]:
    """The fields along a dotted path (proto names, and JSON names if asked); raises RouteError."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = message
    for i, name in enumerate(path):
        if current is None:
            raise RouteError(f"{context}: {'.'.join(path[:i])} is not a message field")
        found = current.fields_by_name.get(name)
        if found is None and json_names:
            found = next((f for f in current.fields if f.json_name == name), None)
        if found is None:
            raise RouteError(f"{context}: {current.full_name} has no field {name!r}")
        if found.is_repeated and i < len(path) - 1:
            raise RouteError(f"{context}: {found.full_name} is repeated and can't be traversed")
        fields.append(found)
        current = found.message_type if found.type == FieldDescriptor.TYPE_MESSAGE else None
    return fields
