"""`vote`: one answer per model, then a majority vote; a judge breaks a tie.

Every seat (primary, secondary, additional models) answers once (`prompts.SOLVE`), recorded as an
"answer" iteration; the final answers are tallied (`base.tally`: stalled answers abstain, answers
grouped after normalization) into `Reasoning.vote`. The result is the first answer that gave the
winning one, whole, with the stop reason "majority". On a tie the secondary judges (as it does in
`debate`): it reads the tied answers (the first of each, labelled by letter, not by model) and names a
WINNER; its choice is recorded as a "judgment" iteration (verdict: the model that gave the picked
answer), `vote.tie_broken_by` (the judge's model) and the stop reason "tie_broken". A judgment with no
readable WINNER leaves the tie to the earliest given of the tied answers, as self_consistency does
(stop reason "majority", `vote.tie` true, `tie_broken_by` empty). `max_iterations` is not used.
"""

from __future__ import annotations

from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Outcome, Session
from server.orchestration.reasoning.strategies.base import (
    MAJORITY,
    NO_ANSWER,
    TIE_BROKEN,
    Models,
    Strategy,
    ballot,
    tally,
)

TIE = """Several models answered the problem below, and their votes are tied between these answers. \
Decide which one is most likely correct. Explain briefly, then end with a line "WINNER: <letter>".

Problem:
{problem}

Answers:
{answers}"""


async def run(s: Session) -> Outcome:
    ballots = [await ballot(s, seat, "answer") for seat in s.seats]
    result = tally(ballots)
    if not result.groups:
        return Outcome(ballots[0].reply.text, NO_ANSWER)
    vote = result.proto()
    winner, reason = result.groups[0], MAJORITY
    if result.tie:
        tied = result.leaders
        judge = s.secondary
        reply = await s.generate(
            judge,
            TIE.format(problem=s.problem, answers=prompts.labelled([g.first.reply.text for g in tied])),
            reads=[g.first.seat for g in tied],
        )
        picked = parsing.winner(reply.text, len(tied))
        if picked is not None:
            winner, reason = tied[picked], TIE_BROKEN
            vote.tie_broken_by = reply.model
        await s.record(
            judge, "judgment", reply, verdict=winner.first.reply.model if picked is not None else ""
        )
    s.reasoning.vote.CopyFrom(vote)
    return Outcome(winner.first.reply.text, reason)


STRATEGY = Strategy(
    name="vote",
    run=run,
    models=Models.ALL,
    calls=lambda _rounds, _samples, models: models + 1,  # one answer per seat, a judge on a tie
)
