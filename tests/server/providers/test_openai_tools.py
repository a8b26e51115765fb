"""The `openai` adapter's tools, structured output and embeddings, against a fake upstream speaking
OpenAI's wire format: the exact request JSON it sends, and what it makes of streamed `delta.tool_calls`
fragments, whole answers' `message.tool_calls`, `/embeddings` answers and errors.

The adapter is driven directly (`OpenAIProvider.stream` / `.embed`) over real HTTP to the fake; the
embeddings also through our gRPC EmbeddingService.
"""

from __future__ import annotations

import asyncio
import json
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
    Attachment,
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
from server.providers.http.openai import OpenAIProvider
from server.settings import ModelConfig
from tests.conftest import error_info
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake
from tests.server.providers.test_openai import DONE, KEY, chunk, frame, openai_error, usage_chunk

WEATHER = ToolSpec(
    name="get_weather",
    description="The weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec(name="get_time")  # no description, no parameters
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


def struct(tool_json: dict[str, Any]) -> struct_pb2.Struct:
    """A tool's parameters schema as the proto's Struct."""
    out = struct_pb2.Struct()
    out.update(tool_json["function"]["parameters"])
    return out


def model_entry(base_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "gpt",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "base_url": f"{base_url}/v1",
        "api_key_env": "TEST_OPENAI_KEY",
        "capabilities": ["text", "conversation", "tools", "json", "embedding"],
        "upstream": {"retries": 0, "backoff_seconds": 0.0},
        **extra,
    }


def configured(base_url: str, **extra: Any) -> ModelConfig:
    """The model as the server would see it (its upstream settings merged by the config)."""
    config = Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
            "models": [model_entry(base_url, **extra)],
        }
    )
    return config.models[0]


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)


@pytest.fixture
async def fake(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    return await start_fake(aiohttp_server)


@pytest.fixture
async def provider() -> AsyncIterator[OpenAIProvider]:
    client = HttpClient()
    try:
        yield OpenAIProvider(client)
    finally:
        await client.close()


def ask(*messages: ChatMessage, **fields: Any) -> ChatRequest:
    return ChatRequest(messages=messages or (ChatMessage(Role.USER, "hi"),), max_tokens=64, **fields)


async def run(provider: OpenAIProvider, model: ModelConfig, request: ChatRequest) -> list[StreamItem]:
    return [item async for item in provider.stream(model, request)]


def call_fragment(
    index: int, *, id_: str = "", name: str = "", arguments: str | None = None
) -> dict[str, Any]:
    """One entry of `delta.tool_calls` as OpenAI streams it: id, type and name only in the first."""
    function: dict[str, Any] = {}
    if name:
        function["name"] = name
    if arguments is not None:
        function["arguments"] = arguments
    fragment: dict[str, Any] = {"index": index, "function": function}
    if id_:
        fragment |= {"id": id_, "type": "function"}
    return fragment


def delta_chunk(delta: dict[str, Any]) -> bytes:
    """A chat.completion.chunk with this exact delta (`chunk` leaves a None content out)."""
    return frame(
        {
            "id": "chatcmpl-123",
            "object": "chat.completion.chunk",
            "created": 1694268190,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}],
        }
    )


# OpenAI's stream for two parallel calls: the arguments in many small pieces, finish "tool_calls".
TWO_CALLS = [
    delta_chunk(
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                call_fragment(0, id_="call_DdmO9pD3xa9XTPNJ32zg2hcA", name="get_weather", arguments="")
            ],
            "refusal": None,
        }
    ),
    chunk(tool_calls=[call_fragment(0, arguments='{"ci')]),
    chunk(tool_calls=[call_fragment(0, arguments='ty": "Pa')]),
    chunk(tool_calls=[call_fragment(0, arguments='ris"}')]),
    chunk(tool_calls=[call_fragment(1, id_="call_ABbbN8KLFyQfNGmkkuwX0Uxp", name="get_time", arguments="")]),
    chunk(tool_calls=[call_fragment(1, arguments="{}")]),
    chunk(finish="tool_calls"),
    usage_chunk(80, 40),
    DONE,
]


async def test_tools_choice_and_tool_history_go_in_openais_shape_and_fragments_become_pieces(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=TWO_CALLS)]
    request = ask(
        ChatMessage(Role.SYSTEM, "Use the tools."),
        ChatMessage(Role.USER, "Weather in Oslo?"),
        ChatMessage(
            Role.ASSISTANT,
            "",
            tool_calls=(
                ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),
                ToolCall("call_2", "get_time", ""),
            ),
        ),
        ChatMessage(Role.TOOL, '{"temp": -3}', tool_call_id="call_1", tool_name="get_weather"),
        ChatMessage(Role.TOOL, "12:00", tool_call_id="call_2", tool_name="get_time"),
        ChatMessage(Role.ASSISTANT, "Cold, at noon.", tool_calls=(ToolCall("call_3", "get_time", "{}"),)),
        ChatMessage(Role.TOOL, "12:01", tool_call_id="call_3"),
        ChatMessage(Role.USER, "And Paris?"),
        tools=(WEATHER, CLOCK),
        tool_choice=ToolChoice(ToolMode.REQUIRED),
    )
    items = await run(provider, configured(url), request)

    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.json == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "Weather in Oslo?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": -3}'},
            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"},
            {
                "role": "assistant",
                "content": "Cold, at noon.",
                "tool_calls": [
                    {"id": "call_3", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_3", "content": "12:01"},
            {"role": "user", "content": "And Paris?"},
        ],
        "max_tokens": 64,
        "stream": True,
        "stream_options": {"include_usage": True},
        "tools": [WEATHER_JSON, CLOCK_JSON],
        "tool_choice": "required",
    }

    pieces = [p for item in items if isinstance(item, Delta) for p in item.tool_calls]
    assert pieces == [
        ToolCallPiece(0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", ""),
        ToolCallPiece(0, "", "", '{"ci'),
        ToolCallPiece(0, "", "", 'ty": "Pa'),
        ToolCallPiece(0, "", "", 'ris"}'),
        ToolCallPiece(1, "call_ABbbN8KLFyQfNGmkkuwX0Uxp", "get_time", ""),
        ToolCallPiece(1, "", "", "{}"),
    ]
    assert all(not item.content for item in items if isinstance(item, Delta))
    assert items[-1] == Finish(Usage(80, 40), FinishReason.TOOL_CALLS)


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (ToolChoice(ToolMode.AUTO), None),  # every server's default with tools: left out
        (ToolChoice(ToolMode.NONE), "none"),
        (ToolChoice(ToolMode.REQUIRED), "required"),
        (ToolChoice(ToolMode.TOOL, "get_time"), {"type": "function", "function": {"name": "get_time"}}),
    ],
    ids=["auto", "none", "required", "tool"],
)
async def test_tool_choice_in_each_mode(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider, choice: ToolChoice, expected: Any
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[chunk("ok"), chunk(finish="stop"), DONE])]
    await run(provider, configured(url), ask(tools=(WEATHER, CLOCK), tool_choice=choice))
    sent = upstream.requests[-1].json
    assert sent["tools"] == [WEATHER_JSON, CLOCK_JSON]
    assert sent.get("tool_choice") == expected


async def test_a_strict_function_goes_strict(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[chunk("ok"), chunk(finish="stop"), DONE])]
    strict = ToolSpec(WEATHER.name, WEATHER.description, WEATHER.parameters, strict=True)
    await run(provider, configured(url), ask(tools=(strict, CLOCK)))
    sent = upstream.requests[-1].json["tools"]
    assert sent == [{**WEATHER_JSON, "function": {**WEATHER_JSON["function"], "strict": True}}, CLOCK_JSON]


async def test_no_tools_sends_neither_tools_nor_tool_choice(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[chunk("ok"), chunk(finish="stop"), DONE])]
    await run(provider, configured(url), ask(tool_choice=ToolChoice(ToolMode.NONE)))
    assert not {"tools", "tool_choice", "response_format"} & set(upstream.requests[-1].json)


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (ResponseFormat(FormatType.JSON_OBJECT), {"type": "json_object"}),
        (
            ResponseFormat(
                FormatType.JSON_SCHEMA,
                schema={"type": "object", "properties": {"answer": {"type": "integer"}}},
                name="math",
                strict=True,
            ),
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "math",
                    "schema": {"type": "object", "properties": {"answer": {"type": "integer"}}},
                    "strict": True,
                },
            },
        ),
        (
            ResponseFormat(FormatType.JSON_SCHEMA, schema={"type": "object"}, name=""),
            {
                "type": "json_schema",
                "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": False},
            },
        ),
    ],
    ids=["json_object", "json_schema", "json_schema-unnamed"],
)
async def test_response_format(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider, fmt: ResponseFormat, expected: dict[str, Any]
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[chunk('{"answer": 4}'), chunk(finish="stop"), DONE])]
    items = await run(provider, configured(url), ask(response_format=fmt, stream=True))
    assert upstream.requests[-1].json["response_format"] == expected
    assert "".join(i.content for i in items if isinstance(i, Delta)) == '{"answer": 4}'


def whole_reply(message: dict[str, Any], finish: str, *, prompt: int = 10, completion: int = 5) -> Reply:
    """A chat.completion object, as OpenAI answers with stream false."""
    body = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        },
    }
    return Reply(chunks=[json.dumps(body).encode()], content_type="application/json")


async def test_a_whole_answers_tool_calls_with_a_forced_choices_stop_are_tool_calls(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    message = {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {
                "id": "call_12345xyz",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
            }
        ],
    }
    # "stop" is what OpenAI says when tool_choice named the function.
    upstream.replies = [whole_reply(message, "stop", prompt=82, completion=17)]
    request = ask(tools=(WEATHER,), tool_choice=ToolChoice(ToolMode.TOOL, "get_weather"), stream=False)
    items = await run(provider, configured(url), request)
    assert upstream.requests[-1].json["tool_choice"] == {
        "type": "function",
        "function": {"name": "get_weather"},
    }
    assert items == [
        Delta(tool_calls=(ToolCallPiece(0, "call_12345xyz", "get_weather", '{"city":"Paris"}'),)),
        Finish(Usage(82, 17), FinishReason.TOOL_CALLS),
    ]


async def test_ids_and_names_repeated_in_every_fragment_are_passed_on_once(provider: OpenAIProvider) -> None:
    # Some OpenAI-compatible servers repeat id and name in each fragment (and set finish "stop"):
    # a client that joins the pieces' strings must still see each once.
    body = b"".join(
        [
            chunk(tool_calls=[call_fragment(0, id_="call_a", name="get_time", arguments='{"tz"')]),
            chunk(tool_calls=[call_fragment(0, id_="call_a", name="get_time", arguments=': "UTC"}')]),
            chunk(finish="stop"),
            DONE,
        ]
    )

    async def pieces() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 5):
            yield body[i : i + 5]
            await asyncio.sleep(0)

    model = ModelConfig(id="m", provider="openai", upstream_model="up")
    items = [item async for item in provider.parse_stream(model, pieces())]
    assert [p for i in items if isinstance(i, Delta) for p in i.tool_calls] == [
        ToolCallPiece(0, "call_a", "get_time", '{"tz"'),
        ToolCallPiece(0, "", "", ': "UTC"}'),
    ]
    assert isinstance(items[-1], Finish) and items[-1].reason == FinishReason.TOOL_CALLS


async def test_a_stream_of_only_tool_calls_is_under_the_idle_timeout_not_the_first_token_one(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    # The first fragment is the first token: a pause after it longer than ttft_timeout_seconds (but
    # within idle_timeout_seconds) must not fail the answer.
    upstream, url = fake
    upstream.replies = [
        Reply(
            chunks=[
                chunk(tool_calls=[call_fragment(0, id_="call_x", name="get_time", arguments="{")]),
                0.6,
                chunk(tool_calls=[call_fragment(0, arguments="}")]),
                chunk(finish="tool_calls"),
                DONE,
            ]
        )
    ]
    model = configured(url, upstream={"retries": 0, "ttft_timeout_seconds": 0.4, "idle_timeout_seconds": 5})
    items = await run(provider, model, ask(tools=(CLOCK,)))
    finish = items[-1]
    assert isinstance(finish, Finish) and finish.reason == FinishReason.TOOL_CALLS
    assert finish.usage.completion_tokens > 0  # estimated from the call, not zero


async def test_an_upstream_400_on_tools_is_rejected_with_its_message(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    upstream.replies = [
        openai_error(
            400,
            "Invalid schema for function 'get_weather': None is not of type 'object'.",
            "invalid_request_error",
            "invalid_function_parameters",
        )
    ]
    with pytest.raises(UpstreamError) as caught:
        await run(provider, configured(url), ask(tools=(WEATHER,)))
    assert caught.value.reason == "UPSTREAM_REJECTED"
    assert caught.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "Invalid schema for function 'get_weather'" in caught.value.message
    assert len(upstream.requests) == 1


# --- embeddings -------------------------------------------------------------------------------


def embedding_reply(
    vectors: list[list[float]], *, prompt: int | None = 8, order: list[int] | None = None
) -> Reply:
    indexes = order if order is not None else list(range(len(vectors)))
    body: dict[str, Any] = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": vectors[i]} for i in indexes],
        "model": "text-embedding-3-small",
    }
    if prompt is not None:
        body["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return Reply(chunks=[json.dumps(body).encode()], content_type="application/json")


async def test_embed_sends_openais_request_and_orders_the_vectors_by_index(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    upstream.replies = [embedding_reply([[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]], prompt=5, order=[1, 0])]
    result = await provider.embed(
        configured(url, upstream_model="text-embedding-3-small"),
        ["first text", "second"],
        dimensions=3,
        deadline=time.monotonic() + 10,
    )
    assert result.vectors == [[0.1, -0.2, 0.3], [1.0, 0.0, -1.0]]
    assert result.prompt_tokens == 5
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/embeddings")
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.json == {
        "model": "text-embedding-3-small",
        "input": ["first text", "second"],
        "encoding_format": "float",
        "dimensions": 3,
    }


async def test_embed_without_dimensions_or_usage(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    upstream.replies = [embedding_reply([[0.5, 0.5]], prompt=None)]  # llama.cpp's older server: no usage
    result = await provider.embed(configured(url), ["abcdefgh"], dimensions=None, deadline=None)
    assert result.vectors == [[0.5, 0.5]]
    assert result.prompt_tokens == 2  # estimated
    assert "dimensions" not in upstream.requests[-1].json


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (
            openai_error(400, "This model does not support specifying dimensions.", "invalid_request_error"),
            "UPSTREAM_REJECTED",
        ),
        (
            openai_error(401, f"Incorrect API key provided: {KEY}.", "invalid_request_error"),
            "UPSTREAM_AUTH_FAILED",
        ),
        (openai_error(503, "The server is overloaded.", "server_error"), "UPSTREAM_UNAVAILABLE"),
        (embedding_reply([[0.1, 0.2]]), "UPSTREAM_PROTOCOL_ERROR"),  # one vector for two texts
        (Reply(chunks=[b'{"data": "nope"}'], content_type="application/json"), "UPSTREAM_PROTOCOL_ERROR"),
    ],
    ids=["400", "401-echoing-the-key", "503", "too-few", "bad-shape"],
)
async def test_embed_errors_are_mapped_as_a_chats(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider, reply: Reply, reason: str
) -> None:
    upstream, url = fake
    upstream.replies = [reply]
    with pytest.raises(ApiError) as caught:
        await provider.embed(configured(url), ["one", "two"], dimensions=None, deadline=None)
    assert caught.value.reason == reason
    assert KEY not in str(caught.value) and KEY[:12] not in caught.value.message
    assert len(upstream.requests) == 1  # not retried


async def test_embed_stops_at_the_deadline(fake: tuple[FakeUpstream, str], provider: OpenAIProvider) -> None:
    upstream, url = fake
    upstream.replies = [Reply(hang=True, content_type="application/json")]
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await provider.embed(configured(url), ["x"], dimensions=None, deadline=time.monotonic() + 0.3)
    assert time.monotonic() - started < 2
    assert await upstream.wait_disconnected()


async def test_embeddings_through_grpc(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [embedding_reply([[0.25, 0.75], [0.5, -0.5]], prompt=6)]
    async with serving([model_entry(url)]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
            reply = await stub.CreateEmbeddings(
                embeddings_pb2.CreateEmbeddingsRequest(model="gpt", input=["a", "b"], dimensions=2)
            )
            upstream.replies = [
                openai_error(404, "The model `gpt-4o-mini` does not exist.", "invalid_request_error")
            ]
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateEmbeddings(embeddings_pb2.CreateEmbeddingsRequest(model="gpt", input=["a"]))
    assert [(e.index, list(e.values)) for e in reply.embeddings] == [(0, [0.25, 0.75]), (1, [0.5, -0.5])]
    assert reply.usage.prompt_tokens == 6
    assert upstream.requests[0].json["dimensions"] == 2
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "UPSTREAM_REJECTED"
    assert "does not exist" in caught.value.details()


# --- through our gRPC API ---------------------------------------------------------------------


async def test_a_tool_round_trip_through_grpc(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(chunks=TWO_CALLS),
        whole_reply({"role": "assistant", "content": "It is 12 degrees in Paris."}, "stop"),
    ]
    tools = [
        common_pb2.Tool(
            name="get_weather", description="The weather in a city", parameters=struct(WEATHER_JSON)
        ),
        common_pb2.Tool(name="get_time"),
    ]
    async with serving([model_entry(url)]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            first = [
                c
                async for c in stub.StreamCompletion(
                    completions_pb2.StreamCompletionRequest(
                        model="gpt", prompt="Weather in Paris?", tools=tools
                    )
                )
            ]
            calls = [d for c in first for d in c.tool_calls]
            answer = await stub.CreateCompletion(
                completions_pb2.CreateCompletionRequest(
                    model="gpt",
                    tools=tools,
                    messages=[
                        common_pb2.Message(role="user", content="Weather in Paris?"),
                        common_pb2.Message(
                            role="assistant",
                            tool_calls=[
                                common_pb2.ToolCall(
                                    id="call_DdmO9pD3xa9XTPNJ32zg2hcA",
                                    name="get_weather",
                                    arguments="".join(d.arguments for d in calls if d.index == 0),
                                )
                            ],
                        ),
                        common_pb2.Message(
                            role="tool", tool_call_id="call_DdmO9pD3xa9XTPNJ32zg2hcA", content='{"temp": 12}'
                        ),
                    ],
                )
            )
    assert [(d.index, d.id, d.name, d.arguments) for d in calls] == [
        (0, "call_DdmO9pD3xa9XTPNJ32zg2hcA", "get_weather", ""),
        (0, "", "", '{"ci'),
        (0, "", "", 'ty": "Pa'),
        (0, "", "", 'ris"}'),
        (1, "call_ABbbN8KLFyQfNGmkkuwX0Uxp", "get_time", ""),
        (1, "", "", "{}"),
    ]
    assert first[-1].is_final and first[-1].finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert upstream.requests[0].json["tools"][1] == CLOCK_JSON
    assert upstream.requests[1].json["messages"][1:] == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "content": '{"temp": 12}'},
    ]
    assert answer.content == "It is 12 degrees in Paris."
    assert answer.finish_reason == common_pb2.FINISH_REASON_STOP


async def test_an_image_in_a_tool_result_is_refused(
    fake: tuple[FakeUpstream, str], provider: OpenAIProvider
) -> None:
    upstream, url = fake
    request = ask(
        ChatMessage(Role.USER, "Draw it"),
        ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("call_1", "get_time", "{}"),)),
        ChatMessage(
            Role.TOOL,
            "here",
            attachments=(Attachment("image", "image/png", b"\x89PNG"),),
            tool_call_id="call_1",
        ),
        tools=(CLOCK,),
    )
    with pytest.raises(InvalidArgument) as caught:
        await run(provider, configured(url), request)
    assert caught.value.reason == "CAPABILITY_MISSING"
    assert "in a tool result" in caught.value.message
    assert upstream.requests == []


async def test_unindexed_calls_are_told_apart_by_their_ids(provider: OpenAIProvider) -> None:
    # Gemini's OpenAI-compatible layer: each call whole in its own chunk, without `index`.
    def whole(id_: str, name: str, arguments: str) -> dict[str, Any]:
        return {"id": id_, "type": "function", "function": {"name": name, "arguments": arguments}}

    body = b"".join(
        [
            chunk(tool_calls=[whole("call_w", "get_weather", '{"city":"Oslo"}')]),
            chunk(tool_calls=[whole("call_t", "get_time", "{}")]),
            chunk(tool_calls=[{"function": {"arguments": ""}}]),  # no id: the latest call's
            chunk(finish="tool_calls"),
            DONE,
        ]
    )

    async def one() -> AsyncIterator[bytes]:
        yield body

    model = ModelConfig(id="m", provider="openai", upstream_model="up")
    items = [item async for item in provider.parse_stream(model, one())]
    assert [p for i in items if isinstance(i, Delta) for p in i.tool_calls] == [
        ToolCallPiece(0, "call_w", "get_weather", '{"city":"Oslo"}'),
        ToolCallPiece(1, "call_t", "get_time", "{}"),
        ToolCallPiece(1, "", "", ""),
    ]
