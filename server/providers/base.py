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
from typing import Any, Protocol

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


@dataclass(frozen=True)
class Attachment:
    """An inline file for the model (FileData)."""

    type: str
    mime_type: str
    content: bytes
    path: str = ""


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    """The text, with text attachments already inlined (see `server.providers.attachments`)."""
    attachments: tuple[Attachment, ...] = ()
    """Non-text attachments (image, audio, video, binary documents), for providers that take them."""


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


@dataclass(frozen=True)
class Finish:
    """The last item of every stream."""

    usage: Usage
    reason: FinishReason = FinishReason.STOP


StreamItem = Delta | Finish


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
