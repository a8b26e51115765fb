"""Stuck detection: named signals that a model has stalled on a problem.

Each signal looks at the latest draft, the drafts before it (oldest first) and the critiques raised
so far, and says whether it fires and why. A strategy treats any fired signal as a stall: it records
the signal names as the iteration's `stuck_indicators`, emits `stuck_detected` and hands off.

| signal | fires when |
|---|---|
| `hedging` | the draft leans on uncertainty language ("I'm not sure", "it might be", "perhaps") |
| `repetition` | the draft repeats itself: the same sentence or a run of words comes back within it |
| `loop` | the draft is (nearly) the same as an earlier draft |
| `no_progress` | the draft adds almost nothing new over the previous draft |
| `collapsing_detail` | the draft is much shorter than the previous one |
| `refusal` | the model declines to answer |
| `repeated_critique` | the latest critique raises what an earlier critique already raised |
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_WORD = re.compile(r"[a-z0-9']+")
_SENTENCE = re.compile(r"(?<=[.!?])\s+")
_HEDGES = (
    "i'm not sure",
    "i am not sure",
    "not entirely sure",
    "i'm uncertain",
    "i am uncertain",
    "it might be",
    "it may be",
    "possibly",
    "perhaps",
    "i think maybe",
    "hard to say",
    "i don't know",
    "i do not know",
    "unclear",
)
_REFUSALS = (
    "i can't help",
    "i cannot help",
    "i can't assist",
    "i cannot assist",
    "i'm unable to",
    "i am unable to",
    "i won't be able to",
    "i cannot answer",
    "i can't answer",
    "as an ai",
)


@dataclass(frozen=True)
class Signal:
    """A fired signal: its name (one of the table above) and what made it fire."""

    name: str
    detail: str


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _similarity(a: str, b: str) -> float:
    """Jaccard similarity of word trigrams (1.0: the same text)."""

    def grams(text: str) -> set[tuple[str, ...]]:
        words = _words(text)
        return {tuple(words[i : i + 3]) for i in range(max(1, len(words) - 2))}

    left, right = grams(a), grams(b)
    if not left or not right:
        return 0.0
    return len(left & right) / len(left | right)


def hedging(draft: str) -> Signal | None:
    text = draft.lower()
    found = [h for h in _HEDGES if h in text]
    # One "perhaps" is style; several markers per hundred words is a model that does not know.
    if (found and len(found) * 100 >= max(len(_words(draft)), 1) * 2) or len(found) >= 3:
        return Signal("hedging", f"uncertainty markers: {', '.join(found)}")
    return None


def repetition(draft: str) -> Signal | None:
    sentences = [s.strip().lower() for s in _SENTENCE.split(draft) if len(_words(s)) >= 4]
    seen: set[str] = set()
    for sentence in sentences:
        if sentence in seen:
            return Signal("repetition", f"a sentence repeats: {sentence[:80]!r}")
        seen.add(sentence)
    words = _words(draft)
    window = 6
    runs: set[tuple[str, ...]] = set()
    repeats = 0
    for i in range(len(words) - window + 1):
        run = tuple(words[i : i + window])
        if run in runs:
            repeats += 1
        runs.add(run)
    if words and repeats * window >= len(words) // 3 and repeats >= 3:
        return Signal("repetition", f"{repeats} repeated {window}-word runs")
    return None


def loop(draft: str, previous: Sequence[str]) -> Signal | None:
    for i, earlier in enumerate(previous):
        if _similarity(draft, earlier) >= 0.9:
            return Signal("loop", f"the same as draft {i + 1}")
    return None


def no_progress(draft: str, previous: Sequence[str]) -> Signal | None:
    if not previous:
        return None
    last = previous[-1]
    new = set(_words(draft)) - set(_words(last))
    if _similarity(draft, last) >= 0.75 and len(new) <= 3:
        return Signal("no_progress", f"{len(new)} new words over the previous draft")
    return None


def collapsing_detail(draft: str, previous: Sequence[str]) -> Signal | None:
    if not previous:
        return None
    before, now = len(_words(previous[-1])), len(_words(draft))
    if before >= 40 and now * 2 < before:
        return Signal("collapsing_detail", f"{now} words after {before}")
    return None


def refusal(draft: str) -> Signal | None:
    text = draft.lower()
    for phrase in _REFUSALS:
        if phrase in text:
            return Signal("refusal", f"declines: {phrase!r}")
    return None


def repeated_critique(critiques: Sequence[str]) -> Signal | None:
    if len(critiques) < 2:
        return None
    latest = critiques[-1]
    for i, earlier in enumerate(critiques[:-1]):
        if _similarity(latest, earlier) >= 0.6:
            return Signal("repeated_critique", f"critique {len(critiques)} repeats critique {i + 1}")
    return None


def detect(draft: str, *, previous: Sequence[str] = (), critiques: Sequence[str] = ()) -> list[Signal]:
    """Every signal that fires for `draft`, given the earlier drafts and the critiques so far."""
    checks = (
        hedging(draft),
        repetition(draft),
        loop(draft, previous),
        no_progress(draft, previous),
        collapsing_detail(draft, previous),
        refusal(draft),
        repeated_critique(critiques),
    )
    return [signal for signal in checks if signal is not None]
