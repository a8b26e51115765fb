"""The five collaboration strategies, each after its paper; each returns the session's final result.

`max_iterations` bounds each strategy's rounds (see `Reasoning.max_iterations`). Every draft-like step
(draft, revision, argument, proposal, correction, escalation) goes through stuck detection; a stall is
recorded on its iteration, emits STUCK_DETECTED and triggers the strategy's handoff:

* `iterative_refinement` (seed 000 §3.1.5): the drafter drafts; the critic critiques, ending with
  FOCUS and VERDICT; the drafter revises. Stops on APPROVE or after max_iterations critiques (final:
  the last draft). Stall: drafting passes to the critic (the roles swap), who drafts at once.
* `debate` (Du et al. 2023): independent answers, then rounds in which each model reads the others'
  answers and updates its own. Stops when the FINAL ANSWERs agree (final: the agreed answer) or after
  max_iterations rounds: the secondary judges (WINNER). Stall: the debater leaves, its seat handed to
  the next one; the last one left stands.
* `mixture` (Wang et al. 2024, Mixture-of-Agents): every model proposes; each later layer sees the
  previous layer's proposals; after max_iterations layers the primary aggregates. Stall: the proposal
  is left out (to the aggregator); a stalled primary hands the aggregation to the secondary.
* `critique` (verifier): the primary answers; the secondary verifies: ACCEPT, or CORRECT with a
  corrected answer, which the other model verifies next. Stops on ACCEPT or after max_iterations
  verifications (final: the latest correction). Stall: a stalled answer is taken over by the
  verifier; a stalled correction is not adopted.
* `cascade` (Chen et al. 2023, FrugalGPT): the primary answers; the secondary checks it with a short
  reply; the secondary answers only when the primary stalls or fails the check (at most one
  escalation). Stall: escalation.

The cascade records the comparison FrugalGPT is about: `usage.secondary_only_cost_usd` against
`usage.cost_usd`, and `usage.escalated`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Reply, Seat, Session
from server.providers.base import Usage
from server.providers.convert import usage_proto

Strategy = Callable[[Session], Awaitable[str]]


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


async def iterative_refinement(s: Session) -> str:
    drafter, critic = s.primary, s.secondary
    draft, drafter, critic = await _draft(
        s, drafter, critic, "draft", prompts.DRAFT.format(problem=s.problem)
    )
    for _ in range(s.reasoning.max_iterations):
        reply = await s.generate(
            critic, prompts.CRITIQUE.format(problem=s.problem, draft=draft), reads=[drafter]
        )
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
            break
        draft, drafter, critic = await _draft(
            s,
            drafter,
            critic,
            "revision",
            prompts.REVISE.format(problem=s.problem, draft=draft, critique=critique),
            reads=[critic],
        )
    return draft


async def debate(s: Session) -> str:
    active = s.seats
    positions: dict[str, str] = {}
    for round_ in range(s.reasoning.max_iterations):
        stalled: list[Seat] = []
        previous = dict(positions)
        for seat in active:
            reads: list[Seat] = []
            if round_ == 0:
                prompt = prompts.DEBATE_OPENING.format(problem=s.problem)
            else:
                reads = [o for o in active if o.name != seat.name]
                others = [previous[o.name] for o in reads]
                prompt = prompts.DEBATE_UPDATE.format(
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
            return positions[active[0].name]
        remaining = [seat for seat in active if seat not in stalled]
        if len(remaining) == 1:
            return positions[remaining[0].name]  # the others stalled and handed their seats to it
        if len(remaining) >= 2:
            active = remaining
        else:
            break  # everyone stalled: no further round can help; judge the last positions
    return await _judge(s, active, positions)


async def _judge(s: Session, debaters: list[Seat], positions: dict[str, str]) -> str:
    """The secondary picks the best-supported position; without a readable WINNER, the primary's
    (the session's own answerer) stands."""
    texts = [positions[seat.name] for seat in debaters]
    reply = await s.generate(
        s.secondary,
        prompts.JUDGE.format(problem=s.problem, positions=prompts.labelled(texts)),
        reads=debaters,
    )
    picked = parsing.winner(reply.text, len(texts))
    index = 0 if picked is None else picked
    s.critiques.append(parsing.without_tail(reply.text) or reply.text)
    await s.record(s.secondary, "judgment", reply, verdict=debaters[index].model)
    return texts[index]


async def mixture(s: Session) -> str:
    proposers = s.seats
    aggregator = s.primary
    proposals: list[str] = []
    authors: list[Seat] = []  # whose proposals `proposals` are
    for layer in range(s.reasoning.max_iterations):
        kept: list[str] = []
        kept_by: list[Seat] = []
        for seat in proposers:
            if layer == 0:
                prompt = prompts.PROPOSE.format(problem=s.problem)
            else:
                prompt = prompts.PROPOSE_AGAIN.format(
                    problem=s.problem, proposals=prompts.labelled(proposals)
                )
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
    reply = await s.generate(
        aggregator,
        prompts.AGGREGATE.format(problem=s.problem, proposals=prompts.labelled(proposals)),
        reads=authors,
    )
    await s.record(aggregator, "aggregation", reply)
    return reply.text


async def critique(s: Session) -> str:
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
        check = await s.generate(
            verifier, prompts.VERIFY.format(problem=s.problem, answer=answer), reads=[answerer]
        )
        # No verdict and no corrected answer is an acceptance: there is nothing to replace it with.
        corrected = None if parsing.verdict(check.text) == "accept" else parsing.correction(check.text)
        s.critiques.append(parsing.without_tail(check.text) or check.text)
        if corrected is None:
            await s.record(verifier, "verification", check, verdict="accept")
            return answer
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
            return answer
        await s.record(verifier, "verification", check, verdict="correct")
        answer = corrected
        answerer, verifier = verifier, answerer  # the correction's author is checked by the other model
    return answer


async def cascade(s: Session) -> str:
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
            prompts.CHECK.format(problem=s.problem, answer=reply.text),
            max_tokens=prompts.CHECK_MAX_TOKENS,
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
        return reply.text
    # The escalation answers the very prompt the primary had, so its cost is exactly what using the
    # secondary alone would have cost.
    s.escalated(secondary)
    answer = await s.generate(secondary, prompts.ANSWER.format(problem=s.problem))
    await s.record(secondary, "escalation", answer, stuck_indicators=s.check(secondary, answer.text))
    usage.escalated = True
    usage.secondary_only_cost_usd = answer.usage.cost_usd
    return answer.text


def _secondary_estimate(s: Session, reply: Reply) -> float:
    """What the secondary would have charged for the primary's answer: its prices, the same tokens."""
    model = s.model(s.reasoning.secondary_model)
    tokens = Usage(prompt_tokens=reply.usage.prompt_tokens, completion_tokens=reply.usage.completion_tokens)
    return usage_proto(model, tokens).cost_usd


STRATEGIES: dict[str, Strategy] = {
    "iterative_refinement": iterative_refinement,
    "debate": debate,
    "mixture": mixture,
    "critique": critique,
    "cascade": cascade,
}
"""Strategy names as clients send them (`collaboration_strategy`); the first is the default."""

MULTI_MODEL = frozenset({"debate", "mixture"})
"""Strategies that use `additional_models`; the others take exactly a primary and a secondary."""
