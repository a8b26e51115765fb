"""The Anthropic Messages API ingress (gateway.compat.anthropic) on the wire: the exact answer and event
shapes, what each key becomes in the completion request, the refusals and error bodies, count_tokens
(and CountTokens over gRPC) — against the real server with scripted models, both dispatch modes."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from jsonschema import Draft202012Validator

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from gateway import GatewayOptions, create_app
from gateway.compat.anthropic import MessageEvents
from server.app import AIBattleServer
from server.config import Config, ModelConfig
from server.providers.base import ChatRequest, FormatType, Role, StreamItem
from server.providers.scripted import ScriptedProvider

WEATHER_CALL = 'Let me look.\ntool:get_weather {"city": "Paris"}'
MODELS: list[dict[str, Any]] = [
    {"id": "scripted-echo", "provider": "scripted", "script": ["Hello there, friend."]},
    {"id": "scripted-tools", "provider": "scripted", "script": [WEATHER_CALL, "It is sunny in Paris."]},
    {"id": "scripted-fail", "provider": "scripted", "script": ["one two three"], "error_after_chunks": 1},
    {
        "id": "scripted-json",
        "provider": "scripted",
        "capabilities": ["text", "json"],
        "script": ['{"city": "Paris"}'],
    },
    {
        "id": "scripted-vision",
        "provider": "scripted",
        "capabilities": ["text", "image"],
        "script": ["I see."],
    },
]
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    config = Config.from_dict(
        {"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}, "models": MODELS}
    )
    srv = AIBattleServer(config)
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def gw(aiohttp_client: Any, server: AIBattleServer, api_descriptor_set: Path, dispatch: str) -> Any:
    dispatcher = server.dispatcher() if dispatch == "in-process" else None
    app = create_app(
        server.grpc_target, GatewayOptions(descriptor_set=api_descriptor_set), dispatcher=dispatcher
    )
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


@pytest.fixture
def seen(monkeypatch: pytest.MonkeyPatch) -> list[ChatRequest]:
    """The ChatRequests the scripted provider receives (it still answers)."""
    requests: list[ChatRequest] = []
    original = ScriptedProvider.stream

    def spy(self: ScriptedProvider, model: ModelConfig, chat: ChatRequest) -> AsyncIterator[StreamItem]:
        requests.append(chat)
        return original(self, model, chat)

    monkeypatch.setattr(ScriptedProvider, "stream", spy)
    return requests


def events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each SSE event; every one must have both, and data's type is its name."""
    parsed = []
    for raw in text.split("\n\n"):
        if not raw.strip():
            continue
        lines = dict(line.split(": ", 1) for line in raw.splitlines())
        data = json.loads(lines["data"])
        assert data["type"] == lines["event"]
        parsed.append((lines["event"], data))
    return parsed


async def post(gw: Any, body: dict[str, Any], path: str = "/v1/messages") -> tuple[int, Any]:
    resp = await gw.post(path, json=body, headers={"x-api-key": "unused", "anthropic-version": "2023-06-01"})
    return resp.status, await resp.json()


async def test_a_whole_answer_is_a_message(gw: Any) -> None:
    status, body = await post(gw, {"model": "scripted-echo", "max_tokens": 64, "messages": HI})
    assert status == 200, body
    assert body["id"].startswith("msg_") and len(body["id"]) > 10
    assert body == {
        "id": body["id"],
        "type": "message",
        "role": "assistant",
        "model": "scripted-echo",
        "content": [{"type": "text", "text": "Hello there, friend."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 1, "output_tokens": 3},
    }


async def test_a_stream_is_anthropics_exact_event_sequence(gw: Any) -> None:
    resp = await gw.post(
        "/v1/messages", json={"model": "scripted-echo", "max_tokens": 64, "messages": HI, "stream": True}
    )
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    got = events(await resp.text())
    names = [name for name, _ in got]
    deltas = names.count("content_block_delta")
    assert deltas == 3  # one per word
    assert names == [
        "message_start",
        "content_block_start",
        "ping",
        *["content_block_delta"] * deltas,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = got[0][1]["message"]
    assert start["id"].startswith("msg_") and start["content"] == [] and start["stop_reason"] is None
    assert got[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    text = "".join(d["delta"]["text"] for n, d in got if n == "content_block_delta")
    assert text == "Hello there, friend."
    assert all(
        d["index"] == 0 and d["delta"]["type"] == "text_delta" for n, d in got if n == "content_block_delta"
    )
    assert got[-3][1] == {"type": "content_block_stop", "index": 0}
    assert got[-2][1] == {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
        "usage": {"input_tokens": 1, "output_tokens": 3},
    }


async def test_streamed_tool_calls_are_tool_use_blocks_with_input_json_deltas(gw: Any) -> None:
    body = {
        "model": "scripted-tools",
        "max_tokens": 64,
        "messages": HI,
        "tools": [WEATHER_TOOL],
        "stream": True,
    }
    got = events(await (await gw.post("/v1/messages", json=body)).text())
    starts = [d for n, d in got if n == "content_block_start"]
    assert [s["content_block"]["type"] for s in starts] == ["text", "tool_use"]
    tool_use = starts[1]["content_block"]
    assert tool_use["name"] == "get_weather" and tool_use["id"] and tool_use["input"] == {}
    partial = [d for n, d in got if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"]
    assert len(partial) > 1 and all(d["index"] == 1 for d in partial)  # in fragments, on the second block
    assert json.loads("".join(d["delta"]["partial_json"] for d in partial)) == {"city": "Paris"}
    assert [d["index"] for n, d in got if n == "content_block_stop"] == [0, 1]
    assert got[-2][1]["delta"]["stop_reason"] == "tool_use"


async def test_every_key_reaches_the_completion_request(gw: Any, seen: list[ChatRequest]) -> None:
    body = {
        "model": "scripted-tools",
        "max_tokens": 50,
        "system": [
            {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Use tools."},
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Oslo"}},
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "rain"},
                    {"type": "text", "text": "And tomorrow?"},
                ],
            },
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "toolu_02", "name": "get_weather", "input": {}}],
            },
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_02",
                        "content": [{"type": "text", "text": "down"}],
                        "is_error": True,
                    }
                ],
            },
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 40,
        "stop_sequences": ["END"],
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "any"},
        "metadata": {"user_id": "u-1"},
        "thinking": {"type": "disabled"},
        "service_tier": "auto",
    }
    status, answer = await post(gw, body)
    assert status == 200, answer
    [chat] = seen
    assert [(m.role, m.content) for m in chat.messages] == [
        (Role.SYSTEM, "Be brief.\n\nUse tools."),
        (Role.USER, "Weather?"),
        (Role.ASSISTANT, "Checking."),
        (Role.TOOL, "rain"),
        (Role.USER, "And tomorrow?"),
        (Role.ASSISTANT, ""),
        (Role.TOOL, "Error: down"),
    ]
    calls = chat.messages[2].tool_calls
    assert [(c.id, c.name, json.loads(c.arguments)) for c in calls] == [
        ("toolu_01", "get_weather", {"city": "Oslo"})
    ]
    assert chat.messages[3].tool_call_id == "toolu_01" and chat.messages[3].tool_name == "get_weather"
    assert chat.messages[6].tool_call_id == "toolu_02"
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.top_k, chat.stop) == (
        50,
        0.5,
        0.9,
        40,
        ("END",),
    )
    assert [(t.name, t.description, t.parameters) for t in chat.tools] == [
        ("get_weather", "The weather in a city.", WEATHER_TOOL["input_schema"])
    ]
    assert chat.tool_choice.mode == "required"


async def test_a_base64_image_is_an_attachment(gw: Any, seen: list[ChatRequest]) -> None:
    image = {
        "type": "image",
        "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()},
    }
    ask = [{"role": "user", "content": [image, {"type": "text", "text": "What is it?"}]}]
    status, body = await post(gw, {"model": "scripted-vision", "max_tokens": 16, "messages": ask})
    assert status == 200 and body["content"][0]["text"] == "I see."
    [attachment] = seen[0].messages[-1].attachments
    assert (attachment.type, attachment.mime_type, attachment.content) == ("image", "image/png", PNG)
    # A model without the capability says so, naming the block as the server knows it.
    status, body = await post(gw, {"model": "scripted-echo", "max_tokens": 16, "messages": ask})
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert "image" in body["error"]["message"] and "messages[0].file_data[0]" in body["error"]["message"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "thinking.budget_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": "END"}, "stop_sequences"),
        ({"metadata": {"user_id": "u", "team": "x"}}, "metadata.team"),
        ({"tools": [{**WEATHER_TOOL, "type": "web_search_20250305"}]}, "tools[0].type"),
        ({"tools": [{"name": "f"}]}, "tools[0].input_schema"),
        (
            {"tool_choice": {"type": "auto", "disable_parallel_tool_use": True}},
            "tool_choice.disable_parallel_tool_use",
        ),
        ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages[0].name"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}
                ]
            },
            "messages[0].content[0].type",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "url", "url": "http://x/y.png"}}],
                    }
                ]
            },
            "messages[0].content[0].source",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "base64", "media_type": "image/png", "data": "%%%"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0].source.data",
        ),
    ],
)
async def test_what_is_refused_is_named_in_anthropics_error_shape(
    gw: Any, change: dict[str, Any], named: str
) -> None:
    body = {"model": "scripted-echo", "max_tokens": 16, "messages": HI, **change}
    status, answer = await post(gw, {k: v for k, v in body.items() if v is not None})
    assert status == 400
    assert answer == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": answer["error"]["message"]},
    }
    assert named in answer["error"]["message"]


async def test_errors_by_status_and_path(gw: Any) -> None:
    status, body = await post(gw, {"model": "nope", "max_tokens": 16, "messages": HI})
    assert (status, body["type"], body["error"]["type"]) == (404, "error", "not_found_error")
    assert "nope" in body["error"]["message"]
    # Anthropic's path space answers in its shape; the rest of /v1/ stays OpenAI's.
    resp = await gw.get("/v1/messages/batches")
    assert resp.status == 404 and (await resp.json())["error"]["type"] == "not_found_error"
    resp = await gw.get("/v1/messages")
    assert resp.status == 405 and (await resp.json())["type"] == "error"
    resp = await gw.get("/v1/nothing-here")
    assert resp.status == 404 and set((await resp.json())["error"]) == {"message", "type", "param", "code"}


async def test_a_failure_mid_stream_is_an_error_event(gw: Any) -> None:
    body = {"model": "scripted-fail", "max_tokens": 16, "messages": HI, "stream": True}
    resp = await gw.post("/v1/messages", json=body)
    assert resp.status == 200
    got = events(await resp.text())
    assert got[0][0] == "message_start" and got[-1][0] == "error"
    assert (
        got[-1][1]["error"]["type"] == "overloaded_error"
        and "scripted failure" in got[-1][1]["error"]["message"]
    )


async def test_count_tokens_estimates_for_a_provider_that_cannot_count(gw: Any) -> None:
    body = {
        "model": "scripted-echo",
        "system": "Be brief.",
        "messages": [{"role": "user", "content": "Hello"}],
    }
    resp = await gw.post("/v1/messages/count_tokens", json=body)
    # ~4 characters a token, plus 4 per message: "Be brief." 3 + 4, "Hello" 2 + 4.
    assert await resp.json() == {"input_tokens": 13}
    assert resp.headers["x-aibattle-tokens-estimated"] == "true"
    with_tool = {**body, "model": "scripted-tools", "tools": [WEATHER_TOOL], "tool_choice": {"type": "auto"}}
    counted = await (await gw.post("/v1/messages/count_tokens", json=with_tool)).json()
    assert counted["input_tokens"] > 13 + 10  # the tool's definition counts too
    status, answer = await post(gw, {**body, "max_tokens": 5}, "/v1/messages/count_tokens")
    assert status == 400 and "max_tokens" in answer["error"]["message"]
    status, answer = await post(gw, {**body, "tools": [WEATHER_TOOL]}, "/v1/messages/count_tokens")
    assert status == 400 and "cannot call tools" in answer["error"]["message"]


async def test_count_tokens_over_grpc(server: AIBattleServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        counted = await stub.CountTokens(
            completions_pb2.CountTokensRequest(
                model="scripted-echo",
                system_instruction="Be brief.",
                messages=[common_pb2.Message(role="user", content="Hello")],
            )
        )
        assert (counted.model, counted.input_tokens, counted.estimated) == ("scripted-echo", 13, True)
        for request, code in [
            (completions_pb2.CountTokensRequest(model="nope", prompt="x"), grpc.StatusCode.NOT_FOUND),
            (completions_pb2.CountTokensRequest(prompt="x"), grpc.StatusCode.INVALID_ARGUMENT),
            (completions_pb2.CountTokensRequest(model="scripted-echo"), grpc.StatusCode.INVALID_ARGUMENT),
        ]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.CountTokens(request)
            assert caught.value.code() == code


def test_a_failover_is_named_on_the_delta_that_follows_it() -> None:
    framing = MessageEvents()
    switched = common_pb2.Failover(
        from_model="a",
        from_deployment="a-1",
        to_model="b",
        to_deployment="b-1",
        reason="UPSTREAM_UNAVAILABLE",
    )
    chunks = [
        completions_pb2.StreamCompletionResponse(id="cmpl-1", model="a", content="Hel"),
        completions_pb2.StreamCompletionResponse(id="cmpl-1", model="b", content="lo", failover=switched),
        completions_pb2.StreamCompletionResponse(id="cmpl-1", model="b", content="!"),
        completions_pb2.StreamCompletionResponse(
            id="cmpl-1",
            model="b",
            is_final=True,
            finish_reason=common_pb2.FINISH_REASON_STOP,
            usage=common_pb2.Usage(prompt_tokens=5, completion_tokens=3),
        ),
    ]
    got = events(b"".join(framing.message(c) for c in chunks).decode())
    deltas = [d for n, d in got if n == "content_block_delta"]
    assert [d["delta"]["text"] for d in deltas] == ["Hel", "lo", "!"]
    assert "failover" not in deltas[0] and "failover" not in deltas[2]
    assert deltas[1]["failover"] == {
        "from_model": "a",
        "from_deployment": "a-1",
        "to_model": "b",
        "to_deployment": "b-1",
        "reason": "UPSTREAM_UNAVAILABLE",
    }
    assert got[-2][1]["usage"] == {"input_tokens": 5, "output_tokens": 3}
    # On a final chunk with no text, the failover goes on message_delta.
    framing = MessageEvents()
    last = completions_pb2.StreamCompletionResponse(id="cmpl-2", model="b", is_final=True, failover=switched)
    got = events(framing.message(last).decode())
    assert [n for n, _ in got] == ["message_start", "message_delta", "message_stop"]
    assert got[1][1]["failover"]["to_model"] == "b"


async def test_output_config_format_is_structured_output(gw: Any, seen: list[ChatRequest]) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = {
        "model": "scripted-json",
        "max_tokens": 32,
        "messages": HI,
        "output_config": {"format": {"type": "json_schema", "schema": schema}},
    }
    status, answer = await post(gw, body)
    assert status == 200, answer
    assert json.loads(answer["content"][0]["text"]) == {"city": "Paris"}
    [chat] = seen
    assert chat.response_format is not None
    assert (chat.response_format.type, chat.response_format.schema) == (FormatType.JSON_SCHEMA, schema)
    status, answer = await post(gw, {**body, "model": "scripted-echo"})
    assert status == 400 and "JSON" in answer["error"]["message"]
    status, answer = await post(gw, {**body, "output_config": {"effort": "high"}})
    assert status == 400 and "output_config.effort" in answer["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "valid"),
    [
        ("/v1/messages", {"model": "scripted-echo", "max_tokens": 8, "messages": HI}, True),
        ("/v1/messages", {"model": "scripted-echo", "messages": HI}, False),
        ("/v1/messages", {"model": "scripted-echo", "max_tokens": 8, "messages": HI, "n": 2}, False),
        (
            "/v1/messages",
            {"model": "scripted-echo", "max_tokens": 8, "messages": HI, "temperature": 1.2},
            False,
        ),
        (
            "/v1/messages",
            {"model": "scripted-echo", "max_tokens": 8, "messages": HI, "tool_choice": {}},
            False,
        ),
        (
            "/v1/messages",
            {
                "model": "scripted-echo",
                "max_tokens": 8,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}],
                    }
                ],
            },
            True,
        ),
        (
            "/v1/messages",
            {
                "model": "scripted-echo",
                "max_tokens": 8,
                "messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t"}]}],
            },
            False,
        ),
        ("/v1/messages/count_tokens", {"model": "scripted-echo", "messages": HI}, True),
        ("/v1/messages/count_tokens", {"model": "scripted-echo", "messages": HI, "max_tokens": 8}, False),
        ("/v1/messages/count_tokens", {"model": "scripted-echo", "messages": HI, "cache_control": []}, False),
    ],
)
async def test_the_documented_request_schemas_agree_with_the_endpoints(
    gw: Any, path: str, body: dict[str, Any], valid: bool
) -> None:
    doc = await (await gw.get("/openapi.json")).json()
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert Draft202012Validator(schema).is_valid(body) is valid
    resp = await gw.post(path, json=body)
    assert (resp.status == 200) is valid, await resp.text()
