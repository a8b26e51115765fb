"""One mapping per enum between the schema's values and the words providers and dialects use."""

from __future__ import annotations

import enum

from aibattle.v1 import common_pb2


class FinishReason(enum.Enum):
    """Why generation ended. Values are the words OpenAI-style APIs (and Ollama's done_reason) use."""

    STOP = "stop"
    LENGTH = "length"
    CONTENT_FILTER = "content_filter"
    TOOL_CALLS = "tool_calls"

    @property
    def proto(self) -> common_pb2.FinishReason.ValueType:
        """The schema's value (aibattle.v1.FinishReason)."""
        return _TO_PROTO[self]

    @classmethod
    def from_proto(cls, value: int) -> FinishReason:
        """Our reason for a schema value; UNSPECIFIED (or any the dialects have no word for) is STOP."""
        return _FROM_PROTO.get(value, cls.STOP)


_TO_PROTO = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.CONTENT_FILTER: common_pb2.FINISH_REASON_CONTENT_FILTER,
    FinishReason.TOOL_CALLS: common_pb2.FINISH_REASON_TOOL_CALLS,
}
_FROM_PROTO: dict[int, FinishReason] = {int(v): k for k, v in _TO_PROTO.items()}
