"""Fallback along a model's chain: only before the first token, never splicing two answers.

Scripted models stand in for providers here (a scripted failure is a provider failure, PROVIDER_ERROR);
the HTTP providers' retries, cooldown and fallback across real upstream failures are tested with each
adapter's fake upstream in tests/server/providers/.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from tests.conftest import error_info
from tests.server.providers.fake_upstream import serving

MODELS: list[dict[str, Any]] = [
    # Fails before its first chunk: B answers.
    {"id": "a-fails-at-once", "provider": "scripted", "script": ["never"], "error_after_chunks": 0,
     "fallbacks": ["b-answers", "c-unused"]},
    # Fails after two chunks: the stream ends with the error, nothing from B is appended.
    {"id": "a-fails-mid-stream", "provider": "scripted", "script": ["one two three four"],
     "error_after_chunks": 2, "fallbacks": ["b-answers"]},
    # Every model of the chain fails before its first token: the last failure is the answer.
    {"id": "a-chain-all-fail", "provider": "scripted", "script": ["x"], "error_after_chunks": 0,
     "fallbacks": ["b-also-fails"]},
    {"id": "b-also-fails", "provider": "scripted", "script": ["y"], "error_after_chunks": 0},
    {"id": "b-answers", "provider": "scripted", "script": ["Answer from B."],
     "pricing": {"input": 0.5, "output": 1.0}},
    {"id": "c-unused", "provider": "scripted", "script": ["Answer from C."]},
]  # fmt: skip


@pytest.fixture
async def stub() -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    async with serving(MODELS) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield completions_pb2_grpc.CompletionServiceStub(channel)


async def test_failure_before_the_first_token_falls_back_and_says_who_answered(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    reply = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="a-fails-at-once", prompt="two words")
    )
    assert reply.content == "Answer from B." and reply.model == "b-answers"
    # Cost is the answering model's.
    assert reply.usage.cost_usd == pytest.approx(2 * 0.5 + 3 * 1.0)

    chunks = [
        c
        async for c in stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(model="a-fails-at-once", prompt="x")
        )
    ]
    assert "".join(c.content for c in chunks) == "Answer from B."
    assert {c.model for c in chunks} == {"b-answers"}


async def test_failure_after_the_first_token_ends_the_stream_and_splices_nothing(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    received: list[str] = []
    call = stub.StreamCompletion(
        completions_pb2.StreamCompletionRequest(model="a-fails-mid-stream", prompt="x")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in call:
            received.append(chunk.content)
            assert chunk.model == "a-fails-mid-stream"
    assert "".join(received) == "one two "
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "PROVIDER_ERROR"


async def test_when_the_whole_chain_fails_the_last_failure_is_reported(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="a-chain-all-fail", prompt="x")
        )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).metadata["model"] == "b-also-fails"


async def test_a_request_error_does_not_fall_back(stub: completions_pb2_grpc.CompletionServiceStub) -> None:
    """INVALID_ARGUMENT is the request's fault: another model would refuse it too."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="a-fails-at-once", prompt="x", temperature=5)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
