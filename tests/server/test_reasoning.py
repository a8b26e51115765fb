"""ReasoningService with scripted models: each strategy's stop conditions and handoffs, stuck detection,
events (order, sequences, deltas), validation, listing."""

from __future__ import annotations

import grpc
import pytest

from aibattle.v1 import common_pb2, reasoning_pb2
from server.orchestration.reasoning import prompts
from server.orchestration.reasoning.strategies import debate, mixture
from server.providers.scripted import count_tokens
from tests.conftest import error_info
from tests.server.reasoning_testlib import (
    COMPLETED,
    IN_PROGRESS,
    T,
    create,
    events,
    kinds,
    of_type,
    scripted,
    serving,
    steps,
)

PROBLEM = "What is the capital of Australia?"
DRAFT = "Sydney is the capital of Australia, since it is the largest city and the best known abroad."
REVISION = (
    "Canberra is the capital of Australia. It was chosen in 1908 as a compromise between Sydney and"
    " Melbourne, and Parliament has sat there since 1927."
)
SECOND_REVISION = (
    "The capital is Canberra, in the Australian Capital Territory; the city was purpose-built after"
    " federation, which is why it is smaller than Sydney or Melbourne."
)
CRITIQUE_REVISE = (
    "The draft names the wrong city: size does not make a capital.\nVERDICT: REVISE\n"
    "FOCUS: factual accuracy; historical context"
)
CRITIQUE_REVISE_2 = (
    "Better, yet the answer should explain where the territory lies and why it was built.\n"
    "**Verdict:** revise\n**Focus areas:**\n- geography\n- federation history"
)
CRITIQUE_APPROVE = "Correct and well supported.\nVERDICT: APPROVE\nFOCUS: none"


async def finished(stub, reasoning_id: str) -> reasoning_pb2.Reasoning:
    """The session once its event stream ended (the stream ends after the terminal event)."""
    await events(stub, reasoning_id)
    response = await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=reasoning_id))
    return response.reasoning


# -- iterative_refinement ------------------------------------------------------------------------


async def test_iterative_refinement_stops_on_approval() -> None:
    async with serving(
        scripted("drafter", DRAFT, REVISION), scripted("critic", CRITIQUE_REVISE, CRITIQUE_APPROVE)
    ) as (_, stub):
        created = await create(stub, primary_model="drafter", secondary_model="critic", max_iterations=5)
        assert created.status == IN_PROGRESS  # answered at once, the run goes on in the background
        reasoning = await finished(stub, created.reasoning_id)
    assert reasoning.status == COMPLETED
    assert kinds(reasoning) == [
        ("draft", "drafter"),
        ("critique", "critic"),
        ("revision", "drafter"),
        ("critique", "critic"),
    ]
    _, critique, revision, approval = reasoning.iterations
    assert [it.index for it in reasoning.iterations] == [1, 2, 3, 4]
    assert critique.verdict == "revise" and approval.verdict == "approve"
    assert list(critique.focus_areas) == ["factual_accuracy", "historical_context"]
    assert list(approval.focus_areas) == []
    assert revision.content == REVISION and not revision.stuck_indicators
    assert reasoning.final_result == REVISION
    assert reasoning.collaboration_strategy == "iterative_refinement"
    assert reasoning.stop_reason == "approved"


async def test_iterative_refinement_is_capped_by_max_iterations() -> None:
    async with serving(
        scripted("drafter", DRAFT, REVISION, SECOND_REVISION),
        scripted("critic", CRITIQUE_REVISE, CRITIQUE_REVISE_2),
    ) as (_, stub):
        reasoning = await create(
            stub, primary_model="drafter", secondary_model="critic", max_iterations=2, wait=True
        )
    assert reasoning.status == COMPLETED
    assert [it.kind for it in reasoning.iterations] == [
        "draft",
        "critique",
        "revision",
        "critique",
        "revision",
    ]
    assert [it.verdict for it in reasoning.iterations if it.kind == "critique"] == ["revise", "revise"]
    assert list(reasoning.iterations[3].focus_areas) == ["geography", "federation_history"]
    assert reasoning.final_result == SECOND_REVISION
    assert reasoning.stop_reason == "max_iterations"


async def test_a_looping_primary_is_detected_and_the_secondary_takes_over() -> None:
    takeover = (
        "Canberra is the capital. The other model kept repeating an answer; here is mine: the seat of"
        " government moved there from Melbourne in 1927."
    )
    improved = "Canberra, the planned capital in the Australian Capital Territory, chosen in 1908."
    async with serving(
        scripted("looper", DRAFT),  # the same reply every time
        scripted("rescuer", CRITIQUE_REVISE, takeover, improved),
    ) as (_, stub):
        reasoning = await create(
            stub, primary_model="looper", secondary_model="rescuer", max_iterations=2, wait=True
        )
        log = await events(stub, reasoning.reasoning_id)
    assert kinds(reasoning) == [
        ("draft", "looper"),
        ("critique", "rescuer"),
        ("revision", "looper"),  # the loop
        ("revision", "rescuer"),  # the takeover
        ("critique", "looper"),  # roles swapped: the primary now critiques
        ("revision", "rescuer"),
    ]
    looped = reasoning.iterations[2]
    assert "loop" in looped.stuck_indicators
    assert not reasoning.iterations[0].stuck_indicators
    [stuck] = of_type(log, T.REASONING_EVENT_TYPE_STUCK_DETECTED)
    assert stuck.model == "looper" and list(stuck.stuck_indicators) == list(looped.stuck_indicators)
    [handoff] = of_type(log, T.REASONING_EVENT_TYPE_HANDOFF)
    assert (handoff.model, handoff.to_model) == ("looper", "rescuer")
    # The stall is reported right after the iteration that showed it, before anyone else speaks.
    assert steps(log)[:7] == [
        "status",
        "iteration",
        "iteration",
        "iteration",
        "stuck",
        "handoff",
        "iteration",
    ]
    assert reasoning.final_result == improved


# -- debate --------------------------------------------------------------------------------------


async def test_debate_ends_when_the_models_agree() -> None:
    async with serving(
        scripted("alice", "Parliament House is in Canberra.\nFINAL ANSWER: Canberra"),
        scripted("bob", "It is the planned city between Sydney and Melbourne.\n**Final answer:** canberra."),
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="alice",
            secondary_model="bob",
            collaboration_strategy="debate",
            max_iterations=3,
            wait=True,
        )
    assert kinds(reasoning) == [("argument", "alice"), ("argument", "bob")]
    assert reasoning.final_result == "Parliament House is in Canberra.\nFINAL ANSWER: Canberra"
    assert reasoning.stop_reason == "consensus"


async def test_debate_without_agreement_is_judged() -> None:
    alice = [
        "Sydney hosts the most embassies and the stock exchange.\nFINAL ANSWER: Sydney",
        "Having read the other agent, I still think the largest city governs.\nFINAL ANSWER: Sydney",
    ]
    bob = [
        "The constitution required a new capital away from Sydney.\nFINAL ANSWER: Canberra",
        "Parliament sits in Canberra since 1927, which settles the question.\nFINAL ANSWER: Canberra",
        "Position B cites where Parliament sits, which defines a capital.\nWINNER: B",
    ]
    async with serving(scripted("alice", *alice), scripted("bob", *bob)) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="alice",
            secondary_model="bob",
            collaboration_strategy="debate",
            max_iterations=2,
            wait=True,
        )
    assert kinds(reasoning) == [
        ("argument", "alice"),
        ("argument", "bob"),
        ("argument", "alice"),
        ("argument", "bob"),
        ("judgment", "bob"),
    ]
    assert reasoning.iterations[-1].verdict == "bob"
    assert reasoning.final_result == bob[1]
    assert reasoning.stop_reason == "max_iterations"
    # Round 2 saw the other's round-1 answer: the update prompt carries it.
    update = debate.UPDATE.format(problem=PROBLEM, own=alice[0], others=prompts.labelled([bob[0]]))
    assert reasoning.iterations[2].usage.prompt_tokens == count_tokens(update)


async def test_debate_agreement_reached_in_a_later_round() -> None:
    async with serving(
        scripted(
            "alice", "Sydney is biggest.\nFINAL ANSWER: Sydney", "You convinced me.\nFINAL ANSWER: Canberra"
        ),
        scripted(
            "bob",
            "Canberra was built for it.\nFINAL ANSWER: Canberra",
            "I keep my view.\nFINAL ANSWER: Canberra",
        ),
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="alice",
            secondary_model="bob",
            collaboration_strategy="debate",
            max_iterations=5,
            wait=True,
        )
    assert len(reasoning.iterations) == 4 and all(it.kind == "argument" for it in reasoning.iterations)
    assert reasoning.final_result == "You convinced me.\nFINAL ANSWER: Canberra"


# -- mixture -------------------------------------------------------------------------------------


async def test_mixture_aggregates_every_proposal() -> None:
    proposals = [
        "Canberra, the capital since 1913.",
        "The capital city is Canberra in the ACT.",
        "Canberra; Sydney and Melbourne both lost the bid.",
    ]
    aggregate = "Canberra is the capital of Australia, in the Australian Capital Territory."
    async with serving(
        scripted("p", proposals[0], aggregate), scripted("s", proposals[1]), scripted("x", proposals[2])
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="p",
            secondary_model="s",
            additional_models=["x"],
            collaboration_strategy="mixture",
            max_iterations=1,
            wait=True,
        )
    assert kinds(reasoning) == [("proposal", "p"), ("proposal", "s"), ("proposal", "x"), ("aggregation", "p")]
    assert reasoning.final_result == aggregate
    assert reasoning.stop_reason == "max_iterations"
    # The aggregator's prompt held all three proposals, word for word (scripted prompt tokens are words).
    expected = mixture.AGGREGATE.format(problem=PROBLEM, proposals=prompts.labelled(proposals))
    assert reasoning.iterations[-1].usage.prompt_tokens == count_tokens(expected)
    assert {m.model for m in reasoning.usage.by_model} == {"p", "s", "x"}


async def test_mixture_layers_see_the_previous_layer() -> None:
    first = ["Canberra.", "Canberra, ACT."]
    second = ["Canberra, chosen in 1908.", "Canberra, seat of Parliament since 1927."]
    async with serving(
        scripted("p", first[0], second[0], "Canberra: chosen in 1908, Parliament since 1927."),
        scripted("s", first[1], second[1]),
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="p",
            secondary_model="s",
            collaboration_strategy="mixture",
            max_iterations=2,
            wait=True,
        )
    assert [it.kind for it in reasoning.iterations] == ["proposal"] * 4 + ["aggregation"]
    layer_two = mixture.PROPOSE_AGAIN.format(problem=PROBLEM, proposals=prompts.labelled(first))
    assert reasoning.iterations[2].usage.prompt_tokens == count_tokens(layer_two)
    aggregation = mixture.AGGREGATE.format(problem=PROBLEM, proposals=prompts.labelled(second))
    assert reasoning.iterations[4].usage.prompt_tokens == count_tokens(aggregation)


async def test_mixture_leaves_out_a_refusing_proposer() -> None:
    refusal = "I cannot help with that request."
    async with serving(
        scripted("p", "Canberra is the capital.", "Canberra."),
        scripted("s", refusal),
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="p",
            secondary_model="s",
            collaboration_strategy="mixture",
            max_iterations=1,
            wait=True,
        )
        log = await events(stub, reasoning.reasoning_id)
    assert "refusal" in reasoning.iterations[1].stuck_indicators
    [handoff] = of_type(log, T.REASONING_EVENT_TYPE_HANDOFF)
    assert (handoff.model, handoff.to_model) == ("s", "p")
    expected = mixture.AGGREGATE.format(
        problem=PROBLEM, proposals=prompts.labelled(["Canberra is the capital."])
    )
    assert reasoning.iterations[-1].usage.prompt_tokens == count_tokens(expected)


# -- critique ------------------------------------------------------------------------------------


async def test_critique_accepts_a_correct_answer() -> None:
    async with serving(
        scripted("answerer", REVISION), scripted("verifier", "All facts check out.\nVERDICT: ACCEPT")
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="answerer",
            secondary_model="verifier",
            collaboration_strategy="critique",
            wait=True,
        )
    assert kinds(reasoning) == [("draft", "answerer"), ("verification", "verifier")]
    assert reasoning.iterations[1].verdict == "accept"
    assert reasoning.final_result == REVISION
    assert reasoning.stop_reason == "accepted"


async def test_critique_corrects_a_wrong_answer() -> None:
    corrected = "Canberra is the capital of Australia, not Sydney."
    async with serving(
        scripted("answerer", DRAFT, "The correction is right.\nVERDICT: ACCEPT"),
        scripted("verifier", f"Sydney is wrong.\nVERDICT: CORRECT\nCORRECTED ANSWER:\n{corrected}"),
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="answerer",
            secondary_model="verifier",
            collaboration_strategy="critique",
            max_iterations=3,
            wait=True,
        )
    # The correction is then checked by the other model, which accepts it.
    assert kinds(reasoning) == [
        ("draft", "answerer"),
        ("verification", "verifier"),
        ("verification", "answerer"),
    ]
    assert [it.verdict for it in reasoning.iterations[1:]] == ["correct", "accept"]
    assert reasoning.final_result == corrected
    assert reasoning.stop_reason == "accepted"


async def test_critique_with_one_round_ends_on_the_correction() -> None:
    corrected = "Canberra."
    async with serving(
        scripted("answerer", DRAFT),
        scripted("verifier", f"verdict: correct\ncorrected answer: {corrected}"),
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="answerer",
            secondary_model="verifier",
            collaboration_strategy="critique",
            max_iterations=1,
            wait=True,
        )
    assert [it.kind for it in reasoning.iterations] == ["draft", "verification"]
    assert reasoning.final_result == corrected
    assert reasoning.stop_reason == "max_iterations"


async def test_critique_does_not_adopt_a_stalled_correction() -> None:
    async with serving(
        scripted("answerer", REVISION),
        scripted("verifier", "VERDICT: CORRECT\nCORRECTED ANSWER:\nI cannot help with that request."),
    ) as (_, stub):
        reasoning = await create(
            stub,
            primary_model="answerer",
            secondary_model="verifier",
            collaboration_strategy="critique",
            max_iterations=3,
            wait=True,
        )
    assert [it.kind for it in reasoning.iterations] == ["draft", "verification"]
    assert "refusal" in reasoning.iterations[1].stuck_indicators
    assert reasoning.final_result == REVISION
    assert reasoning.stop_reason == "stalled"


# -- cascade -------------------------------------------------------------------------------------


LONG_ANSWER = " ".join(
    [
        REVISION,
        SECOND_REVISION,
        "Its design, by Walter Burley Griffin and Marion Mahony Griffin, won an international",
        "competition in 1912 and set the lake and the parliamentary triangle at its heart.",
    ]
)


async def test_cascade_without_escalation_reports_the_saving() -> None:
    # A saving needs an answer longer than the check reads and writes: the check pays for reading the
    # answer, the secondary alone would have paid for writing it at output prices.
    async with serving(
        scripted("cheap", LONG_ANSWER, price=0.0001),
        scripted("strong", "Correct.\nVERDICT: ACCEPT", price=0.01),
    ) as (_, stub):
        reasoning = await create(
            stub, primary_model="cheap", secondary_model="strong", collaboration_strategy="cascade", wait=True
        )
    assert kinds(reasoning) == [("draft", "cheap"), ("verification", "strong")]
    assert reasoning.iterations[1].verdict == "accept"
    assert reasoning.final_result == LONG_ANSWER
    usage = reasoning.usage
    assert not usage.escalated and reasoning.stop_reason == "not_escalated"
    answer = reasoning.iterations[0].usage
    # Always using the secondary: the same tokens at its prices.
    assert usage.secondary_only_cost_usd == pytest.approx(
        answer.prompt_tokens * 0.01 + answer.completion_tokens * 0.02
    )
    assert usage.cost_usd == pytest.approx(sum(it.usage.cost_usd for it in reasoning.iterations))
    assert usage.cost_usd < usage.secondary_only_cost_usd


async def test_cascade_escalates_when_the_check_fails() -> None:
    strong_answer = "Canberra is the capital of Australia; Parliament House stands there."
    async with serving(
        scripted("cheap", DRAFT, price=0.0001),
        scripted("strong", "Wrong city.\nVERDICT: REJECT", strong_answer, price=0.01),
    ) as (_, stub):
        reasoning = await create(
            stub, primary_model="cheap", secondary_model="strong", collaboration_strategy="cascade", wait=True
        )
        log = await events(stub, reasoning.reasoning_id)
    assert kinds(reasoning) == [("draft", "cheap"), ("verification", "strong"), ("escalation", "strong")]
    assert reasoning.iterations[1].verdict == "reject"
    [handoff] = of_type(log, T.REASONING_EVENT_TYPE_HANDOFF)
    assert (handoff.model, handoff.to_model) == ("cheap", "strong")
    assert not of_type(log, T.REASONING_EVENT_TYPE_STUCK_DETECTED)
    usage = reasoning.usage
    assert usage.escalated and reasoning.stop_reason == "escalated"
    assert usage.secondary_only_cost_usd == pytest.approx(reasoning.iterations[2].usage.cost_usd)
    assert usage.cost_usd > usage.secondary_only_cost_usd  # the failed attempt and the check on top
    assert reasoning.final_result == strong_answer


async def test_cascade_escalates_at_once_when_the_primary_is_stuck() -> None:
    async with serving(
        scripted("cheap", "I cannot help with that request.", price=0.0001),
        scripted("strong", "Canberra.", price=0.01),
    ) as (_, stub):
        reasoning = await create(
            stub, primary_model="cheap", secondary_model="strong", collaboration_strategy="cascade", wait=True
        )
        log = await events(stub, reasoning.reasoning_id)
    assert kinds(reasoning) == [("draft", "cheap"), ("escalation", "strong")]  # no check needed
    assert "refusal" in reasoning.iterations[0].stuck_indicators
    assert steps(log) == ["status", "iteration", "stuck", "handoff", "iteration", "completion"]
    assert reasoning.usage.escalated and reasoning.final_result == "Canberra."


# -- usage, events -------------------------------------------------------------------------------


async def test_usage_is_split_by_seat_and_by_model() -> None:
    async with serving(
        scripted("drafter", DRAFT, REVISION, price=0.001),
        scripted("critic", CRITIQUE_REVISE, CRITIQUE_APPROVE, price=0.002),
    ) as (_, stub):
        reasoning = await create(stub, primary_model="drafter", secondary_model="critic", wait=True)
    usage = reasoning.usage
    by_role = {"drafter": 0, "critic": 0}
    for it in reasoning.iterations:
        by_role[it.model] += it.usage.total_tokens
        assert it.usage.total_tokens == it.usage.prompt_tokens + it.usage.completion_tokens > 0
        assert it.usage.cost_usd > 0
    assert usage.primary_model_tokens == by_role["drafter"]
    assert usage.secondary_model_tokens == by_role["critic"]
    assert usage.total_tokens == sum(by_role.values())
    assert usage.cost_usd == pytest.approx(sum(it.usage.cost_usd for it in reasoning.iterations))
    models = {m.model: m.usage for m in usage.by_model}
    assert models["drafter"].total_tokens == by_role["drafter"]
    assert models["critic"].cost_usd == pytest.approx(
        sum(it.usage.cost_usd for it in reasoning.iterations if it.model == "critic")
    )


async def test_events_are_sequenced_and_tokens_rebuild_each_iteration() -> None:
    async with serving(
        scripted("drafter", DRAFT, REVISION, delay_ms=2),
        scripted("critic", CRITIQUE_REVISE, CRITIQUE_APPROVE),
    ) as (_, stub):
        reasoning = await create(stub, primary_model="drafter", secondary_model="critic", wait=True)
        log = await events(stub, reasoning.reasoning_id)
        tail = await events(stub, reasoning.reasoning_id, after=log[-3].sequence)
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert log[-1].sequence == reasoning.last_sequence
    assert all(e.reasoning_id == reasoning.reasoning_id for e in log)
    assert log[0].type == T.REASONING_EVENT_TYPE_STATUS_CHANGED and log[0].status == IN_PROGRESS
    assert log[-1].type == T.REASONING_EVENT_TYPE_COMPLETION
    assert log[-1].final_result == reasoning.final_result and log[-1].status == COMPLETED
    assert log[-1].stop_reason == reasoning.stop_reason == "approved"
    iterations = of_type(log, T.REASONING_EVENT_TYPE_NEW_ITERATION)
    assert [e.iteration for e in iterations] == list(reasoning.iterations)
    for iteration in reasoning.iterations:
        deltas = [
            e for e in log if e.type == T.REASONING_EVENT_TYPE_TOKEN and e.iteration_index == iteration.index
        ]
        assert deltas and all(e.model == iteration.model for e in deltas)
        assert "".join(e.delta for e in deltas).strip() == iteration.content
        # A step's deltas all come before its NEW_ITERATION.
        [recorded] = [e for e in iterations if e.iteration.index == iteration.index]
        assert max(e.sequence for e in deltas) < recorded.sequence
    assert tail == log[-2:]  # after_sequence replays exactly what follows


async def test_a_failing_model_fails_the_session_with_its_status() -> None:
    failing = {"id": "broken", "provider": "scripted", "script": ["one two three"], "error_after_chunks": 1}
    async with serving(scripted("drafter", DRAFT), failing) as (_, stub):
        reasoning = await create(stub, primary_model="drafter", secondary_model="broken", wait=True)
        log = await events(stub, reasoning.reasoning_id)
    assert reasoning.status == common_pb2.RUN_STATUS_FAILED
    assert reasoning.error.code == grpc.StatusCode.UNAVAILABLE.value[0] or reasoning.error.message
    assert [it.kind for it in reasoning.iterations] == ["draft"]  # the committed step is kept
    assert log[-1].type == T.REASONING_EVENT_TYPE_ERROR
    assert log[-1].error == reasoning.error and log[-1].status == common_pb2.RUN_STATUS_FAILED


async def test_many_sessions_run_at_once() -> None:
    async with serving(
        scripted("drafter", DRAFT, REVISION, delay_ms=5), scripted("critic", CRITIQUE_APPROVE, delay_ms=5)
    ) as (_, stub):
        created = [await create(stub, primary_model="drafter", secondary_model="critic") for _ in range(6)]
        assert all(r.status == IN_PROGRESS for r in created)
        done = [await finished(stub, r.reasoning_id) for r in created]
    assert all(r.status == COMPLETED and len(r.iterations) == 2 for r in done)


# -- validation, listing ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"collaboration_strategy": "brainstorm"}, "collaboration_strategy"),
        ({"max_iterations": 21}, "max_iterations"),
        ({"max_iterations": -1}, "max_iterations"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"additional_models": ["b"]}, "additional_models"),
        ({"primary_model": ""}, "primary_model"),
    ],
)
async def test_invalid_requests_name_the_field(fields: dict, field: str) -> None:
    async with serving(scripted("a", "x"), scripted("b", "y")) as (_, stub):
        request = {"primary_model": "a", "secondary_model": "b", "prompt": PROBLEM, **fields}
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateReasoning(reasoning_pb2.CreateReasoningRequest(**request))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in caught.value.details()


@pytest.mark.parametrize("field", ["primary_model", "secondary_model", "additional_models"])
async def test_unknown_models_are_not_found(field: str) -> None:
    async with serving(scripted("a", "x")) as (_, stub):
        request: dict = {"primary_model": "a", "prompt": PROBLEM, "collaboration_strategy": "debate"}
        request[field] = ["nope"] if field == "additional_models" else "nope"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateReasoning(reasoning_pb2.CreateReasoningRequest(**request))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "nope" in caught.value.details()
        listed = await stub.ListReasonings(reasoning_pb2.ListReasoningsRequest())
    assert not listed.reasonings  # nothing was created


async def test_defaults_secondary_strategy_and_iterations() -> None:
    async with serving(scripted("solo", DRAFT, CRITIQUE_APPROVE)) as (_, stub):
        reasoning = await create(stub, primary_model="solo", wait=True)
    assert reasoning.secondary_model == "solo"
    assert reasoning.collaboration_strategy == "iterative_refinement"
    assert reasoning.max_iterations == 5
    # One model in both seats: its tokens are split by seat.
    assert reasoning.usage.primary_model_tokens == reasoning.iterations[0].usage.total_tokens
    assert reasoning.usage.secondary_model_tokens == reasoning.iterations[1].usage.total_tokens
    assert [m.model for m in reasoning.usage.by_model] == ["solo"]


async def test_get_and_events_of_an_unknown_session_are_not_found() -> None:
    async with serving(scripted("a", "x")) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as get:
            await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id="reas-nope"))
        with pytest.raises(grpc.aio.AioRpcError) as stream:
            await events(stub, "reas-nope")
        with pytest.raises(grpc.aio.AioRpcError) as cancel:
            await stub.CancelReasoning(reasoning_pb2.CancelReasoningRequest(reasoning_id="reas-nope"))
    for caught in (get, stream, cancel):
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(caught.value).reason


async def test_list_pages_newest_first_with_a_status_filter() -> None:
    async with serving(scripted("a", DRAFT, CRITIQUE_APPROVE), scripted("slow", DRAFT, delay_ms=200)) as (
        _,
        stub,
    ):
        done = [await create(stub, primary_model="a", wait=True) for _ in range(3)]
        running = await create(stub, primary_model="slow")
        first = await stub.ListReasonings(reasoning_pb2.ListReasoningsRequest(page_size=2))
        second = await stub.ListReasonings(
            reasoning_pb2.ListReasoningsRequest(page_size=2, page_token=first.next_page_token)
        )
        completed = await stub.ListReasonings(
            reasoning_pb2.ListReasoningsRequest(status=common_pb2.RUN_STATUS_COMPLETED)
        )
        in_progress = await stub.ListReasonings(reasoning_pb2.ListReasoningsRequest(status=IN_PROGRESS))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListReasonings(
                reasoning_pb2.ListReasoningsRequest(page_token=first.next_page_token, status=IN_PROGRESS)
            )
    newest_first = [running.reasoning_id, *(r.reasoning_id for r in reversed(done))]
    assert [r.reasoning_id for r in (*first.reasonings, *second.reasonings)] == newest_first
    assert first.next_page_token and not second.next_page_token
    assert all(not r.iterations and r.last_sequence > 0 for r in first.reasonings)
    assert {r.reasoning_id for r in completed.reasonings} == {r.reasoning_id for r in done}
    assert [r.reasoning_id for r in in_progress.reasonings] == [running.reasoning_id]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # a token is tied to its filters
