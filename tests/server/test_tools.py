"""Tools and structured output over real gRPC: a scripted model that calls tools, the request checks,
and the capability rule (server/providers/capabilities.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc, models_pb2, models_pb2_grpc
from server.app import AIBattleServer
from server.config import Config
from server.providers.base import ChatRequest, Role, ToolMode
from server.providers.capabilities import capabilities
from tests.conftest import error_info, make_config, rich_status

WEATHER_ARGS = '{"city": "Paris", "unit": "celsius"}'
MODELS: list[dict[str, Any]] = [
    {
        "id": "scripted-tools",
        "provider": "scripted",
        "script": [f"tool:get_weather {WEATHER_ARGS}", "It is sunny in Paris, 21 degrees."],
    },
    {
        "id": "scripted-two-calls",
        "provider": "scripted",
        "script": [
            'Let me look.\ntool:get_weather {"city": "Paris"}\ntool:get_time {"zone": "Europe/Paris"}'
        ],
    },
    {"id": "scripted-plain", "provider": "scripted", "script": ["Just words."]},
    {
        "id": "scripted-json",
        "provider": "scripted",
        "capabilities": ["text", "json"],
        "script": ['{"answer": 42}', "[1, 2]", "not JSON at all"],
    },
    {
        "id": "scripted-down",
        "provider": "scripted",
        "script": ["Down.\ntool:get_weather {}"],
        "error_after_chunks": 0,
        "fallbacks": ["scripted-plain", "scripted-tools"],
    },
]
WEATHER = common_pb2.Tool(name="get_weather", description="Current weather in a city")
WEATHER.parameters.update(
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "maxProperties": 2}
)
TIME = common_pb2.Tool(name="get_time")


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(make_config(MODELS))
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def stub(server: AIBattleServer) -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield completions_pb2_grpc.CompletionServiceStub(channel)


async def test_tool_round_trip(
    stub: completions_pb2_grpc.CompletionServiceStub, scripted_requests: list[ChatRequest]
) -> None:
    asked = common_pb2.Message(role="user", content="What is the weather in Paris?")
    first = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="scripted-tools", messages=[asked], tools=[WEATHER, TIME]
        )
    )
    assert first.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert first.content == ""
    [call] = first.tool_calls
    assert call.id.startswith("call_") and len(call.id) == 29
    assert (call.name, call.arguments) == ("get_weather", WEATHER_ARGS)
    assert json.loads(call.arguments) == {"city": "Paris", "unit": "celsius"}
    # Words: the question's 6, the tools' names, description and schema; the call's name and arguments.
    assert first.usage.completion_tokens == 5
    offered = scripted_requests[0].tools
    assert [t.name for t in offered] == ["get_weather", "get_time"]
    assert offered[0].parameters == {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "maxProperties": 2,  # an int again, not Struct's 2.0
    }
    assert offered[1].parameters is None

    result = common_pb2.Message(role="tool", tool_call_id=call.id, content='{"sky": "clear", "celsius": 21}')
    answered = common_pb2.Message(role="assistant", tool_calls=[call])
    final = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="scripted-tools", messages=[asked, answered, result], tools=[WEATHER, TIME]
        )
    )
    assert final.content == "It is sunny in Paris, 21 degrees."
    assert final.finish_reason == common_pb2.FINISH_REASON_STOP and not final.tool_calls
    history = scripted_requests[1].messages
    assert [m.role for m in history] == [Role.USER, Role.ASSISTANT, Role.TOOL]
    assert history[1].tool_calls[0].id == call.id and history[1].tool_calls[0].arguments == WEATHER_ARGS
    assert (history[2].tool_call_id, history[2].tool_name) == (call.id, "get_weather")
    assert history[2].content == '{"sky": "clear", "celsius": 21}'


async def test_streamed_tool_calls_come_in_fragments_that_reassemble(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    chunks = [
        c
        async for c in stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(
                model="scripted-two-calls", prompt="weather and time?", tools=[WEATHER, TIME]
            )
        )
    ]
    assert "".join(c.content for c in chunks) == "Let me look."
    pieces = [p for c in chunks for p in c.tool_calls]
    by_index: dict[int, list[common_pb2.ToolCallDelta]] = {}
    for piece in pieces:
        by_index.setdefault(piece.index, []).append(piece)
    assert sorted(by_index) == [0, 1]
    for index, name, arguments in [
        (0, "get_weather", '{"city": "Paris"}'),
        (1, "get_time", '{"zone": "Europe/Paris"}'),
    ]:
        call = by_index[index]
        assert len(call) >= 3, call  # in fragments, as OpenAI streams them
        assert call[0].id.startswith("call_") and call[0].name == name
        assert all(not p.id and not p.name for p in call[1:])
        assert "".join(p.arguments for p in call) == arguments
    assert by_index[0][0].id != by_index[1][0].id
    # The text comes first, the calls after it, each call's pieces together.
    first_call_chunk = next(i for i, c in enumerate(chunks) if c.tool_calls)
    assert not any(c.content for c in chunks[first_call_chunk:])
    final = chunks[-1]
    assert final.is_final and final.finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS
    assert final.usage.completion_tokens == 3 + 3 + 3  # "Let me look." and each call's words


async def test_calls_are_made_only_to_tools_offered_and_allowed(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    only_time = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="scripted-two-calls", prompt="x", tools=[TIME])
    )
    assert [c.name for c in only_time.tool_calls] == ["get_time"]
    forbidden = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="scripted-two-calls",
            prompt="x",
            tools=[WEATHER, TIME],
            tool_choice=common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_NONE),
        )
    )
    assert (forbidden.content, list(forbidden.tool_calls)) == ("Let me look.", [])
    assert forbidden.finish_reason == common_pb2.FINISH_REASON_STOP
    named = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="scripted-two-calls",
            prompt="x",
            tools=[WEATHER, TIME],
            tool_choice=common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_TOOL, name="get_weather"),
        )
    )
    assert [c.name for c in named.tool_calls] == ["get_weather"]


async def test_tool_choice_reaches_the_provider(
    stub: completions_pb2_grpc.CompletionServiceStub, scripted_requests: list[ChatRequest]
) -> None:
    for mode, expected in [
        (common_pb2.TOOL_CHOICE_MODE_REQUIRED, ToolMode.REQUIRED),
        (common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED, ToolMode.AUTO),
    ]:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                model="scripted-tools",
                prompt="x",
                tools=[WEATHER],
                tool_choice=common_pb2.ToolChoice(mode=mode),
            )
        )
        assert scripted_requests[-1].tool_choice.mode == expected


def _schema(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


CALL = common_pb2.ToolCall(id="call_1", name="get_weather", arguments="{}")
USER = common_pb2.Message(role="user", content="hi")


@pytest.mark.parametrize(
    ("model", "fields", "field"),
    [
        ("scripted-tools", {"tools": [common_pb2.Tool(name="get weather")]}, "tools[0].name"),
        ("scripted-tools", {"tools": [common_pb2.Tool(name="x" * 65)]}, "tools[0].name"),
        ("scripted-tools", {"tools": [common_pb2.Tool()]}, "tools[0].name"),
        ("scripted-tools", {"tools": [WEATHER, TIME, WEATHER]}, "tools[2].name"),
        (
            "scripted-tools",
            {"tools": [common_pb2.Tool(name="f", parameters=_schema({"type": "string"}))]},
            "tools[0].parameters",
        ),
        (
            "scripted-tools",
            {"tools": [common_pb2.Tool(name="f", parameters=_schema({"type": "object", "properties": [1]}))]},
            "tools[0].parameters.properties",
        ),
        (
            "scripted-tools",
            {"tools": [WEATHER], "tool_choice": common_pb2.ToolChoice(mode=4, name="get_time")},
            "tool_choice.name",
        ),
        (
            "scripted-tools",
            {"tools": [WEATHER], "tool_choice": common_pb2.ToolChoice(mode=4)},
            "tool_choice.name",
        ),
        (
            "scripted-tools",
            {"tools": [WEATHER], "tool_choice": common_pb2.ToolChoice(mode=1, name="get_weather")},
            "tool_choice.name",
        ),
        (
            "scripted-tools",
            {"tools": [WEATHER], "tool_choice": common_pb2.ToolChoice(mode=9)},
            "tool_choice.mode",
        ),
        ("scripted-tools", {"tool_choice": common_pb2.ToolChoice(mode=2)}, "tool_choice"),
        (
            "scripted-tools",
            {"messages": [USER, common_pb2.Message(role="tool", content="21")]},
            "messages[1].tool_call_id",
        ),
        (
            "scripted-tools",
            {
                "messages": [
                    common_pb2.Message(role="assistant", tool_calls=[CALL]),
                    common_pb2.Message(role="tool", tool_call_id="call_2", content="21"),
                ]
            },
            "messages[1].tool_call_id",
        ),
        (  # a result before its call answers nothing
            "scripted-tools",
            {
                "messages": [
                    common_pb2.Message(role="tool", tool_call_id="call_1", content="21"),
                    common_pb2.Message(role="assistant", tool_calls=[CALL]),
                ]
            },
            "messages[0].tool_call_id",
        ),
        (
            "scripted-tools",
            {"messages": [common_pb2.Message(role="user", tool_calls=[CALL])]},
            "messages[0].tool_calls",
        ),
        (
            "scripted-tools",
            {"messages": [common_pb2.Message(role="user", content="x", tool_call_id="call_1")]},
            "messages[0].tool_call_id",
        ),
        (
            "scripted-tools",
            {"messages": [common_pb2.Message(role="assistant", tool_calls=[CALL, CALL])]},
            "messages[0].tool_calls[1].id",
        ),
        (
            "scripted-tools",
            {"messages": [common_pb2.Message(role="assistant", tool_calls=[common_pb2.ToolCall(name="f")])]},
            "messages[0].tool_calls[0].id",
        ),
        (
            "scripted-tools",
            {
                "messages": [
                    common_pb2.Message(role="assistant", tool_calls=[common_pb2.ToolCall(id="c", name="a b")])
                ]
            },
            "messages[0].tool_calls[0].name",
        ),
        (
            "scripted-json",
            {"response_format": common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA)},
            "response_format.schema",
        ),
        (
            "scripted-json",
            {
                "response_format": common_pb2.ResponseFormat(
                    type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT, schema=_schema({"type": "object"})
                )
            },
            "response_format.schema",
        ),
        (
            "scripted-json",
            {
                "response_format": common_pb2.ResponseFormat(
                    type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
                    name="a b",
                    schema=_schema({"type": "object"}),
                )
            },
            "response_format.name",
        ),
        ("scripted-json", {"response_format": common_pb2.ResponseFormat(type=7)}, "response_format.type"),
    ],
)
async def test_invalid_tools_and_formats_name_the_field(
    stub: completions_pb2_grpc.CompletionServiceStub, model: str, fields: dict[str, Any], field: str
) -> None:
    request = completions_pb2.StreamCompletionRequest(model=model, **({"prompt": "hi"} | fields))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamCompletion(request):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:"), caught.value.details()
    assert error_info(caught.value).reason == "INVALID_FIELD"
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in rich_status(caught.value).details)
    assert bad_request.field_violations[0].field == field


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tools": [WEATHER]}, "tools"),
        (
            {"response_format": common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)},
            "response_format",
        ),
        (
            {"messages": [USER, common_pb2.Message(role="assistant", tool_calls=[CALL])]},
            "messages[1].tool_calls",
        ),
        ({"messages": [USER, common_pb2.Message(role="tool", tool_call_id="call_1")]}, "messages[1].role"),
    ],
)
async def test_a_model_that_cannot_refuses_with_capability_missing(
    stub: completions_pb2_grpc.CompletionServiceStub, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="scripted-plain", **({"prompt": "hi"} | fields))
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("CAPABILITY_MISSING", field)
    assert "'scripted-plain'" in caught.value.details()


async def test_a_fallback_that_cannot_call_tools_is_passed_over(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    with_tools = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="scripted-down", prompt="x", tools=[WEATHER])
    )
    assert with_tools.model == "scripted-tools" and [c.name for c in with_tools.tool_calls] == ["get_weather"]
    without = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="scripted-down", prompt="x")
    )
    assert (without.model, without.content) == ("scripted-plain", "Just words.")


async def test_free_text_format_needs_no_capability(stub: completions_pb2_grpc.CompletionServiceStub) -> None:
    for kind in (common_pb2.RESPONSE_FORMAT_TYPE_TEXT, common_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED):
        reply = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                model="scripted-plain", prompt="hi", response_format=common_pb2.ResponseFormat(type=kind)
            )
        )
        assert reply.content == "Just words."


async def test_scripted_json_is_json_or_fails(
    stub: completions_pb2_grpc.CompletionServiceStub, scripted_requests: list[ChatRequest]
) -> None:
    schema = common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        name="answer",
        schema=_schema({"type": "object"}),
        strict=True,
    )
    reply = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="scripted-json", prompt="hi", response_format=schema)
    )
    assert json.loads(reply.content) == {"answer": 42}
    given = scripted_requests[-1].response_format
    assert given is not None
    assert (given.type, given.schema, given.name, given.strict) == (
        "json_schema",
        {"type": "object"},
        "answer",
        True,
    )
    # "[1, 2]" is JSON but no object: refused for json_object rather than passed off as one.
    json_object = common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                model="scripted-json", prompt="hi", response_format=json_object
            )
        )
    assert error_info(caught.value).reason == "PROVIDER_ERROR"
    assert "script[1] is not a JSON object" in caught.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                model="scripted-json", prompt="hi", response_format=schema
            )
        )
    assert "script[2] is not JSON" in caught.value.details()


async def test_list_models_shows_the_capabilities_in_effect(server: AIBattleServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        models = models_pb2_grpc.ModelServiceStub(channel)
        listed = {
            m.id: list(m.capabilities)
            for m in (await models.ListModels(models_pb2.ListModelsRequest())).models
        }
        assert listed == {
            "scripted-down": ["text", "conversation", "tools"],
            "scripted-json": ["text", "json"],
            "scripted-plain": ["text", "conversation"],
            "scripted-tools": ["text", "conversation", "tools"],
            "scripted-two-calls": ["text", "conversation", "tools"],
        }
        tools = await models.ListModels(models_pb2.ListModelsRequest(capability="tools"))
        assert [m.id for m in tools.models] == ["scripted-down", "scripted-tools", "scripted-two-calls"]
        one = await models.GetModel(models_pb2.GetModelRequest(model_id="scripted-tools"))
        assert "tools" in one.model.capabilities


def test_the_capability_rule() -> None:
    config = Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
            "models": [
                {"id": "embedded", "provider": "local"},
                {"id": "granted", "provider": "local", "capabilities": ["text", "tools"]},
                {"id": "gpt", "provider": "openai"},
                {"id": "llama", "provider": "ollama", "capabilities": ["text", "json"]},
                {"id": "claude", "provider": "anthropic"},
                {"id": "gemini", "provider": "gemini"},
                {"id": "plain", "provider": "scripted", "script": ["tools: not a call"]},
            ],
        }
    )
    found = {m.id: capabilities(m) for m in config.models}
    assert found == {
        "embedded": ("text", "conversation", "json"),
        "granted": ("text", "tools", "json"),
        "gpt": ("text", "conversation", "tools", "json"),
        "llama": ("text", "json", "tools"),
        "claude": ("text", "conversation", "tools", "json"),
        "gemini": ("text", "conversation", "tools", "json"),
        "plain": ("text", "conversation"),
    }


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("tool:get weather {}", "the arguments must be a JSON object"),
        ("tool:get_weather [1]", "the arguments must be a JSON object"),
        ("tool:get_weather {city: Paris}", "the arguments must be a JSON object"),
        ("tool: {}", "a tool name is 1 to 64"),
    ],
)
def test_a_malformed_script_call_is_a_config_error(entry: str, problem: str) -> None:
    from common.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        make_config([{"id": "bad", "provider": "scripted", "script": ["fine", entry]}])
    assert "models[0].script" in str(caught.value) and problem in str(caught.value)


@pytest.mark.slow
async def test_the_embedded_model_refuses_tools_and_lists_json() -> None:
    server = AIBattleServer(
        Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}})
    )
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(
                        model="smollm2-135m", prompt="hi", tools=[WEATHER]
                    )
                )
            info = error_info(caught.value)
            assert (info.reason, info.metadata["field"]) == ("CAPABILITY_MISSING", "tools")
            models = models_pb2_grpc.ModelServiceStub(channel)
            model, _embedding = (await models.ListModels(models_pb2.ListModelsRequest())).models
            assert list(model.capabilities) == ["text", "conversation", "json"]
    finally:
        await server.stop(grace=0.5)
