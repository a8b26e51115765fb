"""`mixture` (Wang et al. 2024, Mixture-of-Agents): proposal layers from every model, then aggregation.

Every model proposes; each later layer sees the previous layer's proposals; after the last layer the
primary aggregates ("max_iterations"). Consensus stop (after RMoA's adaptive termination and TUMIX's
early stop): when the proposals of a layer that is not the last agree (their FINAL ANSWERs, by
`parsing.agree`; at least two proposals), no further layer is added and the aggregator synthesizes
that layer ("consensus"): agreeing proposals still differ in their reasoning, and mixture's answer is
always a synthesis. Stall: the proposal is left out (to the aggregator) and does not count towards
agreement; a stalled primary hands the aggregation to the secondary.
"""

from __future__ import annotations

from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Outcome, Seat, Session
from server.orchestration.reasoning.strategies.base import CONSENSUS, MAX_ITERATIONS, Models, Strategy

_FINAL = 'End with a line "FINAL ANSWER: <your answer in a few words>".'

PROPOSE = f"""Answer the following problem as well as you can; your answer will be combined with other \
models' answers. {_FINAL}

Problem:
{{problem}}"""

PROPOSE_AGAIN = f"""Here are answers from several models to the problem below. Write an improved answer \
of your own, using what is right in them and fixing what is wrong. {_FINAL}

Problem:
{{problem}}

Answers:
{{proposals}}"""

AGGREGATE = """You have been given answers from several models to the problem below. Synthesize them \
into a single, high-quality answer. Critically evaluate them: some may be biased or wrong. Do not simply \
copy one; give a refined, accurate and complete answer.

Problem:
{problem}

Answers:
{proposals}"""


async def run(s: Session) -> Outcome:
    proposers = s.seats
    aggregator = s.primary
    proposals: list[str] = []
    authors: list[Seat] = []  # whose proposals `proposals` are
    reason = MAX_ITERATIONS
    layers = s.reasoning.max_iterations
    for layer in range(layers):
        kept: list[str] = []
        kept_by: list[Seat] = []
        for seat in proposers:
            if layer == 0:
                prompt = PROPOSE.format(problem=s.problem)
            else:
                prompt = PROPOSE_AGAIN.format(problem=s.problem, proposals=prompts.labelled(proposals))
            reply = await s.generate(seat, prompt, reads=authors)
            signals = s.check(seat, reply.text)
            handoff = None
            if signals:
                if seat.name != aggregator.name:
                    handoff = aggregator  # a stalled proposal is left to the aggregator
                elif seat.name == "primary":
                    aggregator = handoff = s.secondary  # a stalled primary does not aggregate
            else:
                kept.append(reply.text)
                kept_by.append(seat)
            await s.record(seat, "proposal", reply, stuck_indicators=signals, handoff_to=handoff)
        # Everyone stalled: aggregate what there is rather than nothing.
        proposals = kept or [
            it.content for it in s.reasoning.iterations[-len(proposers) :] if it.kind == "proposal"
        ]
        authors = kept_by if kept else list(proposers)
        if layer < layers - 1 and len(kept) >= 2 and parsing.agree([parsing.final_answer(p) for p in kept]):
            reason = CONSENSUS
            break
    reply = await s.generate(
        aggregator,
        AGGREGATE.format(problem=s.problem, proposals=prompts.labelled(proposals)),
        reads=authors,
    )
    await s.record(aggregator, "aggregation", reply)
    return Outcome(reply.text, reason)


STRATEGY = Strategy(
    name="mixture",
    run=run,
    models=Models.ALL,
    calls=lambda layers, _samples, models: layers * models + 1,  # every seat every layer, the aggregator
)
