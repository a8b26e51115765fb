"""Retries, cooldown, fallback and deadlines across real HTTP failures, through the gRPC API.

The upstreams are fake OpenAI-compatible servers (OpenAI's SSE wire format); the adapter, the
resilience layer and the server are the real ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from tests.conftest import error_info, rich_status
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

KEY = "sk-test-5f2c9a7e1b3d4f6a8c0e2b4d6f8a1c3e"


def sse(*chunks: dict[str, Any]) -> list[bytes]:
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


def answer(text: str) -> Reply:
    """A normal OpenAI stream: the text in two deltas, a finish, a usage chunk."""
    half = len(text) // 2
    base = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    return Reply(
        chunks=sse(
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text[:half]}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": text[half:]}}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
            {**base, "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}},
        )
    )


def whole(text: str) -> Reply:
    """A non-streaming OpenAI answer (what CreateCompletion asks for)."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return Reply(chunks=[json.dumps(body).encode()], content_type="application/json")


def failure(status: int, message: str = "upstream trouble", **headers: str) -> Reply:
    body = json.dumps({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
    return Reply(status=status, headers=headers, chunks=[body.encode()], content_type="application/json")


def openai_model(model_id: str, base_url: str, **upstream: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "provider": "openai",
        "base_url": f"{base_url}/v1",
        "api_key_env": "AIBATTLE_TEST_KEY",
        "upstream": {"backoff_seconds": 0, **upstream},
    }


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIBATTLE_TEST_KEY", KEY)


@pytest.fixture
async def two(aiohttp_server: Any) -> tuple[FakeUpstream, str, FakeUpstream, str]:
    a, a_url = await start_fake(aiohttp_server)
    b, b_url = await start_fake(aiohttp_server)
    return a, a_url, b, b_url


@asynccontextmanager
async def stub_for(server: Any) -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield completions_pb2_grpc.CompletionServiceStub(channel)


def _request(model: str) -> completions_pb2.StreamCompletionRequest:
    return completions_pb2.StreamCompletionRequest(model=model, prompt="hi")


async def answered_by(stub: completions_pb2_grpc.CompletionServiceStub, model: str) -> str:
    """Stream a completion; the model that answered it."""
    return {c.model async for c in stub.StreamCompletion(_request(model))}.pop()


async def test_retryable_failures_are_retried_then_answered(two: Any) -> None:
    a, a_url, _, _ = two
    a.replies = [failure(500), failure(503), answer("Hello!")]
    async with serving([openai_model("m", a_url, retries=2)]) as server:
        async with stub_for(server) as stub:
            chunks = [c async for c in stub.StreamCompletion(_request("m"))]
    assert "".join(c.content for c in chunks) == "Hello!"
    assert len(a.requests) == 3


async def test_a_429_is_retried_after_retry_after_and_reported_when_retries_run_out(two: Any) -> None:
    a, a_url, _, _ = two
    a.replies = [failure(429, "slow down", **{"Retry-After": "0"}), answer("Later.")]
    async with serving([openai_model("m", a_url, retries=1)]) as server:
        async with stub_for(server) as stub:
            chunks = [c async for c in stub.StreamCompletion(_request("m"))]
            assert "".join(c.content for c in chunks) == "Later."
            a.replies = [failure(429, "slow down", **{"Retry-After": "600"})]
            seen = len(a.requests)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                # A retry 600 s away does not fit the caller's 30 s: no wait, the 429 is the answer.
                await stub.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model="m", prompt="hi"), timeout=30
                )
            assert len(a.requests) == seen + 1
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "UPSTREAM_RATE_LIMITED" and info.metadata["provider"] == "openai"
    assert "slow down" in caught.value.details()
    assert any(d.type_url.endswith("RetryInfo") for d in rich_status(caught.value).details)


async def test_fallback_before_the_first_token_answers_from_the_next_model(two: Any) -> None:
    a, a_url, b, b_url = two
    a.replies = [failure(503)]
    b.replies = [answer("From B.")]
    models = [{**openai_model("a", a_url, retries=0), "fallbacks": ["b"]}, openai_model("b", b_url)]
    async with serving(models) as server:
        async with stub_for(server) as stub:
            chunks = [c async for c in stub.StreamCompletion(_request("a"))]
    assert "".join(c.content for c in chunks) == "From B."
    assert {c.model for c in chunks} == {"b"}


async def test_a_failure_after_the_first_token_is_not_spliced_with_the_fallback(two: Any) -> None:
    a, a_url, b, b_url = two
    base = {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    first = {**base, "choices": [{"index": 0, "delta": {"content": "Half"}}]}
    a.replies = [
        Reply(
            chunks=[
                f"data: {json.dumps(first)}\n\n".encode(),
                b'data: {"error": {"message": "the upstream fell over", "type": "server_error"}}\n\n',
            ]
        )
    ]
    b.replies = [answer("From B.")]
    models = [{**openai_model("a", a_url, retries=0), "fallbacks": ["b"]}, openai_model("b", b_url)]
    received: list[str] = []
    async with serving(models) as server:
        async with stub_for(server) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                async for chunk in stub.StreamCompletion(_request("a")):
                    received.append(chunk.content)
    assert "".join(received) == "Half"
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "fell over" in caught.value.details()
    assert b.requests == []


async def test_an_upstream_failing_repeatedly_cools_down_and_its_model_falls_back_at_once(two: Any) -> None:
    a, a_url, b, b_url = two
    a.replies = [failure(503)]
    b.replies = [answer("From B.")]
    models = [
        {
            **openai_model("a", a_url, retries=0, cooldown_after_failures=2, cooldown_seconds=600),
            "fallbacks": ["b"],
        },
        openai_model("b", b_url),
        openai_model("a-alone", a_url, retries=0, cooldown_after_failures=2, cooldown_seconds=600),
    ]
    async with serving(models) as server:
        async with stub_for(server) as stub:
            for _ in range(2):  # two failures in a row: a's upstream cools down
                assert await answered_by(stub, "a") == "b"
            seen = len(a.requests)
            assert await answered_by(stub, "a") == "b"
            assert len(a.requests) == seen  # skipped, not asked
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model="a-alone", prompt="x")
                )
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_COOLDOWN"


async def test_the_callers_deadline_bounds_the_upstream_request(two: Any) -> None:
    a, a_url, _, _ = two
    a.replies = [Reply(hang=True)]
    async with serving([openai_model("m", a_url, retries=0)]) as server:
        async with stub_for(server) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model="m", prompt="hi"), timeout=1.0
                )
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await a.wait_disconnected()


async def test_keys_never_reach_logs_or_errors(two: Any, caplog: pytest.LogCaptureFixture) -> None:
    """The upstream quotes the key it refused, as OpenAI does; neither the client nor a log sees it."""
    caplog.set_level(logging.DEBUG)
    a, a_url, _, _ = two
    a.replies = [failure(401, f"Incorrect API key provided: {KEY}."), answer("ok"), failure(503)]
    async with serving([openai_model("m", a_url, retries=1)]) as server:
        async with stub_for(server) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="m", prompt="hi"))
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "Incorrect API key provided" in caught.value.details()
            assert KEY[8:] not in caught.value.details() and KEY not in str(rich_status(caught.value))
            assert await answered_by(stub, "m") == "m"
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="m", prompt="hi"))
    assert a.requests[0].headers["Authorization"] == f"Bearer {KEY}"  # it was used
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    assert KEY[8:] not in logged


async def test_an_unreachable_upstream_is_retried_then_falls_back_and_the_answer_is_billed_at_its_price(
    two: Any,
) -> None:
    _, _, b, b_url = two
    b.replies = [whole("From B.")]
    refused = "http://127.0.0.1:1"  # nothing listens on port 1
    models = [
        {**openai_model("a", refused, retries=1), "fallbacks": ["b"]},
        {**openai_model("b", b_url), "pricing": {"input": 0.25, "output": 0.5}},
        openai_model("a-alone", refused, retries=1),
    ]
    async with serving(models) as server:
        async with stub_for(server) as stub:
            reply = await stub.CreateCompletion(
                completions_pb2.CreateCompletionRequest(model="a", prompt="x")
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model="a-alone", prompt="x")
                )
    assert reply.model == "b" and reply.content == "From B."
    assert reply.usage.cost_usd == pytest.approx(3 * 0.25 + 2 * 0.5)  # the fake reports 3 + 2 tokens
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_UNREACHABLE"
