"""Collaboration models ([[collaborations]]) over gRPC: listed as models, called through CompletionService,
run as reasoning sessions owned by the caller's key, their worst case held from its budget, cancelled
with the call unless they run to completion. Real grpc.aio servers, scripted members, SQLite in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from aibattle.v1 import (
    common_pb2,
    completions_pb2,
    completions_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from common.config import ConfigError
from common.errors import LimitExceeded
from server.app import AIBattleServer
from server.config import Config
from server.orchestration.collaboration import reasoning_request, worst_case_usd
from server.orchestration.reasoning.strategies import MULTI_MODEL, STRATEGIES
from server.providers.base import ChatRequest
from server.security.context import Caller
from server.security.limits import Limiter, MemoryLimiter
from server.security.metering import RunHold
from server.security.redis_limits import make_limiter
from server.settings import MULTI_MODEL_STRATEGIES, CollaborationStrategy
from tests.conftest import error_info
from tests.redis_testlib import RedisServer, redis_server
from tests.security_testlib import ADMIN_KEY, bearer, new_key

__all__ = ["redis_server"]  # the fixture, imported for the tests below

HANG = 30.0  # only detects a hang
ANSWER = "The capital of Australia is Canberra.\nFINAL ANSWER: Canberra"
ACCEPT = "All facts check out.\nVERDICT: ACCEPT"


def scripted(model_id: str, *replies: str, delay_ms: int = 0, price: float = 0.001) -> dict[str, Any]:
    model: dict[str, Any] = {
        "id": model_id,
        "provider": "scripted",
        "capabilities": ["text"],
        "script": list(replies),
        "pricing": {"input": price, "output": price * 2},
    }
    if delay_ms:
        model["chunk_delay_ms"] = delay_ms
    return model


def critique_panel(**fields: Any) -> dict[str, Any]:
    return {"id": "panel", "strategy": "critique", "primary": "model-a", "secondary": "model-b", **fields}


def config(models: list[dict[str, Any]], collaborations: list[dict[str, Any]], *, secure: bool) -> Config:
    data: dict[str, Any] = {
        "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
        "models": models,
        "collaborations": collaborations,
    }
    if secure:
        data["security"] = {"admin_key": ADMIN_KEY}
    return Config.from_dict(data)


@asynccontextmanager
async def serving(
    models: list[dict[str, Any]], collaborations: list[dict[str, Any]], *, secure: bool = False
) -> AsyncIterator[grpc.aio.Channel]:
    app = AIBattleServer(config(models, collaborations, secure=secure))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_target) as channel:
            yield channel
    finally:
        await app.stop(grace=0.5)


def stream_request(model: str = "panel", **fields: Any) -> completions_pb2.StreamCompletionRequest:
    fields.setdefault("prompt", "What is the capital of Australia?")
    return completions_pb2.StreamCompletionRequest(model=model, **fields)


async def reasoning_of(channel: grpc.aio.Channel, reasoning_id: str, **kw: Any) -> reasoning_pb2.Reasoning:
    stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
    request = reasoning_pb2.GetReasoningRequest(reasoning_id=reasoning_id)
    return (await stub.GetReasoning(request, **kw)).reasoning


async def running(channel: grpc.aio.Channel) -> str:
    """The id of the session a whole call started (a unary call's metadata arrives with its answer)."""
    stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
    for _ in range(int(HANG / 0.02)):
        listed = (await stub.ListReasonings(reasoning_pb2.ListReasoningsRequest())).reasonings
        if listed:
            return listed[0].reasoning_id
        await asyncio.sleep(0.02)
    raise AssertionError("no session started")


async def ended(channel: grpc.aio.Channel, reasoning_id: str) -> reasoning_pb2.Reasoning:
    """The session once its event stream has ended (after its terminal event)."""
    stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
    async with asyncio.timeout(HANG):
        request = reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning_id)
        async for _ in stub.StreamReasoningEvents(request):
            pass
    return await reasoning_of(channel, reasoning_id)


# ---- listing and configuration


async def test_a_collaboration_is_listed_as_a_model() -> None:
    models = [scripted("model-a", ANSWER), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel(max_iterations=3)]) as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        listed = (await stub.ListModels(models_pb2.ListModelsRequest())).models
        assert [m.id for m in listed] == ["model-a", "model-b", "panel"]
        panel = listed[2]
        assert (panel.provider, list(panel.capabilities)) == ("collaboration", ["text", "collaboration"])
        assert panel.collaboration == models_pb2.Collaboration(
            strategy="critique", primary_model="model-a", secondary_model="model-b", max_iterations=3
        )
        only = await stub.ListModels(models_pb2.ListModelsRequest(capability="collaboration"))
        assert [m.id for m in only.models] == ["panel"]
        got = await stub.GetModel(models_pb2.GetModelRequest(model_id="panel"))
        assert got.model == panel


def test_config_errors_name_the_clash_and_the_missing_models() -> None:
    models = [{**scripted("model-a", ANSWER), "aliases": ["a"]}, scripted("model-b", ACCEPT)]
    with pytest.raises(ConfigError) as caught:
        config(
            models,
            [
                critique_panel(id="a"),
                critique_panel(id="panel", primary="ghost"),
                critique_panel(id="panel", secondary="model-a", additional_models=["model-b"]),
                {"id": "sc", "strategy": "debate", "primary": "model-a", "samples": 3},
            ],
            secure=False,
        )
    text = "\n".join(caught.value.lines)
    assert "collaborations[0].id: 'a' is already an alias of model 'model-a'" in text
    assert "collaborations[1].primary: unknown model 'ghost'" in text
    assert "collaborations[2].id: 'panel' is already the id of collaboration 'panel'" in text
    assert "collaborations[2].additional_models: only debate, mixture, vote" in text
    assert "collaborations[3].samples: only for self_consistency" in text


def test_the_configured_strategies_are_the_registry_s() -> None:
    assert set(CollaborationStrategy.__args__) == set(STRATEGIES)  # type: ignore[attr-defined]
    assert MULTI_MODEL_STRATEGIES == MULTI_MODEL


# ---- calling one


async def test_a_streamed_call_shows_the_steps_then_the_answer(scripted_requests: list[ChatRequest]) -> None:
    models = [scripted("model-a", ANSWER), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel(instructions="Be brief.")]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.StreamCompletion(stream_request())
        metadata = dict(await call.initial_metadata())
        chunks = [chunk async for chunk in call]
        reasoning_id = metadata["x-aibattle-reasoning-id"]
        assert reasoning_id.startswith("reas-")
        assert {c.reasoning_id for c in chunks} == {reasoning_id}
        assert [c.index for c in chunks] == list(range(len(chunks)))
        thinking = "".join(c.thinking for c in chunks)
        # Each step under its header, its tokens, then its kind: the draft, then the verification.
        assert (
            thinking.index("[step 1 · model-a]\n")
            < thinking.index("Canberra")
            < thinking.index("[draft · model-a]")
        )
        assert thinking.index("[draft · model-a]") < thinking.index("[step 2 · model-b]\nAll facts")
        assert "[verification · model-b · verdict: accept]" in thinking
        # The answer after every step, as content.
        answer_at = next(i for i, c in enumerate(chunks) if c.content)
        assert all(not c.thinking for c in chunks[answer_at:])
        assert "".join(c.content for c in chunks) == ANSWER
        final = chunks[-1]
        assert final.is_final and final.finish_reason == common_pb2.FINISH_REASON_STOP
        # The members got the collaboration's instruction.
        assert all(r.messages[0].content == "Be brief." for r in scripted_requests)

        stored = await reasoning_of(channel, reasoning_id)
        assert stored.status == common_pb2.RUN_STATUS_COMPLETED
        assert stored.collaboration_model == "panel"
        assert [(i.kind, i.model) for i in stored.iterations] == [
            ("draft", "model-a"),
            ("verification", "model-b"),
        ]
        # Usage is the sum over the run.
        steps = [i.usage for i in stored.iterations]
        assert final.usage.prompt_tokens == sum(u.prompt_tokens for u in steps) > 0
        assert final.usage.completion_tokens == sum(u.completion_tokens for u in steps) > 0
        assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens
        assert final.usage.cost_usd == pytest.approx(sum(u.cost_usd for u in steps))
        assert final.usage.cost_usd == pytest.approx(stored.usage.cost_usd)


async def test_a_whole_call_gets_the_answer_the_steps_and_the_usage() -> None:
    models = [scripted("model-a", ANSWER), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel()]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                model="panel",
                messages=[
                    common_pb2.Message(role="system", content="Answer in one word."),
                    common_pb2.Message(role="user", content="Capital of Australia?"),
                ],
            )
        )
        response = await call
        assert dict(await call.initial_metadata())["x-aibattle-reasoning-id"] == response.reasoning_id
        assert response.content == ANSWER and response.model == "panel"
        assert "[step 1 · model-a]" in response.thinking and "[verification · model-b" in response.thinking
        stored = await reasoning_of(channel, response.reasoning_id)
        assert stored.prompt == "Capital of Australia?"
        assert stored.system_instruction == "Answer in one word."
        assert response.usage.total_tokens == stored.usage.total_tokens > 0


async def test_what_a_strategy_cannot_honour_is_refused_naming_it() -> None:
    models = [scripted("model-a", ANSWER), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel()]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        for fields, field in (({"temperature": 0.2}, "temperature"), ({"stop": ["x"]}, "stop")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model="panel", prompt="hi", **fields)
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(caught.value).reason == "UNSUPPORTED_PARAMETER"
            assert error_info(caught.value).metadata["field"] == field


# ---- budget


async def test_a_budget_below_the_worst_case_is_refused_before_any_model_call(
    scripted_requests: list[ChatRequest],
) -> None:
    models = [scripted("model-a", ANSWER), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel(max_tokens=50)], secure=True) as channel:
        # One step costs at most ~(prompt + 50 output tokens) x $0.001-0.002: far below the run's worst case
        # (critique: max_iterations + 2 steps, each with its longest prompt), well above a real run's cost.
        _, secret = await new_key(channel, budget_usd=0.5)
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateCompletion(
                completions_pb2.CreateCompletionRequest(model="panel", prompt="Capital?"),
                metadata=bearer(secret),
            )
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_info(caught.value).reason == "BUDGET_EXCEEDED"
        assert scripted_requests == []
        # The same call fits a budget that covers the worst case; the key is charged what the run cost.
        _, rich = await new_key(channel, budget_usd=100.0)
        response = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="panel", prompt="Capital?"), metadata=bearer(rich)
        )
        assert response.content == ANSWER and len(scripted_requests) == 2
        # What the run held is back: a second run fits the same budget again.
        again = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="panel", prompt="Capital?"), metadata=bearer(rich)
        )
        assert again.usage.cost_usd == pytest.approx(response.usage.cost_usd)
        assert response.usage.cost_usd > 0


# ---- disconnects


async def test_a_cancelled_stream_cancels_its_run() -> None:
    models = [scripted("model-a", ANSWER, delay_ms=200), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel()]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.StreamCompletion(stream_request())
        reasoning_id = dict(await call.initial_metadata())["x-aibattle-reasoning-id"]
        first = await call.read()
        assert first.thinking.startswith("[step 1 · model-a]")
        call.cancel()
        stored = await ended(channel, reasoning_id)
        assert stored.status == common_pb2.RUN_STATUS_CANCELLED
        assert stored.collaboration_model == "panel" and not stored.final_result


async def test_run_to_completion_keeps_running_after_the_client_left() -> None:
    models = [scripted("model-a", ANSWER, delay_ms=100), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel(run_to_completion=True)]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.StreamCompletion(stream_request())
        reasoning_id = dict(await call.initial_metadata())["x-aibattle-reasoning-id"]
        await call.read()
        call.cancel()
        stored = await ended(channel, reasoning_id)
        assert stored.status == common_pb2.RUN_STATUS_COMPLETED
        assert stored.final_result == ANSWER and len(stored.iterations) == 2


# ---- access


async def test_a_key_needs_the_collaboration_and_every_member() -> None:
    models = [scripted("model-a", ANSWER), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel()], secure=True) as channel:
        _, all_of_it = await new_key(channel, allowed_models=["panel", "model-a", "model-b"])
        _, no_member = await new_key(channel, allowed_models=["panel", "model-a"])
        _, members_only = await new_key(channel, allowed_models=["model-a", "model-b"])
        listing = models_pb2_grpc.ModelServiceStub(channel)
        completions = completions_pb2_grpc.CompletionServiceStub(channel)

        async def listed(secret: str) -> list[str]:
            response = await listing.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))
            return [m.id for m in response.models]

        assert await listed(all_of_it) == ["model-a", "model-b", "panel"]
        assert await listed(no_member) == ["model-a"]
        assert await listed(members_only) == ["model-a", "model-b"]
        for secret, named in ((no_member, "model-b"), (members_only, "panel")):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await completions.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model="panel", prompt="hi"),
                    metadata=bearer(secret),
                )
            assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert error_info(caught.value).metadata["model"] == named
        response = await completions.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="panel", prompt="hi"), metadata=bearer(all_of_it)
        )
        # The session is the caller's: its key reads it, another key does not find it.
        assert (await reasoning_of(channel, response.reasoning_id, metadata=bearer(all_of_it))).reasoning_id
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await reasoning_of(channel, response.reasoning_id, metadata=bearer(members_only))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def worst_case_of(cfg: Config, prompt: str, collaboration_id: str = "panel") -> float:
    collaboration = next(c for c in cfg.collaborations if c.id == collaboration_id)
    request = completions_pb2.CreateCompletionRequest(model=collaboration_id, prompt=prompt)
    members = [m for m in cfg.models if m.id in collaboration.members]
    return worst_case_usd(collaboration, reasoning_request(collaboration, request), members)


async def test_the_longest_run_costs_less_than_its_worst_case_and_the_hold_comes_back() -> None:
    # The critic never approves and every draft is as long as max_tokens allows: the run takes every
    # step its strategy can (a draft, then a critique and a revision per round), each prompt carrying
    # the draft and its critique.
    words = " ".join(f"w{i}" for i in range(40))
    models = [
        scripted("model-a", f"Draft {words}"),
        scripted("model-b", f"Wrong {words}\nVERDICT: REVISE\nFOCUS: all"),
    ]
    panel = critique_panel(strategy="iterative_refinement", max_iterations=2, max_tokens=30)
    cfg = config(models, [panel], secure=True)
    worst = worst_case_of(cfg, "Capital?")
    async with serving(models, [panel], secure=True) as channel:
        # Room for one worst case and a half: a second run fits only if the first gave its hold back.
        _, secret = await new_key(channel, budget_usd=worst * 1.5)
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.CreateCompletionRequest(model="panel", prompt="Capital?")
        first = await stub.CreateCompletion(request, metadata=bearer(secret))
        stored = await reasoning_of(channel, first.reasoning_id, metadata=bearer(secret))
        # Every round ran, and the repeated drafts stalled, so the critic took over too: 7 of 2 + 3N steps.
        kinds = [i.kind for i in stored.iterations]
        assert kinds.count("critique") == 2 and len(kinds) >= 7, kinds
        assert all(i.usage.completion_tokens == 30 for i in stored.iterations)  # every step at its bound
        assert 0 < first.usage.cost_usd <= worst
        second = await stub.CreateCompletion(request, metadata=bearer(secret))
        assert second.usage.cost_usd == pytest.approx(first.usage.cost_usd)


async def test_two_runs_at_once_on_a_budget_for_one_worst_case_admit_exactly_one() -> None:
    # The race the hold exists for: both calls pass the budget check only if neither held its worst case.
    words = " ".join(f"w{i}" for i in range(40))
    models = [
        scripted("model-a", f"Draft {words}", delay_ms=20),
        scripted("model-b", f"Wrong {words}\nVERDICT: REVISE\nFOCUS: all"),
    ]
    panel = critique_panel(strategy="iterative_refinement", max_iterations=2, max_tokens=30)
    worst = worst_case_of(config(models, [panel], secure=True), "Capital?")
    async with serving(models, [panel], secure=True) as channel:
        _, secret = await new_key(channel, budget_usd=worst * 1.5)
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.CreateCompletionRequest(model="panel", prompt="Capital?")
        results = await asyncio.gather(
            *(stub.CreateCompletion(request, metadata=bearer(secret)) for _ in range(2)),
            return_exceptions=True,
        )
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(refused) == 1, results
    assert error_info(refused[0]).reason == "BUDGET_EXCEEDED"


# ---- the voting baselines, and the ends of a run other than its answer


async def test_vote_and_self_consistency_are_models_too() -> None:
    models = [
        scripted("model-a", ANSWER),
        scripted("model-b", "FINAL ANSWER: Sydney"),
        scripted("model-c", "It is Canberra.\nFINAL ANSWER: canberra"),
    ]
    collaborations = [
        {"id": "vote3", "strategy": "vote", "primary": "model-a", "secondary": "model-b"}
        | {"additional_models": ["model-c"]},
        {"id": "sc", "strategy": "self_consistency", "primary": "model-a", "samples": 3},
    ]
    async with serving(models, collaborations) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        voted = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="vote3", prompt="Capital?")
        )
        assert voted.content == ANSWER
        stored = await reasoning_of(channel, voted.reasoning_id)
        assert (stored.collaboration_model, stored.stop_reason) == ("vote3", "majority")
        assert [t.votes for t in stored.vote.tallies] == [2, 1]
        sampled = [c async for c in stub.StreamCompletion(stream_request("sc"))]
        assert "".join(c.content for c in sampled) == ANSWER
        assert "".join(c.thinking for c in sampled).count("[sample · model-a]") == 3
        stored = await reasoning_of(channel, sampled[0].reasoning_id)
        assert stored.samples == 3 and len(stored.iterations) == 3


async def test_a_member_s_failure_is_the_call_s_error() -> None:
    broken = {**scripted("model-b", ACCEPT), "error_after_chunks": 0}
    async with serving([scripted("model-a", ANSWER), broken], [critique_panel()]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.StreamCompletion(stream_request())
        reasoning_id = dict(await call.initial_metadata())["x-aibattle-reasoning-id"]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in call:
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        stored = await ended(channel, reasoning_id)
        assert stored.status == common_pb2.RUN_STATUS_FAILED
        assert [i.kind for i in stored.iterations] == ["draft"]  # the step before the failure stays


async def test_a_run_cancelled_elsewhere_ends_the_call_cancelled() -> None:
    models = [scripted("model-a", ANSWER, delay_ms=200), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel()]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="panel", prompt="Capital?")
        )
        reasoning_id = await running(channel)
        reasoning = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        await reasoning.CancelReasoning(reasoning_pb2.CancelReasoningRequest(reasoning_id=reasoning_id))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.CANCELLED
        assert "was cancelled" in (caught.value.details() or "")


async def test_a_cancelled_whole_call_cancels_its_run_too() -> None:
    models = [scripted("model-a", ANSWER, delay_ms=200), scripted("model-b", ACCEPT)]
    async with serving(models, [critique_panel()]) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="panel", prompt="Capital?")
        )
        reasoning_id = await running(channel)
        call.cancel()
        stored = await ended(channel, reasoning_id)
        assert stored.status == common_pb2.RUN_STATUS_CANCELLED


# ---- the hold, with either limiter


@pytest.fixture(params=["memory", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[Limiter]:
    if request.param == "memory":
        yield MemoryLimiter()
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    made = make_limiter(server.url)
    yield made
    await made.aclose()


async def test_a_hold_covers_its_calls_and_settles_once_at_their_cost(limiter: Limiter) -> None:
    key = Caller(key_id="k1", budget_usd=1.0, limiter=limiter)
    hold = await RunHold.take(key, 0.6)
    assert hold is not None
    run = hold.bound().limiter
    assert run is not None
    with pytest.raises(LimitExceeded):  # the hold counts against every other call of the key
        await limiter.reserve(key, 0.5)
    await run.reserve(key, 0.2)  # within the hold
    await run.settle(key, 0.2, 0.1)
    await run.reserve(key, 0.7)  # 0.5 from the hold, 0.2 from the budget
    await run.settle(key, 0.7, 0.55)
    with pytest.raises(LimitExceeded):  # the hold is spent: 0.5 more does not fit the budget
        await run.reserve(key, 0.5)
    await hold.release()
    await hold.release()  # once
    assert limiter.spent(key) == pytest.approx(0.65)
    await limiter.reserve(key, 0.35)  # everything else is free again
    with pytest.raises(LimitExceeded):
        await limiter.reserve(key, 0.01)
