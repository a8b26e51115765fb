"""Text plumbing shared by providers: stop sequences split across deltas, token estimates."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.providers.base import ChatMessage


class StopMatcher:
    """Cuts generated text at the first stop sequence, even when it arrives split across deltas.

    `feed()` returns what is safe to emit now: text that cannot be the start of a stop
    sequence. A possible prefix is held back until the next delta settles it.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self._pending + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buffer[:cut]
        hold = self._longest_partial_stop(buffer)
        self._pending = buffer[len(buffer) - hold :] if hold else ""
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """What was held back, once generation ended without completing a stop sequence."""
        rest, self._pending = self._pending, ""
        return "" if self.stopped else rest

    def _longest_partial_stop(self, buffer: str) -> int:
        longest = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:size]):
                    longest = size
                    break
        return longest


CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Approximate tokens for upstreams that report no usage: ~4 characters per token, at least one
    for any non-empty text. Close enough for accounting; never presented as exact."""
    return -(-len(text) // CHARS_PER_TOKEN) if text else 0


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    """A prompt's estimate: its text plus a few tokens of chat-template framing per message (as
    OpenAI's cookbook counts them)."""
    return sum(estimate_tokens(m.content) + 4 for m in messages)
