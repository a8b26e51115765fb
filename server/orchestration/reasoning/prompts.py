"""Every prompt the reasoning strategies send, in one place.

Each template is a `str.format` string; the strategies fill it and send it as the user message, after
the session's system instruction (if any). The reviewing templates ask for a machine-readable tail —
`VERDICT: …`, `FOCUS: …`, `CORRECTED ANSWER:`, `FINAL ANSWER: …`, `WINNER: …` — that
`server.orchestration.reasoning.parsing` reads leniently (case, markdown, bullets), because real models,
small ones above all, follow formats loosely; every parser has a documented fallback when the tail is
missing.

| template | strategy | sent to | fields |
|---|---|---|---|
| `DRAFT` | iterative_refinement | drafter | problem |
| `CRITIQUE` | iterative_refinement | critic | problem, draft |
| `REVISE` | iterative_refinement | drafter | problem, draft, critique |
| `TAKE_OVER` | iterative_refinement, critique | the model taking over | problem, draft, indicators |
| `DEBATE_OPENING` | debate | every debater | problem |
| `DEBATE_UPDATE` | debate | every debater | problem, own, others |
| `JUDGE` | debate | secondary (judge) | problem, positions |
| `PROPOSE` | mixture | every proposer, layer 1 | problem |
| `PROPOSE_AGAIN` | mixture | every proposer, later layers | problem, proposals |
| `AGGREGATE` | mixture | primary (aggregator) | problem, proposals |
| `ANSWER` | critique, cascade | answerer (cascade: also the escalation) | problem |
| `VERIFY` | critique | verifier | problem, answer |
| `CHECK` | cascade | secondary (cheap check, short reply) | problem, answer |
"""

from __future__ import annotations

DRAFT = """Solve the following problem. Give a complete, concrete answer with the reasoning that supports it.

Problem:
{problem}"""

CRITIQUE = """You are reviewing another model's answer to a problem. Point out what is wrong, missing or \
vague, and what the next revision should focus on. If the answer is already correct and complete, \
approve it.

Problem:
{problem}

Answer under review:
{draft}

Write your critique, then end with exactly these two lines:
VERDICT: APPROVE or VERDICT: REVISE
FOCUS: the areas to work on, separated by semicolons (e.g. FOCUS: mathematical foundation; edge cases)"""

REVISE = """Revise your answer to the problem below so that it addresses the critique. Give the whole \
improved answer, not a list of changes.

Problem:
{problem}

Your previous answer:
{draft}

Critique:
{critique}"""

TAKE_OVER = """Another model was working on the problem below and stalled ({indicators}). Take over: \
write your own complete answer, using whatever in its last attempt is sound.

Problem:
{problem}

Its last attempt:
{draft}"""

DEBATE_OPENING = """Answer the following problem. Explain your reasoning briefly, then end with a line \
"FINAL ANSWER: <your answer in a few words>".

Problem:
{problem}"""

DEBATE_UPDATE = """These are the recent answers of other agents to the problem below. Using their \
reasoning as additional advice, give an updated answer: keep yours if you still think it is right, \
change it if they convinced you. End with a line "FINAL ANSWER: <your answer in a few words>".

Problem:
{problem}

Your previous answer:
{own}

The other agents' answers:
{others}"""

JUDGE = """Several agents debated the problem below without agreeing. Decide which final position is \
best supported and most likely correct. Explain briefly, then end with a line "WINNER: <letter>".

Problem:
{problem}

Positions:
{positions}"""

PROPOSE = """Answer the following problem as well as you can; your answer will be combined with other \
models' answers.

Problem:
{problem}"""

PROPOSE_AGAIN = """Here are answers from several models to the problem below. Write an improved answer \
of your own, using what is right in them and fixing what is wrong.

Problem:
{problem}

Answers:
{proposals}"""

AGGREGATE = """You have been given answers from several models to the problem below. Synthesize them \
into a single, high-quality answer. Critically evaluate them: some may be biased or wrong. Do not simply \
copy one; give a refined, accurate and complete answer.

Problem:
{problem}

Answers:
{proposals}"""

ANSWER = """Answer the following problem. Be correct and complete.

Problem:
{problem}"""

VERIFY = """You are a verifier. Check the answer below to the problem: its facts, its reasoning and \
whether it answers what was asked.

Problem:
{problem}

Answer to check:
{answer}

If the answer is correct, end with the line "VERDICT: ACCEPT". Otherwise write the line \
"VERDICT: CORRECT", then a line "CORRECTED ANSWER:" followed by the whole corrected answer."""

CHECK = """Is the answer below a correct and complete answer to the problem? Reply in one or two \
sentences, then the line "VERDICT: ACCEPT" or "VERDICT: REJECT".

Problem:
{problem}

Answer:
{answer}"""

CHECK_MAX_TOKENS = 96
"""A cascade check reads a whole answer but writes only a verdict: capping its reply keeps the check
far cheaper than the secondary answering, which is the point of a cascade (FrugalGPT's scorer)."""


def letter(index: int) -> str:
    """The label of the index-th answer in a `labelled` block: A, B, …"""
    return chr(ord("A") + index)


def labelled(texts: list[str]) -> str:
    """Answers as a block the models can refer to, "[A]\\n…" separated by blank lines. Letters, not
    model names: a judge or aggregator should weigh the reasoning, not the brand."""
    return "\n\n".join(f"[{letter(i)}]\n{text}" for i, text in enumerate(texts))
