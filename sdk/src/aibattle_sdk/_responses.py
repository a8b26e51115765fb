"""Helpers for what the server answers, shared by `Client` and `AsyncClient`."""

from __future__ import annotations

from collections.abc import Iterable

from aibattle_sdk._gen.aibattle import v1


def join_tool_calls(chunks: Iterable[v1.StreamCompletionResponse | v1.ToolCallDelta]) -> list[v1.ToolCall]:
    """The whole tool calls of a streamed completion, from its chunks (or their `tool_calls` pieces).

    Pieces with the same index are one call: the first carries its id and name, and its arguments are the
    concatenation of every piece's (`ToolCallDelta`). Calls come back in index order, as
    `CreateCompletionResponse.tool_calls` would hold them.
    """
    calls: dict[int, v1.ToolCall] = {}
    for item in chunks:
        pieces = item.tool_calls if isinstance(item, v1.StreamCompletionResponse) else (item,)
        for piece in pieces:
            call = calls.setdefault(piece.index, v1.ToolCall())
            call.id = call.id or piece.id
            call.name = call.name or piece.name
            call.arguments += piece.arguments
    return [calls[index] for index in sorted(calls)]
