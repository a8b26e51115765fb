"""One streamed tool call, from each upstream's wire format to each of our endpoints (issue 19).

Four fake upstreams each stream the call `get_weather({"city": "Paris"})` the way their real servers do
(OpenAI's `delta.tool_calls` fragments, Ollama's whole call on one NDJSON line, Anthropic's `tool_use`
block with `input_json_delta` pieces, Gemini's `functionCall` part); every endpoint — gRPC
StreamCompletion, the native REST stream, and the OpenAI, Ollama and Anthropic dialects — must hand the
client the same call, whole once its pieces are joined, and say that the answer ended in a tool call.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config
from tests.server.providers.fake_upstream import FakeUpstream, Reply, anthropic_stream, start_fake

CALL = ("get_weather", {"city": "Paris"})
PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
GEMINI_KEY_ENV = "AIBATTLE_TEST_MATRIX_GEMINI_KEY"


def _sse(payload: dict[str, Any], end: bytes = b"\n\n") -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + end


def _openai_chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    return _sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [choice],
        }
    )


OPENAI = Reply(
    chunks=[
        _openai_chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_w1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": ""},
                    }
                ],
            }
        ),
        _openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"ci'}}]}),
        _openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'ty": "Par'}}]}),
        _openai_chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'is"}'}}]}),
        _openai_chunk({}, "tool_calls"),
        _sse(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 20, "completion_tokens": 9, "total_tokens": 29},
            }
        ),
        b"data: [DONE]\n\n",
    ]
)
OLLAMA = Reply(
    content_type="application/x-ndjson",
    chunks=[
        json.dumps(
            {
                "model": "m",
                "created_at": "2026-12-02T10:00:00Z",
                "message": {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
                },
                "done": False,
            }
        ).encode()
        + b"\n",
        json.dumps(
            {
                "model": "m",
                "created_at": "2026-12-02T10:00:01Z",
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "stop",
                "prompt_eval_count": 20,
                "eval_count": 9,
            }
        ).encode()
        + b"\n",
    ],
)
ANTHROPIC = Reply(
    chunks=anthropic_stream(
        [{"type": "tool_use", "id": "toolu_w1", "name": "get_weather", "input": ['{"city":', ' "Paris"}']}],
        stop_reason="tool_use",
    )
)
GEMINI = Reply(
    chunks=[
        _sse(
            {
                "candidates": [
                    {
                        "content": {
                            "role": "model",
                            "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}],
                        },
                        "finishReason": "STOP",
                        "index": 0,
                    }
                ],
                "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 9, "totalTokenCount": 29},
                "modelVersion": "gemini-2.5-flash",
            },
            end=b"\r\n\r\n",
        )
    ]
)
UPSTREAMS = {"openai": OPENAI, "ollama": OLLAMA, "anthropic": ANTHROPIC, "gemini": GEMINI}


@pytest.fixture
async def upstreams(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> dict[str, tuple[FakeUpstream, str]]:
    monkeypatch.setenv(GEMINI_KEY_ENV, "AIzaSy-matrix-test-only")
    fakes = {}
    for provider, reply in UPSTREAMS.items():
        fake, url = await start_fake(aiohttp_server)
        fake.replies = [reply]
        fakes[provider] = (fake, url)
    return fakes


@pytest.fixture
async def server(upstreams: dict[str, tuple[FakeUpstream, str]]) -> AsyncIterator[AIBattleServer]:
    models = []
    for provider, (_, url) in upstreams.items():
        entry: dict[str, Any] = {
            "id": f"via-{provider}",
            "provider": provider,
            "upstream_model": "m",
            "base_url": f"{url}/v1" if provider == "openai" else url,
            "upstream": {"retries": 0},
        }
        if provider == "gemini":
            entry["api_key_env"] = GEMINI_KEY_ENV
        models.append(entry)
    config = Config.from_dict(
        {"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}, "models": models}
    )
    server = AIBattleServer(config)
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def gateway(aiohttp_client: Any, server: AIBattleServer, api_descriptor_set: Path) -> Any:
    return await aiohttp_client(
        create_app(
            server.grpc_target,
            GatewayOptions(descriptor_set=api_descriptor_set),
            dispatcher=server.dispatcher(),
        ),
        server_kwargs={"handler_cancellation": True},
    )


ASK = "What is the weather in Paris?"
OPENAI_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}


def _joined(pieces: list[tuple[str, str]]) -> tuple[str, dict[str, Any]]:
    """A call's name and arguments from its stream pieces (name pieces, argument fragments)."""
    name = "".join(n for n, _ in pieces)
    return name, json.loads("".join(a for _, a in pieces))


async def _grpc(server: AIBattleServer, gateway: Any, model: str) -> tuple[tuple[str, Any], str]:
    parameters = struct_pb2.Struct()
    parameters.update(PARAMETERS)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.StreamCompletionRequest(
            model=model, prompt=ASK, tools=[common_pb2.Tool(name="get_weather", parameters=parameters)]
        )
        pieces, finish = [], ""
        async for chunk in stub.StreamCompletion(request):
            pieces += [(p.name, p.arguments) for p in chunk.tool_calls]
            if chunk.is_final:
                finish = common_pb2.FinishReason.Name(chunk.finish_reason)
    return _joined(pieces), finish


async def _rest(server: AIBattleServer, gateway: Any, model: str) -> tuple[tuple[str, Any], str]:
    body = {"model": model, "prompt": ASK, "tools": [{"name": "get_weather", "parameters": PARAMETERS}]}
    resp = await gateway.post("/api/v1/completions:stream", json=body)
    assert resp.status == 200, await resp.text()
    pieces, finish = [], ""
    for line in (await resp.text()).splitlines():
        chunk = json.loads(line)["result"]  # NDJSON: one {"result": chunk} per line
        pieces += [(p["name"], p["arguments"]) for p in chunk["tool_calls"]]
        finish = chunk["finish_reason"]
    return _joined(pieces), finish


def _sse_data(text: str) -> list[Any]:
    return [
        json.loads(line[6:])
        for line in text.splitlines()
        if line.startswith("data: ") and line != "data: [DONE]"
    ]


async def _openai(server: AIBattleServer, gateway: Any, model: str) -> tuple[tuple[str, Any], str]:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": ASK}],
        "tools": [OPENAI_TOOL],
        "stream": True,
    }
    resp = await gateway.post("/v1/chat/completions", json=body)
    assert resp.status == 200, await resp.text()
    pieces, finish = [], ""
    for chunk in _sse_data(await resp.text()):
        for choice in chunk["choices"]:
            for call in choice["delta"].get("tool_calls") or []:
                function = call["function"]
                pieces.append((function.get("name") or "", function.get("arguments") or ""))
            finish = choice.get("finish_reason") or finish
    return _joined(pieces), finish


async def _ollama(server: AIBattleServer, gateway: Any, model: str) -> tuple[tuple[str, Any], str]:
    body = {"model": model, "messages": [{"role": "user", "content": ASK}], "tools": [OPENAI_TOOL]}
    resp = await gateway.post("/api/chat", json=body)
    assert resp.status == 200, await resp.text()
    calls, finish = [], ""
    for line in (await resp.text()).splitlines():
        chunk = json.loads(line)
        calls += [
            (c["function"]["name"], c["function"]["arguments"])
            for c in chunk["message"].get("tool_calls", [])
        ]
        if chunk["done"]:
            finish = chunk["done_reason"]
    assert len(calls) == 1, calls  # Ollama's calls come whole, arguments an object
    return calls[0], finish


async def _anthropic(server: AIBattleServer, gateway: Any, model: str) -> tuple[tuple[str, Any], str]:
    body = {
        "model": model,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": ASK}],
        "tools": [{"name": "get_weather", "input_schema": PARAMETERS}],
        "stream": True,
    }
    resp = await gateway.post("/v1/messages", json=body, headers={"anthropic-version": "2023-06-01"})
    assert resp.status == 200, await resp.text()
    pieces, finish = [], ""
    for event in _sse_data(await resp.text()):
        if event["type"] == "content_block_start" and event["content_block"]["type"] == "tool_use":
            pieces.append((event["content_block"]["name"], ""))
        elif event["type"] == "content_block_delta" and event["delta"]["type"] == "input_json_delta":
            pieces.append(("", event["delta"]["partial_json"]))
        elif event["type"] == "message_delta":
            finish = event["delta"]["stop_reason"]
    return _joined(pieces), finish


Endpoint = Callable[[AIBattleServer, Any, str], Any]
#: Each endpoint, and how it says an answer ended in a tool call.
ENDPOINTS: dict[str, tuple[Endpoint, str]] = {
    "grpc": (_grpc, "FINISH_REASON_TOOL_CALLS"),
    "rest": (_rest, "FINISH_REASON_TOOL_CALLS"),
    "openai": (_openai, "tool_calls"),
    "ollama": (_ollama, "stop"),  # Ollama says "stop" after tool calls, as its own server does
    "anthropic": (_anthropic, "tool_use"),
}


@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
@pytest.mark.parametrize("upstream", list(UPSTREAMS))
async def test_a_streamed_tool_call_reaches_every_endpoint_whole(
    server: AIBattleServer,
    gateway: Any,
    upstreams: dict[str, tuple[FakeUpstream, str]],
    upstream: str,
    endpoint: str,
) -> None:
    read, tool_finish = ENDPOINTS[endpoint]
    call, finish = await read(server, gateway, f"via-{upstream}")
    assert call == CALL
    assert finish == tool_finish
    fake, _ = upstreams[upstream]
    assert len(fake.requests) == 1  # the tools went up once, in the upstream's own shape
    sent = json.dumps(fake.requests[0].json)
    assert "get_weather" in sent and '"city"' in sent
