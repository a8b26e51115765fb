"""Reading the machine-readable tails the prompts ask for, leniently.

Models write `**Verdict:** Approve`, `verdict - revise.`, `FOCUS AREAS:` followed by bullets, or forget
the tail altogether. Each reader takes the LAST matching line (a model may quote the instructions
before answering) and says what it does when nothing matches.
"""

from __future__ import annotations

import difflib
import re

# "VERDICT: APPROVE", "**Verdict**: approved.", "- verdict = Revise": the key, a separator, one word.
_VERDICT = re.compile(r"^[\s*_#>`-]*verdict[\s*_`]*[:=\-][\s*_`]*([a-z]+)", re.IGNORECASE | re.MULTILINE)
_FOCUS = re.compile(
    r"^[ \t*_#>`-]*focus(?:[ _]areas?)?[ \t*_`]*[:=\-][ \t*_`]*(.*)$", re.IGNORECASE | re.MULTILINE
)
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+(.+)$")
_CORRECTED = re.compile(r"^[\s*_#>`-]*corrected[ _]answer[\s*_`]*:[\s*_`]*", re.IGNORECASE | re.MULTILINE)
_FINAL = re.compile(r"^[\s*_#>`-]*final[ _]answer[\s*_`]*[:=\-][\s*_`]*(.+)$", re.IGNORECASE | re.MULTILINE)
_WINNER = re.compile(r"^[\s*_#>`-]*winner[\s*_`]*[:=\-][\s*_`\[(]*([a-z])\b", re.IGNORECASE | re.MULTILINE)

_SYNONYMS = {
    "approve": "approve",
    "approved": "approve",
    "approves": "approve",
    "accept": "accept",
    "accepted": "accept",
    "accepts": "accept",
    "correct": "correct",
    "corrected": "correct",
    "correction": "correct",
    "revise": "revise",
    "revised": "revise",
    "revision": "revise",
    "reject": "reject",
    "rejected": "reject",
}
# A verdict line answers the instruction; other lines of the reply are free text.
_TAIL_LINE = re.compile(r"^[\s*_#>`-]*(verdict|focus|corrected[ _]answer|winner)\b", re.IGNORECASE)


def verdict(text: str) -> str | None:
    """The last verdict word, normalized ("approve", "revise", "accept", "correct", "reject"), or None.

    `correct` is the verifier's "I corrected it"; a critic who writes "VERDICT: correct" about a draft
    means it is right, which callers map themselves (see `approves`).
    """
    found = [_SYNONYMS.get(m.group(1).lower()) for m in _VERDICT.finditer(text)]
    found = [v for v in found if v is not None]
    return found[-1] if found else None


def approves(text: str) -> bool:
    """Whether a critique approves the draft. No verdict line means not approved: refining once more
    costs a round, approving a draft nobody approved would end the session on it."""
    return verdict(text) in {"approve", "accept"}


def focus_areas(text: str) -> list[str]:
    """The focus areas of the last FOCUS line, snake_case ("mathematical_foundation"), at most 8.

    Items are split on semicolons or commas; an empty FOCUS line takes the bullet lines under it.
    Without a FOCUS line: none (guessing topics from free text would invent them).
    """
    matches = list(_FOCUS.finditer(text))
    if not matches:
        return []
    last = matches[-1]
    items = [i for i in re.split(r"[;,]", last.group(1)) if i.strip()]
    if not items:
        for line in text[last.end() :].splitlines()[1:]:
            if not line.strip():
                if items:
                    break
                continue
            bullet = _BULLET.match(line)
            if bullet is None:
                break
            items.append(bullet.group(1))
    areas: list[str] = []
    for item in items:
        area = re.sub(r"[^a-z0-9]+", "_", item.lower()).strip("_")
        if area and area not in {"none", "n_a"} and area not in areas:
            areas.append(area[:64])
    return areas[:8]


def without_tail(text: str) -> str:
    """The reply without its VERDICT/FOCUS/WINNER lines: the prose a model hands to the next one."""
    return "\n".join(line for line in text.splitlines() if not _TAIL_LINE.match(line)).strip()


def correction(text: str) -> str | None:
    """The corrected answer a verifier wrote after "CORRECTED ANSWER:", or None if it wrote none.

    Without the marker, the text after the last verdict line stands in, if there is any; a verifier
    that says "correct" but gives nothing usable leaves the answer as it was.
    """
    marks = list(_CORRECTED.finditer(text))
    if marks:
        corrected = text[marks[-1].end() :].strip()
        return corrected or None
    verdicts = list(_VERDICT.finditer(text))
    if verdicts:
        end = text.find("\n", verdicts[-1].end())
        after = text[end:].strip() if end >= 0 else ""
        return after or None
    return None


def final_answer(text: str) -> str:
    """The short answer of a debater's last FINAL ANSWER line; without one, its last non-empty line."""
    matches = list(_FINAL.finditer(text))
    if matches:
        return matches[-1].group(1).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def winner(text: str, count: int) -> int | None:
    """The index (0-based) of the position a judge picked ("WINNER: B" → 1), or None."""
    matches = list(_WINNER.finditer(text))
    if not matches:
        return None
    index = ord(matches[-1].group(1).upper()) - ord("A")
    return index if 0 <= index < count else None


def normalize(answer: str) -> str:
    """Case, markdown, punctuation and spacing removed: "**42.**" and "42" are the same answer."""
    words = re.findall(r"[a-z0-9]+(?:\.[0-9]+)?", answer.lower())
    return " ".join(words)


AGREEMENT = 0.9
"""Similarity of two normalized final answers above which they count as the same: tolerant of a stray
word ("the answer is 42" / "42 is the answer" are not, "paris" / "paris france" are not either)."""


def agree(answers: list[str]) -> bool:
    """Whether every debater's final answer is the same, after `normalize`, or nearly so."""
    normal = [normalize(a) for a in answers]
    if not normal or not all(normal):
        return False
    first = normal[0]
    return all(
        other == first or difflib.SequenceMatcher(None, first, other).ratio() >= AGREEMENT
        for other in normal[1:]
    )
