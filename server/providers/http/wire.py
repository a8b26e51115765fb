"""Incremental parsers for the stream formats upstreams speak: Server-Sent Events and NDJSON; and what
every adapter's wire format shares about tool calls.

Both parsers take bytes as they arrive (any chunking: a frame may be split anywhere, several may come
at once) and return the complete frames so far; nothing waits for the end of the body. Lines end in
LF, CRLF or CR (the SSE spec's three); a line longer than `max_line` is a protocol error rather than
unbounded memory.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from common.errors import InvalidArgument
from server.providers.base import ToolCall, ToolSpec

MAX_LINE = 8 * 1024 * 1024
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}
"""The schema of a tool that takes no arguments (APIs that want one always, and those where it may be
left out, all take this)."""


class FrameError(ValueError):
    """The stream is not in the format it claims."""


class _Lines:
    def __init__(self, max_line: int) -> None:
        self._buffer = ""
        self._max_line = max_line
        self._pending_cr = False

    def feed(self, data: str) -> list[str]:
        if self._pending_cr and data.startswith("\n"):
            data = data[1:]  # the LF of a CRLF split across chunks
        self._pending_cr = False
        text = self._buffer + data
        lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._buffer = lines.pop()
        if text.endswith("\r"):
            self._pending_cr = True
        if len(self._buffer) > self._max_line:
            raise FrameError(f"a line longer than {self._max_line} bytes")
        return lines

    def rest(self) -> str:
        rest, self._buffer = self._buffer, ""
        return rest


class _Decoder:
    """UTF-8 across chunk boundaries."""

    def __init__(self) -> None:
        import codecs

        self._decoder = codecs.getincrementaldecoder("utf-8")()

    def decode(self, data: bytes, final: bool = False) -> str:
        try:
            return self._decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise FrameError(f"not UTF-8: {exc}") from None


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: `event` defaults to "message"; `data` lines joined by newlines."""

    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.data)
        except ValueError as exc:
            raise FrameError(f"event data is not JSON: {self.data[:200]!r}") from exc


class SseParser:
    """The WHATWG event-stream algorithm, fed incrementally."""

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self._decoder = _Decoder()
        self._lines = _Lines(max_line)
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        events: list[SseEvent] = []
        for line in self._lines.feed(self._decoder.decode(chunk)):
            if not line:
                if self._data:
                    events.append(SseEvent(self._event or "message", "\n".join(self._data), self._id))
                self._event, self._data = "", []
                continue
            if line.startswith(":"):
                continue  # a comment (keep-alive)
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = value
        return events

    def close(self) -> list[SseEvent]:
        """Events still pending at the end of the body: a server that omits the last blank line, or
        even the last line ending, still gets its final event delivered (the spec would drop it;
        a lost final frame is worse than a lenient parse)."""
        rest = self._decoder.decode(b"", final=True)
        rest = self._lines.rest() + rest
        if not rest and not self._data:
            return []
        return self.feed((rest + "\n\n").encode())


class NdjsonParser:
    """One JSON value per line; blank lines are skipped.

    A bad line fails the stream, but the good lines before it in the same read are delivered first
    (the error comes with the next call): how TCP splits the bytes must not change what a client gets.
    """

    def __init__(self, *, max_line: int = MAX_LINE) -> None:
        self._decoder = _Decoder()
        self._lines = _Lines(max_line)
        self._error: FrameError | None = None

    def feed(self, chunk: bytes) -> list[Any]:
        if self._error is not None:
            raise self._error
        frames: list[Any] = []
        for line in self._lines.feed(self._decoder.decode(chunk)):
            if not line.strip():
                continue
            try:
                frames.append(self._parse(line))
            except FrameError as exc:
                if not frames:
                    raise
                self._error = exc
                break
        return frames

    def close(self) -> list[Any]:
        if self._error is not None:
            raise self._error
        rest = self._decoder.decode(b"", final=True) + self._lines.rest()
        return [self._parse(rest)] if rest.strip() else []

    @staticmethod
    def _parse(line: str) -> Any:
        try:
            return json.loads(line)
        except ValueError as exc:
            raise FrameError(f"a line is not JSON: {line[:200]!r}") from exc


# --- tool calls -------------------------------------------------------------------------------


def tool_parameters(tool: ToolSpec) -> dict[str, Any]:
    """The JSON Schema of a tool's arguments, `NO_PARAMETERS` when it takes none."""
    return dict(tool.parameters) if tool.parameters is not None else dict(NO_PARAMETERS)


def function_tool(tool: ToolSpec, *, strict: bool = False) -> dict[str, Any]:
    """A tool as OpenAI's (and Ollama's) `tools` entry: `{"type": "function", "function": {...}}`
    with its name, its description when it has one, its parameters, and `"strict": true` when
    `strict` is set and the tool asks for it (OpenAI sends it; Ollama has no such field)."""
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            **({"description": tool.description} if tool.description else {}),
            "parameters": tool_parameters(tool),
            **({"strict": True} if strict and tool.strict else {}),
        },
    }


def call_arguments(call: ToolCall) -> dict[str, Any]:
    """A history tool call's arguments as the JSON object the APIs that take an object want (Ollama,
    Anthropic, Gemini); "" is no arguments. Text that is not a JSON object is refused, naming the call:
    it cannot be sent as one, and a guess would change what the model is told it did."""
    if not call.arguments.strip():
        return {}
    try:
        value = json.loads(call.arguments)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise InvalidArgument(
            "tool_calls.arguments",
            f"the arguments of tool call {call.id or call.name!r} must be a JSON object",
        )
    return value


CALL_ID_PREFIX = "call_"
CALL_ID_HEX_DIGITS = 24
"""`new_call_id`'s shape: the prefix, then this many lowercase hex digits."""


def new_call_id() -> str:
    """An id for a tool call whose upstream gives none (Ollama, Gemini, a scripted model), in
    OpenAI's shape."""
    return f"{CALL_ID_PREFIX}{uuid.uuid4().hex[:CALL_ID_HEX_DIGITS]}"


def arguments_text(value: Any) -> str:
    """An answer's tool-call arguments as the JSON text our types carry: an object is written out
    (Ollama, Anthropic, Gemini), text is kept as the model wrote it (OpenAI), absent is "{}"."""
    if value is None:
        return "{}"
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return json.dumps(value, ensure_ascii=False)
    raise FrameError(f"tool call arguments are neither an object nor text: {str(value)[:200]!r}")
