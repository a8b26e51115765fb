"""`self_consistency` (Wang et al. 2023): N samples from the primary, then a majority vote.

The primary answers the problem `samples` times (`Reasoning.samples`, default 5), each at
`TEMPERATURE` so that the reasoning paths differ, each recorded as a "sample" iteration. The final
answers extracted from them are tallied (`base.tally`: stalled samples abstain, answers grouped after
normalization) into `Reasoning.vote`; the result is the first sample that gave the winning answer, whole
(its reasoning and its FINAL ANSWER line), and the stop reason "majority". A tie (`vote.tie`) goes to the
earliest sampled of the tied answers, with no judge (`vote.tie_broken_by` stays empty): one model's
samples have no second opinion to ask. Only the primary is called; `max_iterations` is not used.
"""

from __future__ import annotations

from server.orchestration.reasoning.session import Outcome, Session
from server.orchestration.reasoning.strategies.base import (
    MAJORITY,
    NO_ANSWER,
    Models,
    Strategy,
    ballot,
    tally,
)

TEMPERATURE = 0.7
"""Sampling temperature of every sample: Wang et al. sample at 0.5–0.7; 0.7 is also the embedded
model's default. Samples carry no seed, so each draws its own (the embedded model picks a random one)."""


async def run(s: Session) -> Outcome:
    ballots = [
        await ballot(s, s.primary, "sample", temperature=TEMPERATURE) for _ in range(s.reasoning.samples)
    ]
    result = tally(ballots)
    if not result.groups:
        return Outcome(ballots[0].reply.text, NO_ANSWER)
    s.reasoning.vote.CopyFrom(result.proto())
    return Outcome(result.groups[0].first.reply.text, MAJORITY)


STRATEGY = Strategy(
    name="self_consistency",
    run=run,
    models=Models.PRIMARY,
    calls=lambda _rounds, samples, _models: samples,
    takes_samples=True,
)
