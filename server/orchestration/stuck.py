"""Stuck detection: named signals that a model has stalled on a problem.

`detect(draft, previous=..., critiques=...)` looks at the latest draft, the same model's earlier drafts
(oldest first) and the critiques raised so far (oldest first), and returns every signal that fires, in
the order of the table, each with a `detail` saying what made it fire. It is pure, deterministic and
linear in the size of its input (about 15 ms for a 100 KB draft on one core; texts are read once and
kept while they stay among the 32 most recent, so earlier drafts are not re-read), so strategies call it
on the event loop.

Text is read the way a reader would: Unicode is normalised (NFKC, curly quotes made straight, case
folded); words are letters and digits (each CJK character is a word); markdown list markers, headings
and emphasis are ignored. *Prose* is the draft without fenced code blocks, inline code and URLs:
what the model says in its own words. The model's *own voice* is prose without quotations (text in
double quotes and `>` block quotes), so quoting a refusal or a hedge is not one. *Content words* are
words outside a fixed list of English function words and answer boilerplate ("sure", "apologize",
"revised", "answer", ...); numbers are always content.

| signal | fires when (exact rule; thresholds are the constants below) |
|---|---|
| `hedging` | own voice: >= 2 hedge points and >= 4 per 100 words (a short draft counts as 25 words) |
| `repetition` | prose: a sentence (>= 3 words) 3+ times; >= 25% (>= 8) words in repeated 6-word runs; |
| | or the same code block (>= 10 words) twice |
| `loop` | word-trigram Jaccard >= 0.8 with any earlier draft (the latest such one is named) |
| `no_progress` | vs the previous draft: empty; or no new number, <= 1 new content word per 50 distinct |
| | (0 under 50), >= 50% of its content-word pairs already there, >= half the previous content words |
| `collapsing_detail` | previous >= 40 words, this one < 1/3 of that, no number, < 3 shared content words |
| `refusal` | own voice, first 2 sentences: a first-person decline, no "but"/"however"/"instead" after it |
| `repeated_critique` | latest critique: the same words as an earlier one; or a point (>= 4 content words) |
| | with an earlier point's content words; or content-word-pair Jaccard >= 0.5 with an earlier one |

The details of those rules:
- *Hedge points*: every occurrence of a self-declared doubt ("I'm not sure", "not certain", "I don't know",
  "hard to say", "I could be wrong", "my best guess", ...) scores 2; every softener ("perhaps", "maybe",
  "possibly", "probably", "I think", "I believe", "it might be", "it seems", "it's unclear", ...) scores 1.
  A single "perhaps" never fires; two softeners fire only in a draft of at most 50 words.
- *Repetition*: a word counts as repeated when it lies inside a 6-word run that already occurred earlier in
  the prose, so a model looping a paragraph or a phrase repeats most of its words while ordinary prose
  repeats a stock phrase here and there. A sentence may come back once (a summary); the third time is a loop.
- *Loop*: drafts under 3 words compare as a whole, so the same one-word answer twice is a loop. Compared with
  every earlier draft, so a model oscillating between two answers is caught.
- *No progress*: a changed number is a changed result, so it always counts as progress; old words in a new
  order ("the second train is faster than the first" after the reverse) are a new statement. A draft with no
  content words at all ("I apologize for the confusion.") is judged on all its words instead: it fires when
  every one of them was in the previous draft. A much shorter draft is left to `collapsing_detail`.
- *Collapsing detail*: a short answer that keeps a number or the previous draft's terms is concise, not
  collapsed ("The second train catches up at 7 pm." after a long derivation does not fire).
- *Refusal*: "I can't / cannot / won't / am unable to / am not able to" + help, assist, provide, answer,
  comply, ...; "I must decline"; "I refuse to". A decline further down an answer, or followed by a pivot to
  a partial answer, is not a refusal; neither is a quoted one.
- *Repeated critique*: only the latest critique is compared (with every earlier one), so a stall is reported
  once, when the critic comes back to it. Its points are its sentences and list items.

How a strategy uses it: after each draft of a model, call `detect(draft, previous=<that model's earlier
drafts>, critiques=<every critique raised so far>)`. Any returned signal is a stall: record the names as
the iteration's `stuck_indicators`, emit `stuck_detected` (with the details) and hand off as the strategy
defines. Pass only the same model's drafts as `previous`: in `debate`, converging on another model's
answer is agreement, not a loop. Without earlier drafts only `hedging`, `repetition`, `refusal` and
`repeated_critique` (which reads the critiques alone) can fire.
Signals look at text only; an empty answer from a provider is a failure for the strategy to handle, not a
stall (a draft emptied after a previous one does fire `no_progress`, and `collapsing_detail` when the
previous one was long).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from functools import cached_property, lru_cache

NAMES = (
    "hedging",
    "repetition",
    "loop",
    "no_progress",
    "collapsing_detail",
    "refusal",
    "repeated_critique",
)

# Thresholds, named as in the module table.
HEDGE_MIN_SCORE = 2
HEDGE_PER_100_WORDS = 4
HEDGE_MIN_WORDS = 25  # a three-word "I'm not sure." is measured as if it were 25 words long
SENTENCE_MIN_WORDS = 3
SENTENCE_MAX_TIMES = 2  # a sentence may come back once (a summary); the third time is a loop
RUN_WORDS = 6
RUN_SHARE = 0.25
RUN_MIN_WORDS = 8
CODE_BLOCK_MIN_WORDS = 10
LOOP_SIMILARITY = 0.8
NEW_WORDS_PER = 50
PROGRESS_KEPT_PAIRS = 0.5
COLLAPSE_MIN_WORDS = 40
COLLAPSE_RATIO = 3
COLLAPSE_MIN_SHARED = 3
REFUSAL_SENTENCES = 2
POINT_MIN_WORDS = 4
CRITIQUE_SIMILARITY = 0.5

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
# A word: a CJK character on its own (those scripts have no spaces), or letters/digits joined by
# apostrophes ("don't" is one word), except a possessive "'s": "France's" is the word "france".
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+(?:'(?!s(?![^\W_]))[^\W_{_CJK}]+)*")
_NUMBER = re.compile(r"\d")
# Sentence ends: punctuation (ASCII and CJK) followed by space, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|(?<=[。！？])|\n+")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_INLINE_CODE = re.compile(r"`[^`\n]*`")
# Quotations are another voice; capped in length so an unmatched quote cannot swallow a whole draft.
_QUOTED = re.compile(r'"[^"\n]{0,2000}"')
# Addresses repeat their host and path in every link of a reference list; they are not prose.
_URL = re.compile(r"\b(?:https?|ftp)://[^\s)>\]]*|\bwww\.[^\s)>\]]+")
_LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+•]|\d{1,3}[.)]|#{1,6})\s+", re.MULTILINE)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})
_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u00ab": '"', "\u00bb": '"', "\u201e": '"'})

_STRONG_HEDGES = (
    r"not (?:entirely |completely |totally |quite |100% |really )?(?:sure|certain|confident)",
    r"i'?m unsure|i am unsure|i'?m uncertain|i am uncertain",
    r"i (?:don't|do not) (?:really )?know",
    r"i (?:have|had) no idea|no way (?:for me )?to know",
    r"(?:hard|difficult|impossible) to (?:say|tell)",
    r"(?:i )?(?:can't|cannot|can not) be (?:sure|certain)",
    r"i (?:could|might|may) be (?:wrong|mistaken)",
    r"don't quote me|my best guess|i'?m guessing|i guess",
)
_SOFT_HEDGES = (
    r"perhaps|maybe|possibly|probably|presumably|arguably",
    r"i think|i believe|i suppose|i assume",
    r"(?:it|this|that|there) (?:might|may|could) be",
    r"(?:it|this|that) (?:seems|appears)|seems to|appears to",
    r"it(?: is|'s) unclear|not clear",
)
# One pass for both kinds: group 1 is a doubt, group 2 a softener.
_HEDGE = re.compile(rf"(?<!\w)(?:({'|'.join(_STRONG_HEDGES)})|({'|'.join(_SOFT_HEDGES)}))(?!\w)")

_DECLINE_VERBS = (
    r"help|assist|provide|answer|comply|fulfil+|do|complete|support|give|share|engage|create|write|"
    r"generate|produce|participate|offer|discuss|continue|respond|tell|explain|in good conscience"
)
_REFUSAL = re.compile(
    r"(?<!\w)(?:"
    r"(?:i(?: really| simply| just)? (?:can't|cannot|can not|won't|will not|(?:won't|will not) be able to)"
    r"|i(?:'m| am) (?:not able|unable|not allowed|not permitted) to)"
    rf" (?:\w+ )?(?:{_DECLINE_VERBS})"
    r"|i(?:'m| am)? (?:must|have to|will have to) (?:respectfully |politely )?decline"
    r"|i (?:refuse|decline) to"
    r"|i(?:'m| am) not (?:comfortable|going to) (?:\w+ )?(?:help|assist|provid|answer|writ|do)\w*"
    r")(?!\w)"
)
_PIVOT = re.compile(r"(?<!\w)(?:but|however|instead|although|though|that said)(?!\w)")

# Function words and the boilerplate of answers, revisions and critiques: sharing them says nothing
# about content ("Sure! Here is the revised answer:" is not news).
_FILLER = frozenset(
    """
    a an the and or but if then so than that this these those there here it its it's is are was were be
    been being am do does did done doing have has had having i i'm i've i'd i'll me my mine we we're our us
    you you're your yours he she him her his they them their what which who whom whose when where why how
    of to in on at by for with from as into onto about over under up down out off again further once
    not no nor only own same too very can can't cannot could would should will won't shall may might must
    just also now all any both each few more most other some such let let's s t don't doesn't isn't aren't
    wasn't weren't didn't hasn't haven't hadn't
    sure certainly okay ok well yes indeed absolutely right correct thanks thank please
    sorry apologize apologise apologies apology confusion mistake oversight error
    revised revision updated update improved corrected version answer response here here's below above
    following follows note hope helps help clarify clarification understand understood point points
    review verdict critique feedback overall good great fine revise improve
    """.split()
)
_NOT_FILLER_ANSWERS = frozenset({"yes", "no"})  # a one-word answer is content
_FILLER_WORDS = _FILLER - _NOT_FILLER_ANSWERS


@dataclass(frozen=True)
class Signal:
    """A fired signal: its name (one of the table above) and what made it fire."""

    name: str
    detail: str


class _Text:
    """One draft or critique, read once: every view a signal needs, computed on first use."""

    def __init__(self, raw: str) -> None:
        self.raw = raw

    @cached_property
    def norm(self) -> str:
        text = unicodedata.normalize("NFKC", self.raw).translate(_APOSTROPHES).translate(_QUOTES)
        return text.casefold()

    @cached_property
    def _split(self) -> tuple[str, list[str]]:
        """(prose, code blocks): fenced blocks are code (an unclosed fence runs to the end, as in
        CommonMark); the rest, without inline code, addresses and list markers, is prose. Indented lines
        stay prose: in model output they are nested list items far more often than code."""
        if "```" not in self.norm and "~~~" not in self.norm:
            prose, blocks = [self.norm], list[str]()
        else:
            prose, blocks = self._fences()
        text = _LIST_MARKER.sub("", "\n".join(prose))
        return _URL.sub(" ", _INLINE_CODE.sub(" ", text)), blocks

    def _fences(self) -> tuple[list[str], list[str]]:
        prose: list[str] = []
        blocks: list[str] = []
        block: list[str] | None = None
        for line in self.norm.split("\n"):
            if _FENCE.match(line):
                if block is None:
                    block = []
                else:
                    blocks.append("\n".join(block))
                    block = None
            elif block is not None:
                block.append(line)
            else:
                prose.append(line)
        if block is not None:
            blocks.append("\n".join(block))
        return prose, blocks

    @property
    def prose(self) -> str:
        return self._split[0]

    @property
    def code_blocks(self) -> list[str]:
        return self._split[1]

    @cached_property
    def voice(self) -> str:
        text = self.prose
        if ">" in text:
            text = "\n".join(line for line in text.split("\n") if not line.lstrip().startswith(">"))
        return _QUOTED.sub(" ", text)

    @cached_property
    def words(self) -> list[str]:
        return _WORD.findall(self.norm)

    @cached_property
    def prose_words(self) -> list[str]:
        return _WORD.findall(self.prose)

    @cached_property
    def content(self) -> set[str]:
        return _content(self.words)

    @cached_property
    def content_pairs(self) -> set[tuple[str, ...]]:
        """Pairs of consecutive content words: what the text says, boilerplate and grammar aside."""
        return _grams([word for word in self.words if word not in _FILLER_WORDS], 2)

    @cached_property
    def numbers(self) -> set[str]:
        return {word for word in self.words if _NUMBER.search(word)}

    @cached_property
    def points(self) -> dict[frozenset[str], str]:
        """A critique's points (sentences and list items of at least 4 content words), by content."""
        points: dict[frozenset[str], str] = {}
        for sentence in _sentences(self.prose):
            content = frozenset(_content(_WORD.findall(sentence)))
            if len(content) >= POINT_MIN_WORDS:
                points.setdefault(content, sentence)
        return points

    @cached_property
    def trigrams(self) -> set[tuple[str, ...]]:
        return _grams(self.words, 3)


def _content(words: Iterable[str]) -> set[str]:
    return {word for word in words if word not in _FILLER_WORDS}


def _grams(words: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """Word n-grams; a text shorter than n is one gram of all its words (none when it has no words)."""
    if len(words) < n:
        return {tuple(words)} if words else set()
    return set(zip(*(words[i:] for i in range(n)), strict=False))


def _jaccard(left: AbstractSet[Hashable], right: AbstractSet[Hashable]) -> float:
    if not left or not right:
        return 0.0
    return len(left & right) / len(left | right)


def _sentences(text: str) -> list[str]:
    return [part.strip() for part in _SENTENCE_END.split(text) if part.strip()]


def _first_sentences(text: str, count: int) -> list[str]:
    """The first `count` sentences, without splitting the rest of a long draft."""
    sentences: list[str] = []
    start = 0
    for end in _SENTENCE_END.finditer(text):
        part = text[start : end.start()].strip()
        start = end.end()
        if part:
            sentences.append(part)
            if len(sentences) == count:
                return sentences
    if text[start:].strip():
        sentences.append(text[start:].strip())
    return sentences


def _quote(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[: limit - 1] + "…")


@lru_cache(maxsize=32)
def _read(text: str) -> _Text:
    """Strategies call `detect` after every draft with the same earlier drafts and critiques; each text
    is read once and its views reused while it stays among the recent ones."""
    return _Text(text)


def _as_text(text: str | _Text) -> _Text:
    return text if isinstance(text, _Text) else _read(text)


def hedging(draft: str | _Text) -> Signal | None:
    text = _as_text(draft)
    found = _HEDGE.findall(text.voice)
    score = sum(2 if strong else 1 for strong, _ in found)
    if score < HEDGE_MIN_SCORE:
        return None
    words = len(_WORD.findall(text.voice))
    if score * 100 >= HEDGE_PER_100_WORDS * max(words, HEDGE_MIN_WORDS):
        counts = Counter(strong or soft for strong, soft in found)
        phrases = ", ".join(
            f"{phrase!r}" + (f" ×{n}" if n > 1 else "") for phrase, n in counts.most_common(5)
        )
        return Signal(
            "hedging",
            f"{score} uncertainty points in {words} words (threshold {HEDGE_PER_100_WORDS} per 100): "
            + phrases,
        )
    return None


def repetition(draft: str | _Text) -> Signal | None:
    text = _as_text(draft)
    counts = Counter(
        " ".join(words)
        for words in (_WORD.findall(s) for s in _sentences(text.prose))
        if len(words) >= SENTENCE_MIN_WORDS
    )
    if counts:
        sentence, times = counts.most_common(1)[0]
        if times > SENTENCE_MAX_TIMES:
            return Signal("repetition", f"the same sentence {times} times: {_quote(sentence)}")

    # Every word inside a 6-word run that already occurred earlier is "repeated"; a model looping a
    # paragraph or a phrase repeats most of its words, ordinary prose only a stock phrase here and there.
    words = text.prose_words
    seen: set[tuple[str, ...]] = set()
    covered_until = 0
    repeated = 0
    first: tuple[str, ...] | None = None
    for i, run in enumerate(zip(*(words[k:] for k in range(RUN_WORDS)), strict=False)):
        if run in seen:
            first = first or run
            repeated += i + RUN_WORDS - max(i, covered_until)
            covered_until = i + RUN_WORDS
        else:
            seen.add(run)
    if first is not None and repeated >= RUN_MIN_WORDS and repeated >= RUN_SHARE * len(words):
        share = round(100 * repeated / len(words))
        return Signal(
            "repetition",
            f"{share}% of its {len(words)} words repeat earlier {RUN_WORDS}-word runs, "
            f"first {_quote(' '.join(first))}",
        )

    blocks: Counter[str] = Counter()
    for block in text.code_blocks:
        words = _WORD.findall(block)
        if len(words) >= CODE_BLOCK_MIN_WORDS:
            blocks[" ".join(words)] += 1
    for block, times in blocks.items():
        if times > 1:
            return Signal("repetition", f"the same code block {times} times: {_quote(block)}")
    return None


def loop(draft: str | _Text, previous: Sequence[str | _Text]) -> Signal | None:
    text = _as_text(draft)
    if not text.words:
        return None
    # The latest match is the one the model is circling back to; report it.
    for i in range(len(previous) - 1, -1, -1):
        similarity = _jaccard(text.trigrams, _as_text(previous[i]).trigrams)
        if similarity >= LOOP_SIMILARITY:
            return Signal(
                "loop", f"{round(100 * similarity)}% the same as draft {i + 1} (word trigrams, threshold 80%)"
            )
    return None


def no_progress(draft: str | _Text, previous: Sequence[str | _Text]) -> Signal | None:
    if not previous:
        return None
    text, last = _as_text(draft), _as_text(previous[-1])
    where = f"draft {len(previous)}"
    if not text.words:
        return Signal("no_progress", f"the draft is empty after {where}")
    if not text.content:
        # Only function words and boilerplate ("I apologize for the confusion."): judge all its words.
        if set(text.words) <= set(last.words):
            return Signal("no_progress", f"nothing new over {where}: every word of it was already there")
        return None
    if text.numbers - last.numbers or 2 * len(text.content) < len(last.content):
        return None  # a changed result, or a much shorter draft (collapsing_detail judges those)
    new = text.content - last.content
    allowed = len(text.content) // NEW_WORDS_PER
    kept = len(text.content_pairs & last.content_pairs) / len(text.content_pairs)
    # Old words in a new order are new statements ("A causes B" after "B causes A"); old pairs are not.
    if len(new) <= allowed and kept >= PROGRESS_KEPT_PAIRS:
        listed = f": {', '.join(sorted(new)[:5])}" if new else ""
        return Signal(
            "no_progress",
            f"nothing new over {where}: {len(new)} new content words of {len(text.content)}{listed}, "
            f"{round(100 * kept)}% of its word pairs already there, no new number",
        )
    return None


def collapsing_detail(draft: str | _Text, previous: Sequence[str | _Text]) -> Signal | None:
    if not previous:
        return None
    text, last = _as_text(draft), _as_text(previous[-1])
    before, now = len(last.words), len(text.words)
    if before < COLLAPSE_MIN_WORDS or now * COLLAPSE_RATIO >= before:
        return None
    shared = text.content & last.content
    if text.numbers or len(shared) >= COLLAPSE_MIN_SHARED:
        return None  # a short answer that keeps the result or the terms: concise, not collapsed
    kept = f"only {', '.join(sorted(shared))}" if shared else "none"
    return Signal(
        "collapsing_detail",
        f"{now} words after {before} in draft {len(previous)}, with no number and {kept} of its terms",
    )


def refusal(draft: str | _Text) -> Signal | None:
    text = _as_text(draft)
    for sentence in _first_sentences(text.voice, REFUSAL_SENTENCES):
        match = _REFUSAL.search(sentence)
        if match and not _PIVOT.search(sentence, match.end()):
            return Signal("refusal", f"declines in its opening: {_quote(sentence)}")
    return None


def repeated_critique(critiques: Sequence[str | _Text]) -> Signal | None:
    texts = [_as_text(c) for c in critiques]
    if len(texts) < 2:
        return None
    latest = texts[-1]
    raised = latest.points
    number = len(texts)
    for i in range(len(texts) - 2, -1, -1):
        earlier = texts[i]
        if latest.words and latest.words == earlier.words:
            return Signal("repeated_critique", f"critique {number} repeats critique {i + 1} word for word")
        for content in earlier.points.keys() & raised.keys():
            return Signal(
                "repeated_critique",
                f"critique {number} raises again what critique {i + 1} raised: {_quote(raised[content])}",
            )
        if len(latest.content) >= POINT_MIN_WORDS and len(earlier.content) >= POINT_MIN_WORDS:
            similarity = _jaccard(latest.content_pairs, earlier.content_pairs)
            if similarity >= CRITIQUE_SIMILARITY:
                return Signal(
                    "repeated_critique",
                    f"critique {number} is {round(100 * similarity)}% the same as critique {i + 1} "
                    f"(pairs of content words, threshold {round(100 * CRITIQUE_SIMILARITY)}%)",
                )
    return None


def detect(draft: str, *, previous: Sequence[str] = (), critiques: Sequence[str] = ()) -> list[Signal]:
    """Every signal that fires for `draft`, in the order of the module table.

    Args:
        draft: the model's latest answer.
        previous: the same model's earlier drafts, oldest first (drafts are numbered from 1 in details).
        critiques: every critique raised so far, oldest first; the last one is the latest.
    """
    text = _read(draft)
    earlier = [_read(p) for p in previous]
    checks = (
        hedging(text),
        repetition(text),
        loop(text, earlier),
        no_progress(text, earlier),
        collapsing_detail(text, earlier),
        refusal(text),
        repeated_critique([_read(c) for c in critiques]),
    )
    return [signal for signal in checks if signal is not None]
