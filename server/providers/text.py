"""Text plumbing shared by providers that see raw tokens: stop sequences split across deltas."""

from __future__ import annotations


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
