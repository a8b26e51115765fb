"""JSON Schemas (OpenAPI 3.1 dialect) for protobuf messages in their proto-JSON form."""

from __future__ import annotations

from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from gateway.routes import message_type
from gateway.source_info import Comments

Schema = dict[str, Any]

_INT64 = (
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED64,
)
_INT32 = (
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_SFIXED32,
)
_INT64_SCHEMA: Schema = {
    "type": ["string", "integer"],
    "format": "int64",
    "description": "64-bit integer (a string in responses)",
}

#: Well-known types with a proto-JSON form of their own.
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {
        "type": "string",
        "format": "date-time",
        "examples": ["2025-03-23T08:15:00Z"],
    },
    "google.protobuf.Duration": {
        "type": "string",
        "pattern": r"^-?[0-9]+(\.[0-9]{1,9})?s$",
        "examples": ["1.5s"],
    },
    "google.protobuf.FieldMask": {
        "type": "string",
        "description": "Comma-separated field paths.",
        "examples": ["a,b.c"],
    },
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Empty": {"type": "object", "additionalProperties": False},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string", "description": "Type URL of the embedded message."}},
        "required": ["@type"],
        "additionalProperties": True,
    },
    "google.protobuf.DoubleValue": {"type": ["number", "null"]},
    "google.protobuf.FloatValue": {"type": ["number", "null"]},
    "google.protobuf.Int64Value": {"type": ["string", "integer", "null"], "format": "int64"},
    "google.protobuf.UInt64Value": {"type": ["string", "integer", "null"], "format": "uint64"},
    "google.protobuf.Int32Value": {"type": ["integer", "null"], "format": "int32"},
    "google.protobuf.UInt32Value": {"type": ["integer", "null"], "format": "uint32"},
    "google.protobuf.BoolValue": {"type": ["boolean", "null"]},
    "google.protobuf.StringValue": {"type": ["string", "null"]},
    "google.protobuf.BytesValue": {"type": ["string", "null"], "contentEncoding": "base64"},
}


def _behaviors(field: FieldDescriptor) -> list[int]:
    return list(field.GetOptions().Extensions[field_behavior_pb2.field_behavior])


def is_required(field: FieldDescriptor) -> bool:
    return field_behavior_pb2.REQUIRED in _behaviors(field)


class SchemaBuilder:
    """Collects component schemas while handing out references to them."""

    def __init__(self, comments: Comments) -> None:
        self.comments = comments
        self.components: dict[str, Schema] = {}

    def message(self, descriptor: Descriptor) -> Schema:
        """A reference to a message's schema (or the inline form of a well-known type)."""
        if descriptor.full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[descriptor.full_name])
        name = descriptor.full_name
        if name not in self.components:
            self.components[name] = {}  # placeholder: recursive messages refer to themselves
            self.components[name] = self._message_schema(descriptor)
        return {"$ref": f"#/components/schemas/{name}"}

    def enum(self, descriptor: EnumDescriptor) -> Schema:
        name = descriptor.full_name
        if name == "google.protobuf.NullValue":
            return {"type": "null"}
        if name not in self.components:
            lines = [self.comments.get(name)]
            for value in descriptor.values:
                comment = self.comments.get(f"{name}.{value.name}")
                lines.append(f"- `{value.name}`" + (f": {comment}" if comment else ""))
            self.components[name] = {
                "type": "string",
                "enum": [v.name for v in descriptor.values],
                "description": "\n".join(line for line in lines if line),
            }
        return {"$ref": f"#/components/schemas/{name}"}

    def field(self, field: FieldDescriptor, *, element: bool = False) -> Schema:
        """Schema of a field's value (`element`: of one element of a repeated field)."""
        sub = message_type(field)
        if field.is_repeated and not element:
            if sub is not None and sub.GetOptions().map_entry:
                return {"type": "object", "additionalProperties": self.field(sub.fields_by_name["value"])}
            return {"type": "array", "items": self.field(field, element=True)}
        if sub is not None:
            return self.message(sub)
        if field.enum_type is not None:
            return self.enum(field.enum_type)
        return scalar_schema(field.type)

    def documented_field(self, field: FieldDescriptor) -> Schema:
        """A field's schema with its comment and field behaviors."""
        schema = self.field(field)
        if comment := self.comments.get(field.full_name):
            schema["description"] = comment
        if field_behavior_pb2.OUTPUT_ONLY in _behaviors(field):
            schema["readOnly"] = True
        if field.GetOptions().deprecated:
            schema["deprecated"] = True
        return schema

    def _message_schema(self, descriptor: Descriptor) -> Schema:
        schema: Schema = {
            "type": "object",
            "properties": {f.name: self.documented_field(f) for f in descriptor.fields},
        }
        if comment := self.comments.get(descriptor.full_name):
            schema["description"] = comment
        required = [f.name for f in descriptor.fields if is_required(f)]
        if required:
            schema["required"] = required
        return schema


def scalar_schema(field_type: int) -> Schema:
    if field_type in _INT64:
        return dict(_INT64_SCHEMA)
    if field_type in _INT32:
        return {"type": "integer", "format": "int32"}
    if field_type == FieldDescriptor.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if field_type == FieldDescriptor.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if field_type == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if field_type == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64"}
    return {"type": "string"}
