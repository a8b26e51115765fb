"""The voting baselines with scripted models: self_consistency (samples of one model, majority, the earliest
of a tie) and vote (one answer per model, majority, a judge for a tie); the registry and its checks.

Scripted models answer call i with script[i % len(script)], so each case's votes are fixed by its script.
"""

from __future__ import annotations

import pkgutil

import grpc
import pytest

from aibattle.v1 import reasoning_pb2
from gateway.openapi.schema import allowed_values
from server.orchestration.reasoning import prompts, strategies
from server.orchestration.reasoning.strategies import STRATEGIES, self_consistency, vote, worst_case_calls
from server.providers.base import ChatRequest
from server.providers.scripted import count_tokens
from tests.server.reasoning_testlib import (
    CANCELLED,
    COMPLETED,
    T,
    create,
    events,
    kinds,
    of_type,
    scripted,
    serving,
)

PROBLEM = "A train leaves at 3 pm and travels for 4 hours. When does it arrive?"
SEVEN = "3 pm plus 4 hours is 7 pm.\nFINAL ANSWER: 7 pm"
SEVEN_AGAIN = "Four hours after three in the afternoon.\n**Final answer:** 7 PM."
EIGHT = "Counting 3, 4, 5, 6, 7, 8 gives 8 pm.\nFINAL ANSWER: 8 pm"
SIX = "It arrives at 6 pm.\nFINAL ANSWER: 6 pm"
REFUSAL = "I cannot help with that request."


async def finished_events(stub, reasoning_id: str) -> tuple[reasoning_pb2.Reasoning, list]:
    log = await events(stub, reasoning_id)
    got = await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=reasoning_id))
    return got.reasoning, log


def completion(log: list) -> reasoning_pb2.ReasoningEvent:
    [event] = of_type(log, T.REASONING_EVENT_TYPE_COMPLETION)
    return event


def tallies(reasoning: reasoning_pb2.Reasoning) -> list[tuple[str, int, list[str]]]:
    return [(t.answer, t.votes, list(t.models)) for t in reasoning.vote.tallies]


# -- self_consistency ------------------------------------------------------------------------------


async def test_self_consistency_takes_the_majority_of_its_samples() -> None:
    async with serving(scripted("m", EIGHT, SEVEN, SIX, SEVEN_AGAIN, SEVEN), scripted("other", SIX)) as (
        _,
        stub,
    ):
        created = await create(
            stub,
            primary_model="m",
            secondary_model="other",
            collaboration_strategy="self_consistency",
            prompt=PROBLEM,
        )
        reasoning, log = await finished_events(stub, created.reasoning_id)
    assert reasoning.status == COMPLETED
    assert reasoning.samples == 5  # the default
    assert kinds(reasoning) == [("sample", "m")] * 5  # the primary alone is sampled
    assert [m.model for m in reasoning.usage.by_model] == ["m"]
    # "7 pm" and "7 PM." are one answer after normalization, worded as first given.
    assert tallies(reasoning) == [("7 pm", 3, ["m"] * 3), ("8 pm", 1, ["m"]), ("6 pm", 1, ["m"])]
    assert not reasoning.vote.tie and not reasoning.vote.tie_broken_by
    assert reasoning.final_result == SEVEN  # the first sample that gave the winning answer, whole
    assert reasoning.stop_reason == "majority"
    end = completion(log)
    assert end.stop_reason == "majority" and end.final_result == SEVEN
    assert worst_case_calls("self_consistency", 0, 0, 2) == len(reasoning.iterations)


async def test_self_consistency_tie_goes_to_the_earliest_sampled_of_the_tied() -> None:
    # 8 pm is sampled first, but is not among the tied; of the tied (7 pm, 6 pm), 7 pm came first.
    async with serving(scripted("m", EIGHT, SEVEN, SIX, SIX, SEVEN_AGAIN)) as (_, stub):
        reasoning = await create(
            stub, primary_model="m", collaboration_strategy="self_consistency", samples=5, wait=True
        )
    assert tallies(reasoning) == [("7 pm", 2, ["m", "m"]), ("6 pm", 2, ["m", "m"]), ("8 pm", 1, ["m"])]
    assert reasoning.vote.tie and not reasoning.vote.tie_broken_by
    assert reasoning.final_result == SEVEN
    assert reasoning.stop_reason == "majority"


async def test_self_consistency_without_agreement_takes_the_first_sample() -> None:
    async with serving(scripted("m", SIX, SEVEN, EIGHT)) as (_, stub):
        reasoning = await create(
            stub, primary_model="m", collaboration_strategy="self_consistency", samples=3, wait=True
        )
    assert reasoning.samples == 3 and len(reasoning.iterations) == 3
    assert [t.votes for t in reasoning.vote.tallies] == [1, 1, 1]
    assert [t.answer for t in reasoning.vote.tallies] == ["6 pm", "7 pm", "8 pm"]
    assert reasoning.vote.tie
    assert reasoning.final_result == SIX and reasoning.stop_reason == "majority"


async def test_samples_are_drawn_at_the_sampling_temperature(scripted_requests: list[ChatRequest]) -> None:
    async with serving(scripted("m", SEVEN), scripted("v", SEVEN)) as (_, stub):
        await create(stub, primary_model="m", collaboration_strategy="self_consistency", samples=2, wait=True)
        sampled = list(scripted_requests)
        await create(stub, primary_model="m", secondary_model="v", collaboration_strategy="vote", wait=True)
    assert self_consistency.TEMPERATURE == 0.7
    assert [r.temperature for r in sampled] == [0.7, 0.7]
    assert [r.temperature for r in scripted_requests[2:]] == [None, None]  # vote: each model's default
    asked = prompts.SOLVE.format(problem="What is the capital of Australia?")  # create()'s default prompt
    assert sampled[0].messages[-1].content == asked


async def test_a_resumed_vote_replays_its_answers_and_counts_them_once() -> None:
    slow = " ".join(f"word{i}" for i in range(40)) + "\nFINAL ANSWER: 7 pm"
    async with serving(
        scripted("p", SEVEN), scripted("s", slow, slow, delay_ms=10), scripted("x", EIGHT)
    ) as (_, stub):
        created = await create(
            stub,
            primary_model="p",
            secondary_model="s",
            additional_models=["x"],
            collaboration_strategy="vote",
        )
        call = stub.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=created.reasoning_id)
        )
        async for response in call:  # into the secondary's answer
            if response.event.type == T.REASONING_EVENT_TYPE_TOKEN and response.event.model == "s":
                break
        call.cancel()
        request = reasoning_pb2.CancelReasoningRequest(reasoning_id=created.reasoning_id)
        cancelled = (await stub.CancelReasoning(request)).reasoning
        await stub.ResumeReasoning(reasoning_pb2.ResumeReasoningRequest(reasoning_id=created.reasoning_id))
        reasoning, log = await finished_events(stub, created.reasoning_id)
    assert cancelled.status == CANCELLED and kinds(cancelled) == [("answer", "p")]
    assert kinds(reasoning) == [("answer", "p"), ("answer", "s"), ("answer", "x")]
    assert tallies(reasoning) == [("7 pm", 2, ["p", "s"]), ("8 pm", 1, ["x"])]
    assert reasoning.stop_reason == "majority" and len(of_type(log, T.REASONING_EVENT_TYPE_COMPLETION)) == 1
    assert reasoning.usage.total_tokens == sum(it.usage.total_tokens for it in reasoning.iterations)


async def test_a_stalled_sample_casts_no_vote() -> None:
    # Two refusals would outvote the one answer if they counted.
    async with serving(scripted("m", REFUSAL, EIGHT, REFUSAL)) as (_, stub):
        reasoning = await create(
            stub, primary_model="m", collaboration_strategy="self_consistency", samples=3, wait=True
        )
        log = await events(stub, reasoning.reasoning_id)
    assert "refusal" in reasoning.iterations[0].stuck_indicators
    assert not reasoning.iterations[1].stuck_indicators
    assert len(of_type(log, T.REASONING_EVENT_TYPE_STUCK_DETECTED)) == 2
    assert tallies(reasoning) == [("8 pm", 1, ["m"])]
    assert reasoning.final_result == EIGHT


async def test_when_every_sample_stalls_they_all_vote() -> None:
    async with serving(scripted("m", REFUSAL)) as (_, stub):
        reasoning = await create(
            stub, primary_model="m", collaboration_strategy="self_consistency", samples=2, wait=True
        )
    assert all(it.stuck_indicators for it in reasoning.iterations)
    assert tallies(reasoning) == [(REFUSAL, 2, ["m", "m"])]
    assert reasoning.final_result == REFUSAL and reasoning.stop_reason == "majority"


async def test_samples_with_nothing_to_count_end_without_an_answer() -> None:
    async with serving(scripted("m", "...")) as (_, stub):
        reasoning = await create(
            stub, primary_model="m", collaboration_strategy="self_consistency", samples=2, wait=True
        )
    assert reasoning.status == COMPLETED and len(reasoning.iterations) == 2
    assert not reasoning.vote.tallies
    assert reasoning.final_result == "..." and reasoning.stop_reason == "no_answer"


# -- vote ------------------------------------------------------------------------------------------


async def test_vote_takes_the_majority_of_the_models() -> None:
    async with serving(scripted("p", EIGHT), scripted("s", SEVEN), scripted("x", SEVEN_AGAIN)) as (_, stub):
        created = await create(
            stub,
            primary_model="p",
            secondary_model="s",
            additional_models=["x"],
            collaboration_strategy="vote",
            prompt=PROBLEM,
        )
        reasoning, log = await finished_events(stub, created.reasoning_id)
    assert kinds(reasoning) == [("answer", "p"), ("answer", "s"), ("answer", "x")]  # no judge needed
    assert tallies(reasoning) == [("7 pm", 2, ["s", "x"]), ("8 pm", 1, ["p"])]
    assert not reasoning.vote.tie
    assert reasoning.final_result == SEVEN
    assert reasoning.stop_reason == "majority" and completion(log).stop_reason == "majority"
    assert reasoning.samples == 0


async def test_vote_tie_is_broken_by_the_secondary_as_judge() -> None:
    judgment = "Answer B counts the hours correctly.\nWINNER: B"
    async with serving(
        scripted("p", EIGHT), scripted("s", SEVEN, judgment), scripted("x", SEVEN_AGAIN), scripted("y", EIGHT)
    ) as (_, stub):
        created = await create(
            stub,
            primary_model="p",
            secondary_model="s",
            additional_models=["x", "y"],
            collaboration_strategy="vote",
            prompt=PROBLEM,
        )
        reasoning, log = await finished_events(stub, created.reasoning_id)
    assert kinds(reasoning) == [
        ("answer", "p"),
        ("answer", "s"),
        ("answer", "x"),
        ("answer", "y"),
        ("judgment", "s"),
    ]
    assert tallies(reasoning) == [("8 pm", 2, ["p", "y"]), ("7 pm", 2, ["s", "x"])]
    assert reasoning.vote.tie and reasoning.vote.tie_broken_by == "s"
    assert reasoning.iterations[-1].verdict == "s"  # the model whose answer it picked
    assert reasoning.final_result == SEVEN  # not the earliest of the tied: the judge's pick
    assert reasoning.stop_reason == "tie_broken" and completion(log).stop_reason == "tie_broken"
    # The judge read the first answer of each tied group, by letter.
    expected = vote.TIE.format(problem=PROBLEM, answers=prompts.labelled([EIGHT, SEVEN]))
    assert reasoning.iterations[-1].usage.prompt_tokens == count_tokens(expected)
    assert worst_case_calls("vote", 5, 0, 4) == len(reasoning.iterations)


async def test_vote_tie_without_a_readable_judgment_goes_to_the_earliest() -> None:
    async with serving(scripted("p", EIGHT), scripted("s", SEVEN, "Both seem plausible to me.")) as (_, stub):
        reasoning = await create(
            stub, primary_model="p", secondary_model="s", collaboration_strategy="vote", wait=True
        )
    assert [it.kind for it in reasoning.iterations] == ["answer", "answer", "judgment"]
    assert reasoning.iterations[-1].verdict == ""
    assert reasoning.vote.tie and not reasoning.vote.tie_broken_by
    assert reasoning.final_result == EIGHT and reasoning.stop_reason == "majority"


# -- the registry and its checks --------------------------------------------------------------------


def test_the_registry_is_the_schemas_list_in_order() -> None:
    field = reasoning_pb2.CreateReasoningRequest.DESCRIPTOR.fields_by_name["collaboration_strategy"]
    assert list(STRATEGIES) == list(allowed_values(field))
    assert next(iter(STRATEGIES)) == "iterative_refinement"  # the default


def test_every_strategy_module_is_registered() -> None:
    modules = {m.name for m in pkgutil.iter_modules(strategies.__path__)} - {"base"}
    assert modules == set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert strategy.name == name and strategy.run.__module__.endswith(f".{name}")


@pytest.mark.parametrize(
    ("strategy", "iterations", "samples", "models", "calls"),
    [
        ("iterative_refinement", 2, 0, 2, 8),
        ("debate", 3, 0, 3, 10),
        ("mixture", 2, 0, 4, 9),
        ("critique", 4, 0, 2, 6),
        ("cascade", 20, 0, 2, 3),
        ("self_consistency", 5, 7, 2, 7),
        ("self_consistency", 5, 0, 2, 5),
        ("vote", 5, 0, 5, 6),
        ("debate", 0, 0, 2, 11),  # 0 rounds means the default, 5
    ],
)
def test_worst_case_calls(strategy: str, iterations: int, samples: int, models: int, calls: int) -> None:
    assert worst_case_calls(strategy, iterations, samples, models) == calls


@pytest.mark.parametrize(
    ("fields", "field", "named"),
    [
        ({"collaboration_strategy": "brainstorm"}, "collaboration_strategy", "brainstorm"),
        ({"collaboration_strategy": "debate", "samples": 3}, "samples", "debate"),
        ({"samples": 3}, "samples", "iterative_refinement"),  # the default strategy draws none either
        ({"collaboration_strategy": "self_consistency", "samples": 1}, "samples", "samples"),
        ({"collaboration_strategy": "self_consistency", "samples": 21}, "samples", "samples"),
        ({"collaboration_strategy": "self_consistency", "additional_models": ["b"]}, "additional_models", ""),
    ],
)
async def test_invalid_voting_requests_name_the_field(fields: dict, field: str, named: str) -> None:
    async with serving(scripted("a", SEVEN), scripted("b", SEVEN)) as (_, stub):
        request = {"primary_model": "a", "prompt": PROBLEM, **fields}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateReasoning(reasoning_pb2.CreateReasoningRequest(**request))
        listed = await stub.ListReasonings(reasoning_pb2.ListReasoningsRequest())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details() and named in caught.value.details()
    assert not listed.reasonings  # nothing was created
