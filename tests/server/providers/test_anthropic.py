"""The Anthropic adapter through our gRPC API, against a fake speaking the Messages API's wire format."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from common.enums import FinishReason
from server.config import Config
from server.providers.base import Delta, Finish, Usage
from server.providers.http.anthropic import AnthropicProvider
from server.providers.http.base import UNREPORTED, HttpClient
from server.providers.http.errors import UpstreamError
from server.providers.http.wire import FrameError
from tests.conftest import error_info, rich_status
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

KEY = "sk-ant-api03-test-Zx9QvSecret"
KEY_ENV = "AIBATTLE_TEST_ANTHROPIC_KEY"
UPSTREAM_MODEL = "claude-sonnet-4-5"


def event(kind: str, **fields: Any) -> bytes:
    """One event as Anthropic sends it: a named SSE event whose JSON repeats the name as `type`."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()


def message_start(input_tokens: int = 25) -> bytes:
    return event(
        "message_start",
        message={
            "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
            "type": "message",
            "role": "assistant",
            "content": [],
            "model": UPSTREAM_MODEL,
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    )


def text_start(index: int = 0) -> bytes:
    return event("content_block_start", index=index, content_block={"type": "text", "text": ""})


def text_delta(text: str, index: int = 0) -> bytes:
    return event("content_block_delta", index=index, delta={"type": "text_delta", "text": text})


def finish(stop_reason: str = "end_turn", output_tokens: int = 15) -> list[bytes]:
    return [
        event("content_block_stop", index=1),
        event(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": output_tokens},
        ),
        event("message_stop"),
    ]


THINKING_THEN_TEXT: list[bytes | float] = [
    message_start(),
    event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
    event("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "Greet them."}),
    event("content_block_delta", index=0, delta={"type": "signature_delta", "signature": "EqQBCgIYAh"}),
    event("content_block_stop", index=0),
    text_start(1),
    event("ping"),
    text_delta("Hello", 1),
    text_delta(" there!", 1),
    *finish(output_tokens=15),
]

OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}


def claude(base_url: str, **upstream: Any) -> dict[str, Any]:
    return {
        "id": "claude",
        "provider": "anthropic",
        "upstream_model": UPSTREAM_MODEL,
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "capabilities": ["text", "conversation", "image", "document", "audio"],
        "default_max_tokens": 300,
        "upstream": {"retries": 0, "backoff_seconds": 0.0, **upstream},
    }


@pytest.fixture
async def fake(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv(KEY_ENV, KEY)
    return await start_fake(aiohttp_server)


def stub(channel: grpc.aio.Channel) -> completions_pb2_grpc.CompletionServiceStub:
    return completions_pb2_grpc.CompletionServiceStub(channel)


def stream_request(**fields: Any) -> completions_pb2.StreamCompletionRequest:
    return completions_pb2.StreamCompletionRequest(**{"model": "claude", "prompt": "Hi", **fields})


async def collect(
    call: Any,
) -> tuple[list[completions_pb2.StreamCompletionResponse], grpc.aio.AioRpcError | None]:
    chunks = []
    try:
        async for chunk in call:
            chunks.append(chunk)
    except grpc.aio.AioRpcError as exc:
        return chunks, exc
    return chunks, None


async def test_stream_relays_text_and_thinking_with_usage(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=THINKING_THEN_TEXT)]
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert error is None
    assert [(c.thinking, c.content) for c in chunks[:-1]] == [
        ("Greet them.", ""),
        ("", "Hello"),
        ("", " there!"),
    ]
    final = chunks[-1]
    assert final.is_final and final.finish_reason == common_pb2.FINISH_REASON_STOP
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (25, 15)
    assert upstream.requests[-1].json["stream"] is True


async def test_create_completion_asks_for_a_whole_message(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    body = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": UPSTREAM_MODEL,
        "content": [
            {"type": "thinking", "thinking": "Count to three.", "signature": "EqQBCgIYAh"},
            {"type": "text", "text": "One, two"},
        ],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 12, "cache_read_input_tokens": 100, "output_tokens": 4},
    }
    upstream.replies = [Reply(content_type="application/json", chunks=[json.dumps(body).encode()])]
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        reply = await stub(channel).CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="claude", prompt="Count", max_tokens=4)
        )
    assert (reply.content, reply.thinking) == ("One, two", "Count to three.")
    assert reply.finish_reason == common_pb2.FINISH_REASON_LENGTH
    # Cached input is input: the prompt is what was read, whether or not from the cache.
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (112, 4)
    sent = upstream.requests[-1].json
    assert sent["stream"] is False and sent["max_tokens"] == 4


async def test_request_shape_headers_and_no_key_in_logs(
    fake: tuple[FakeUpstream, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream, url = fake
    upstream.replies = [Reply(chunks=[message_start(), text_start(), text_delta("Yes."), *finish()])]
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
    request = stream_request(
        prompt="",
        system_instruction="Be brief.",
        messages=[
            common_pb2.Message(role="system", content="Answer in English."),
            common_pb2.Message(role="user", content="Hello."),
            common_pb2.Message(role="user", content="Are you there?"),
            common_pb2.Message(role="assistant", content="I am."),
            common_pb2.Message(
                role="user",
                content="What is this?",
                file_data=[common_pb2.FileData(type="image", mime_type="image/png", content=png)],
            ),
        ],
        temperature=0.5,
        top_p=0.9,
        stop=["\n\nHuman:"],
        seed=42,
        max_tokens=64,
    )
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        chunks, error = await collect(stub(channel).StreamCompletion(request))
    assert error is None and chunks[0].content == "Yes."
    sent = upstream.requests[-1]
    assert (sent.method, sent.path, sent.query) == ("POST", "/v1/messages", {})
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["Content-Type"].startswith("application/json")
    assert "Authorization" not in sent.headers
    assert sent.json == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 64,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "Hello.\n\nAre you there?"},
            {"role": "assistant", "content": "I am."},
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": base64.b64encode(png).decode(),
                        },
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            },
        ],
        "stream": True,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop_sequences": ["\n\nHuman:"],
    }  # no seed: the Messages API has none
    assert "POST /v1/messages" in caplog.text  # the capture saw the call...
    assert not any(
        KEY in repr(vars(r)) for r in caplog.records
    )  # ...and no record, extras included, has the key


@pytest.mark.parametrize(
    ("status", "error_type", "message", "code", "reason"),
    [
        (
            400,
            "invalid_request_error",
            "max_tokens: 100000 > 64000, which is the maximum allowed",
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_REJECTED",
        ),
        (
            401,
            "authentication_error",
            "invalid x-api-key",
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_AUTH_FAILED",
        ),
        (
            404,
            "not_found_error",
            "model: claude-sonnet-9",
            grpc.StatusCode.FAILED_PRECONDITION,
            "UPSTREAM_REJECTED",
        ),
        (529, "overloaded_error", "Overloaded", grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    ],
)
async def test_error_before_the_first_token_quotes_the_upstream(
    fake: tuple[FakeUpstream, str],
    caplog: pytest.LogCaptureFixture,
    status: int,
    error_type: str,
    message: str,
    code: grpc.StatusCode,
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream, url = fake
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    upstream.replies = [
        Reply(status=status, content_type="application/json", chunks=[json.dumps(body).encode()])
    ]
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert chunks == [] and error is not None
    assert error.code() == code
    assert f"{error_type}: {message}" in error.details()
    info = error_info(error)
    assert info.reason == reason
    assert (info.metadata["provider"], info.metadata["upstream_status"]) == ("anthropic", str(status))
    assert KEY not in error.details()
    assert caplog.records and not any(KEY in repr(vars(r)) for r in caplog.records)


async def test_error_event_mid_stream_ends_the_stream_unspliced(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(
            chunks=[
                message_start(),
                text_start(),
                text_delta("Once upon"),
                f"event: error\ndata: {json.dumps(OVERLOADED)}\n\n".encode(),
            ]
        )
    ]
    async with (
        serving([claude(url, retries=2)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert [c.content for c in chunks] == ["Once upon"]
    assert not any(c.is_final for c in chunks)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_ERROR"
    assert "overloaded_error: Overloaded" in error.details()
    assert len(upstream.requests) == 1  # after the first token nothing is tried again


async def test_overloaded_event_before_the_first_token_is_retried(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(chunks=[message_start(), event("error", error=OVERLOADED["error"])]),
        Reply(chunks=[message_start(), text_start(), text_delta("Fine."), *finish()]),
    ]
    async with (
        serving([claude(url, retries=1)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert error is None and chunks[0].content == "Fine." and chunks[-1].is_final
    assert len(upstream.requests) == 2


async def test_rate_limit_is_retried_after_retry_after(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    limited = {
        "type": "error",
        "error": {
            "type": "rate_limit_error",
            "message": "Number of request tokens has exceeded your per-minute rate limit",
        },
    }
    upstream.replies = [
        Reply(
            status=429,
            headers={"Retry-After": "0"},
            content_type="application/json",
            chunks=[json.dumps(limited).encode()],
        ),
        Reply(chunks=[message_start(), text_start(), text_delta("Made it."), *finish()]),
    ]
    async with (
        serving([claude(url, retries=2)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert error is None and chunks[0].content == "Made it."
    assert len(upstream.requests) == 2


async def test_rate_limit_with_retries_exhausted_is_resource_exhausted(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    limited = json.dumps(
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    ).encode()
    upstream.replies = [
        Reply(status=429, headers={"Retry-After": "0"}, content_type="application/json", chunks=[limited]),
        Reply(status=429, headers={"Retry-After": "7"}, content_type="application/json", chunks=[limited]),
    ]
    async with (
        serving([claude(url, retries=1)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert chunks == [] and error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "UPSTREAM_RATE_LIMITED"
    assert "rate_limit_error: slow down" in error.details()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rich_status(error).details)
    assert retry.retry_delay.seconds == 7
    assert len(upstream.requests) == 2


async def test_no_first_token_in_time_is_upstream_timeout(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    # message_start and pings are not tokens: the first-token clock keeps running through them.
    upstream.replies = [Reply(chunks=[message_start(), event("ping")], hang=True)]
    async with (
        serving([claude(url, ttft_timeout_seconds=0.3)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert chunks == [] and error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_TIMEOUT"
    assert await upstream.wait_disconnected()


async def test_silence_after_the_first_token_is_upstream_timeout(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[message_start(), text_start(), text_delta("Half")], hang=True)]
    async with (
        serving([claude(url, idle_timeout_seconds=0.3)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert [c.content for c in chunks] == ["Half"]
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_TIMEOUT"


@pytest.mark.parametrize(
    "bad",
    [
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "delta": \n\n',
        event("content_block_delta", index=0, delta={"type": "text_delta", "text": 7}),
        b"event: message_start\ndata: [1, 2]\n\n",
    ],
    ids=["not-json", "text-not-a-string", "not-an-object"],
)
async def test_malformed_frame_is_a_protocol_error(fake: tuple[FakeUpstream, str], bad: bytes) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[bad])]
    async with (
        serving([claude(url, retries=2)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert chunks == [] and error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_PROTOCOL_ERROR"
    assert len(upstream.requests) == 1


async def test_stream_cut_before_message_stop_is_a_protocol_error(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[message_start(), text_start(), text_delta("Trunc")])]
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request()))
    assert [c.content for c in chunks] == ["Trunc"]
    assert error is not None and error_info(error).reason == "UPSTREAM_PROTOCOL_ERROR"
    assert "message_stop" in error.details()


async def test_client_cancel_closes_the_upstream_connection(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[message_start(), text_start(), text_delta("Once")], hang=True)]
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        call = stub(channel).StreamCompletion(stream_request())
        first = await call.read()
        assert first.content == "Once"
        call.cancel()
        assert await upstream.wait_disconnected()


async def test_temperature_above_anthropics_range_is_refused_before_sending(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request(temperature=1.5)))
    assert chunks == [] and error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("temperature:")
    assert upstream.requests == []


async def test_audio_is_refused_naming_what_the_api_takes(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    audio = common_pb2.FileData(type="audio", mime_type="audio/wav", content=b"RIFF....WAVE")
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        chunks, error = await collect(stub(channel).StreamCompletion(stream_request(file_data=audio)))
    assert chunks == [] and error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "CAPABILITY_MISSING"
    assert "'audio'" in error.details() and "PDF" in error.details()
    assert upstream.requests == []


async def test_pdf_document_goes_as_a_document_block(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[message_start(), text_start(), text_delta("A memo."), *finish()])]
    pdf = common_pb2.FileData(type="document", mime_type="", content=b"%PDF-1.7\n")
    async with serving([claude(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        _, error = await collect(
            stub(channel).StreamCompletion(stream_request(prompt="Summarise", file_data=pdf))
        )
    assert error is None
    assert upstream.requests[-1].json["messages"] == [
        {
            "role": "user",
            "content": [
                {
                    "type": "document",
                    "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjcK"},
                },
                {"type": "text", "text": "Summarise"},
            ],
        }
    ]


# --- the frame parser on its own ----------------------------------------------------------------


def _model() -> Any:
    config = Config.from_dict({"models": [claude("http://127.0.0.1:9")]})
    return config.models[0]


async def _parse(body: bytes, *, size: int) -> list[Any]:
    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(body), size):
            yield body[i : i + size]
            await asyncio.sleep(0)

    provider = AnthropicProvider(HttpClient())
    return [item async for item in provider.parse_stream(_model(), chunks())]


@pytest.mark.parametrize("size", [1, 7, 1 << 16])
async def test_parse_stream_is_indifferent_to_chunking(size: int) -> None:
    body = b"".join(c for c in THINKING_THEN_TEXT if isinstance(c, bytes)).replace(b"\n", b"\r\n")
    assert await _parse(body, size=size) == [
        Delta(thinking="Greet them."),
        Delta(content="Hello"),
        Delta(content=" there!"),
        Finish(Usage(25, 15), FinishReason.STOP),
    ]


@pytest.mark.parametrize(
    ("stop_reason", "reason"),
    [
        ("end_turn", FinishReason.STOP),
        ("stop_sequence", FinishReason.STOP),
        ("max_tokens", FinishReason.LENGTH),
        ("model_context_window_exceeded", FinishReason.LENGTH),
        ("refusal", FinishReason.CONTENT_FILTER),
        ("tool_use", FinishReason.TOOL_CALLS),
        ("pause_turn", FinishReason.STOP),
    ],
)
async def test_stop_reasons_map_onto_ours(stop_reason: str, reason: FinishReason) -> None:
    body = b"".join([message_start(), text_start(), text_delta("x"), *finish(stop_reason)])
    items = await _parse(body, size=1 << 16)
    assert items[-1] == Finish(Usage(25, 15), reason)


async def test_unknown_events_and_deltas_are_skipped_and_usage_is_cumulative() -> None:
    body = b"".join(
        [
            message_start(input_tokens=10),
            event(
                "content_block_start",
                index=0,
                content_block={
                    "type": "server_tool_use",
                    "id": "srvtoolu_1",
                    "name": "web_search",
                    "input": {},
                },
            ),
            event("future_event", detail="anything"),
            event("content_block_delta", index=0, delta={"type": "citations_delta", "citation": {}}),
            text_start(1),
            text_delta("ok", 1),
            event("message_delta", delta={"stop_reason": None}, usage={"output_tokens": 3}),
            event(
                "message_delta",
                delta={"stop_reason": "end_turn"},
                usage={"input_tokens": 11, "output_tokens": 9},
            ),
            event("message_stop"),
            text_delta("after the end is never read", 1),
        ]
    )
    assert await _parse(body, size=1 << 16) == [Delta(content="ok"), Finish(Usage(11, 9), FinishReason.STOP)]


async def test_missing_usage_is_left_for_the_base_to_estimate() -> None:
    start = event("message_start", message={"id": "m", "type": "message", "role": "assistant", "content": []})
    body = b"".join([start, text_start(), text_delta("three small words"), event("message_stop")])
    unreported = Finish(Usage(UNREPORTED, UNREPORTED), FinishReason.STOP)
    assert (await _parse(body, size=1 << 16))[-1] == unreported


async def test_error_event_raises_the_upstreams_words() -> None:
    body = message_start() + event("error", error={"type": "api_error", "message": "Internal server error"})
    with pytest.raises(UpstreamError) as caught:
        await _parse(body, size=1 << 16)
    assert caught.value.reason == "UPSTREAM_ERROR" and caught.value.retryable
    assert "api_error: Internal server error" in str(caught.value)


async def test_end_of_body_without_message_stop_is_a_frame_error() -> None:
    with pytest.raises(FrameError):
        await _parse(message_start() + text_start(), size=1 << 16)


def test_error_message_reads_the_error_object_or_falls_back_to_the_body() -> None:
    provider = AnthropicProvider(HttpClient())
    assert provider.error_message(json.dumps(OVERLOADED).encode()) == "overloaded_error: Overloaded"
    assert provider.error_message(b"<html>Bad Gateway</html>") == "<html>Bad Gateway</html>"
