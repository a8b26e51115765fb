"""The client's deadline reaches providers as ChatRequest.deadline, and the scripted provider keeps it."""

from __future__ import annotations

import time

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from common.errors import DeadlineExceeded
from server.app import AIBattleServer
from server.providers.base import ChatMessage, ChatRequest, Delta, Role, StreamItem
from server.providers.scripted import ScriptedProvider
from tests.conftest import SCRIPTED_MODELS, make_config

SLOW = next(m for m in make_config().models if m.id == "scripted-slow")
SLOW_WORDS = len(SCRIPTED_MODELS[1]["script"][0].split())


def request(deadline: float | None) -> ChatRequest:
    return ChatRequest(messages=(ChatMessage(Role.USER, "go"),), max_tokens=1000, deadline=deadline)


async def test_scripted_provider_stops_between_chunks_at_the_deadline() -> None:
    received: list[StreamItem] = []
    with pytest.raises(DeadlineExceeded, match="scripted model"):
        async for item in ScriptedProvider().stream(SLOW, request(time.monotonic() + 0.2)):
            received.append(item)
    assert received and all(isinstance(i, Delta) for i in received)
    assert len(received) < SLOW_WORDS


async def test_scripted_provider_with_a_past_deadline_sends_nothing() -> None:
    with pytest.raises(DeadlineExceeded):
        await anext(ScriptedProvider().stream(SLOW, request(time.monotonic() - 1)))


async def test_client_deadline_becomes_the_provider_deadline(
    scripted_server: AIBattleServer, channel: grpc.aio.Channel, scripted_requests: list[ChatRequest]
) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    call = completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="hi")
    before = time.monotonic()
    await stub.CreateCompletion(call, timeout=30)
    await stub.CreateCompletion(call)
    with_deadline, without = scripted_requests
    # grpc-timeout travels rounded up to its unit, so the server may see a hair more than 30 s.
    assert with_deadline.deadline is not None and before < with_deadline.deadline < before + 60
    assert without.deadline is None
