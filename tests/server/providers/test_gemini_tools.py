"""The gemini adapter's function calling, structured output, embeddings and token counting, against a
fake speaking Gemini's wire format: `streamGenerateContent?alt=sse` frames (one compact JSON
GenerateContentResponse per `data:` line, CRLF CRLF after it, the last carrying `finishReason` and
`usageMetadata`), `generateContent`, `batchEmbedContents` and `countTokens` answers.

The adapter is driven directly, with provider-neutral requests: what a request conversion hands it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc, embeddings_pb2, embeddings_pb2_grpc
from common.enums import FinishReason
from common.errors import ApiError, InvalidArgument
from server.config import Config
from server.providers.base import (
    ChatMessage,
    ChatRequest,
    Delta,
    Embeddings,
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
from server.providers.http.gemini import SIGNATURE_MARK, GeminiProvider, split_id
from server.providers.text import estimate_tokens
from server.settings import ModelConfig
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

KEY = "AIzaSy-test-only-tools-9876-secret"
KEY_ENV = "AIBATTLE_TEST_GEMINI_KEY"
UPSTREAM_MODEL = "gemini-2.5-flash"
EMBEDDING_MODEL = "gemini-embedding-001"
# A thought signature as Gemini sends one: base64 of opaque bytes ('+' and '/' included).
SIGNATURE = base64.b64encode(bytes(range(250, 256)) + b"\xfb\xff\xbe" * 20).decode()
MADE_ID = re.compile(r"call_[0-9a-f]{24}")

WEATHER = ToolSpec(
    "get_weather",
    "The weather in a city, now.",
    {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
        "additionalProperties": False,
    },
)
CLOCK = ToolSpec("get_time")


def sse(response: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(response, separators=(",", ":")).encode() + b"\r\n\r\n"


def response(parts: list[dict[str, Any]], *, finish: str | None = None, usage: Any = None) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate], "modelVersion": UPSTREAM_MODEL, "responseId": "mV0uab"}
    if usage is not None:
        out["usageMetadata"] = usage
    return out


USAGE = {"promptTokenCount": 60, "candidatesTokenCount": 15, "totalTokenCount": 120, "thoughtsTokenCount": 45}
CALLS_STREAM = [
    sse(response([{"text": "Checking both."}])),
    sse(
        response(
            [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": SIGNATURE,
                },
                {"functionCall": {"name": "get_time", "args": {}}},
            ],
            finish="STOP",
            usage=USAGE,
        )
    ),
]


def json_reply(body: Any, status: int = 200) -> Reply:
    return Reply(status=status, chunks=[json.dumps(body).encode()], content_type="application/json")


@pytest.fixture
async def fake(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv(KEY_ENV, KEY)
    return await start_fake(aiohttp_server)


def gem(base_url: str, upstream_model: str = UPSTREAM_MODEL) -> ModelConfig:
    config = Config.from_dict(
        {
            "models": [
                {
                    "id": "gem",
                    "provider": "gemini",
                    "upstream_model": upstream_model,
                    "base_url": base_url,
                    "api_key_env": KEY_ENV,
                    "capabilities": ["text", "conversation", "tools", "json", "embedding"],
                    "upstream": {"retries": 0},
                }
            ]
        }
    )
    return config.models[0]


@asynccontextmanager
async def provider() -> AsyncIterator[GeminiProvider]:
    client = HttpClient()
    try:
        yield GeminiProvider(client)
    finally:
        await client.close()


def ask(*messages: ChatMessage, **fields: Any) -> ChatRequest:
    asked = messages or (ChatMessage(Role.USER, "Weather and time in Paris?"),)
    return ChatRequest(messages=asked, **{"max_tokens": 256, **fields})


async def run(base_url: str, request: ChatRequest) -> list[StreamItem]:
    async with provider() as gemini:
        return [item async for item in gemini.stream(gem(base_url), request)]


async def test_function_calls_come_whole_with_made_ids_and_finish_tool_calls(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=CALLS_STREAM)]
    items = await run(url, ask(tools=(WEATHER, CLOCK)))
    assert items[0] == Delta(content="Checking both.")
    calls = items[1]
    assert isinstance(calls, Delta) and calls.content == "" and len(calls.tool_calls) == 2
    first, second = calls.tool_calls
    assert (first.index, first.name, first.arguments) == (0, "get_weather", '{"city": "Paris"}')
    assert (second.index, second.name, second.arguments) == (1, "get_time", "{}")
    # The signed call carries its signature in its id, in characters any client keeps as they are.
    made, token = first.id.split(SIGNATURE_MARK)
    assert MADE_ID.fullmatch(made) and re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert split_id(first.id) == (made, SIGNATURE)
    assert MADE_ID.fullmatch(second.id) and second.id != made
    assert items[2] == Finish(Usage(60, 60), FinishReason.TOOL_CALLS)
    sent = upstream.requests[-1]
    assert sent.path == f"/v1beta/models/{UPSTREAM_MODEL}:streamGenerateContent"
    assert sent.json["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "The weather in a city, now.",
                    "parametersJsonSchema": WEATHER.parameters,
                },
                {"name": "get_time"},
            ]
        }
    ]
    assert sent.json["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


async def test_geminis_own_call_id_is_kept(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    part = {"functionCall": {"id": "fc-7f3a", "name": "get_time", "args": {}}}
    upstream.replies = [json_reply(response([part], finish="STOP", usage=USAGE))]
    items = await run(url, ask(tools=(CLOCK,), stream=False))
    assert items == [
        Delta(tool_calls=(ToolCallPiece(0, "fc-7f3a", "get_time", "{}"),)),
        Finish(Usage(60, 60), FinishReason.TOOL_CALLS),
    ]
    assert upstream.requests[-1].path == f"/v1beta/models/{UPSTREAM_MODEL}:generateContent"


async def test_history_goes_back_as_function_calls_and_responses(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=CALLS_STREAM)]
    answered = await run(url, ask(tools=(WEATHER, CLOCK)))
    signed, made = (piece.id for piece in answered[1].tool_calls)  # type: ignore[union-attr]

    upstream.replies = [
        Reply(chunks=[sse(response([{"text": "Sunny, 14:05."}], finish="STOP", usage=USAGE))])
    ]
    history = (
        ChatMessage(Role.USER, "Weather and time in Paris?"),
        ChatMessage(
            Role.ASSISTANT,
            "Checking both.",
            tool_calls=(
                ToolCall(signed, "get_weather", '{"city": "Paris"}'),
                ToolCall(made, "get_time", ""),
                ToolCall("fc-7f3a", "get_time", "{}"),
            ),
        ),
        ChatMessage(
            Role.TOOL, '{"sky": "sunny", "celsius": 14}', tool_call_id=signed, tool_name="get_weather"
        ),
        ChatMessage(Role.TOOL, "14:05", tool_call_id=made),  # its name is found from the call
        ChatMessage(Role.TOOL, "[1, 2]", tool_call_id="fc-7f3a", tool_name="get_time"),
        ChatMessage(Role.USER, "Short, please."),
    )
    items = await run(url, ask(*history, tools=(WEATHER, CLOCK), tool_choice=ToolChoice(ToolMode.REQUIRED)))
    assert items == [Delta(content="Sunny, 14:05."), Finish(Usage(60, 60), FinishReason.STOP)]
    sent = upstream.requests[-1].json
    assert sent["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Checking both."},
                # The signature back where Gemini put it; an id we made is not sent as Gemini's.
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": SIGNATURE,
                },
                {"functionCall": {"name": "get_time", "args": {}}},
                {"functionCall": {"name": "get_time", "args": {}, "id": "fc-7f3a"}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"sky": "sunny", "celsius": 14}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "14:05"}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "[1, 2]"}, "id": "fc-7f3a"}},
                {"text": "Short, please."},
            ],
        },
    ]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        (ToolChoice(ToolMode.NONE), {"mode": "NONE"}),
        (ToolChoice(ToolMode.TOOL, "get_time"), {"mode": "ANY", "allowedFunctionNames": ["get_time"]}),
    ],
)
async def test_tool_choice_modes(fake: tuple[FakeUpstream, str], choice: ToolChoice, config: Any) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[sse(response([{"text": "ok"}], finish="STOP"))])]
    await run(url, ask(tools=(WEATHER, CLOCK), tool_choice=choice))
    assert upstream.requests[-1].json["toolConfig"] == {"functionCallingConfig": config}


async def test_a_tool_result_without_a_name_to_give_gemini_is_refused(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    history = (ChatMessage(Role.USER, "Time?"), ChatMessage(Role.TOOL, "14:05", tool_call_id="call_unknown"))
    with pytest.raises(InvalidArgument) as caught:
        await run(url, ask(*history, tools=(CLOCK,)))
    assert caught.value.field == "tool_call_id" and "call_unknown" in caught.value.message
    assert upstream.requests == []


async def test_a_function_call_without_a_name_is_a_protocol_error(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[sse(response([{"functionCall": {"args": {}}}], finish="STOP"))])]
    with pytest.raises(ApiError) as caught:
        await run(url, ask(tools=(CLOCK,)))
    assert caught.value.reason == "UPSTREAM_PROTOCOL_ERROR"


def test_an_id_that_merely_contains_the_mark_is_kept_whole() -> None:
    assert split_id(f"tool{SIGNATURE_MARK}not*base64") == (f"tool{SIGNATURE_MARK}not*base64", "")
    assert split_id("call_plain") == ("call_plain", "")


# --- structured output ------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}},
    "required": ["city", "celsius"],
    "additionalProperties": False,
}


async def test_json_schema_goes_as_response_json_schema(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        Reply(
            chunks=[
                sse(response([{"text": '{"city": "Pa'}])),
                sse(response([{"text": 'ris", "celsius": 14}'}], finish="STOP", usage=USAGE)),
            ]
        )
    ]
    items = await run(
        url, ask(response_format=ResponseFormat(FormatType.JSON_SCHEMA, SCHEMA, name="weather"))
    )
    text = "".join(item.content for item in items if isinstance(item, Delta))
    assert json.loads(text) == {"city": "Paris", "celsius": 14}
    assert items[-1] == Finish(Usage(60, 60), FinishReason.STOP)
    assert upstream.requests[-1].json["generationConfig"] == {
        "maxOutputTokens": 256,
        "responseMimeType": "application/json",
        "responseJsonSchema": SCHEMA,
    }


async def test_json_object_asks_only_for_json(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [json_reply(response([{"text": '{"ok": true}'}], finish="STOP", usage=USAGE))]
    items = await run(url, ask(response_format=ResponseFormat(FormatType.JSON_OBJECT), stream=False))
    assert items[0] == Delta(content='{"ok": true}')
    assert upstream.requests[-1].json["generationConfig"] == {
        "maxOutputTokens": 256,
        "responseMimeType": "application/json",
    }


# --- embeddings and token counting -----------------------------------------------------------------


async def test_embed_batches_the_texts_and_estimates_their_tokens(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        json_reply({"embeddings": [{"values": [0.25, -0.5, 1]}, {"values": [0.0, 0.125, -1.5]}]})
    ]
    texts = ["What is the meaning of life?", "How much wood would a woodchuck chuck?"]
    async with provider() as gemini:
        found = await gemini.embed(gem(url, EMBEDDING_MODEL), texts, dimensions=3, deadline=None)
    assert found == Embeddings(
        [[0.25, -0.5, 1.0], [0.0, 0.125, -1.5]], sum(estimate_tokens(t) for t in texts)
    )
    sent = upstream.requests[-1]
    assert (sent.method, sent.path) == ("POST", f"/v1beta/models/{EMBEDDING_MODEL}:batchEmbedContents")
    assert sent.headers["x-goog-api-key"] == KEY and sent.query == {}
    assert sent.json == {
        "requests": [
            {
                "model": f"models/{EMBEDDING_MODEL}",
                "content": {"parts": [{"text": text}]},
                "outputDimensionality": 3,
            }
            for text in texts
        ]
    }


async def test_embed_without_dimensions_leaves_them_to_the_model(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [json_reply({"embeddings": [{"values": [0.5] * 8}]})]
    async with provider() as gemini:
        found = await gemini.embed(gem(url, EMBEDDING_MODEL), ["hi"], dimensions=None, deadline=None)
    assert found.vectors == [[0.5] * 8]
    assert "outputDimensionality" not in upstream.requests[-1].json["requests"][0]


@pytest.mark.parametrize(
    ("reply", "reason", "said"),
    [
        (
            json_reply(
                {
                    "error": {
                        "code": 400,
                        "message": "* BatchEmbedContentsRequest.requests[0].content: is not specified",
                        "status": "INVALID_ARGUMENT",
                    }
                },
                status=400,
            ),
            "UPSTREAM_REJECTED",
            "INVALID_ARGUMENT: * BatchEmbedContentsRequest",
        ),
        (
            json_reply({"embeddings": [{"values": [0.5, 0.5]}]}),
            "UPSTREAM_PROTOCOL_ERROR",
            "1 embeddings for 2",
        ),
        (
            json_reply({"embeddings": [{"values": [0.5]}, {"values": [0.5, 0.5]}]}),
            "UPSTREAM_PROTOCOL_ERROR",
            "different lengths",
        ),
    ],
    ids=["rejected", "one-missing", "ragged"],
)
async def test_embed_errors(fake: tuple[FakeUpstream, str], reply: Reply, reason: str, said: str) -> None:
    upstream, url = fake
    upstream.replies = [reply]
    async with provider() as gemini:
        with pytest.raises(ApiError) as caught:
            await gemini.embed(gem(url, EMBEDDING_MODEL), ["a", "b"], dimensions=None, deadline=None)
    assert caught.value.reason == reason and said in caught.value.message
    assert KEY not in caught.value.message


async def test_count_tokens_sends_the_whole_generate_content_request(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [
        json_reply({"totalTokens": 31, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 31}]})
    ]
    request = ask(ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, "Weather?"), tools=(WEATHER,))
    async with provider() as gemini:
        assert await gemini.count_tokens(gem(url), request) == 31
    sent = upstream.requests[-1]
    assert sent.path == f"/v1beta/models/{UPSTREAM_MODEL}:countTokens"
    assert sent.headers["x-goog-api-key"] == KEY
    assert sent.json == {
        "generateContentRequest": {
            "model": f"models/{UPSTREAM_MODEL}",
            "contents": [{"role": "user", "parts": [{"text": "Weather?"}]}],
            "systemInstruction": {"parts": [{"text": "Be brief."}]},
            "generationConfig": {"maxOutputTokens": 256},
            "tools": [
                {
                    "functionDeclarations": [
                        {
                            "name": "get_weather",
                            "description": "The weather in a city, now.",
                            "parametersJsonSchema": WEATHER.parameters,
                        }
                    ]
                }
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "AUTO"}},
        }
    }


async def test_count_tokens_answer_without_a_total_is_a_protocol_error(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [json_reply({"tokens": 31})]
    async with provider() as gemini:
        with pytest.raises(ApiError) as caught:
            await gemini.count_tokens(gem(url), ask())
    assert caught.value.reason == "UPSTREAM_PROTOCOL_ERROR"


# --- through the gRPC API ----------------------------------------------------------------------------


def entry(base_url: str, model_id: str, upstream_model: str, capabilities: list[str]) -> dict[str, Any]:
    return {
        "id": model_id,
        "provider": "gemini",
        "upstream_model": upstream_model,
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "capabilities": capabilities,
        "upstream": {"retries": 0},
    }


async def test_streamed_function_calls_over_grpc(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=CALLS_STREAM)]
    tools = [
        common_pb2.Tool(
            name="get_weather", parameters=json_format.ParseDict(WEATHER.parameters, struct_pb2.Struct())
        ),
        common_pb2.Tool(name="get_time"),
    ]
    model = entry(url, "gem", UPSTREAM_MODEL, ["text", "conversation", "tools"])
    async with serving([model]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        chunks = [
            chunk
            async for chunk in completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="gem", prompt="Weather and time?", tools=tools)
            )
        ]
    pieces = [(p.index, p.name, p.arguments) for c in chunks for p in c.tool_calls]
    assert pieces == [(0, "get_weather", '{"city": "Paris"}'), (1, "get_time", "{}")]
    assert split_id(chunks[1].tool_calls[0].id)[1] == SIGNATURE
    assert chunks[-1].is_final and chunks[-1].finish_reason == common_pb2.FINISH_REASON_TOOL_CALLS


async def test_create_embeddings_over_grpc(fake: tuple[FakeUpstream, str]) -> None:
    upstream, url = fake
    upstream.replies = [json_reply({"embeddings": [{"values": [0.5, -0.25]}, {"values": [1.0, 0.0]}]})]
    model = entry(url, "gem-embed", EMBEDDING_MODEL, ["embedding"])
    async with serving([model]) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        reply = await embeddings_pb2_grpc.EmbeddingServiceStub(channel).CreateEmbeddings(
            embeddings_pb2.CreateEmbeddingsRequest(model="gem-embed", input=["one", "two"], dimensions=2)
        )
    assert [list(e.values) for e in reply.embeddings] == [[0.5, -0.25], [1.0, 0.0]]
    assert [e.index for e in reply.embeddings] == [0, 1]
    assert reply.usage.prompt_tokens == estimate_tokens("one") + estimate_tokens("two")
    assert upstream.requests[-1].json["requests"][1] == {
        "model": f"models/{EMBEDDING_MODEL}",
        "content": {"parts": [{"text": "two"}]},
        "outputDimensionality": 2,
    }


async def test_a_malformed_function_call_is_an_upstream_error_not_an_empty_answer(
    fake: tuple[FakeUpstream, str],
) -> None:
    upstream, url = fake
    upstream.replies = [Reply(chunks=[sse(response([], finish="MALFORMED_FUNCTION_CALL", usage=USAGE))])]
    with pytest.raises(ApiError) as caught:
        await run(url, ask(tools=(WEATHER,)))
    assert caught.value.reason == "UPSTREAM_ERROR" and caught.value.retryable
    assert "MALFORMED_FUNCTION_CALL" in caught.value.message
