"""JSON Schemas (OpenAPI 3.1 dialect) for protobuf messages in their proto-JSON form."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor

from aibattle.v1 import options_pb2
from common.bounds import json_schema_keywords
from gateway.descriptors import message_type
from gateway.source_info import Comments

Schema = dict[str, Any]

_SIGNED_64 = (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64, FieldDescriptor.TYPE_SFIXED64)
_UNSIGNED_64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)
_SIGNED_32 = (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SFIXED32)
_UNSIGNED_32 = (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32)
_RANGE_64 = {
    **dict.fromkeys(_SIGNED_64, (-(2**63), 2**63 - 1, "int64")),
    **dict.fromkeys(_UNSIGNED_64, (0, 2**64 - 1, "uint64")),
}


#: Base64, standard or URL-safe alphabet, padding optional: what proto-JSON accepts for bytes.
BASE64_PATTERN = r"^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$"


def decimal_pattern(low: int, high: int) -> str:
    """A regex matching exactly the canonical decimals (no sign on 0+, no leading zero) in [low, high]."""
    if low > 0 or high < 0:
        raise ValueError("the range must contain 0")
    pattern = _digits_up_to(high)
    if low < 0:
        pattern = f"-(?:{_digits_up_to(-low, zero=False)})|{pattern}"
    return f"^(?:{pattern})$"


def _digits_up_to(limit: int, *, zero: bool = True) -> str:
    """Alternation of the decimals in [0 (or 1), limit], without leading zeros."""
    digits = str(limit)
    width = len(digits)
    parts = ["0"] if zero else []
    if width > 1:
        parts.append("[1-9]" if width == 2 else f"[1-9][0-9]{{0,{width - 2}}}")  # shorter numbers
    for i, digit in enumerate(digits):
        first = 1 if i == 0 else 0
        if int(digit) > first:  # same prefix, a smaller digit here, anything after
            rest = width - i - 1
            smaller = f"[{first}-{int(digit) - 1}]"
            parts.append(digits[:i] + smaller + (f"[0-9]{{{rest}}}" if rest else ""))
    parts.append(digits)
    return "|".join(dict.fromkeys(parts))


def _integer_schema(field_type: int) -> Schema | None:
    """Integers with their range; 64-bit ones also as strings (they are strings in responses)."""
    if field_type in _SIGNED_32:
        return {"type": "integer", "format": "int32", "minimum": -(2**31), "maximum": 2**31 - 1}
    if field_type in _UNSIGNED_32:
        return {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1}
    if field_type not in _RANGE_64:
        return None
    low, high, fmt = _RANGE_64[field_type]
    return {
        "type": ["string", "integer"],
        "format": fmt,
        "minimum": low,
        "maximum": high,
        "pattern": decimal_pattern(low, high),
        "description": "64-bit integer (a string in responses)",
    }


#: Well-known types with a proto-JSON form of their own.
#: Timestamp and Duration take null too: proto-JSON reads null as "unset" for any message field, and
#: these are the ones a client plausibly sends as null (`"expire_time": null`: no expiry).
_WELL_KNOWN: dict[str, Schema] = {
    "google.protobuf.Timestamp": {
        "type": ["string", "null"],
        "format": "date-time",
        "examples": ["2025-03-23T08:15:00Z"],
    },
    "google.protobuf.Duration": {
        "type": ["string", "null"],
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
    """Collects component schemas while handing out references to them.

    `strict`: the gateway refuses unknown fields, so message schemas say `additionalProperties: false`
    (well-known types with free-form JSON — Struct, Value, Any — and map fields keep theirs).
    """

    def __init__(self, comments: Comments, *, strict: bool = True) -> None:
        self.comments = comments
        self.strict = strict
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

    def request_body(self, descriptor: Descriptor, path_fields: Iterable[str]) -> Schema:
        """A `body: "*"` request: the message, less the requirement of fields the path already sets."""
        ref = self.message(descriptor)
        required = [f.name for f in descriptor.fields if is_required(f)]
        if descriptor.full_name in _WELL_KNOWN or not set(required) & set(path_fields):
            return ref
        schema = dict(self.components[descriptor.full_name])
        schema["required"] = [name for name in required if name not in set(path_fields)]
        if not schema["required"]:
            del schema["required"]
        schema["description"] = "\n\n".join(
            p for p in (schema.get("description", ""), "Fields set by the path may be left out.") if p
        )
        return schema

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

    def query_field(self, field: FieldDescriptor) -> Schema:
        """A query parameter's schema: an enum takes its value's name or number, as grpc-gateway's query
        parameters and proto-JSON parsers do (numbers no value declares are refused)."""
        schema = self.constrained_field(field)
        if field.enum_type is None or field.enum_type.full_name == "google.protobuf.NullValue":
            return schema
        numbers = {"type": "integer", "enum": [v.number for v in field.enum_type.values]}
        if field.is_repeated:
            return {**schema, "items": {"anyOf": [schema["items"], numbers]}}
        return {"anyOf": [schema, numbers]}

    def constrained_field(self, field: FieldDescriptor) -> Schema:
        """A field's schema with the constraints every request must meet (see `constraints`)."""
        return {**self.field(field), **constraints(field)}

    def documented_field(self, field: FieldDescriptor) -> Schema:
        """A field's schema with its constraints, comment and field behaviors."""
        schema = self.constrained_field(field)
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
        if self.strict:
            schema["additionalProperties"] = False
        return schema


def allowed_values(field: FieldDescriptor) -> tuple[str, ...]:
    """The values a string field's `(aibattle.v1.allowed_values)` lists; () when it lists none."""
    options = field.GetOptions()
    if not options.HasExtension(options_pb2.allowed_values):
        return ()
    return tuple(options.Extensions[options_pb2.allowed_values].values)


def constraints(field: FieldDescriptor) -> Schema:
    """JSON Schema keywords for what the protos say a valid value is, beyond its type.

    * `REQUIRED` (AIP-203): proto3 can't tell a default value from an absent one, so a required
      string or bytes is non-empty, a required repeated field has an element, a required map an entry.
    * `(aibattle.v1.allowed_values)`: the values a string field takes, as its `enum`.
    * `(aibattle.v1.bounds)`: the range of a number or the element count of a repeated field, as
      the server enforces it (common/bounds.py); a 64-bit number's decimal-string pattern narrows too.
    """
    keywords: Schema = {}
    if is_required(field):
        sub = message_type(field)
        if field.is_repeated and sub is not None and sub.GetOptions().map_entry:
            keywords["minProperties"] = 1
        elif field.is_repeated:
            keywords["minItems"] = 1
        elif field.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
            keywords["minLength"] = 1
    if values := allowed_values(field):
        # Unset (proto3's "") takes the server's default, unless the field is required.
        keywords["enum"] = list(values) if is_required(field) else ["", *values]
    bounded = json_schema_keywords(field)
    keywords.update(bounded)
    if bounded and not field.is_repeated and field.type in _RANGE_64:
        low, high, _ = _RANGE_64[field.type]
        low, high = bounded.get("minimum", low), bounded.get("maximum", high)
        if low <= 0 <= high:
            keywords["pattern"] = decimal_pattern(low, high)
    return keywords


def scalar_schema(field_type: int) -> Schema:
    if (integer := _integer_schema(field_type)) is not None:
        return integer
    if field_type == FieldDescriptor.TYPE_DOUBLE:
        return {"type": "number", "format": "double"}
    if field_type == FieldDescriptor.TYPE_FLOAT:
        return {"type": "number", "format": "float"}
    if field_type == FieldDescriptor.TYPE_BOOL:
        return {"type": "boolean"}
    if field_type == FieldDescriptor.TYPE_BYTES:
        return {"type": "string", "contentEncoding": "base64", "pattern": BASE64_PATTERN}
    return {"type": "string"}
