"""`debate` (Du et al. 2023): independent answers, then rounds of updates until the answers agree.

Each model answers (`prompts.SOLVE`); in each later round it reads the others' answers and updates its
own. Consensus stop: as soon as the FINAL ANSWERs agree (`parsing.agree`), the debate ends on the
agreed answer ("consensus", in any round: the judge is not needed). Otherwise, after max_iterations
rounds the secondary judges (WINNER; "max_iterations"). Stall: the debater leaves, its seat handed to
the next one; the last one left stands ("stalled"), and if everyone stalled the judge decides at once
("stalled").
"""

from __future__ import annotations

from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Outcome, Seat, Session
from server.orchestration.reasoning.strategies.base import (
    CONSENSUS,
    MAX_ITERATIONS,
    STALLED,
    Models,
    Strategy,
)

OPENING = prompts.SOLVE

UPDATE = """These are the recent answers of other agents to the problem below. Using their \
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


async def run(s: Session) -> Outcome:
    active = s.seats
    positions: dict[str, str] = {}
    reason = MAX_ITERATIONS
    for round_ in range(s.reasoning.max_iterations):
        stalled: list[Seat] = []
        previous = dict(positions)
        for seat in active:
            reads: list[Seat] = []
            if round_ == 0:
                prompt = OPENING.format(problem=s.problem)
            else:
                reads = [o for o in active if o.name != seat.name]
                others = [previous[o.name] for o in reads]
                prompt = UPDATE.format(
                    problem=s.problem, own=previous[seat.name], others=prompts.labelled(others)
                )
            reply = await s.generate(seat, prompt, reads=reads)
            positions[seat.name] = reply.text
            signals = s.check(seat, reply.text)
            successor = None
            if signals:
                stalled.append(seat)
                successor = next((o for o in active if o not in stalled and o != seat), None)
            await s.record(seat, "argument", reply, stuck_indicators=signals, handoff_to=successor)
        if parsing.agree([parsing.final_answer(positions[seat.name]) for seat in active]):
            return Outcome(positions[active[0].name], CONSENSUS)
        remaining = [seat for seat in active if seat not in stalled]
        if len(remaining) == 1:
            # The others stalled and handed their seats to it.
            return Outcome(positions[remaining[0].name], STALLED)
        if len(remaining) >= 2:
            active = remaining
        else:
            reason = STALLED  # everyone stalled: no further round can help; judge the last positions
            break
    return Outcome(await _judge(s, active, positions), reason)


async def _judge(s: Session, debaters: list[Seat], positions: dict[str, str]) -> str:
    """The secondary picks the best-supported position; without a readable WINNER, the primary's
    (the session's own answerer) stands."""
    texts = [positions[seat.name] for seat in debaters]
    reply = await s.generate(
        s.secondary,
        JUDGE.format(problem=s.problem, positions=prompts.labelled(texts)),
        reads=debaters,
    )
    picked = parsing.winner(reply.text, len(texts))
    index = 0 if picked is None else picked
    s.critiques.append(parsing.without_tail(reply.text) or reply.text)
    await s.record(s.secondary, "judgment", reply, verdict=debaters[index].model)
    return texts[index]


STRATEGY = Strategy(
    name="debate",
    run=run,
    models=Models.ALL,
    calls=lambda rounds, _samples, models: rounds * models + 1,  # every seat every round, the judge
)
