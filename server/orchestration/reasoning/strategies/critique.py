"""`critique` (verifier): the primary answers, the secondary verifies.

The verifier replies ACCEPT ("accepted"), or CORRECT with a corrected answer, which the other model
verifies next. Stops on ACCEPT or after max_iterations verifications ("max_iterations"; final: the
latest correction). Stall: a stalled answer is taken over by the verifier (`prompts.TAKE_OVER`); a
stalled correction is not adopted and the session ends on the answer it would have replaced
("stalled").
"""

from __future__ import annotations

from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Outcome, Session
from server.orchestration.reasoning.strategies.base import (
    ACCEPTED,
    MAX_ITERATIONS,
    STALLED,
    Models,
    Strategy,
)

VERIFY = """You are a verifier. Check the answer below to the problem: its facts, its reasoning and \
whether it answers what was asked.

Problem:
{problem}

Answer to check:
{answer}

If the answer is correct, end with the line "VERDICT: ACCEPT". Otherwise write the line \
"VERDICT: CORRECT", then a line "CORRECTED ANSWER:" followed by the whole corrected answer."""


async def run(s: Session) -> Outcome:
    answerer, verifier = s.primary, s.secondary
    reply = await s.generate(answerer, prompts.ANSWER.format(problem=s.problem))
    signals = s.check(answerer, reply.text)
    if signals:
        await s.record(answerer, "draft", reply, stuck_indicators=signals, handoff_to=verifier)
        answerer, verifier = verifier, answerer
        reply = await s.generate(
            answerer,
            prompts.TAKE_OVER.format(problem=s.problem, draft=reply.text, indicators=", ".join(signals)),
            reads=[verifier],
        )
        await s.record(answerer, "draft", reply, stuck_indicators=s.check(answerer, reply.text))
    else:
        await s.record(answerer, "draft", reply)
    answer = reply.text
    for _ in range(s.reasoning.max_iterations):
        check = await s.generate(verifier, VERIFY.format(problem=s.problem, answer=answer), reads=[answerer])
        # No verdict and no corrected answer is an acceptance: there is nothing to replace it with.
        corrected = None if parsing.verdict(check.text) == "accept" else parsing.correction(check.text)
        s.critiques.append(parsing.without_tail(check.text) or check.text)
        if corrected is None:
            await s.record(verifier, "verification", check, verdict="accept")
            return Outcome(answer, ACCEPTED)
        signals = s.check(verifier, corrected)
        if signals:
            # A stalled correction is not adopted: the answer stays with the model that wrote it.
            await s.record(
                verifier,
                "verification",
                check,
                verdict="correct",
                stuck_indicators=signals,
                handoff_to=answerer,
            )
            return Outcome(answer, STALLED)
        await s.record(verifier, "verification", check, verdict="correct")
        answer = corrected
        answerer, verifier = verifier, answerer  # the correction's author is checked by the other model
    return Outcome(answer, MAX_ITERATIONS)


STRATEGY = Strategy(
    name="critique",
    run=run,
    models=Models.PAIR,
    calls=lambda rounds, _samples, _models: 2 + rounds,  # the answer and its takeover, the verifications
)
