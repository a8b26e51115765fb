"""The `ollama` adapter's tools, `format` and embeddings, against a fake speaking Ollama's /api/chat
NDJSON and /api/embed: the exact request JSON, what it makes of `message.tool_calls`, and the refusals
of what Ollama cannot do (tool_choice required or named, arguments that are not an object).

The adapter is driven directly (`OllamaProvider.stream` / `.embed`) over real HTTP to the fake; the
embeddings also through our gRPC EmbeddingService.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc, embeddings_pb2, embeddings_pb2_grpc
from common.enums import FinishReason
from common.errors import ApiError, DeadlineExceeded, InvalidArgument
from server.config import Config
from server.providers.base import (
    ChatMessage,
    ChatRequest,
    Delta,
    Finish,
    FormatType,
    ResponseFormat,
    Role,
    StreamItem,
    ToolCall,
    ToolCallPiece,
    ToolChoice,
    ToolMode,
    ToolSpec,
    Usage,
)
from server.providers.http.base import HttpClient
from server.providers.http.errors import UpstreamError
from server.providers.http.ollama import OllamaProvider
from server.settings import ModelConfig
from tests.conftest import error_info
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake
from tests.server.providers.test_ollama import CREATED, JSON, error_reply, final, line, stream_reply, token

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec(name="get_time")
WEATHER_JSON = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CLOCK_JSON = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


def model_entry(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "llama",
        "provider": "ollama",
        "upstream_model": "llama3.2:3b",
        "base_url": base_url,
        "capabilities": ["text", "conversation", "tools", "json", "embedding"],
        "upstream": {"retries": 0, "backoff_seconds": 0.0},
        **extra,
    }


def configured(base_url: str, **extra: Any) -> ModelConfig:
    config = Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
            "models": [model_entry(base_url, **extra)],
        }
    )
    return config.models[0]


@pytest.fixture
async def fake(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    return await start_fake(aiohttp_server)


@pytest.fixture
async def provider() -> AsyncIterator[OllamaProvider]:
    client = HttpClient()
    try:
        yield OllamaProvider(client)
    finally:
        await client.close()


def ask(*messages: ChatMessage, **fields: Any) -> ChatRequest:
    return ChatRequest(messages=messages or (ChatMessage(Role.USER, "hi"),), max_tokens=64, **fields)


async def run(provider: OllamaProvider, model: ModelConfig, request: ChatRequest) -> list[StreamItem]:
    return [item async for item in provider.stream(model, request)]


def calls_line(*calls: dict[str, Any]) -> bytes:
    """The line in which Ollama hands over the tool calls it parsed: whole, content empty."""
    return line(
        {
            "model": "llama3.2",
            "created_at": CREATED,
            "message": {"role": "assistant", "content": "", "tool_calls": list(calls)},
            "done": False,
        }
    )


HELLO = [token("Hello"), line(final())]


async def test_tools_and_tool_history_go_in_ollamas_shape(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider
) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO)]
    request = ask(
        ChatMessage(Role.USER, "Weather in Oslo, and the time?"),
        ChatMessage(
            Role.ASSISTANT,
            "Let me look.",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city": "Oslo", "days": [1, 2]}'),
                ToolCall("", "get_time", ""),  # no id, no arguments
            ),
        ),
        ChatMessage(Role.TOOL, '{"temp": -3}', tool_call_id="call_1", tool_name="get_weather"),
        ChatMessage(Role.TOOL, "12:00", tool_name="get_time"),
        ChatMessage(Role.USER, "Thanks"),
        tools=(WEATHER, CLOCK),
    )
    await run(provider, configured(url), request)
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.json == {
        "model": "llama3.2:3b",
        "messages": [
            {"role": "user", "content": "Weather in Oslo, and the time?"},
            {
                "role": "assistant",
                "content": "Let me look.",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "function": {"name": "get_weather", "arguments": {"city": "Oslo", "days": [1, 2]}},
                    },
                    {"function": {"name": "get_time", "arguments": {}}},
                ],
            },
            {"role": "tool", "content": '{"temp": -3}', "tool_name": "get_weather", "tool_call_id": "call_1"},
            {"role": "tool", "content": "12:00", "tool_name": "get_time"},
            {"role": "user", "content": "Thanks"},
        ],
        "stream": True,
        "options": {"num_predict": 64},
        "tools": [WEATHER_JSON, CLOCK_JSON],
    }


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (ResponseFormat(FormatType.JSON_OBJECT), "json"),
        (
            ResponseFormat(
                FormatType.JSON_SCHEMA,
                schema={"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]},
                name="person",
                strict=True,
            ),
            {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]},
        ),
    ],
    ids=["json_object", "json_schema"],
)
async def test_response_format_is_ollamas_format(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider, fmt: ResponseFormat, expected: Any
) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(token('{"age": 22}'), line(final()))]
    items = await run(provider, configured(url), ask(response_format=fmt))
    assert upstream.requests[-1].json["format"] == expected
    assert [i.content for i in items if isinstance(i, Delta)] == ['{"age": 22}']


async def test_no_tools_and_no_format_send_neither(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider
) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO)]
    await run(provider, configured(url), ask())
    assert not {"tools", "format"} & set(upstream.requests[-1].json)


async def test_tool_choice_none_sends_no_tools(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider
) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(*HELLO)]
    await run(provider, configured(url), ask(tools=(WEATHER,), tool_choice=ToolChoice(ToolMode.NONE)))
    assert "tools" not in upstream.requests[-1].json


@pytest.mark.parametrize(
    "choice",
    [ToolChoice(ToolMode.REQUIRED), ToolChoice(ToolMode.TOOL, "get_weather")],
    ids=["required", "tool"],
)
async def test_a_tool_choice_ollama_cannot_honour_is_refused(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider, choice: ToolChoice
) -> None:
    upstream, url = fake
    with pytest.raises(InvalidArgument) as caught:
        await run(provider, configured(url), ask(tools=(WEATHER,), tool_choice=choice))
    assert caught.value.reason == "UNSUPPORTED_PARAMETER"
    assert caught.value.field == "tool_choice"
    assert upstream.requests == []


@pytest.mark.parametrize("arguments", ['["Oslo"]', "not json", '"Oslo"'])
async def test_history_arguments_that_are_not_an_object_are_refused(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider, arguments: str
) -> None:
    upstream, url = fake
    request = ask(
        ChatMessage(Role.USER, "hi"),
        ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("call_9", "get_weather", arguments),)),
        ChatMessage(Role.TOOL, "cold", tool_call_id="call_9", tool_name="get_weather"),
        tools=(WEATHER,),
    )
    with pytest.raises(InvalidArgument) as caught:
        await run(provider, configured(url), request)
    assert caught.value.field == "tool_calls.arguments"
    assert "call_9" in caught.value.message
    assert upstream.requests == []


async def test_streamed_tool_calls_become_whole_pieces_with_ids_and_finish_tool_calls(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider
) -> None:
    upstream, url = fake
    upstream.replies = [
        stream_reply(
            token("", thinking="The user wants weather."),
            calls_line({"function": {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C"}}}),
            calls_line(
                {"id": "call_ollama_7", "function": {"index": 1, "name": "get_time", "arguments": {}}},
            ),
            line(final("stop", prompt=120, completion=31)),
        )
    ]
    items = await run(provider, configured(url), ask(tools=(WEATHER, CLOCK)))
    pieces = [p for i in items if isinstance(i, Delta) for p in i.tool_calls]
    assert [(p.index, p.name) for p in pieces] == [(0, "get_weather"), (1, "get_time")]
    assert re.fullmatch(r"call_[0-9a-f]{24}", pieces[0].id)
    assert pieces[1].id == "call_ollama_7"  # Ollama's own id is kept
    assert json.loads(pieces[0].arguments) == {"city": "Paris", "unit": "°C"}
    assert pieces[1].arguments == "{}"
    assert items[-1] == Finish(Usage(120, 31), FinishReason.TOOL_CALLS)


async def test_a_whole_answers_tool_calls(fake: tuple[FakeUpstream, str], provider: OllamaProvider) -> None:
    upstream, url = fake
    whole = final("stop", prompt=50, completion=12)
    whole["message"] = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
    }
    upstream.replies = [Reply(chunks=[json.dumps(whole).encode()], content_type=JSON)]
    items = await run(provider, configured(url), ask(tools=(WEATHER,), stream=False))
    assert upstream.requests[-1].json["stream"] is False
    assert len(items) == 2
    delta, finish = items
    assert isinstance(delta, Delta) and len(delta.tool_calls) == 1
    assert delta.tool_calls[0] == ToolCallPiece(0, delta.tool_calls[0].id, "get_weather", '{"city": "Oslo"}')
    assert delta.tool_calls[0].id.startswith("call_")
    assert finish == Finish(Usage(50, 12), FinishReason.TOOL_CALLS)


async def test_a_length_stop_after_tool_calls_stays_length(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider
) -> None:
    upstream, url = fake
    upstream.replies = [
        stream_reply(calls_line({"function": {"name": "get_time", "arguments": {}}}), line(final("length")))
    ]
    items = await run(provider, configured(url), ask(tools=(CLOCK,)))
    assert isinstance(items[-1], Finish) and items[-1].reason == FinishReason.LENGTH


@pytest.mark.parametrize(
    "bad",
    [
        {"function": {"arguments": {}}},  # no name
        {"function": {"name": "get_time", "arguments": [1]}},  # arguments neither object nor text
        "get_time",
    ],
)
async def test_a_malformed_tool_call_is_a_protocol_error(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider, bad: Any
) -> None:
    upstream, url = fake
    upstream.replies = [stream_reply(calls_line(bad), line(final()))]
    with pytest.raises(UpstreamError) as caught:
        await run(provider, configured(url), ask(tools=(CLOCK,)))
    assert caught.value.reason == "UPSTREAM_PROTOCOL_ERROR"


async def test_an_upstream_400_on_tools_is_rejected_with_ollamas_message(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider
) -> None:
    upstream, url = fake
    upstream.replies = [error_reply(400, "registry.ollama.ai/library/gemma3:1b does not support tools")]
    with pytest.raises(UpstreamError) as caught:
        await run(provider, configured(url), ask(tools=(WEATHER,)))
    assert caught.value.reason == "UPSTREAM_REJECTED"
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "does not support tools" in caught.value.message
    assert len(upstream.requests) == 1


# --- embeddings -------------------------------------------------------------------------------


def embed_reply(vectors: list[list[float]], prompt: int | None = 14) -> Reply:
    body: dict[str, Any] = {
        "model": "all-minilm",
        "embeddings": vectors,
        "total_duration": 14143917,
        "load_duration": 1019500,
    }
    if prompt is not None:
        body["prompt_eval_count"] = prompt
    return Reply(chunks=[json.dumps(body).encode()], content_type=JSON)


async def test_embed_sends_ollamas_request(fake: tuple[FakeUpstream, str], provider: OllamaProvider) -> None:
    upstream, url = fake
    upstream.replies = [embed_reply([[0.010071029, -0.0017594862], [0.5, 0.25]], prompt=9)]
    result = await provider.embed(
        configured(url, upstream_model="all-minilm"),
        ["Why is the sky blue?", "Why is the grass green?"],
        dimensions=2,
        deadline=time.monotonic() + 10,
    )
    assert result.vectors == [[0.010071029, -0.0017594862], [0.5, 0.25]]
    assert result.prompt_tokens == 9
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/api/embed")
    assert sent.json == {
        "model": "all-minilm",
        "input": ["Why is the sky blue?", "Why is the grass green?"],
        "dimensions": 2,
    }
    assert "Authorization" not in sent.headers


async def test_embed_without_a_count_estimates_it(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider
) -> None:
    upstream, url = fake
    upstream.replies = [embed_reply([[1.0, 2.0, 3.0]], prompt=None)]
    result = await provider.embed(configured(url), ["abcdefgh"], dimensions=None, deadline=None)
    assert result.prompt_tokens == 2
    assert "dimensions" not in upstream.requests[-1].json


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (error_reply(404, 'model "all-minilm" not found, try pulling it first'), "UPSTREAM_REJECTED"),
        (error_reply(400, '"llama3.2:3b" does not support embeddings'), "UPSTREAM_REJECTED"),
        (error_reply(500, "llama runner process has terminated"), "UPSTREAM_UNAVAILABLE"),
        (embed_reply([[1.0], [2.0, 3.0]]), "UPSTREAM_PROTOCOL_ERROR"),  # lengths differ
        (embed_reply([[1.0, 2.0]] * 2), "UPSTREAM_PROTOCOL_ERROR"),  # 2 dimensions, 3 asked for
        (Reply(chunks=[b'{"model": "all-minilm"}'], content_type=JSON), "UPSTREAM_PROTOCOL_ERROR"),
    ],
    ids=["404", "400", "500", "ragged", "dimensions-ignored", "no-embeddings"],
)
async def test_embed_errors(
    fake: tuple[FakeUpstream, str], provider: OllamaProvider, reply: Reply, reason: str
) -> None:
    upstream, url = fake
    upstream.replies = [reply]
    with pytest.raises(ApiError) as caught:
        await provider.embed(configured(url), ["one", "two"], dimensions=3, deadline=None)
    assert caught.value.reason == reason
    assert len(upstream.requests) == 1


async def test_embed_stops_at_the_deadline(fake: tuple[FakeUpstream, str], provider: OllamaProvider) -> None:
    upstream, url = fake
    upstream.replies = [Reply(hang=True, content_type=JSON)]
    with pytest.raises(DeadlineExceeded):
        await provider.embed(configured(url), ["x"], dimensions=None, deadline=time.monotonic() + 0.3)
    assert await upstream.wait_disconnected()


async def test_embeddings_through_grpc(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [embed_reply([[0.125, -0.5]], prompt=4)]
    async with serving([model_entry(url)]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
            reply = await stub.CreateEmbeddings(
                embeddings_pb2.CreateEmbeddingsRequest(model="llama", input=["hi"])
            )
            upstream.replies = [error_reply(404, 'model "llama3.2:3b" not found, try pulling it first')]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateEmbeddings(
                    embeddings_pb2.CreateEmbeddingsRequest(model="llama", input=["hi"])
                )
    assert [(e.index, list(e.values)) for e in reply.embeddings] == [(0, [0.125, -0.5])]
    assert reply.usage.prompt_tokens == 4
    assert upstream.requests[0].json == {"model": "llama3.2:3b", "input": ["hi"]}
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "UPSTREAM_REJECTED"
    assert "try pulling it first" in caught.value.details()


# --- through our gRPC API ---------------------------------------------------------------------


async def test_a_tool_round_trip_through_grpc(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        stream_reply(
            calls_line({"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}),
            line(final("stop", prompt=90, completion=20)),
        ),
        stream_reply(token("12 degrees."), line(final())),
    ]
    parameters = struct_pb2.Struct()
    parameters.update(WEATHER_JSON["function"]["parameters"])
    tools = [common_pb2.Tool(name="get_weather", description="The weather in a city", parameters=parameters)]
    async with serving([model_entry(url)]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            request = completions_pb2.StreamCompletionRequest(model="llama", prompt="Paris?", tools=tools)
            first = [c async for c in stub.StreamCompletion(request)]
            (call,) = [d for c in first for d in c.tool_calls]
            history = [
                common_pb2.Message(role="user", content="Paris?"),
                common_pb2.Message(
                    role="assistant",
                    tool_calls=[common_pb2.ToolCall(id=call.id, name=call.name, arguments=call.arguments)],
                ),
                common_pb2.Message(role="tool", tool_call_id=call.id, content="12"),
            ]
            second = [
                c
                async for c in stub.StreamCompletion(
                    completions_pb2.StreamCompletionRequest(model="llama", messages=history, tools=tools)
                )
            ]
    assert call.index == 0 and call.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert first[-1].finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert upstream.requests[0].json["tools"] == [WEATHER_JSON]
    assert upstream.requests[1].json["messages"][1:] == [
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"id": call.id, "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
            ],
        },
        # tool_name filled from the assistant's call with this id
        {"role": "tool", "content": "12", "tool_name": "get_weather", "tool_call_id": call.id},
    ]
    assert "".join(c.content for c in second) == "12 degrees."
    assert second[-1].finish_reason == common_pb2.FINISH_REASON_STOP


async def test_a_json_schema_through_grpc_is_ollamas_format(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    whole = final()
    whole["message"]["content"] = '{"age": 22}'
    upstream.replies = [Reply(chunks=[json.dumps(whole).encode()], content_type=JSON)]
    schema = struct_pb2.Struct()
    schema.update({"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]})
    async with serving([model_entry(url)]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            reply = await stub.CreateCompletion(
                completions_pb2.CreateCompletionRequest(
                    model="llama",
                    prompt="How old?",
                    response_format=common_pb2.ResponseFormat(
                        type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA, name="person", schema=schema
                    ),
                )
            )
    assert upstream.requests[-1].json["format"] == {
        "type": "object",
        "properties": {"age": {"type": "integer"}},
        "required": ["age"],
    }
    assert json.loads(reply.content) == {"age": 22}
