"""Tools between the API and the providers: their names and definitions checked, JSON Schemas out of
protobuf Structs, and whole calls put back together from their stream pieces."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from google.protobuf import json_format, struct_pb2

from aibattle.v1 import common_pb2
from common.errors import InvalidArgument
from server.providers.base import ToolCall, ToolCallPiece, ToolSpec
from server.scripts import TOOL_NAME


def plain(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as the JSON object it was sent as: Struct keeps every number as a double, so whole
    ones become ints again ({"maxItems": 3}, not 3.0, which some schema validators refuse)."""
    value: dict[str, Any] = _whole(json_format.MessageToDict(struct))
    return value


def _whole(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole(v) for v in value]
    return value


def check_name(name: str, field: str, what: str = "a tool name") -> None:
    if not TOOL_NAME.fullmatch(name):
        raise InvalidArgument(field, f"{name!r} is not {what}: 1 to 64 letters, digits, '_' or '-'")


def tool_specs(tools: Sequence[common_pb2.Tool], field: str = "tools") -> tuple[ToolSpec, ...]:
    """A request's tool definitions, checked; errors name the field (`field[i].name`, ...)."""
    specs: list[ToolSpec] = []
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        check_name(tool.name, f"{field}[{i}].name")
        if tool.name in seen:
            raise InvalidArgument(f"{field}[{i}].name", f"{tool.name!r} is given twice; names are unique")
        seen.add(tool.name)
        parameters = plain(tool.parameters) if tool.HasField("parameters") else None
        if parameters:  # {} is "takes none", as unset
            if parameters.get("type") != "object":
                raise InvalidArgument(
                    f"{field}[{i}].parameters",
                    'must be an object schema ({"type": "object", "properties": {...}})',
                )
            if not isinstance(parameters.get("properties", {}), dict):
                raise InvalidArgument(f"{field}[{i}].parameters.properties", "must be an object")
        specs.append(
            ToolSpec(
                name=tool.name,
                description=tool.description,
                parameters=parameters or None,
                strict=tool.strict,
            )
        )
    return tuple(specs)


def call_proto(call: ToolCall) -> common_pb2.ToolCall:
    return common_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)


class ToolCalls:
    """Whole tool calls from their stream pieces (see `ToolCallPiece`), in index order."""

    def __init__(self) -> None:
        self._calls: dict[int, list[str]] = {}

    def add(self, pieces: Iterable[ToolCallPiece]) -> None:
        for piece in pieces:
            call = self._calls.setdefault(piece.index, ["", "", ""])
            call[0] = call[0] or piece.id
            call[1] = call[1] or piece.name
            call[2] += piece.arguments

    def calls(self) -> tuple[ToolCall, ...]:
        return tuple(ToolCall(*call) for _, call in sorted(self._calls.items()))

    def protos(self) -> list[common_pb2.ToolCall]:
        return [call_proto(c) for c in self.calls()]
