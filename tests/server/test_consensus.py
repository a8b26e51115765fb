"""Consensus stops with scripted models: debate and mixture stop as soon as the answers agree, and run
all their rounds when they never do; the stop is recorded on the session and its COMPLETION event."""

from __future__ import annotations

from aibattle.v1 import reasoning_pb2
from server.orchestration.reasoning import prompts
from server.orchestration.reasoning.strategies import mixture, worst_case_calls
from server.providers.scripted import count_tokens
from tests.server.reasoning_testlib import COMPLETED, T, create, events, kinds, of_type, scripted, serving

PROBLEM = "What is the capital of Australia?"
CANBERRA = "Parliament sits in Canberra.\nFINAL ANSWER: Canberra"
CANBERRA_TOO = "It was built to be the capital.\n**Final answer:** canberra."
SYDNEY = "Sydney is the largest city.\nFINAL ANSWER: Sydney"
MELBOURNE = "Melbourne was the first seat of government.\nFINAL ANSWER: Melbourne"


async def run(stub, **fields) -> tuple[reasoning_pb2.Reasoning, reasoning_pb2.ReasoningEvent]:
    created = await create(stub, prompt=PROBLEM, **fields)
    log = await events(stub, created.reasoning_id)
    got = await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=created.reasoning_id))
    [end] = of_type(log, T.REASONING_EVENT_TYPE_COMPLETION)
    assert got.reasoning.status == COMPLETED
    return got.reasoning, end


# -- debate ----------------------------------------------------------------------------------------


async def test_debate_stops_at_the_first_agreement() -> None:
    async with serving(
        scripted("a", CANBERRA), scripted("b", CANBERRA_TOO), scripted("c", "Agreed.\nFINAL ANSWER: Canberra")
    ) as (_, stub):
        reasoning, end = await run(
            stub,
            primary_model="a",
            secondary_model="b",
            additional_models=["c"],
            collaboration_strategy="debate",
            max_iterations=4,
        )
    assert kinds(reasoning) == [("argument", "a"), ("argument", "b"), ("argument", "c")]  # one round of 4
    assert reasoning.stop_reason == "consensus"
    assert (end.stop_reason, end.final_result) == ("consensus", CANBERRA)


async def test_debate_agreeing_in_a_later_round_stops_there() -> None:
    async with serving(scripted("a", SYDNEY, CANBERRA), scripted("b", CANBERRA)) as (_, stub):
        reasoning, end = await run(
            stub, primary_model="a", secondary_model="b", collaboration_strategy="debate", max_iterations=5
        )
    assert [it.kind for it in reasoning.iterations] == ["argument"] * 4
    assert reasoning.stop_reason == end.stop_reason == "consensus"


async def test_debate_ends_stalled_when_one_debater_is_left() -> None:
    b = [f"Round {i}: Parliament, point {i} of the record.\nFINAL ANSWER: Canberra {i}" for i in range(3)]
    async with serving(scripted("a", SYDNEY), scripted("b", *b)) as (_, stub):
        reasoning, end = await run(
            stub, primary_model="a", secondary_model="b", collaboration_strategy="debate", max_iterations=3
        )
    # Round 2: "a" repeats itself word for word (a loop) and leaves; "b" stands alone, unjudged.
    assert [it.kind for it in reasoning.iterations] == ["argument"] * 4
    assert "loop" in reasoning.iterations[2].stuck_indicators
    assert reasoning.final_result == b[1]
    assert reasoning.stop_reason == end.stop_reason == "stalled"


async def test_debate_that_never_agrees_uses_all_its_rounds() -> None:
    a = [f"Round {i}: the biggest city, as argument {i} shows.\nFINAL ANSWER: Sydney {i}" for i in range(3)]
    b = [f"Round {i}: Parliament, point {i} of the record.\nFINAL ANSWER: Canberra {i}" for i in range(3)]
    async with serving(scripted("a", *a), scripted("b", *b, "B cites Parliament.\nWINNER: B")) as (_, stub):
        reasoning, end = await run(
            stub, primary_model="a", secondary_model="b", collaboration_strategy="debate", max_iterations=3
        )
    assert not any(it.stuck_indicators for it in reasoning.iterations)
    assert [it.kind for it in reasoning.iterations] == ["argument"] * 6 + ["judgment"]
    assert reasoning.final_result == b[2]
    assert reasoning.stop_reason == end.stop_reason == "max_iterations"
    assert worst_case_calls("debate", 3, 0, 2) == len(reasoning.iterations)


# -- mixture ---------------------------------------------------------------------------------------


async def test_mixture_stops_adding_layers_once_the_proposals_agree() -> None:
    aggregate = "Canberra, where Parliament sits; it was built to be the capital."
    async with serving(scripted("p", CANBERRA, aggregate), scripted("s", CANBERRA_TOO)) as (_, stub):
        reasoning, end = await run(
            stub, primary_model="p", secondary_model="s", collaboration_strategy="mixture", max_iterations=3
        )
    assert kinds(reasoning) == [("proposal", "p"), ("proposal", "s"), ("aggregation", "p")]
    # The agreeing layer is aggregated, as a last layer would be.
    expected = mixture.AGGREGATE.format(problem=PROBLEM, proposals=prompts.labelled([CANBERRA, CANBERRA_TOO]))
    assert reasoning.iterations[-1].usage.prompt_tokens == count_tokens(expected)
    assert reasoning.final_result == aggregate
    assert reasoning.stop_reason == end.stop_reason == "consensus"


async def test_mixture_consensus_ignores_a_stalled_proposal() -> None:
    async with serving(
        scripted("p", CANBERRA, "Canberra."),
        scripted("s", CANBERRA_TOO),
        scripted("x", "I cannot help with that request."),
    ) as (_, stub):
        reasoning, _ = await run(
            stub,
            primary_model="p",
            secondary_model="s",
            additional_models=["x"],
            collaboration_strategy="mixture",
            max_iterations=3,
        )
    assert [it.kind for it in reasoning.iterations] == ["proposal"] * 3 + ["aggregation"]
    assert reasoning.stop_reason == "consensus"


async def test_mixture_without_agreement_runs_every_layer() -> None:
    p = [f"Layer {i}: the largest city, by census {i}.\nFINAL ANSWER: Sydney {i}" for i in range(3)]
    s = [f"Layer {i}: the seat of Parliament, per act {i}.\nFINAL ANSWER: Canberra {i}" for i in range(3)]
    async with serving(scripted("p", *p, "Canberra."), scripted("s", *s)) as (_, stub):
        reasoning, end = await run(
            stub, primary_model="p", secondary_model="s", collaboration_strategy="mixture", max_iterations=3
        )
    assert not any(it.stuck_indicators for it in reasoning.iterations)
    assert [it.kind for it in reasoning.iterations] == ["proposal"] * 6 + ["aggregation"]
    assert reasoning.stop_reason == end.stop_reason == "max_iterations"
    assert worst_case_calls("mixture", 3, 0, 2) == len(reasoning.iterations)


async def test_mixture_agreeing_only_in_its_last_layer_ran_every_layer() -> None:
    p, s = scripted("p", SYDNEY, CANBERRA, "Canberra."), scripted("s", CANBERRA, CANBERRA_TOO)
    async with serving(p, s) as (_, stub):
        reasoning, _ = await run(
            stub, primary_model="p", secondary_model="s", collaboration_strategy="mixture", max_iterations=2
        )
    assert [it.kind for it in reasoning.iterations] == ["proposal"] * 4 + ["aggregation"]
    assert reasoning.stop_reason == "max_iterations"  # nothing was saved: no layer was left to skip
