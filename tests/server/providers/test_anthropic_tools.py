"""The Anthropic adapter's tools, structured output and token counting, against a fake speaking the
Messages API's wire format (tests/server/providers/fake_upstream.py: anthropic_stream, anthropic_message).

The adapter is driven directly, with provider-neutral requests: what a request conversion hands it.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
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
from server.providers.http.anthropic import AnthropicProvider
from server.providers.http.base import HttpClient
from server.providers.http.errors import UpstreamError
from server.services.completions import ToolCalls
from server.settings import ModelConfig
from tests.server.providers.fake_upstream import (
    FakeUpstream,
    Reply,
    anthropic_event,
    anthropic_message,
    anthropic_stream,
    serving,
    start_fake,
)

KEY = "sk-ant-api03-test-Tools-Secret42"
KEY_ENV = "AIBATTLE_TEST_ANTHROPIC_KEY"
UPSTREAM_MODEL = "claude-sonnet-4-5"

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city, now.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = ToolSpec("get_time")  # no description, no arguments

TOOL_STREAM = anthropic_stream(
    [
        {"type": "text", "text": ["Let me", " check both."]},
        {
            "type": "tool_use",
            "id": "toolu_01A",
            "name": "get_weather",
            "input": ['{"ci', 'ty": "Pa', 'ris"}'],
        },
        {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": ["{}"]},
    ],
    stop_reason="tool_use",
    input_tokens=472,
    output_tokens=89,
)


@pytest.fixture
async def fake(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv(KEY_ENV, KEY)
    return await start_fake(aiohttp_server)


def claude(base_url: str) -> ModelConfig:
    config = Config.from_dict(
        {
            "models": [
                {
                    "id": "claude",
                    "provider": "anthropic",
                    "upstream_model": UPSTREAM_MODEL,
                    "base_url": base_url,
                    "api_key_env": KEY_ENV,
                    "capabilities": ["text", "conversation", "tools", "json"],
                    "upstream": {"retries": 0},
                }
            ]
        }
    )
    return config.models[0]


@asynccontextmanager
async def provider() -> AsyncIterator[AnthropicProvider]:
    client = HttpClient()
    try:
        yield AnthropicProvider(client)
    finally:
        await client.close()


def ask(*messages: ChatMessage, **fields: Any) -> ChatRequest:
    return ChatRequest(
        messages=messages or (ChatMessage(Role.USER, "Weather and time in Paris?"),),
        **{
            "max_tokens": 256,
            **fields,
        },
    )


async def run(base_url: str, request: ChatRequest) -> list[StreamItem]:
    async with provider() as anthropic:
        return [item async for item in anthropic.stream(claude(base_url), request)]


def calls(items: list[StreamItem]) -> list[tuple[str, str, str]]:
    """The whole calls the pieces make, as the completion servicer assembles them."""
    assembled = ToolCalls()
    for item in items:
        if isinstance(item, Delta):
            assembled.add(item.tool_calls)
    return [(c.id, c.name, c.arguments) for c in assembled.protos()]


async def test_streamed_tool_use_becomes_pieces_in_order_and_tool_calls(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=TOOL_STREAM)]
    items = await run(url, ask(tools=(WEATHER, CLOCK)))
    assert items == [
        Delta(content="Let me"),
        Delta(content=" check both."),
        Delta(tool_calls=(ToolCallPiece(0, id="toolu_01A", name="get_weather"),)),
        Delta(tool_calls=(ToolCallPiece(0, arguments='{"ci'),)),
        Delta(tool_calls=(ToolCallPiece(0, arguments='ty": "Pa'),)),
        Delta(tool_calls=(ToolCallPiece(0, arguments='ris"}'),)),
        Delta(tool_calls=(ToolCallPiece(1, id="toolu_01B", name="get_time"),)),
        Delta(tool_calls=(ToolCallPiece(1, arguments="{}"),)),
        Finish(Usage(472, 89), FinishReason.TOOL_CALLS),
    ]
    assert calls(items) == [
        ("toolu_01A", "get_weather", '{"city": "Paris"}'),
        ("toolu_01B", "get_time", "{}"),
    ]


async def test_tools_choice_and_tool_history_go_in_anthropics_shape(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=anthropic_stream([{"type": "text", "text": ["Sunny, 14:05."]}]))]
    history = (
        ChatMessage(Role.SYSTEM, "Use the tools."),
        ChatMessage(Role.USER, "Weather and time in Paris?"),
        ChatMessage(
            Role.ASSISTANT,
            "Let me check both.",
            tool_calls=(
                ToolCall("toolu_01A", "get_weather", '{"city": "Paris"}'),
                ToolCall("toolu_01B", "get_time", ""),
            ),
        ),
        ChatMessage(Role.TOOL, '{"sky": "sunny"}', tool_call_id="toolu_01A", tool_name="get_weather"),
        ChatMessage(Role.TOOL, "14:05", tool_call_id="toolu_01B", tool_name="get_time"),
        ChatMessage(Role.USER, "Be short."),
    )
    items = await run(url, ask(*history, tools=(WEATHER, CLOCK), tool_choice=ToolChoice(ToolMode.REQUIRED)))
    assert items[0] == Delta(content="Sunny, 14:05.")
    assert items[-1] == Finish(Usage(25, 15), FinishReason.STOP)
    assert upstream.requests[-1].json == {
        "model": UPSTREAM_MODEL,
        "max_tokens": 256,
        "system": "Use the tools.",
        "messages": [
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check both."},
                    {
                        "type": "tool_use",
                        "id": "toolu_01A",
                        "name": "get_weather",
                        "input": {"city": "Paris"},
                    },
                    {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
                ],
            },
            {
                # Both results and the next question in one user turn: the API wants turns to alternate.
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01A", "content": '{"sky": "sunny"}'},
                    {"type": "tool_result", "tool_use_id": "toolu_01B", "content": "14:05"},
                    {"type": "text", "text": "Be short."},
                ],
            },
        ],
        "stream": True,
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city, now.",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
            {"name": "get_time", "input_schema": {"type": "object", "properties": {}}},
        ],
        "tool_choice": {"type": "any"},
    }


@pytest.mark.parametrize(
    ("choice", "sent"),
    [
        (ToolChoice(), {"type": "auto"}),
        (ToolChoice(ToolMode.NONE), {"type": "none"}),
        (ToolChoice(ToolMode.TOOL, "get_time"), {"type": "tool", "name": "get_time"}),
    ],
)
async def test_tool_choice_modes(fake: tuple[FakeUpstream, str], choice: ToolChoice, sent: Any) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=anthropic_stream([{"type": "text", "text": ["ok"]}]))]
    await run(url, ask(tools=(WEATHER, CLOCK), tool_choice=choice))
    assert upstream.requests[-1].json["tool_choice"] == sent


async def test_whole_message_with_tool_use_blocks(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        anthropic_message(
            [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_01B", "name": "get_time", "input": {}},
            ],
            stop_reason="tool_use",
            input_tokens=40,
            output_tokens=30,
        )
    ]
    items = await run(url, ask(tools=(WEATHER, CLOCK), stream=False))
    assert items == [
        Delta(
            content="Checking.",
            tool_calls=(
                ToolCallPiece(0, "toolu_01A", "get_weather", '{"city": "Paris"}'),
                ToolCallPiece(1, "toolu_01B", "get_time", "{}"),
            ),
        ),
        Finish(Usage(40, 30), FinishReason.TOOL_CALLS),
    ]
    assert upstream.requests[-1].json["stream"] is False


async def test_history_arguments_that_are_not_an_object_are_refused(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    history = (
        ChatMessage(Role.USER, "Weather?"),
        ChatMessage(Role.ASSISTANT, "", tool_calls=(ToolCall("toolu_01A", "get_weather", '["Paris"]'),)),
        ChatMessage(Role.TOOL, "sunny", tool_call_id="toolu_01A"),
    )
    with pytest.raises(InvalidArgument) as caught:
        await run(url, ask(*history, tools=(WEATHER,)))
    assert caught.value.field == "tool_calls.arguments" and "toolu_01A" in caught.value.message
    assert upstream.requests == []


async def test_input_json_delta_outside_a_tool_block_is_a_protocol_error(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    stray = anthropic_event(
        "content_block_delta", index=3, delta={"type": "input_json_delta", "partial_json": '{"a": 1}'}
    )
    upstream.replies = [Reply(chunks=[*TOOL_STREAM[:2], stray])]
    with pytest.raises(UpstreamError) as caught:
        await run(url, ask(tools=(WEATHER,)))
    assert caught.value.reason == "UPSTREAM_PROTOCOL_ERROR"
    assert "input_json_delta outside a tool_use block" in caught.value.message


# --- structured output: a forced tool ----------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
}


async def test_json_schema_is_a_forced_tool_whose_input_streams_as_content(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(
            chunks=anthropic_stream(
                [
                    {
                        "type": "tool_use",
                        "id": "toolu_01F",
                        "name": "weather",
                        "input": ['{"city": "Pa', 'ris", "cel', 'sius": 14}'],
                    }
                ],
                stop_reason="tool_use",
                input_tokens=300,
                output_tokens=20,
            )
        )
    ]
    fmt = ResponseFormat(FormatType.JSON_SCHEMA, SCHEMA, name="weather", strict=True)
    items = await run(url, ask(response_format=fmt))
    assert items == [
        Delta(content='{"city": "Pa'),
        Delta(content='ris", "cel'),
        Delta(content='sius": 14}'),
        Finish(Usage(300, 20), FinishReason.STOP),
    ]
    sent = upstream.requests[-1].json
    assert sent["tools"] == [
        {
            "name": "weather",
            "description": "Give your whole answer as this tool's input, following its schema exactly.",
            "input_schema": SCHEMA,
        }
    ]
    assert sent["tool_choice"] == {"type": "tool", "name": "weather"}
    assert json.loads("".join(i.content for i in items if isinstance(i, Delta))) == {
        "city": "Paris",
        "celsius": 14,
    }


async def test_json_object_whole_answer_is_the_tools_input_as_text(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        anthropic_message(
            [{"type": "tool_use", "id": "toolu_01F", "name": "response", "input": {"answer": 42}}],
            stop_reason="tool_use",
        )
    ]
    items = await run(url, ask(response_format=ResponseFormat(FormatType.JSON_OBJECT), stream=False))
    assert items == [Delta(content='{"answer": 42}'), Finish(Usage(25, 15), FinishReason.STOP)]
    sent = upstream.requests[-1].json
    assert sent["tools"][0]["name"] == "response" and sent["tools"][0]["input_schema"] == {"type": "object"}
    assert sent["tool_choice"] == {"type": "tool", "name": "response"}


async def test_a_cut_off_structured_answer_says_length(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(
            chunks=anthropic_stream(
                [{"type": "tool_use", "id": "toolu_01F", "name": "response", "input": ['{"answer": ']}],
                stop_reason="max_tokens",
            )
        )
    ]
    items = await run(url, ask(response_format=ResponseFormat(FormatType.JSON_OBJECT)))
    assert items[-1] == Finish(Usage(25, 15), FinishReason.LENGTH)


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        (
            {"response_format": ResponseFormat(FormatType.JSON_OBJECT), "tools": (WEATHER,)},
            "cannot combine it with tools",
        ),
        (
            {"response_format": ResponseFormat(FormatType.JSON_SCHEMA, {"type": "array", "items": {}})},
            "only an object schema",
        ),
    ],
    ids=["with-tools", "array-schema"],
)
async def test_structured_output_it_cannot_honour_is_refused_before_sending(
    fake: tuple[FakeUpstream, str], fields: dict[str, Any], words: str
) -> None:
    upstream, url = fake
    with pytest.raises(InvalidArgument) as caught:
        await run(url, ask(**fields))
    assert caught.value.field == "response_format"
    assert caught.value.reason == "UNSUPPORTED_PARAMETER" and words in caught.value.message
    assert upstream.requests == []


# --- count_tokens ------------------------------------------------------------------------------------


async def test_count_tokens_posts_the_prompt_half_of_the_request(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(content_type="application/json", chunks=[b'{"input_tokens":2095}'])]
    request = ask(
        ChatMessage(Role.SYSTEM, "Be brief."),
        ChatMessage(Role.USER, "Weather in Paris?"),
        tools=(WEATHER,),
        temperature=0.2,
    )
    async with provider() as anthropic:
        assert await anthropic.count_tokens(claude(url), request) == 2095
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/v1/messages/count_tokens")
    assert sent.headers["x-api-key"] == KEY and sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.json == {
        "model": UPSTREAM_MODEL,
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": [
            {
                "name": "get_weather",
                "description": "The weather in a city, now.",
                "input_schema": WEATHER.parameters,
            }
        ],
        "tool_choice": {"type": "auto"},
    }


async def test_count_tokens_errors_quote_the_upstream_without_the_key(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    error = {
        "type": "error",
        "error": {"type": "authentication_error", "message": f"invalid x-api-key {KEY}"},
    }
    upstream.replies = [
        Reply(status=401, content_type="application/json", chunks=[json.dumps(error).encode()])
    ]
    async with provider() as anthropic:
        with pytest.raises(ApiError) as caught:
            await anthropic.count_tokens(claude(url), ask())
    assert caught.value.reason == "UPSTREAM_AUTH_FAILED"
    assert "authentication_error: invalid x-api-key" in caught.value.message
    assert KEY not in caught.value.message


async def test_count_tokens_answer_without_a_count_is_a_protocol_error(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(content_type="application/json", chunks=[b'{"tokens":12}'])]
    async with provider() as anthropic:
        with pytest.raises(ApiError) as caught:
            await anthropic.count_tokens(claude(url), ask())
    assert caught.value.reason == "UPSTREAM_PROTOCOL_ERROR"


# --- through the gRPC API ----------------------------------------------------------------------------


def claude_entry(base_url: str) -> dict[str, Any]:
    return {
        "id": "claude",
        "provider": "anthropic",
        "upstream_model": UPSTREAM_MODEL,
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "capabilities": ["text", "conversation", "tools", "json"],
        "upstream": {"retries": 0},
    }


WEATHER_PROTO = common_pb2.Tool(
    name="get_weather",
    description="The weather in a city, now.",
    parameters=json_format.ParseDict(WEATHER.parameters, struct_pb2.Struct()),
)


async def test_a_tool_round_trip_over_grpc(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(
            chunks=anthropic_stream(
                [
                    {
                        "type": "tool_use",
                        "id": "toolu_01A",
                        "name": "get_weather",
                        "input": ['{"city":', ' "Paris"}'],
                    }
                ],
                stop_reason="tool_use",
            )
        ),
        anthropic_message([{"type": "text", "text": "Sunny in Paris."}]),
    ]
    question = common_pb2.Message(role="user", content="Weather in Paris?")
    async with (
        serving([claude_entry(url)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        chunks = [
            chunk
            async for chunk in stub.StreamCompletion(
                completions_pb2.StreamCompletionRequest(
                    model="claude", messages=[question], tools=[WEATHER_PROTO]
                )
            )
        ]
        pieces = [(p.index, p.id, p.name, p.arguments) for c in chunks for p in c.tool_calls]
        assert pieces == [
            (0, "toolu_01A", "get_weather", ""),
            (0, "", "", '{"city":'),
            (0, "", "", ' "Paris"}'),
        ]
        assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
        call = common_pb2.ToolCall(id="toolu_01A", name="get_weather", arguments='{"city": "Paris"}')
        reply = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                model="claude",
                messages=[
                    question,
                    common_pb2.Message(role="assistant", tool_calls=[call]),
                    common_pb2.Message(role="tool", tool_call_id="toolu_01A", content='{"sky": "sunny"}'),
                ],
                tools=[WEATHER_PROTO],
            )
        )
    assert reply.content == "Sunny in Paris." and reply.finish_reason == common_pb2.FINISH_REASON_STOP
    assert upstream.requests[-1].json["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}
            ],
        },
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": "toolu_01A", "content": '{"sky": "sunny"}'}],
        },
    ]


async def test_count_tokens_over_grpc_is_anthropics_count(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(content_type="application/json", chunks=[b'{"input_tokens":413}'])]
    async with (
        serving([claude_entry(url)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        counted = await completions_pb2_grpc.CompletionServiceStub(channel).CountTokens(
            completions_pb2.CountTokensRequest(
                model="claude", prompt="Weather in Paris?", tools=[WEATHER_PROTO]
            )
        )
    assert (counted.input_tokens, counted.estimated) == (413, False)
    assert upstream.requests[-1].path == "/v1/messages/count_tokens"
    assert upstream.requests[-1].json["tools"][0]["name"] == "get_weather"


async def test_response_format_over_grpc_answers_the_forced_tools_input(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(
            chunks=anthropic_stream(
                [
                    {
                        "type": "tool_use",
                        "id": "toolu_01F",
                        "name": "weather",
                        "input": ['{"city": "Paris", ', '"celsius": 14}'],
                    }
                ],
                stop_reason="tool_use",
            )
        )
    ]
    fmt = common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        name="weather",
        schema=json_format.ParseDict(SCHEMA, struct_pb2.Struct()),
    )
    async with (
        serving([claude_entry(url)]) as server,
        grpc.aio.insecure_channel(server.grpc_target) as channel,
    ):
        chunks = [
            chunk
            async for chunk in completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="claude", prompt="Paris?", response_format=fmt)
            )
        ]
    assert json.loads("".join(c.content for c in chunks)) == {"city": "Paris", "celsius": 14}
    assert not any(c.tool_calls for c in chunks)
    assert chunks[-1].finish_reason == common_pb2.FINISH_REASON_STOP
    assert upstream.requests[-1].json["tool_choice"] == {"type": "tool", "name": "weather"}


async def test_count_tokens_stops_at_the_deadline(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(content_type="application/json", hang=True)]
    async with provider() as anthropic:
        with pytest.raises(DeadlineExceeded):
            await anthropic.count_tokens(claude(url), ask(deadline=time.monotonic() + 0.3))
    assert await upstream.wait_disconnected()


async def test_a_tool_history_without_tools_names_the_called_tools_and_allows_no_call(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=anthropic_stream([{"type": "text", "text": ["Sunny."]}]))]
    history = (
        ChatMessage(Role.USER, "Weather?"),
        ChatMessage(
            Role.ASSISTANT,
            "",
            tool_calls=(
                ToolCall("toolu_01A", "get_weather", '{"city": "Paris"}'),
                ToolCall("toolu_01B", "get_weather", '{"city": "Lyon"}'),
            ),
        ),
        ChatMessage(Role.TOOL, "sunny", tool_call_id="toolu_01A"),
        ChatMessage(Role.TOOL, "rainy", tool_call_id="toolu_01B"),
    )
    items = await run(url, ask(*history))
    assert items[0] == Delta(content="Sunny.")
    sent = upstream.requests[-1].json
    assert sent["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}}]
    assert sent["tool_choice"] == {"type": "none"}
