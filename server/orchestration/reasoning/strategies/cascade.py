"""`cascade` (Chen et al. 2023, FrugalGPT): the secondary answers only when the primary cannot.

The primary answers; the secondary checks it with a short reply; the secondary answers only when the
primary stalls or fails the check (at most one escalation): "escalated" or "not_escalated".

It records the comparison FrugalGPT is about: `usage.secondary_only_cost_usd` against
`usage.cost_usd`, and `usage.escalated`.
"""

from __future__ import annotations

from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Outcome, Reply, Session
from server.orchestration.reasoning.strategies.base import ESCALATED, NOT_ESCALATED, Models, Strategy
from server.providers.base import Usage
from server.providers.convert import usage_proto

CHECK = """Is the answer below a correct and complete answer to the problem? Reply in one or two \
sentences, then the line "VERDICT: ACCEPT" or "VERDICT: REJECT".

Problem:
{problem}

Answer:
{answer}"""

CHECK_MAX_TOKENS = 96
"""A cascade check reads a whole answer but writes only a verdict: capping its reply keeps the check
far cheaper than the secondary answering, which is the point of a cascade (FrugalGPT's scorer)."""


async def run(s: Session) -> Outcome:
    primary, secondary = s.primary, s.secondary
    reply = await s.generate(primary, prompts.ANSWER.format(problem=s.problem))
    signals = s.check(primary, reply.text)
    if signals:
        await s.record(primary, "draft", reply, stuck_indicators=signals, handoff_to=secondary)
        escalate = True
    else:
        await s.record(primary, "draft", reply)
        check = await s.generate(
            secondary,
            CHECK.format(problem=s.problem, answer=reply.text),
            max_tokens=CHECK_MAX_TOKENS,
            reads=[primary],
        )
        # An unreadable check counts as a failed one: the cascade trades cost for quality only when
        # it has a reason to trust the cheap answer.
        passed = parsing.verdict(check.text) in {"accept", "approve"}
        escalate = not passed
        s.critiques.append(parsing.without_tail(check.text) or check.text)
        await s.record(
            secondary,
            "verification",
            check,
            verdict="accept" if passed else "reject",
            handoff_from=primary if escalate else None,
            handoff_to=secondary if escalate else None,
        )
    usage = s.reasoning.usage
    if not escalate:
        usage.secondary_only_cost_usd = _secondary_estimate(s, reply)
        return Outcome(reply.text, NOT_ESCALATED)
    # The escalation answers the very prompt the primary had, so its cost is exactly what using the
    # secondary alone would have cost.
    s.escalated(secondary)
    answer = await s.generate(secondary, prompts.ANSWER.format(problem=s.problem))
    await s.record(secondary, "escalation", answer, stuck_indicators=s.check(secondary, answer.text))
    usage.escalated = True
    usage.secondary_only_cost_usd = answer.usage.cost_usd
    return Outcome(answer.text, ESCALATED)


def _secondary_estimate(s: Session, reply: Reply) -> float:
    """What the secondary would have charged for the primary's answer: its prices, the same tokens."""
    model = s.model(s.reasoning.secondary_model)
    tokens = Usage(prompt_tokens=reply.usage.prompt_tokens, completion_tokens=reply.usage.completion_tokens)
    return usage_proto(model, tokens).cost_usd


STRATEGY = Strategy(
    name="cascade",
    run=run,
    models=Models.PAIR,
    calls=lambda _rounds, _samples, _models: 3,  # the answer, the check, one escalation
)
