"""The Ollama adapter through our gRPC API, against a fake speaking Ollama's /api/chat NDJSON."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from server.config import Config, ModelConfig
from server.providers.base import Delta, Finish, Usage
from server.providers.http.base import HttpClient
from server.providers.http.errors import UpstreamError
from server.providers.http.ollama import OllamaProvider, discover_models
from server.providers.http.wire import FrameError
from server.providers.registry import ProviderStartError
from server.providers.text import estimate_tokens
from tests.conftest import error_info, rich_status
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

NDJSON = "application/x-ndjson"
JSON = "application/json; charset=utf-8"
CREATED = "2024-08-07T03:57:33.0365888Z"


def line(obj: dict[str, Any]) -> bytes:
    """One NDJSON line as Ollama's Go encoder writes it (compact, newline-terminated)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def token(content: str, thinking: str | None = None) -> bytes:
    message = {"role": "assistant", "content": content}
    if thinking is not None:
        message["thinking"] = thinking
    return line({"model": "llama3.2", "created_at": CREATED, "message": message, "done": False})


def final(reason: str = "stop", *, prompt: int | None = 26, completion: int | None = 3) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "model": "llama3.2",
        "created_at": CREATED,
        "message": {"role": "assistant", "content": ""},
        "done_reason": reason,
        "done": True,
        "total_duration": 4883583458,
        "load_duration": 1334875,
        "prompt_eval_duration": 342546000,
        "eval_duration": 4535599000,
    }
    if prompt is not None:
        obj["prompt_eval_count"] = prompt
    if completion is not None:
        obj["eval_count"] = completion
    return obj


HELLO = [token("Hello"), token(" there"), token(" friend"), line(final())]


def stream_reply(*chunks: bytes | float, hang: bool = False) -> Reply:
    return Reply(chunks=list(chunks), hang=hang, content_type=NDJSON)


def error_reply(status: int, message: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status=status, headers=headers or {}, chunks=[line({"error": message})], content_type=JSON)


def model(base_url: str, **extra: Any) -> dict[str, Any]:
    upstream = {
        "retries": 0,
        "backoff_seconds": 0.0,
        "cooldown_after_failures": 10,
        **extra.pop("upstream", {}),
    }
    return {
        "id": "llama",
        "provider": "ollama",
        "upstream_model": "llama3.2:3b",
        "base_url": base_url,
        "upstream": upstream,
        **extra,
    }


@pytest.fixture
async def fake(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    return await start_fake(aiohttp_server)


async def collect(
    target: str, **fields: Any
) -> tuple[list[completions_pb2.StreamCompletionResponse], grpc.aio.AioRpcError | None]:
    """The chunks of a StreamCompletion and the error it ended with, if any."""
    chunks = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.StreamCompletionRequest(model="llama", **fields)
        try:
            async for chunk in stub.StreamCompletion(request):
                chunks.append(chunk)
        except grpc.aio.AioRpcError as exc:
            return chunks, exc
    return chunks, None


async def create(target: str, **fields: Any) -> completions_pb2.CreateCompletionResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        return await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="llama", **fields))


# --- the happy paths --------------------------------------------------------------------------


async def test_stream_relays_tokens_then_usage_and_stop(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO)]
    async with serving([model(url)]) as server:
        chunks, error = await collect(server.grpc_target, prompt="Say hello")
    assert error is None
    assert [c.content for c in chunks[:-1]] == ["Hello", " there", " friend"]
    last = chunks[-1]
    assert last.is_final and last.finish_reason == common_pb2.FINISH_REASON_STOP
    assert (last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens) == (26, 3, 29)


async def test_request_has_ollamas_shape(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO)]
    async with serving([model(url)]) as server:
        await collect(
            server.grpc_target,
            system_instruction="Be brief",
            messages=[
                common_pb2.Message(role="user", content="Hi"),
                common_pb2.Message(role="assistant", content="Hello!"),
            ],
            prompt="Name a colour",
            max_tokens=40,
            temperature=0.2,
            top_p=0.9,
            seed=7,
            stop=["\n\n", "END"],
        )
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert "Authorization" not in sent.headers  # keyless by default: Ollama has no auth
    assert sent.json == {
        "model": "llama3.2:3b",
        "messages": [
            {"role": "system", "content": "Be brief"},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Name a colour"},
        ],
        "stream": True,
        "options": {"num_predict": 40, "temperature": 0.2, "top_p": 0.9, "seed": 7, "stop": ["\n\n", "END"]},
    }


async def test_unset_options_are_left_to_the_model_and_the_id_is_the_default_name(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO)]
    config = {**model(url), "upstream_model": "", "default_max_tokens": 99}
    async with serving([config]) as server:
        await collect(server.grpc_target, prompt="hi")
    assert upstream.requests[-1].json["model"] == "llama"
    assert upstream.requests[-1].json["options"] == {"num_predict": 99}


async def test_create_completion_asks_for_one_whole_answer(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    whole = final("length", prompt=11, completion=5)
    whole["message"] = {"role": "assistant", "content": "Blue is calm", "thinking": "Pick one."}
    upstream.replies = [Reply(chunks=[json.dumps(whole).encode()], content_type=JSON)]
    async with serving([model(url)]) as server:
        reply = await create(server.grpc_target, prompt="Name a colour")
    assert upstream.requests[-1].json["stream"] is False
    assert (reply.content, reply.thinking) == ("Blue is calm", "Pick one.")
    assert reply.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (11, 5)


async def test_thinking_streams_apart_from_content(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(token("", "Let me"), token("", " think."), token("Four"), line(final()))]
    async with serving([model(url)]) as server:
        chunks, error = await collect(server.grpc_target, prompt="2+2?")
    assert error is None
    assert "".join(c.thinking for c in chunks) == "Let me think."
    assert "".join(c.content for c in chunks) == "Four"


async def test_length_maps_to_finish_reason_length(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(token("Once upon"), line(final("length", completion=2)))]
    async with serving([model(url)]) as server:
        chunks, _ = await collect(server.grpc_target, prompt="story", max_tokens=2)
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_usage_is_counted_approximately_when_ollama_reports_none(
    fake: tuple[FakeUpstream, str],
) -> None:
    # Ollama omits prompt_eval_count when the prompt came from its cache.
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO[:-1], line(final(prompt=None, completion=None)))]
    async with serving([model(url)]) as server:
        chunks, _ = await collect(server.grpc_target, prompt="Say hello to me")
    # The shared estimate: ~4 characters a token, plus a few per message for the chat template.
    generated = "".join(c.content + c.thinking for c in chunks)
    expected = (estimate_tokens("Say hello to me") + 4, estimate_tokens(generated))
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == expected


async def test_images_go_inline_as_base64(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO)]
    png = b"\x89PNG\r\n\x1a\n-pixels-"
    image = common_pb2.FileData(type="image", mime_type="image/png", content=png)
    async with serving([model(url, capabilities=["text", "image"])]) as server:
        _, error = await collect(server.grpc_target, prompt="What is it?", file_data=image)
    assert error is None
    assert upstream.requests[-1].json["messages"] == [
        {"role": "user", "content": "What is it?", "images": [base64.b64encode(png).decode()]}
    ]


async def test_other_attachments_are_refused_naming_the_capability(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    audio = common_pb2.FileData(type="audio", mime_type="audio/wav", content=b"RIFF....WAVE")
    async with serving([model(url, capabilities=["text", "audio"])]) as server:
        _, error = await collect(server.grpc_target, prompt="Transcribe", file_data=audio)
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "CAPABILITY_MISSING"
    assert "'audio'" in error.details()
    assert upstream.requests == []


# --- keys -------------------------------------------------------------------------------------


async def test_key_goes_only_into_the_bearer_header(
    fake: tuple[FakeUpstream, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    upstream, url = fake
    secret = "olk-very-secret-0123456789"
    monkeypatch.setenv("OLLAMA_PROXY_KEY", secret)
    upstream.replies = [stream_reply(*HELLO), error_reply(401, "invalid key")]
    caplog.set_level(logging.DEBUG)
    async with serving([model(url, api_key_env="OLLAMA_PROXY_KEY")]) as server:
        _, ok = await collect(server.grpc_target, prompt="hi")
        _, refused = await collect(server.grpc_target, prompt="hi")
    assert ok is None
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {secret}"
    assert secret not in upstream.requests[0].path + json.dumps(upstream.requests[0].query)
    assert refused is not None and refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(refused).reason == "UPSTREAM_AUTH_FAILED"
    assert secret not in refused.details() and secret not in str(rich_status(refused))
    assert caplog.records and secret not in caplog.text


async def test_a_missing_key_variable_stops_start_up_naming_it(
    fake: tuple[FakeUpstream, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, url = fake
    monkeypatch.delenv("OLLAMA_PROXY_KEY", raising=False)
    with pytest.raises(ProviderStartError, match=r"llama \(OLLAMA_PROXY_KEY\)"):
        async with serving([model(url, api_key_env="OLLAMA_PROXY_KEY")]):
            pass
    assert upstream.requests == []


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "reason"),
    [
        (404, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_REJECTED"),
        (400, grpc.StatusCode.FAILED_PRECONDITION, "UPSTREAM_REJECTED"),
        (500, grpc.StatusCode.UNAVAILABLE, "UPSTREAM_UNAVAILABLE"),
    ],
)
async def test_an_error_before_the_first_token_carries_ollamas_message(
    fake: tuple[FakeUpstream, str], status: int, code: grpc.StatusCode, reason: str
) -> None:
    upstream, url = fake
    said = 'model "llama3.2:3b" not found, try pulling it first'
    upstream.replies = [error_reply(status, said)]
    async with serving([model(url)]) as server:
        chunks, error = await collect(server.grpc_target, prompt="hi")
    assert chunks == [] and error is not None
    assert error.code() == code
    info = error_info(error)
    assert (info.reason, info.metadata["upstream_status"], info.metadata["provider"]) == (
        reason,
        str(status),
        "ollama",
    )
    assert said in error.details()
    assert '{"error"' not in error.details()  # the message, not the JSON around it


async def test_an_error_line_mid_stream_ends_the_stream_unavailable(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        stream_reply(token("Hello"), token(" there"), line({"error": "CUDA error: out of memory"}))
    ]
    async with serving(
        [model(url, upstream={"retries": 2})],
    ) as server:
        chunks, error = await collect(server.grpc_target, prompt="hi")
    assert [c.content for c in chunks] == ["Hello", " there"]
    assert not any(c.is_final for c in chunks)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_ERROR"
    assert "CUDA error: out of memory" in error.details()
    assert len(upstream.requests) == 1  # nothing retried after a token: answers are never spliced


async def test_429_is_retried_after_retry_after_then_succeeds(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        error_reply(429, "server busy, please try again", {"Retry-After": "0"}),
        stream_reply(*HELLO),
    ]
    async with serving([model(url, upstream={"retries": 2})]) as server:
        chunks, error = await collect(server.grpc_target, prompt="hi")
    assert error is None
    assert "".join(c.content for c in chunks) == "Hello there friend"
    assert len(upstream.requests) == 2


async def test_429_with_retries_exhausted_is_resource_exhausted_with_retry_info(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [error_reply(429, "server busy, please try again", {"Retry-After": "7"})]
    async with serving([model(url)]) as server:
        _, error = await collect(server.grpc_target, prompt="hi")
    assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(error).reason == "UPSTREAM_RATE_LIMITED"
    assert "server busy" in error.details()
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in rich_status(error).details)
    assert retry.retry_delay.seconds == 7


async def test_no_first_token_in_time_is_upstream_timeout(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(hang=True)]
    async with serving([model(url, upstream={"ttft_timeout_seconds": 0.3})]) as server:
        chunks, error = await collect(server.grpc_target, prompt="hi")
    assert chunks == [] and error is not None
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_TIMEOUT"
    assert await upstream.wait_disconnected()


async def test_a_silent_stream_is_upstream_timeout_after_its_tokens(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(token("Hello"), hang=True)]
    async with serving([model(url, upstream={"idle_timeout_seconds": 0.3})]) as server:
        chunks, error = await collect(server.grpc_target, prompt="hi")
    assert [c.content for c in chunks] == ["Hello"]
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_TIMEOUT"


@pytest.mark.parametrize(
    "garbage",
    [
        b"<html>502 Bad Gateway</html>\n",
        b'{"message":{"role":"assistant","content":"Hel',  # cut off: the body ends mid-line
        b'["not", "an", "object"]\n',
        b'{"message":{"role":"assistant","content":7},"done":false}\n',
    ],
)
async def test_a_malformed_line_is_a_protocol_error(fake: tuple[FakeUpstream, str], garbage: bytes) -> None:
    upstream, url = fake
    # The pause keeps "Hello" in a read of its own: a read that holds a bad line fails whole.
    upstream.replies = [stream_reply(token("Hello"), 0.05, garbage)]
    async with serving([model(url)]) as server:
        chunks, error = await collect(server.grpc_target, prompt="hi")
    assert [c.content for c in chunks] == ["Hello"]
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_PROTOCOL_ERROR"


async def test_a_stream_that_ends_without_done_is_a_protocol_error(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(token("Hello"))]
    async with serving([model(url)]) as server:
        chunks, error = await collect(server.grpc_target, prompt="hi")
    assert [c.content for c in chunks] == ["Hello"]
    assert error is not None and error_info(error).reason == "UPSTREAM_PROTOCOL_ERROR"
    assert '"done"' in error.details()


async def test_a_whole_answer_that_is_not_json_is_a_protocol_error(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[b"<html>oops</html>"], content_type="text/html")]
    async with serving([model(url)]) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(server.grpc_target, prompt="hi")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "UPSTREAM_PROTOCOL_ERROR"


async def test_cancelling_the_grpc_stream_closes_the_upstream_connection(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(token("Hello"), hang=True)]
    async with serving([model(url)]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        call = stub.StreamCompletion(completions_pb2.StreamCompletionRequest(model="llama", prompt="hi"))
        first = await call.read()
        assert first.content == "Hello"
        call.cancel()
        assert await upstream.wait_disconnected()


# --- frames, unit -----------------------------------------------------------------------------


def _model() -> ModelConfig:
    config = Config.from_dict({"models": [{"id": "llama", "provider": "ollama"}]})
    return config.models[0]


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
async def test_frames_split_anywhere_parse_the_same(size: int) -> None:
    body = token("Grüße, ") + token("世界") + b"\r\n" + line(final(prompt=5, completion=2))
    provider = OllamaProvider(HttpClient())
    items = [item async for item in provider.parse_stream(_model(), _pieces(body, size))]
    assert items == [Delta("Grüße, "), Delta("世界"), Finish(Usage(5, 2))]


async def test_the_last_line_may_lack_its_newline() -> None:
    body = token("Hi") + line(final()).rstrip(b"\n")
    items = [item async for item in OllamaProvider(HttpClient()).parse_stream(_model(), _pieces(body, 4))]
    assert items[-1] == Finish(Usage(26, 3))


def test_unknown_done_reasons_are_a_stop() -> None:
    items = OllamaProvider(HttpClient()).parse_whole(_model(), final("unload"))
    assert items == [Finish(Usage(26, 3))]


def test_a_whole_answer_without_done_is_refused() -> None:
    with pytest.raises(UpstreamError) as caught:
        OllamaProvider(HttpClient()).parse_whole(_model(), {"message": {"content": "hi"}, "done": False})
    assert caught.value.reason == "UPSTREAM_PROTOCOL_ERROR"
    with pytest.raises(FrameError):
        OllamaProvider(HttpClient()).parse_whole(_model(), ["a list"])


@pytest.mark.parametrize(
    ("body", "said"),
    [
        (b'{"error":"model \\"x\\" not found"}', 'model "x" not found'),
        (b"upstream proxy down", "upstream proxy down"),
        (b'{"detail":"other"}', '{"detail":"other"}'),
    ],
)
def test_error_message_is_ollamas_error_field(body: bytes, said: str) -> None:
    assert OllamaProvider(HttpClient()).error_message(body) == said


# --- model discovery --------------------------------------------------------------------------


TAGS = {
    "models": [
        {
            "name": "gemma3:latest",
            "model": "gemma3:latest",
            "modified_at": "2025-10-03T23:34:03.409490317-07:00",
            "size": 3338801804,
            "digest": "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a",
            "details": {
                "format": "gguf",
                "family": "gemma",
                "families": ["gemma"],
                "parameter_size": "4.3B",
                "quantization_level": "Q4_K_M",
            },
        },
        {"name": "llama3.2:3b", "model": "llama3.2:3b", "size": 2019393189, "details": {}},
    ]
}


async def test_discover_models_lists_the_pulled_names(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[json.dumps(TAGS).encode()], content_type=JSON)]
    client = HttpClient()
    try:
        names = await discover_models(client, url + "/", key="proxy-key")
    finally:
        await client.close()
    assert names == ["gemma3:latest", "llama3.2:3b"]
    assert (upstream.requests[-1].method, upstream.requests[-1].path) == ("GET", "/api/tags")
    assert upstream.requests[-1].headers["Authorization"] == "Bearer proxy-key"


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=500, chunks=[b'{"error":"boom"}'], content_type=JSON), "UPSTREAM_UNAVAILABLE"),
        (Reply(chunks=[b'{"tags":[]}'], content_type=JSON), "UPSTREAM_PROTOCOL_ERROR"),
    ],
)
async def test_discover_models_errors(fake: tuple[FakeUpstream, str], reply: Reply, reason: str) -> None:
    upstream, url = fake
    upstream.replies = [reply]
    client = HttpClient()
    try:
        with pytest.raises(UpstreamError) as caught:
            await discover_models(client, url)
    finally:
        await client.close()
    assert caught.value.reason == reason


async def test_discover_models_from_nowhere_is_unreachable(fake: tuple[FakeUpstream, str]) -> None:
    client = HttpClient()
    try:
        with pytest.raises(UpstreamError) as caught:
            await discover_models(client, "http://127.0.0.1:9")  # discard port: nothing listens
    finally:
        await client.close()
    assert caught.value.reason == "UPSTREAM_UNREACHABLE"
