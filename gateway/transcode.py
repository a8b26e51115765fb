"""JSON ↔ protobuf for routes: the request from path, query and body; the response and stream frames.

Everything goes through protobuf's JSON mapping (`google.protobuf.json_format`), so JSON has one
meaning everywhere: proto field names and JSON names both accepted on input, proto names on output,
well-known types in their proto-JSON forms (Timestamp "2025-03-23T08:15:00Z", Duration "1.5s",
FieldMask "a,b", wrappers as bare values). Strict mode (the default) turns unknown body fields and
unknown query parameters into INVALID_ARGUMENT naming them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, cast

import orjson
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2
from multidict import MultiMapping

from common.errors import (
    INVALID_BODY,
    INVALID_FIELD_VALUE,
    INVALID_QUERY_PARAMETER,
    MALFORMED_JSON,
    UNEXPECTED_BODY,
    UNKNOWN_FIELD,
    UNKNOWN_QUERY_PARAMETER,
    InvalidArgument,
)
from gateway.descriptors import SCALAR_LIKE_MESSAGES, RouteError, message_type, resolve_field_path
from gateway.errors import status_to_json
from gateway.routes import Kind, Route

_UNKNOWN_FIELD = re.compile(r'Message type "([^"]+)" has no field named "([^"]+)" at "([^"]+)"')
_TRUE = frozenset({"true", "1", "t", "yes"})
_FALSE = frozenset({"false", "0", "f", "no"})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_json(raw: bytes | str, *, what: str = "request body") -> Any:
    """Parse strict JSON (no NaN, no duplicate keys); raises INVALID_ARGUMENT naming the problem."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise InvalidArgument(None, f"{what} is not UTF-8: {exc}", reason=MALFORMED_JSON) from exc
    except RecursionError:
        # The C scanner recurses per nesting level; protobuf's parser would refuse past 100 anyway.
        raise InvalidArgument(None, f"{what} is nested too deeply", reason=MALFORMED_JSON) from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise InvalidArgument(None, f"malformed JSON in {what}: {exc}", reason=MALFORMED_JSON) from exc


def decode_request(
    route: Route,
    *,
    path_params: Mapping[str, str],
    query: MultiMapping[str],
    body: Any = None,
    has_body: bool = False,
    strict: bool = True,
) -> Message:
    """Build the request message of a route from its path variables, query parameters and JSON body.

    `body` is the parsed JSON (see parse_json); for WebSocket routes it is one text frame.
    """
    message = route.rpc.request_cls()
    if has_body:
        if not route.body:
            if strict:
                raise InvalidArgument(
                    None,
                    f"{route.http_method} {route.template.source} takes no request body",
                    reason=UNEXPECTED_BODY,
                )
        elif route.body == "*":
            if not isinstance(body, dict):
                raise InvalidArgument(None, "request body must be a JSON object", reason=INVALID_BODY)
            _parse_into(message, body, strict=strict, where="request body")
        else:
            _parse_into(message, {route.body: body}, strict=strict, where="request body")

    url = route.rpc.request_cls()
    for name, value in path_params.items():
        _set_param(url, route, name, [value], source="path variable", strict=strict)
    query_allowed = route.kind is Kind.WEBSOCKET or route.body != "*"
    for key in dict.fromkeys(query.keys()):
        if not query_allowed:
            if strict:
                raise InvalidArgument(
                    key,
                    f"unknown query parameter {key!r}: the whole request is the body of this route",
                    reason=UNKNOWN_QUERY_PARAMETER,
                    prefix=False,
                )
            continue
        _set_param(url, route, key, query.getall(key), source="query parameter", strict=strict)
    # Path variables win over the body, as in grpc-gateway.
    message.MergeFrom(url)
    return message


def _parse_into(message: Message, obj: dict[str, Any], *, strict: bool, where: str) -> None:
    _check_objects(cast(Descriptor, message.DESCRIPTOR), obj, where=where, path="")
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=not strict)
    except json_format.ParseError as exc:
        text = str(exc).split("\n")[0]
        unknown = _UNKNOWN_FIELD.search(text)
        if unknown is None:
            raise InvalidArgument(None, f"invalid {where}: {text}", reason=INVALID_FIELD_VALUE) from exc
        # 'no field named "x" at "Req.messages[0]"' → the field path "messages[0].x".
        scope = unknown.group(3).partition(".")[2]
        field = f"{scope}.{unknown.group(2)}" if scope else unknown.group(2)
        raise InvalidArgument(
            field,
            f"invalid {where}: unknown field {field!r} (not a field of {unknown.group(1)})",
            reason=UNKNOWN_FIELD,
            prefix=False,
        ) from exc


_JSON_TYPE_NAMES = {str: "a string", int: "a number", float: "a number", bool: "a boolean", list: "an array"}


def _check_objects(descriptor: Descriptor, obj: dict[str, Any], *, where: str, path: str) -> None:
    """What protobuf's parser would take wrongly rather than refuse: a string for a message field (read
    as a key list), bytes that are not base64 (decoded to nothing), integer strings such as "+0_7"."""
    for key, value in obj.items():
        field = descriptor.fields_by_name.get(key) or next(
            (f for f in descriptor.fields if f.json_name == key), None
        )
        sub = message_type(field) if field is not None else None
        if field is not None and sub is None and value is not None:
            _check_scalars(field, value, where=where, name=f"{path}{field.name}")
        if field is None or sub is None or value is None or sub.full_name.startswith("google.protobuf."):
            continue
        if sub.GetOptions().map_entry or (field.is_repeated and not isinstance(value, list)):
            continue  # protobuf's parser names these problems well
        for i, element in enumerate(value if field.is_repeated else [value]):
            name = f"{path}{field.name}" + (f"[{i}]" if field.is_repeated else "")
            if not isinstance(element, dict):
                kind = _JSON_TYPE_NAMES.get(type(element), type(element).__name__)
                raise InvalidArgument(
                    name,
                    f"invalid {where}: field {name} must be a JSON object ({sub.full_name}), not {kind}",
                    reason=INVALID_FIELD_VALUE,
                    prefix=False,
                )
            _check_objects(sub, element, where=where, path=f"{name}.")


_BASE64 = re.compile(r"[A-Za-z0-9+/_-]*={0,2}")
_DECIMAL = re.compile(r"-?[0-9]+")
_INTEGER_TYPES = frozenset(
    {
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
        FieldDescriptor.TYPE_SFIXED32,
        FieldDescriptor.TYPE_SFIXED64,
    }
)


def _check_scalars(field: FieldDescriptor, value: Any, *, where: str, name: str) -> None:
    values = value if field.is_repeated and isinstance(value, list) else [value]
    for element in values:
        if not isinstance(element, str):
            continue  # protobuf's parser names wrong JSON kinds well
        if field.type == FieldDescriptor.TYPE_BYTES and (
            not _BASE64.fullmatch(element) or len(element.rstrip("=")) % 4 == 1
        ):
            problem = "must be base64 (standard or URL-safe alphabet)"
        elif field.type in _INTEGER_TYPES and not _DECIMAL.fullmatch(element):
            problem = "must be an integer (a JSON number, or a string of decimal digits)"
        else:
            continue
        raise InvalidArgument(
            name, f"invalid {where}: field {name} {problem}", reason=INVALID_FIELD_VALUE, prefix=False
        )


def _set_param(
    target: Message, route: Route, key: str, values: Sequence[str], *, source: str, strict: bool
) -> None:
    descriptor = route.rpc.method.input_type
    try:
        fields = resolve_field_path(descriptor, key.split("."), context=source, json_names=True)
    except RouteError as exc:
        if not strict:
            return
        raise InvalidArgument(
            key, f"unknown {source} {key!r} ({exc})", reason=UNKNOWN_QUERY_PARAMETER, prefix=False
        ) from exc
    top, leaf = fields[0], fields[-1]
    if source == "query parameter":
        if top.name in route.path_fields:
            raise InvalidArgument(
                key,
                f"query parameter {key!r} is already set by the path",
                reason=INVALID_QUERY_PARAMETER,
                prefix=False,
            )
        if route.body not in ("", "*") and top.name == route.body:
            raise InvalidArgument(
                key,
                f"query parameter {key!r} is part of the request body",
                reason=INVALID_QUERY_PARAMETER,
                prefix=False,
            )
    leaf_message = message_type(leaf)
    if leaf_message is not None and (
        leaf_message.GetOptions().map_entry or leaf_message.full_name not in SCALAR_LIKE_MESSAGES
    ):
        raise InvalidArgument(
            key,
            f"{source} {key!r} names a message field ({leaf_message.full_name}); set its fields instead",
            reason=INVALID_QUERY_PARAMETER,
            prefix=False,
        )
    converted = [_scalar(leaf, v, key=key, source=source) for v in values]
    value: Any
    if leaf.is_repeated:
        value = converted
    elif len(converted) > 1:
        raise InvalidArgument(
            key,
            f"{source} {key!r} is not repeated but was given {len(converted)} times",
            reason=INVALID_QUERY_PARAMETER,
            prefix=False,
        )
    else:
        value = converted[0]
    tree: dict[str, Any] = {leaf.name: value}
    for parent in reversed(fields[:-1]):
        tree = {parent.name: tree}
    scratch = route.rpc.request_cls()
    try:
        json_format.ParseDict(tree, scratch)
    except json_format.ParseError as exc:
        text = str(exc).split("\n")[0]
        raise InvalidArgument(
            key, f"invalid {source} {key!r}: {text}", reason=INVALID_QUERY_PARAMETER, prefix=False
        ) from exc
    target.MergeFrom(scratch)


def _scalar(leaf: FieldDescriptor, raw: str, *, key: str, source: str) -> Any:
    """A URL string as the JSON value protobuf's parser wants (it reads numbers, enums, WKTs from strings)."""
    if leaf.enum_type is not None:
        return _enum_value(leaf.enum_type, raw, key=key, source=source)
    leaf_message = message_type(leaf)
    is_bool = leaf.type == FieldDescriptor.TYPE_BOOL or (
        leaf_message is not None and leaf_message.full_name == "google.protobuf.BoolValue"
    )
    if is_bool:
        lowered = raw.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    return raw


def _enum_value(enum: EnumDescriptor, raw: str, *, key: str, source: str) -> str | int:
    """An enum in a URL: a value's name, or the number of a declared value, as grpc-gateway reads query
    parameters. protobuf's parser alone would take any number for an open enum, a value no client can
    mean and the OpenAPI document does not offer."""
    if raw in enum.values_by_name:
        return raw
    # An enum number is an int32 (at most 11 characters): never int() a 4,300-digit string.
    if len(raw) <= 11 and _DECIMAL.fullmatch(raw) and int(raw) in enum.values_by_number:
        return int(raw)
    raise InvalidArgument(
        key,
        f"invalid {source} {key!r}: {raw[:64]!r} is not a value of {enum.full_name}; use a name "
        f"({', '.join(enum.values_by_name)}) or its number",
        reason=INVALID_QUERY_PARAMETER,
        prefix=False,
    )


def message_to_json(message: Message, *, emit_unpopulated: bool) -> dict[str, Any]:
    """A message as proto-JSON with proto field names."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=emit_unpopulated
    )


def response_json(route: Route, message: Message, *, emit_unpopulated: bool) -> Any:
    """The REST response: the whole message, or its `response_body` field alone."""
    if not route.response_body:
        return message_to_json(message, emit_unpopulated=emit_unpopulated)
    field = message.DESCRIPTOR.fields_by_name[route.response_body]
    if field.type == FieldDescriptor.TYPE_MESSAGE and not field.is_repeated:
        return message_to_json(getattr(message, field.name), emit_unpopulated=emit_unpopulated)
    rendered = json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    return rendered.get(field.name)


def dumps(payload: Any) -> str:
    """Compact JSON text, UTF-8 kept."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))


def dumps_bytes(payload: Any) -> bytes:
    """The same JSON as `dumps`, as UTF-8 bytes, by orjson: what a stream writes, frame after frame,
    with no text to encode again. (A payload here comes from json_format or the compat dialects:
    string keys, 64-bit integers as strings, no NaN.)"""
    return orjson.dumps(payload)


def result_frame(payload: Any) -> str:
    """One stream frame: `{"result": …}` (NDJSON line, SSE data, WebSocket text frame)."""
    return dumps({"result": payload})


def error_frame(status: status_pb2.Status) -> str:
    """The final frame of a failed stream: `{"error": Status}`."""
    return dumps({"error": status_to_json(status)})
