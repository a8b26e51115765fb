"""`iterative_refinement` (seed 000 §3.1.5): draft → critique → revision, until approval.

The drafter drafts; the critic critiques, ending with FOCUS and VERDICT; the drafter revises. Stops on
APPROVE ("approved") or after max_iterations critiques ("max_iterations"; final: the last draft).
Stall: drafting passes to the critic (the roles swap), who drafts at once (`prompts.TAKE_OVER`).
"""

from __future__ import annotations

from collections.abc import Sequence

from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Outcome, Seat, Session
from server.orchestration.reasoning.strategies.base import APPROVED, MAX_ITERATIONS, Models, Strategy

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


async def _draft(
    s: Session, drafter: Seat, critic: Seat, kind: str, prompt: str, reads: Sequence[Seat] = ()
) -> tuple[str, Seat, Seat]:
    """A draft or revision by `drafter` (reading `reads`' output); if it stalls, the critic takes over
    drafting (roles swap). Returns the draft to work on and the (drafter, critic) from now on."""
    reply = await s.generate(drafter, prompt, reads=reads)
    signals = s.check(drafter, reply.text)
    if not signals:
        await s.record(drafter, kind, reply)
        return reply.text, drafter, critic
    await s.record(drafter, kind, reply, stuck_indicators=signals, handoff_to=critic)
    takeover = await s.generate(
        critic,
        prompts.TAKE_OVER.format(problem=s.problem, draft=reply.text, indicators=", ".join(signals)),
        reads=[drafter],
    )
    # One handoff per step: a takeover that stalls too is recorded as such, and the critique that
    # follows is what moves the session on.
    await s.record(critic, kind, takeover, stuck_indicators=s.check(critic, takeover.text))
    return takeover.text, critic, drafter


async def run(s: Session) -> Outcome:
    drafter, critic = s.primary, s.secondary
    draft, drafter, critic = await _draft(s, drafter, critic, "draft", DRAFT.format(problem=s.problem))
    for _ in range(s.reasoning.max_iterations):
        reply = await s.generate(critic, CRITIQUE.format(problem=s.problem, draft=draft), reads=[drafter])
        approved = parsing.approves(reply.text)
        critique = parsing.without_tail(reply.text) or reply.text
        s.critiques.append(critique)
        await s.record(
            critic,
            "critique",
            reply,
            focus_areas=parsing.focus_areas(reply.text),
            verdict="approve" if approved else "revise",
        )
        if approved:
            return Outcome(draft, APPROVED)
        draft, drafter, critic = await _draft(
            s,
            drafter,
            critic,
            "revision",
            REVISE.format(problem=s.problem, draft=draft, critique=critique),
            reads=[critic],
        )
    return Outcome(draft, MAX_ITERATIONS)


STRATEGY = Strategy(
    name="iterative_refinement",
    run=run,
    models=Models.PAIR,
    # A draft and its takeover, then per round a critique, a revision and its takeover.
    calls=lambda rounds, _samples, _models: 2 + 3 * rounds,
)
