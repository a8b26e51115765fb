"""The prompts several strategies send, and how answers are labelled for a reader.

A strategy's own prompts live beside it, in its module under `strategies/`; only what two or more
strategies send is here. Each template is a `str.format` string; a strategy fills it and sends it as
the user message, after the session's system instruction (if any). The reviewing templates ask for a
machine-readable tail — `VERDICT: …`, `FOCUS: …`, `CORRECTED ANSWER:`, `FINAL ANSWER: …`,
`WINNER: …` — that `server.orchestration.reasoning.parsing` reads leniently (case, markdown, bullets),
because real models, small ones above all, follow formats loosely; every parser has a documented
fallback when the tail is missing.

| template | strategies | sent to | fields |
|---|---|---|---|
| `ANSWER` | critique, cascade | answerer (cascade: also the escalation) | problem |
| `TAKE_OVER` | iterative_refinement, critique | the model taking over | problem, draft, indicators |
| `SOLVE` | debate (opening), self_consistency, vote | every model answering on its own | problem |
"""

from __future__ import annotations

ANSWER = """Answer the following problem. Be correct and complete.

Problem:
{problem}"""

TAKE_OVER = """Another model was working on the problem below and stalled ({indicators}). Take over: \
write your own complete answer, using whatever in its last attempt is sound.

Problem:
{problem}

Its last attempt:
{draft}"""

SOLVE = """Answer the following problem. Explain your reasoning briefly, then end with a line \
"FINAL ANSWER: <your answer in a few words>".

Problem:
{problem}"""
"""An answer whose short form (`parsing.final_answer`) can be compared with others' (agreement, votes)."""


def letter(index: int) -> str:
    """The label of the index-th answer in a `labelled` block: A, B, …"""
    return chr(ord("A") + index)


def labelled(texts: list[str]) -> str:
    """Answers as a block the models can refer to, "[A]\\n…" separated by blank lines. Letters, not
    model names: a judge or aggregator should weigh the reasoning, not the brand."""
    return "\n\n".join(f"[{letter(i)}]\n{text}" for i, text in enumerate(texts))
