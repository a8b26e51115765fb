"""The `openai` adapter through our gRPC API, against a fake upstream speaking OpenAI's wire format.

Frames are written as OpenAI, vLLM and llama.cpp's server send them (chat.completion.chunk
objects over SSE, a usage chunk with empty choices, `data: [DONE]`, OpenAI error bodies).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from common.enums import FinishReason
from server.config import ModelConfig
from server.providers.base import Delta, Finish, StreamItem, Usage
from server.providers.http.base import UNREPORTED, HttpClient
from server.providers.http.errors import UpstreamError
from server.providers.http.openai import OpenAIProvider
from server.providers.http.wire import FrameError
from server.providers.text import estimate_tokens
from tests.conftest import error_info, rich_status
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

KEY = "sk-test-0123456789abcdef-secret"


def frame(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def chunk(content: str | None = None, finish: str | None = None, **delta: Any) -> bytes:
    if content is not None:
        delta["content"] = content
    return frame(
        {
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": 1694268190,
            "model": "gpt-4o-mini",
            "system_fingerprint": "fp_44709d6fcb",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
    )


def usage_chunk(prompt: int, completion: int, choices: Any = ()) -> bytes:
    return frame(
        {
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": 1694268190,
            "model": "gpt-4o-mini",
            "choices": list(choices) if choices is not None else None,
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


DONE = b"data: [DONE]\n\n"
HELLO = [
    chunk("", role="assistant"),
    chunk("Hello"),
    chunk(" there"),
    chunk(finish="stop"),
    usage_chunk(9, 2),
    DONE,
]


def openai_error(status: int, message: str, type_: str, code: str | None = None) -> Reply:
    body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    return Reply(status=status, chunks=[json.dumps(body).encode()], content_type="application/json")


def model(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "gpt",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "base_url": f"{base_url}/v1",
        "api_key_env": "TEST_OPENAI_KEY",
        "capabilities": ["text", "conversation", "image"],
        **extra,
    }


FAST = {"backoff_seconds": 0.01}


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)


@pytest.fixture
async def fake(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    return await start_fake(aiohttp_server)


@pytest.fixture
async def stub(fake: tuple[FakeUpstream, str]) -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    async with serving([model(fake[1], upstream=FAST)]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            yield completions_pb2_grpc.CompletionServiceStub(channel)


def stream_request(**fields: Any) -> completions_pb2.StreamCompletionRequest:
    return completions_pb2.StreamCompletionRequest(**{"model": "gpt", "prompt": "hi", **fields})


async def collect(
    stub: completions_pb2_grpc.CompletionServiceStub, **fields: Any
) -> list[completions_pb2.StreamCompletionResponse]:
    return [c async for c in stub.StreamCompletion(stream_request(**fields))]


async def test_stream_relays_deltas_usage_and_sends_the_right_request(
    fake: tuple[FakeUpstream, str],
    stub: completions_pb2_grpc.CompletionServiceStub,
    caplog: pytest.LogCaptureFixture,
) -> None:
    upstream, _ = fake
    upstream.replies = [Reply(chunks=HELLO)]
    caplog.set_level(logging.DEBUG)
    chunks = await collect(
        stub,
        prompt="Say hello",
        system_instruction="Be brief",
        max_tokens=17,
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        seed=7,
    )
    assert "".join(c.content for c in chunks) == "Hello there"
    final = chunks[-1]
    assert final.is_final and final.finish_reason == common_pb2.FINISH_REASON_STOP
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (9, 2)

    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Say hello"}],
        "max_tokens": 17,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "top_p": pytest.approx(0.9),
        "stop": ["END"],
        "seed": 7,
    }
    assert KEY not in caplog.text


async def test_create_completion_asks_for_one_whole_answer(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    body = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Whole answer.", "refusal": None},
                "logprobs": None,
                "finish_reason": "length",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    upstream.replies = [Reply(chunks=[json.dumps(body).encode()], content_type="application/json")]
    reply = await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="gpt", prompt="hi"))
    assert reply.content == "Whole answer."
    assert reply.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 3)
    sent = upstream.requests[-1].json
    assert sent["stream"] is False and "stream_options" not in sent
    assert sent["max_tokens"] == 256  # the model's default_max_tokens


async def test_images_go_as_data_url_content_parts(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    upstream.replies = [Reply(chunks=HELLO)]
    image = common_pb2.FileData(type="image", mime_type="image/png", content=b"\x89PNG\r\n")
    await collect(stub, prompt="what is it?", file_data=image)
    assert upstream.requests[-1].json["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what is it?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}},
            ],
        }
    ]


async def test_audio_is_refused_naming_the_capability(fake: tuple[FakeUpstream, str]) -> None:
    upstream, base_url = fake
    audio = common_pb2.FileData(type="audio", mime_type="audio/wav", content=b"RIFF")
    async with serving([model(base_url, capabilities=["text", "audio"])]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(stub, file_data=audio)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "CAPABILITY_MISSING"
    assert "'audio'" in caught.value.details()
    assert upstream.requests == []


async def test_no_usage_from_the_server_is_estimated(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    # llama-cpp-python's shape: no usage chunk; and an SSE comment as OpenRouter's keep-alive.
    upstream.replies = [
        Reply(chunks=[b": OPENROUTER PROCESSING\n\n", chunk("abcdefgh"), chunk(finish="stop"), DONE])
    ]
    final = (await collect(stub, prompt="x" * 40))[-1]
    assert final.usage.completion_tokens == 2  # 8 characters, about 4 per token
    assert final.usage.prompt_tokens >= 10


async def test_reasoning_content_becomes_thinking_and_vllm_null_choices_usage(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    upstream.replies = [
        Reply(
            chunks=[
                chunk(reasoning_content="Let me think."),
                chunk("Four."),
                chunk(finish="content_filter"),
                usage_chunk(5, 6, choices=None),
                DONE,
            ]
        )
    ]
    chunks = await collect(stub)
    assert "".join(c.content for c in chunks) == "Four."
    assert "".join(c.thinking for c in chunks) == "Let me think."
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER
    assert chunks[-1].usage.completion_tokens == 6


async def test_error_before_the_first_token_carries_the_upstream_message(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    upstream.replies = [
        openai_error(401, "Incorrect API key provided: sk-bad.", "invalid_request_error", "invalid_api_key")
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "UPSTREAM_AUTH_FAILED"
    assert "Incorrect API key provided" in caught.value.details()
    assert "invalid_request_error" not in caught.value.details()  # the message, not the JSON

    upstream.replies = [
        openai_error(
            404, "The model `gpt-4o-mini` does not exist.", "invalid_request_error", "model_not_found"
        )
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="gpt", prompt="hi"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "UPSTREAM_REJECTED"
    assert "does not exist" in caught.value.details()
    assert len(upstream.requests) == 2  # neither is retried


async def test_5xx_is_retried_then_unavailable(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    upstream.replies = [openai_error(503, "The server is overloaded.", "server_error")]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_UNAVAILABLE"
    assert "The server is overloaded." in caught.value.details()
    assert len(upstream.requests) == 3  # 1 + retries (2)


@pytest.mark.parametrize(
    "error_frame",
    [
        # OpenAI (and LiteLLM) mid-stream
        {
            "error": {
                "message": "The server had an error while processing your request.",
                "type": "server_error",
            }
        },
        # vLLM's older error object
        {"object": "error", "message": "The server had an error while processing your request.", "code": 500},
    ],
)
async def test_error_mid_stream_ends_with_unavailable_after_the_first_chunks(
    fake: tuple[FakeUpstream, str],
    stub: completions_pb2_grpc.CompletionServiceStub,
    error_frame: dict[str, Any],
) -> None:
    upstream, _ = fake
    upstream.replies = [Reply(chunks=[chunk("One"), chunk(" two"), frame(error_frame)])]
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for c in stub.StreamCompletion(stream_request()):
            received.append(c.content)
    assert "".join(received) == "One two"
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_ERROR"
    assert "while processing your request" in caught.value.details()
    assert len(upstream.requests) == 1  # nothing retried or spliced after the first token


async def test_429_with_retry_after_is_retried_then_succeeds(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    limited = openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
    limited.headers = {"Retry-After": "0"}
    upstream.replies = [limited, Reply(chunks=HELLO)]
    chunks = await collect(stub)
    assert "".join(c.content for c in chunks) == "Hello there"
    assert len(upstream.requests) == 2


async def test_429_with_retries_exhausted_is_resource_exhausted_with_retry_info(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, base_url = fake
    limited = openai_error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded")
    limited.headers = {"Retry-After": "7"}
    upstream.replies = [limited]
    async with serving([model(base_url, upstream={"retries": 0})]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(stub)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).reason == "UPSTREAM_RATE_LIMITED"
    assert "Rate limit reached" in caught.value.details()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rich_status(caught.value).details)
    assert retry.retry_delay.seconds == 7


@pytest.mark.parametrize(
    ("chunks", "settings"),
    [
        ([], {"ttft_timeout_seconds": 0.3}),  # headers, then nothing
        ([chunk("Hello")], {"idle_timeout_seconds": 0.3}),  # a token, then silence
    ],
    ids=["first-token", "idle"],
)
async def test_a_hang_times_out(
    fake: tuple[FakeUpstream, str], chunks: list[bytes], settings: dict[str, float]
) -> None:
    upstream, base_url = fake
    upstream.replies = [Reply(chunks=chunks, hang=True)]
    async with serving([model(base_url, upstream={"retries": 0, **settings})]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await collect(stub)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_TIMEOUT"
    assert await upstream.wait_disconnected()


@pytest.mark.parametrize(
    "bad",
    [
        b"data: {not json\n\n",
        frame({"choices": "nope"}),
        chunk("cut off"),  # the body ends with neither a finish_reason nor [DONE]
    ],
    ids=["not-json", "bad-choices", "truncated"],
)
async def test_a_malformed_stream_is_a_protocol_error(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub, bad: bytes
) -> None:
    upstream, _ = fake
    upstream.replies = [Reply(chunks=[bad])]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_PROTOCOL_ERROR"


async def test_client_cancel_closes_the_upstream_connection(
    fake: tuple[FakeUpstream, str], stub: completions_pb2_grpc.CompletionServiceStub
) -> None:
    upstream, _ = fake
    upstream.replies = [Reply(chunks=[chunk("First"), *([0.05, chunk(" more")] * 200)])]
    call = stub.StreamCompletion(stream_request())
    first = await call.read()
    assert first.content == "First"
    call.cancel()
    assert await upstream.wait_disconnected()


async def test_missing_key_variable_is_named(
    fake: tuple[FakeUpstream, str],
    stub: completions_pb2_grpc.CompletionServiceStub,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TEST_OPENAI_KEY")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await collect(stub)
    assert error_info(caught.value).reason == "UPSTREAM_KEY_MISSING"
    assert "TEST_OPENAI_KEY" in caught.value.details()
    assert fake[0].requests == []


async def test_keyless_server_gets_no_authorization_header(fake: tuple[FakeUpstream, str]) -> None:
    upstream, base_url = fake
    upstream.replies = [Reply(chunks=HELLO)]
    async with serving([model(base_url, api_key_env="")]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            await collect(stub)
    assert "Authorization" not in upstream.requests[-1].headers


# --- the adapter's parsing, without the server ------------------------------------------------


def _model() -> ModelConfig:
    return ModelConfig(id="m", provider="openai", upstream_model="up")


async def _parse(data: bytes, split: int) -> list[StreamItem]:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(data), split):
            yield data[i : i + split]
            await asyncio.sleep(0)

    provider = OpenAIProvider(HttpClient())
    return [item async for item in provider.parse_stream(_model(), chunks())]


@pytest.mark.parametrize("split", [1, 3, 1000])
async def test_parse_stream_any_chunking_and_crlf(split: int) -> None:
    body = b"".join(HELLO).replace(b"\n", b"\r\n")
    items = await _parse(body, split)
    assert items == [Delta("Hello"), Delta(" there"), Finish(Usage(9, 2), FinishReason.STOP)]


async def test_parse_stream_ignores_what_follows_done_and_maps_tool_calls() -> None:
    items = await _parse(chunk("a") + chunk(finish="tool_calls") + DONE + b"data: garbage\n\n", 7)
    finish = items[-1]
    assert isinstance(finish, Finish) and finish.reason == FinishReason.TOOL_CALLS
    assert finish.usage == Usage(UNREPORTED, UNREPORTED)  # no usage: HttpProvider.stream estimates


async def test_parse_stream_error_event() -> None:
    with pytest.raises(UpstreamError) as caught:
        await _parse(chunk("a") + b'event: error\ndata: {"message": "overloaded"}\n\n', 1000)
    assert caught.value.reason == "UPSTREAM_ERROR"


async def test_parse_stream_rejects_bad_usage() -> None:
    with pytest.raises(FrameError):
        await _parse(frame({"choices": [], "usage": {"prompt_tokens": "many"}}), 1000)


def test_error_message_in_each_dialect() -> None:
    provider = OpenAIProvider(HttpClient())
    openai = (
        b'{"error": {"message": "Invalid key", "type": "invalid_request_error", "param": null, "code": null}}'
    )
    assert provider.error_message(openai) == "Invalid key"
    vllm = (
        b'{"object": "error", "message": "max_tokens is too large", "type": "BadRequestError", "code": 400}'
    )
    assert provider.error_message(vllm) == "max_tokens is too large"
    assert provider.error_message(b'{"detail": "Invalid API key"}') == "Invalid API key"
    assert provider.error_message(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"


def test_estimate_tokens() -> None:
    assert [estimate_tokens(t) for t in ("", "a", "abcd", "abcde")] == [0, 1, 1, 2]
