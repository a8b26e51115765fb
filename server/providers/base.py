"""What every provider speaks: a chat request in, an async stream of deltas out.

A provider's `stream()` yields `Delta`s as the model produces them and ends with
exactly one `Finish` carrying usage and the finish reason. Closing the iterator
early (the client went away, a deadline passed) must stop the model's work.
"""

from __future__ import annotations

import enum
import time
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from common.enums import FinishReason
from common.errors import UNSUPPORTED_PARAMETER, InvalidArgument
from server.settings import ModelConfig

PENALTIES = ("top_k", "repeat_penalty", "frequency_penalty", "presence_penalty")
"""The sampling fields not every provider takes (see `ChatRequest.penalties`)."""


class Role(enum.StrEnum):
    """Chat roles as providers understand them."""

    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"
    """A tool's result, answering the assistant's call named by `ChatMessage.tool_call_id`."""


@dataclass(frozen=True)
class Attachment:
    """An inline file for the model (FileData)."""

    type: str
    mime_type: str
    content: bytes
    path: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call (aibattle.v1.Tool)."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] | None = None
    """JSON Schema of the arguments (an object schema); None: it takes none."""
    strict: bool = False
    """Arguments must follow the schema exactly, where the provider distinguishes (OpenAI)."""


class ToolMode(enum.StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"
    TOOL = "tool"
    """Call the tool named by `ToolChoice.name`."""


@dataclass(frozen=True)
class ToolChoice:
    mode: ToolMode = ToolMode.AUTO
    name: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A whole tool call: in an assistant message of the history, or in a finished answer."""

    id: str
    name: str
    arguments: str
    """JSON text, as the model wrote it."""


@dataclass(frozen=True)
class ToolCallPiece:
    """A piece of a tool call in a stream (aibattle.v1.ToolCallDelta): pieces with one `index` form one
    call; the first carries `id` and `name`, the arguments are the concatenation of every piece's."""

    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


class FormatType(enum.StrEnum):
    JSON_OBJECT = "json_object"
    JSON_SCHEMA = "json_schema"


@dataclass(frozen=True)
class ResponseFormat:
    """Structured output (aibattle.v1.ResponseFormat); free text is `ChatRequest.response_format` None."""

    type: FormatType
    schema: Mapping[str, Any] | None = None
    """The JSON Schema, with JSON_SCHEMA."""
    name: str = "response"
    strict: bool = False


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    """The text, with text attachments already inlined (see `server.providers.attachments`)."""
    attachments: tuple[Attachment, ...] = ()
    """Non-text attachments (image, audio, video, binary documents), for providers that take them."""
    tool_calls: tuple[ToolCall, ...] = ()
    """On an assistant message: the tools it called."""
    tool_call_id: str = ""
    """On a TOOL message: the call it answers."""
    tool_name: str = ""
    """On a TOOL message: the name of the tool that ran, when known (Gemini and Ollama want it; the
    request conversion fills it from the assistant's call with this id)."""


@dataclass(frozen=True)
class ChatRequest:
    """A provider-neutral chat request; every option is already validated."""

    messages: tuple[ChatMessage, ...]
    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    """llama.cpp's and Ollama's multiplicative penalty (1 is none)."""
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    tools: tuple[ToolSpec, ...] = ()
    """Tools the model may call; a provider that cannot call tools never sees a request with any
    (the request conversion refuses it first, from the model's capabilities)."""
    tool_choice: ToolChoice = ToolChoice()
    response_format: ResponseFormat | None = None
    """Structured output; None is free text."""
    stream: bool = True
    """Whether the caller relays tokens as they come; when False an HTTP provider may ask its
    upstream for one whole answer (and still yields Delta(s), then Finish)."""
    deadline: float | None = None
    """When the client stops waiting, as a `time.monotonic()` instant; None for no deadline.

    Providers stop at it, both while waiting for capacity and while generating, and raise
    `common.errors.DeadlineExceeded`. HTTP providers use `time_left()` as their request timeout.
    """

    def penalties(self, model: ModelConfig, names: Mapping[str, str]) -> dict[str, Any]:
        """The `PENALTIES` this request sets, keyed by the provider's own names (`names`: ours → theirs).

        A field set here that the provider has no name for is refused, naming it: dropping it would
        answer a different request than the one asked (INVALID_ARGUMENT, so no fallback is tried).
        """
        options: dict[str, Any] = {}
        for field in PENALTIES:
            value = getattr(self, field)
            if value is None:
                continue
            if field not in names:
                raise InvalidArgument(
                    field,
                    f"model {model.id!r} (provider {model.provider}) does not take {field}",
                    reason=UNSUPPORTED_PARAMETER,
                )
            options[names[field]] = value
        return options

    def time_left(self) -> float | None:
        """Seconds until the deadline (negative once it passed), or None without one."""
        return None if self.deadline is None else self.deadline - time.monotonic()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Delta:
    """Text produced since the previous delta."""

    content: str = ""
    thinking: str = ""
    tool_calls: tuple[ToolCallPiece, ...] = ()
    """Pieces of tool calls produced since the previous delta."""


@dataclass(frozen=True)
class Finish:
    """The last item of every stream."""

    usage: Usage
    reason: FinishReason = FinishReason.STOP


StreamItem = Delta | Finish


@dataclass(frozen=True)
class Embeddings:
    """What an `Embedder` returns: one vector per input text, in order, and the tokens it read."""

    vectors: list[list[float]]
    prompt_tokens: int


class Provider(Protocol):
    """A backend that runs models of one kind (llama.cpp in-process, an HTTP API, a script)."""

    name: str

    async def start(self) -> None:
        """Acquire resources (load weights, open sessions); called once before serving."""

    async def close(self) -> None:
        """Release resources; in-flight streams are already cancelled."""

    def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        """Generate a reply: deltas as they come, then one Finish."""
        ...


@runtime_checkable
class Embedder(Protocol):
    """A provider that can also embed texts (models with the "embedding" capability)."""

    async def embed(
        self, model: ModelConfig, texts: list[str], *, dimensions: int | None, deadline: float | None
    ) -> Embeddings:
        """One vector per text, in order. `dimensions` None is the model's own length; a provider that
        cannot shorten vectors refuses any other value (InvalidArgument naming "dimensions"). Stops at
        `deadline` (a `time.monotonic()` instant) with DeadlineExceeded."""
        ...


@runtime_checkable
class TokenCounter(Protocol):
    """A provider that can count a prompt's tokens exactly (its model's tokenizer, or its upstream's
    counting endpoint); CountTokens estimates for the others."""

    async def count_tokens(self, model: ModelConfig, request: ChatRequest) -> int:
        """Tokens `request`'s messages (and tools) take as the model's prompt; generates nothing."""
        ...
