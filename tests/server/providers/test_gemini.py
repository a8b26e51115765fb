"""The gemini provider through our gRPC API, against a fake speaking Gemini's documented wire format.

Gemini's `streamGenerateContent?alt=sse` sends each GenerateContentResponse as one `data:` line,
events separated by CRLF CRLF, no event names and no end sentinel: the last response carries the
`finishReason` and the totals in `usageMetadata`. Errors are `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from common.enums import FinishReason
from server.config import Config
from server.providers.base import ChatMessage, ChatRequest, Delta, Finish, Role, Usage
from server.providers.http.errors import UpstreamError
from server.providers.http.gemini import (
    GeminiProvider,
    api_root,
    finish_reason,
    model_path,
    request_body,
)
from server.providers.http.wire import FrameError
from server.providers.text import estimate_tokens
from tests.conftest import error_info, rich_status
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

KEY = "AIzaSy-test-only-0123456789-secret"
KEY_ENV = "AIBATTLE_TEST_GEMINI_KEY"
UPSTREAM_MODEL = "gemini-2.5-flash"


def sse(response: dict[str, Any]) -> bytes:
    """One event as Gemini frames it: compact JSON on one data line, CRLF CRLF after it."""
    return b"data: " + json.dumps(response, separators=(",", ":")).encode() + b"\r\n\r\n"


def text(
    piece: str, *, thought: bool = False, finish: str | None = None, usage: Any = None
) -> dict[str, Any]:
    part: dict[str, Any] = {"text": piece, **({"thought": True} if thought else {})}
    candidate: dict[str, Any] = {"content": {"parts": [part], "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    response: dict[str, Any] = {"candidates": [candidate], "modelVersion": UPSTREAM_MODEL}
    if usage is not None:
        response["usageMetadata"] = usage
    return response


USAGE = {"promptTokenCount": 11, "candidatesTokenCount": 5, "totalTokenCount": 23, "thoughtsTokenCount": 7}
STREAM = [
    sse(text("Let me think.", thought=True)),
    sse(text("Hello")),
    sse(text(" there,")),
    sse(text(" friend.", finish="STOP", usage=USAGE)),
]
ERROR_400 = {
    "error": {
        "code": 400,
        "message": "* GenerateContentRequest.contents: contents is not specified",
        "status": "INVALID_ARGUMENT",
    }
}


def error_body(code: int, message: str, status: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "status": status}}, indent=2).encode()


def json_reply(body: Any, status: int = 200, **headers: str) -> Reply:
    return Reply(
        status=status, headers=headers, chunks=[json.dumps(body).encode()], content_type="application/json"
    )


@pytest.fixture
async def upstream(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv(KEY_ENV, KEY)
    return await start_fake(aiohttp_server)


@asynccontextmanager
async def gemini(base_url: str, **upstream: Any) -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    model = {
        "id": "gem",
        "provider": "gemini",
        "upstream_model": UPSTREAM_MODEL,
        "capabilities": ["text", "conversation", "image", "document"],
        "default_max_tokens": 64,
        "upstream": {"retries": 0, "backoff_seconds": 0.01, **upstream},
    }
    async with serving([model], gemini={"base_url": base_url, "api_key_env": KEY_ENV}) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            yield completions_pb2_grpc.CompletionServiceStub(channel)


async def collect(
    stub: completions_pb2_grpc.CompletionServiceStub, **fields: Any
) -> tuple[list[completions_pb2.StreamCompletionResponse], grpc.aio.AioRpcError | None]:
    chunks: list[completions_pb2.StreamCompletionResponse] = []
    request = completions_pb2.StreamCompletionRequest(model="gem", **({"prompt": "hi"} | fields))
    try:
        async for chunk in stub.StreamCompletion(request):
            chunks.append(chunk)
    except grpc.aio.AioRpcError as exc:
        return chunks, exc
    return chunks, None


# --- through the gRPC API -------------------------------------------------------------------------


async def test_stream_relays_text_thinking_and_usage_and_sends_geminis_request(
    upstream: tuple[FakeUpstream, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake, base = upstream
    fake.replies = [Reply(chunks=STREAM)]
    async with gemini(base) as stub:
        chunks, error = await collect(
            stub,
            prompt="How are you?",
            system_instruction="Be brief.",
            messages=[
                common_pb2.Message(role="user", content="Hi"),
                common_pb2.Message(role="assistant", content="Hello!"),
            ],
            max_tokens=40,
            temperature=0.5,
            top_p=0.9,
            stop=["END"],
            seed=4_000_000_000,
        )
    assert error is None
    assert "".join(c.content for c in chunks) == "Hello there, friend."
    assert "".join(c.thinking for c in chunks) == "Let me think."
    final = chunks[-1]
    assert final.is_final and final.finish_reason == common_pb2.FINISH_REASON_STOP
    # Thinking is billed as output: candidates 5 + thoughts 7.
    assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (
        11,
        12,
        23,
    )

    (sent,) = fake.requests
    assert (sent.method, sent.path) == ("POST", f"/v1beta/models/{UPSTREAM_MODEL}:streamGenerateContent")
    assert sent.query == {"alt": "sse"}  # and no ?key=
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello!"}]},
            {"role": "user", "parts": [{"text": "How are you?"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}]},
        "generationConfig": {
            "maxOutputTokens": 40,
            "temperature": 0.5,
            "topP": 0.9,
            "stopSequences": ["END"],
            "seed": 4_000_000_000 - 2**32,  # Gemini's seed is a signed int32
        },
    }
    assert caplog.records  # the server did log this request; none of it carries the key
    assert KEY not in caplog.text


async def test_create_completion_asks_generate_content_for_one_answer(
    upstream: tuple[FakeUpstream, str],
) -> None:
    fake, base = upstream
    answer = text("A whole", finish="MAX_TOKENS", usage={"promptTokenCount": 3, "candidatesTokenCount": 2})
    answer["candidates"][0]["content"]["parts"].append({"text": " answer"})
    fake.replies = [json_reply(answer)]
    async with gemini(base) as stub:
        reply = await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="gem", prompt="hi"))
    assert reply.content == "A whole answer"
    assert reply.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (3, 2)
    (sent,) = fake.requests
    assert sent.path == f"/v1beta/models/{UPSTREAM_MODEL}:generateContent"
    assert sent.query == {}
    assert sent.json["generationConfig"] == {"maxOutputTokens": 64}  # the model's default_max_tokens
    assert "systemInstruction" not in sent.json


@pytest.mark.parametrize(
    ("status", "body", "code", "reason", "said"),
    [
        (400, error_body(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT"),
         grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_REJECTED", "INVALID_ARGUMENT: API key not valid"),
        (404, error_body(404, "models/gemini-9 is not found for API version v1beta", "NOT_FOUND"),
         grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_REJECTED", "models/gemini-9 is not found"),
        (403, error_body(403, "Method doesn't allow unregistered callers.", "PERMISSION_DENIED"),
         grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_AUTH_FAILED", "PERMISSION_DENIED: Method doesn't"),
        (503, error_body(503, "The model is overloaded. Please try again later.", "UNAVAILABLE"),
         grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE", "The model is overloaded"),
    ],
)  # fmt: skip
async def test_error_before_the_first_token_quotes_gemini(
    upstream: tuple[FakeUpstream, str],
    status: int,
    body: bytes,
    code: grpc.StatusCode,
    reason: str,
    said: str,
) -> None:
    fake, base = upstream
    fake.replies = [Reply(status=status, chunks=[body], content_type="application/json")]
    async with gemini(base) as stub:
        chunks, error = await collect(stub)
    assert chunks == [] and error is not None
    assert error.code() == code
    assert said in error.details()
    info = error_info(error)
    assert (info.reason, info.metadata["upstream_status"], info.metadata["model"]) == (
        reason,
        str(status),
        "gem",
    )


async def test_error_frame_mid_stream_ends_the_stream_unavailable_after_the_text(
    upstream: tuple[FakeUpstream, str],
) -> None:
    fake, base = upstream
    oops = {"error": {"code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}
    fake.replies = [Reply(chunks=[sse(text("Hello")), sse(text(" there")), sse(oops)])]
    async with gemini(base, retries=2) as stub:
        chunks, error = await collect(stub)
    assert "".join(c.content for c in chunks) == "Hello there"
    assert not any(c.is_final for c in chunks)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_ERROR"
    assert "INTERNAL: An internal error has occurred." in error.details()
    assert len(fake.requests) == 1  # after a token nothing is retried


async def test_429_with_retry_after_is_retried_then_answers(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    limited = error_body(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")
    fake.replies = [
        Reply(status=429, headers={"Retry-After": "0"}, chunks=[limited], content_type="application/json"),
        Reply(chunks=STREAM),
    ]
    async with gemini(base, retries=2) as stub:
        chunks, error = await collect(stub)
    assert error is None
    assert "".join(c.content for c in chunks) == "Hello there, friend."
    assert len(fake.requests) == 2


async def test_429_with_retries_exhausted_is_resource_exhausted_with_retry_info(
    upstream: tuple[FakeUpstream, str],
) -> None:
    fake, base = upstream
    limited = error_body(429, "Resource has been exhausted (e.g. check quota).", "RESOURCE_EXHAUSTED")
    fake.replies = [
        Reply(status=429, headers={"Retry-After": "0.2"}, chunks=[limited], content_type="application/json")
    ]
    async with gemini(base, retries=1) as stub:
        chunks, error = await collect(stub)
    assert chunks == [] and error is not None
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Resource has been exhausted" in error.details()
    assert error_info(error).reason == "UPSTREAM_RATE_LIMITED"
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rich_status(error).details)
    assert retry.retry_delay.ToMilliseconds() == 200
    assert len(fake.requests) == 2  # the first attempt and its one retry


async def test_429_retry_delay_in_the_body_is_honoured(upstream: tuple[FakeUpstream, str]) -> None:
    """Gemini sends no Retry-After header: the delay is a google.rpc.RetryInfo in error.details."""
    fake, base = upstream
    body = {
        "error": {
            "code": 429,
            "message": "You exceeded your current quota.",
            "status": "RESOURCE_EXHAUSTED",
            "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
        }
    }
    fake.replies = [json_reply(body, status=429)]
    async with gemini(base, retries=0) as stub:
        _, error = await collect(stub)
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rich_status(error).details)
    assert retry.retry_delay.seconds == 37


@pytest.mark.parametrize(
    ("reply", "expect_text"),
    [
        (Reply(hang=True), ""),  # no first token
        (Reply(chunks=[sse(text("Hello"))], hang=True), "Hello"),  # silent after a token
    ],
)
async def test_a_hanging_upstream_times_out(
    upstream: tuple[FakeUpstream, str], reply: Reply, expect_text: str
) -> None:
    fake, base = upstream
    fake.replies = [reply]
    async with gemini(base, ttft_timeout_seconds=0.3, idle_timeout_seconds=0.3) as stub:
        chunks, error = await collect(stub)
    assert "".join(c.content for c in chunks) == expect_text
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_TIMEOUT"
    assert await fake.wait_disconnected()


@pytest.mark.parametrize(
    "frames",
    [
        [sse(text("Hello")), b'data: {"candidates": [{"content\r\n\r\n'],  # not JSON
        [sse(text("Hello")), sse({"candidates": {"content": "?"}})],  # not a GenerateContentResponse
        [sse(text("Hello")), sse(text(" the"))],  # the body ends before any finishReason: cut off
    ],
)
async def test_a_malformed_or_cut_stream_is_a_protocol_error(
    upstream: tuple[FakeUpstream, str], frames: list[bytes]
) -> None:
    fake, base = upstream
    fake.replies = [Reply(chunks=frames)]
    async with gemini(base) as stub:
        chunks, error = await collect(stub)
    assert "".join(c.content for c in chunks).startswith("Hello")
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_PROTOCOL_ERROR"


async def test_client_cancel_closes_the_upstream_connection(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    fake.replies = [Reply(chunks=[sse(text("Hello"))], hang=True)]
    async with gemini(base) as stub:
        call = stub.StreamCompletion(completions_pb2.StreamCompletionRequest(model="gem", prompt="hi"))
        first = await call.read()
        assert isinstance(first, completions_pb2.StreamCompletionResponse) and first.content == "Hello"
        call.cancel()
        assert await fake.wait_disconnected()


async def test_a_blocked_prompt_finishes_content_filter_with_no_text(
    upstream: tuple[FakeUpstream, str],
) -> None:
    fake, base = upstream
    blocked = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9},
        "modelVersion": UPSTREAM_MODEL,
    }
    fake.replies = [Reply(chunks=[sse(blocked)]), json_reply(blocked)]
    async with gemini(base) as stub:
        chunks, error = await collect(stub)
        whole = await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="gem", prompt="hi"))
    assert error is None
    assert [c.content for c in chunks] == [""] and chunks[-1].is_final
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 0)
    assert whole.content == "" and whole.finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER


async def test_safety_stop_mid_answer_is_content_filter(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    safety = {"candidates": [{"finishReason": "SAFETY", "index": 0}], "usageMetadata": USAGE}
    fake.replies = [Reply(chunks=[sse(text("Well,")), sse(safety)])]
    async with gemini(base) as stub:
        chunks, error = await collect(stub)
    assert error is None
    assert "".join(c.content for c in chunks) == "Well,"
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_CONTENT_FILTER


async def test_an_image_goes_inline_base64_before_the_text(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    fake.replies = [Reply(chunks=STREAM)]
    png = b"\x89PNG\r\n\x1a\n-not-really-an-image"
    async with gemini(base) as stub:
        _, error = await collect(
            stub,
            prompt="What is this?",
            file_data=common_pb2.FileData(type="image", mime_type="image/png", content=png, path="a.png"),
        )
    assert error is None
    assert fake.requests[0].json["contents"] == [
        {
            "role": "user",
            "parts": [
                {"inlineData": {"mimeType": "image/png", "data": base64.b64encode(png).decode()}},
                {"text": "What is this?"},
            ],
        }
    ]


async def test_a_document_gemini_cannot_read_is_refused_naming_the_capability(
    upstream: tuple[FakeUpstream, str],
) -> None:
    fake, base = upstream
    async with gemini(base) as stub:
        _, error = await collect(
            stub,
            prompt="Summarise",
            file_data=common_pb2.FileData(
                type="document", mime_type="application/zip", content=b"PK\x03\x04"
            ),
        )
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "CAPABILITY_MISSING"
    assert "application/zip" in error.details()
    assert fake.requests == []


async def test_usage_missing_is_estimated(upstream: tuple[FakeUpstream, str]) -> None:
    fake, base = upstream
    fake.replies = [Reply(chunks=[sse(text("one two")), sse(text(" three", finish="STOP"))])]
    async with gemini(base) as stub:
        chunks, error = await collect(stub, prompt="count to three please")
    assert error is None
    # The shared estimate: ~4 characters a token, plus a few per message for the chat template.
    expected = (estimate_tokens("count to three please") + 4, estimate_tokens("one two three"))
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == expected


# --- the adapter's own pieces -----------------------------------------------------------------------


def _model(**fields: Any) -> Any:
    entry = {"id": "gem", "provider": "gemini", **fields}
    return Config.from_dict({"models": [entry]}).models[0]


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [1, 2, 7, 10_000])
async def test_parse_stream_is_indifferent_to_chunking(size: int) -> None:
    provider = GeminiProvider(client=None)  # type: ignore[arg-type]  # parsing needs no session
    items = [i async for i in provider.parse_stream(_model(), _pieces(b"".join(STREAM), size))]
    assert items == [
        Delta(thinking="Let me think."),
        Delta(content="Hello"),
        Delta(content=" there,"),
        Delta(content=" friend."),
        Finish(Usage(11, 12), FinishReason.STOP),
    ]


async def test_parse_stream_reads_a_last_event_without_its_blank_line() -> None:
    provider = GeminiProvider(client=None)  # type: ignore[arg-type]
    body = sse(text("Hi", finish="STOP", usage=USAGE)).removesuffix(b"\r\n")  # no blank line after it
    items = [i async for i in provider.parse_stream(_model(), _pieces(body, 5))]
    assert items == [Delta(content="Hi"), Finish(Usage(11, 12), FinishReason.STOP)]


def test_parse_whole_raises_an_error_object_as_a_stream_error() -> None:
    provider = GeminiProvider(client=None)  # type: ignore[arg-type]
    with pytest.raises(UpstreamError) as caught:
        provider.parse_whole(_model(), ERROR_400)
    assert caught.value.reason == "UPSTREAM_ERROR"
    with pytest.raises(FrameError):
        provider.parse_whole(_model(), [ERROR_400])
    with pytest.raises(FrameError):
        provider.parse_whole(_model(), {"candidates": [], "usageMetadata": {"promptTokenCount": "many"}})


def test_error_message_reads_geminis_error_body_in_every_form() -> None:
    provider = GeminiProvider(client=None)  # type: ignore[arg-type]
    said = "INVALID_ARGUMENT: * GenerateContentRequest.contents: contents is not specified"
    assert provider.error_message(json.dumps(ERROR_400, indent=2).encode()) == said
    assert provider.error_message(json.dumps([ERROR_400]).encode()) == said  # the JSON-array form
    assert provider.error_message(b"<html>502 Bad Gateway</html>") == "<html>502 Bad Gateway</html>"


@pytest.mark.parametrize(
    ("gemini_reason", "ours"),
    [
        ("STOP", FinishReason.STOP),
        ("MAX_TOKENS", FinishReason.LENGTH),
        ("SAFETY", FinishReason.CONTENT_FILTER),
        ("RECITATION", FinishReason.CONTENT_FILTER),
        ("PROHIBITED_CONTENT", FinishReason.CONTENT_FILTER),
        ("BLOCKLIST", FinishReason.CONTENT_FILTER),
        ("SPII", FinishReason.CONTENT_FILTER),
        ("OTHER", FinishReason.STOP),
        ("MALFORMED_FUNCTION_CALL", FinishReason.STOP),
    ],
)
def test_finish_reasons(gemini_reason: str, ours: FinishReason) -> None:
    assert finish_reason(gemini_reason) == ours


def test_urls_name_the_model_and_keep_a_configured_api_version() -> None:
    assert model_path(_model(upstream_model="gemini-2.0-flash")) == "models/gemini-2.0-flash"
    assert model_path(_model()) == "models/gem"
    assert model_path(_model(upstream_model="tunedModels/my-tune")) == "tunedModels/my-tune"
    assert (
        api_root("https://generativelanguage.googleapis.com")
        == "https://generativelanguage.googleapis.com/v1beta"
    )
    assert api_root("https://proxy.example/gemini/v1/") == "https://proxy.example/gemini/v1"
    provider = GeminiProvider(client=None)  # type: ignore[arg-type]
    request = ChatRequest(messages=(ChatMessage(Role.USER, "hi"),), max_tokens=8)
    built = provider.build(_model(), request, None)
    assert (
        built.url
        == "https://generativelanguage.googleapis.com/v1beta/models/gem:streamGenerateContent?alt=sse"
    )
    assert built.headers == {}  # keyless (a local proxy): no empty key header


def test_consecutive_turns_of_one_role_merge_and_system_messages_join() -> None:
    body = request_body(
        _model(),
        ChatRequest(
            messages=(
                ChatMessage(Role.SYSTEM, "Be brief."),
                ChatMessage(Role.USER, "One."),
                ChatMessage(Role.USER, "Two."),
                ChatMessage(Role.SYSTEM, "And kind."),
                ChatMessage(Role.ASSISTANT, "Yes."),
            ),
            max_tokens=8,
            seed=7,
        ),
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}, {"text": "And kind."}]}
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "One."}, {"text": "Two."}]},
        {"role": "model", "parts": [{"text": "Yes."}]},
    ]
    assert body["generationConfig"] == {"maxOutputTokens": 8, "seed": 7}
