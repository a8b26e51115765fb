"""Helpers for the reasoning tests: servers with scripted models made for each test, and event readers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from aibattle.v1 import common_pb2, reasoning_pb2, reasoning_pb2_grpc
from server.app import AIBattleServer
from tests.conftest import make_config

T = reasoning_pb2.ReasoningEventType
COMPLETED = common_pb2.RUN_STATUS_COMPLETED
IN_PROGRESS = common_pb2.RUN_STATUS_IN_PROGRESS
CANCELLED = common_pb2.RUN_STATUS_CANCELLED
INTERRUPTED = common_pb2.RUN_STATUS_INTERRUPTED
FAILED = common_pb2.RUN_STATUS_FAILED


def scripted(model_id: str, *replies: str, delay_ms: int = 0, price: float = 0.001) -> dict[str, Any]:
    """A scripted model: call i answers replies[i % len(replies)]."""
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


@asynccontextmanager
async def serving(
    *models: dict[str, Any], **server: Any
) -> AsyncIterator[tuple[AIBattleServer, reasoning_pb2_grpc.ReasoningServiceStub]]:
    app = AIBattleServer(make_config(list(models), **server))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_target) as channel:
            yield app, reasoning_pb2_grpc.ReasoningServiceStub(channel)
    finally:
        await app.stop(grace=0.5)


async def create(stub: reasoning_pb2_grpc.ReasoningServiceStub, **fields: Any) -> reasoning_pb2.Reasoning:
    fields.setdefault("prompt", "What is the capital of Australia?")
    response = await stub.CreateReasoning(reasoning_pb2.CreateReasoningRequest(**fields))
    return response.reasoning


async def events(
    stub: reasoning_pb2_grpc.ReasoningServiceStub, reasoning_id: str, after: int = 0
) -> list[reasoning_pb2.ReasoningEvent]:
    """Every event after `after`, until the stream ends by itself (after the terminal event)."""
    call = stub.StreamReasoningEvents(
        reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning_id, after_sequence=after)
    )
    return [response.event async for response in call]


def kinds(reasoning: reasoning_pb2.Reasoning) -> list[tuple[str, str]]:
    """(kind, model) of each iteration, in order."""
    return [(it.kind, it.model) for it in reasoning.iterations]


def of_type(all_events: list[reasoning_pb2.ReasoningEvent], type_: int) -> list[reasoning_pb2.ReasoningEvent]:
    return [e for e in all_events if e.type == type_]


def steps(all_events: list[reasoning_pb2.ReasoningEvent]) -> list[str]:
    """The log without TOKEN/THINKING deltas, as short names: the order of what happened."""
    names = {
        T.REASONING_EVENT_TYPE_NEW_ITERATION: "iteration",
        T.REASONING_EVENT_TYPE_STUCK_DETECTED: "stuck",
        T.REASONING_EVENT_TYPE_HANDOFF: "handoff",
        T.REASONING_EVENT_TYPE_COMPLETION: "completion",
        T.REASONING_EVENT_TYPE_ERROR: "error",
        T.REASONING_EVENT_TYPE_STATUS_CHANGED: "status",
    }
    return [names[e.type] for e in all_events if e.type in names]
