"""Every strategy completing a short session with the real local model (SmolLM2-135M) in every seat.

Its answers are poor, its verdicts rarely follow the format: what must hold is that each strategy
runs to a COMPLETED session with consistent iterations, usage and events, whatever the model writes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest

from aibattle.v1 import reasoning_pb2, reasoning_pb2_grpc
from server.app import AIBattleServer
from server.config import Config
from tests.server.reasoning_testlib import COMPLETED, T, events

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
KINDS = {
    "iterative_refinement": {"draft", "critique", "revision"},
    "debate": {"argument", "judgment"},
    "mixture": {"proposal", "aggregation"},
    "critique": {"draft", "verification"},
    "cascade": {"draft", "verification", "escalation"},
    "self_consistency": {"sample"},
    "vote": {"answer", "judgment"},
}


@pytest.fixture
async def stub() -> AsyncIterator[reasoning_pb2_grpc.ReasoningServiceStub]:
    server = AIBattleServer(
        Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}})
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            yield reasoning_pb2_grpc.ReasoningServiceStub(channel)
    finally:
        await server.stop(grace=0.5)


@pytest.mark.parametrize("strategy", list(KINDS))
async def test_every_strategy_completes_with_the_local_model(
    stub: reasoning_pb2_grpc.ReasoningServiceStub, strategy: str
) -> None:
    response = await stub.CreateReasoning(
        reasoning_pb2.CreateReasoningRequest(
            primary_model=MODEL,
            secondary_model=MODEL,
            prompt="What is 12 times 12? Answer briefly.",
            collaboration_strategy=strategy,
            max_iterations=2,
            max_tokens=40,
            samples=3 if strategy == "self_consistency" else None,
            wait=True,
        ),
        timeout=300,
    )
    reasoning = response.reasoning
    assert reasoning.status == COMPLETED, reasoning.error
    assert reasoning.iterations and {it.kind for it in reasoning.iterations} <= KINDS[strategy]
    assert all(0 < it.usage.completion_tokens <= 40 for it in reasoning.iterations)
    assert reasoning.final_result
    assert reasoning.usage.total_tokens == sum(it.usage.total_tokens for it in reasoning.iterations)
    log = await events(stub, reasoning.reasoning_id)
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert (
        log[-1].type == T.REASONING_EVENT_TYPE_COMPLETION and log[-1].final_result == reasoning.final_result
    )
    assert reasoning.stop_reason and log[-1].stop_reason == reasoning.stop_reason
    recorded = [e.iteration for e in log if e.type == T.REASONING_EVENT_TYPE_NEW_ITERATION]
    assert recorded == list(reasoning.iterations)
    # Stalls, if the small model had any, were reported as they happened.
    stalled = [it for it in reasoning.iterations if it.stuck_indicators]
    assert len([e for e in log if e.type == T.REASONING_EVENT_TYPE_STUCK_DETECTED]) == len(stalled)


async def test_sessions_sharing_the_local_model_take_turns_fairly(
    stub: reasoning_pb2_grpc.ReasoningServiceStub,
) -> None:
    """Three sessions at once on the one local model: its turns go round the sessions (A B C A B C …),
    not one session's steps back to back. Each mixture session of one layer is exactly three steps."""
    created = [
        (
            await stub.CreateReasoning(
                reasoning_pb2.CreateReasoningRequest(
                    primary_model=MODEL,
                    secondary_model=MODEL,
                    prompt=f"Name a colour and the number {n}.",
                    collaboration_strategy="mixture",
                    max_iterations=1,
                    max_tokens=12,
                )
            )
        ).reasoning.reasoning_id
        for n in range(3)
    ]
    for reasoning_id in created:
        await events(stub, reasoning_id)  # until each ends
    steps = []
    for reasoning_id in created:
        reasoning = (
            await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=reasoning_id))
        ).reasoning
        assert reasoning.status == COMPLETED, reasoning.error
        steps += [(it.created_at.ToNanoseconds(), it.index, reasoning_id) for it in reasoning.iterations]
    order = [(index, reasoning_id) for _, index, reasoning_id in sorted(steps)]
    assert order == [(index, reasoning_id) for index in (1, 2, 3) for reasoning_id in created]
