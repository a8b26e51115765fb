"""Tools and structured output through the OpenAI and Ollama endpoints, driven by the official `openai` and
`ollama` clients: scripted models that call tools (server/providers/scripted.py), and a fake OpenAI
upstream streaming its real `delta.tool_calls` fragments, whose recorded requests show what each
endpoint made of a client's tool history."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import ollama
import openai
import pytest

from server.app import AIBattleServer
from server.config import Config
from tests.gateway.conftest import CONFIG
from tests.server.providers.fake_upstream import FakeUpstream, Reply, start_fake
from tests.server.providers.test_ollama import final, line, stream_reply
from tests.server.providers.test_ollama_tools import calls_line
from tests.server.providers.test_ollama_tools import model_entry as ollama_entry
from tests.server.providers.test_openai import KEY
from tests.server.providers.test_openai_tools import TWO_CALLS, model_entry

WEATHER_FN = {
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
WEATHER = {"type": "function", "function": WEATHER_FN}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
STRICT_CLOCK = {**CLOCK, "function": {**CLOCK["function"], "strict": True}}
ASK = {"role": "user", "content": "What is the weather in Paris?"}
MODELS = [
    {
        "id": "scripted-tools",
        "provider": "scripted",
        "script": ['tool:get_weather {"city": "Paris"}', "It is sunny in Paris."],
    },
    {
        "id": "scripted-json",
        "provider": "scripted",
        "capabilities": ["text", "json"],
        "script": ['{"city": "Paris", "sunny": true}'],
    },
]


@pytest.fixture
async def fake(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    return await start_fake(aiohttp_server)


@pytest.fixture
async def fake_ollama(aiohttp_server: Any) -> tuple[FakeUpstream, str]:
    return await start_fake(aiohttp_server)


@pytest.fixture
async def aibattle(
    fake: tuple[FakeUpstream, str], fake_ollama: tuple[FakeUpstream, str]
) -> AsyncIterator[AIBattleServer]:
    """conftest's server, with models that call tools, answer in JSON, and "gpt" and "llama" behind a
    fake OpenAI and a fake Ollama."""
    models = [*CONFIG["models"], *MODELS, model_entry(fake[1]), ollama_entry(fake_ollama[1])]
    config = {**CONFIG, "models": models}
    server = AIBattleServer(Config.from_dict(config))
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def oai(api: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def olm(api: Any) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=f"http://127.0.0.1:{api.port}")
    yield client
    await client.close()


def whole(content: str) -> Reply:
    """OpenAI's whole chat answer (what the openai provider asks for when the client does not stream)."""
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    return Reply(chunks=[json.dumps(body).encode()], content_type="application/json")


def sse_data(text: str) -> list[Any]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: {")]


# --- OpenAI --------------------------------------------------------------------------------------------


async def test_openai_client_tool_round_trip(oai: openai.AsyncOpenAI) -> None:
    """The call, its result sent back as a `tool` message, the final answer."""
    first = await oai.chat.completions.create(model="scripted-tools", messages=[ASK], tools=[WEATHER])
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}

    result = {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny"}'}
    final = await oai.chat.completions.create(
        model="scripted-tools",
        messages=[ASK, choice.message.model_dump(exclude_none=True), result],  # type: ignore[list-item]
        tools=[WEATHER],
        tool_choice="auto",
        parallel_tool_calls=False,
    )
    assert final.choices[0].message.content == "It is sunny in Paris."
    assert final.choices[0].finish_reason == "stop" and final.choices[0].message.tool_calls is None


async def test_openai_client_streams_tool_calls_as_openai_does(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="scripted-tools", messages=[ASK], tools=[WEATHER], stream=True
    )
    chunks = [chunk async for chunk in stream]
    fragments = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert len(fragments) > 1, "the arguments come in fragments"
    first, rest = fragments[0], fragments[1:]
    assert first.index == 0 and first.id and first.id.startswith("call_") and first.type == "function"
    assert first.function is not None and first.function.name == "get_weather"
    assert all(f.index == 0 and f.id is None and f.type is None for f in rest)
    assert all(f.function is not None and f.function.name is None for f in rest)
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function is not None)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_openai_stream_fragments_have_exactly_openais_keys(api: Any) -> None:
    resp = await api.post(
        "/v1/chat/completions",
        json={"model": "scripted-tools", "messages": [ASK], "tools": [WEATHER], "stream": True},
    )
    assert resp.status == 200
    deltas = [e["choices"][0]["delta"] for e in sse_data(await resp.text())]
    fragments = [f for d in deltas for f in d.get("tool_calls", ())]
    assert set(fragments[0]) == {"index", "id", "type", "function"}
    assert set(fragments[0]["function"]) == {"name", "arguments"}
    assert all(set(f) == {"index", "function"} and set(f["function"]) == {"arguments"} for f in fragments[1:])


async def test_openai_fragments_from_an_openai_upstream_reach_the_client_and_the_history_goes_back(
    oai: openai.AsyncOpenAI, fake: tuple[FakeUpstream, str]
) -> None:
    """Two parallel calls streamed in pieces by a fake OpenAI, relayed as OpenAI streams them; the
    client's history (the assistant's calls, two tool results) reaches it in OpenAI's shape."""
    upstream, _ = fake
    upstream.replies = [Reply(chunks=TWO_CALLS)]
    stream = await oai.chat.completions.create(
        model="gpt", messages=[ASK], tools=[WEATHER, STRICT_CLOCK], tool_choice="required", stream=True
    )
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for fragment in chunk.choices[0].delta.tool_calls or []:
            call = calls.setdefault(fragment.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += fragment.id or ""
            assert fragment.function is not None
            call["name"] += fragment.function.name or ""
            call["arguments"] += fragment.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls == {
        0: {"id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        1: {"id": "call_ABbbN8KLFyQfNGmkkuwX0Uxp", "name": "get_time", "arguments": "{}"},
    }
    sent = upstream.requests[-1].json
    assert sent["tool_choice"] == "required"
    assert [t["function"]["name"] for t in sent["tools"]] == ["get_weather", "get_time"]
    # OpenAI's strict function calling (the Agents SDK's default) reaches the upstream, on that tool only.
    assert [t["function"].get("strict") for t in sent["tools"]] == [None, True]

    upstream.replies = [whole("Sunny, noon.")]
    assistant = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls.values()
        ],
    }
    results = [
        {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
        {"role": "tool", "tool_call_id": calls[1]["id"], "content": "12:00"},
    ]
    final = await oai.chat.completions.create(
        model="gpt",
        messages=[ASK, assistant, *results],
        tools=[WEATHER, CLOCK],  # type: ignore[list-item]
    )
    assert final.choices[0].message.content == "Sunny, noon."
    history = upstream.requests[-1].json["messages"]
    assert history[1]["tool_calls"] == assistant["tool_calls"]
    assert [(m["role"], m["tool_call_id"], m["content"]) for m in history[2:]] == [
        ("tool", calls[0]["id"], "sunny"),
        ("tool", calls[1]["id"], "12:00"),
    ]


async def test_openai_client_response_format_json(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(
        model="scripted-json", messages=[ASK], response_format={"type": "json_object"}
    )
    assert json.loads(reply.choices[0].message.content or "") == {"city": "Paris", "sunny": True}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    reply = await oai.chat.completions.create(
        model="scripted-json",
        messages=[ASK],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "w", "schema": schema, "strict": True},
        },
    )
    assert json.loads(reply.choices[0].message.content or "")["city"] == "Paris"


async def test_openai_response_format_and_tools_reach_an_openai_upstream(
    oai: openai.AsyncOpenAI, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    upstream.replies = [whole('{"a": 1}')]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    reply = await oai.chat.completions.create(
        model="gpt",
        messages=[ASK],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": schema, "strict": True},
        },
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert reply.choices[0].message.content == '{"a": 1}'
    sent = upstream.requests[-1].json
    assert sent["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": schema, "strict": True},
    }
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice.name",
            "invalid_field",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
            "tools[0].name",
            "invalid_field",
        ),
        (
            {"tools": [{"type": "function", "function": {"description": "x"}}]},
            "tools[0].function.name",
            "invalid_field_value",
        ),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "invalid_field_value"),
        ({"tool_choice": "required"}, "tool_choice", "invalid_field"),
        (
            {"tools": [{"type": "function", "function": {**WEATHER_FN, "parameters": "x"}}]},
            "tools[0].function.parameters",
            "invalid_field_value",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type", "invalid_field_value"),
        (
            {
                "messages": [ASK, {"role": "tool", "tool_call_id": "call_x", "content": "4"}],
                "tools": [WEATHER],
            },
            "messages[1].tool_call_id",
            "invalid_field",
        ),
        (
            {
                "messages": [
                    ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
                    },
                ]
            },
            "messages[1].tool_calls[0].id",
            "invalid_field_value",
        ),
        (
            {"messages": [ASK], "tools": [WEATHER], "response_format": {"type": "json_object"}},
            "response_format",
            "capability_missing",
        ),
    ],
)
async def test_openai_bad_tools_and_formats_are_400s_naming_the_field(
    api: Any, extra: dict[str, Any], param: str, code: str
) -> None:
    body = {"model": "scripted-tools", "messages": [ASK], **extra}
    resp = await api.post("/v1/chat/completions", json=body)
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert (error["param"], error["code"]) == (param, code), error


async def test_tool_choice_auto_or_none_without_tools_asks_for_nothing(api: Any) -> None:
    for choice in ("auto", "none"):
        body = {"model": "scripted-echo", "messages": [ASK], "tools": [], "tool_choice": choice}
        resp = await api.post("/v1/chat/completions", json=body)
        assert resp.status == 200, await resp.text()


# --- Ollama ----------------------------------------------------------------------------------------------


async def test_ollama_client_tool_call_and_its_result(olm: ollama.AsyncClient) -> None:
    first = await olm.chat(model="scripted-tools", messages=[ASK], tools=[WEATHER])
    assert first.message.tool_calls is not None and len(first.message.tool_calls) == 1
    call = first.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert first.done_reason == "stop"

    final = await olm.chat(
        model="scripted-tools",
        messages=[ASK, first.message, {"role": "tool", "content": "sunny", "tool_name": "get_weather"}],
        tools=[WEATHER],
    )
    assert final.message.content == "It is sunny in Paris." and not final.message.tool_calls


async def test_ollama_client_streams_a_tool_call_whole(olm: ollama.AsyncClient) -> None:
    parts = [
        p async for p in await olm.chat(model="scripted-tools", messages=[ASK], tools=[WEATHER], stream=True)
    ]
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done
    (call,) = with_calls[0].message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert parts[-1].done and parts[-1].done_reason == "stop"


async def test_ollama_history_reaches_an_openai_upstream_with_ids_matched_by_tool_name(
    olm: ollama.AsyncClient, fake: tuple[FakeUpstream, str]
) -> None:
    """Ollama's history has no call ids: the endpoint makes them, and each result (by its tool_name)
    answers its call; the upstream's streamed fragments come back as Ollama's whole calls."""
    upstream, _ = fake
    upstream.replies = [Reply(chunks=TWO_CALLS)]
    parts = [
        p async for p in await olm.chat(model="gpt", messages=[ASK], tools=[WEATHER, CLOCK], stream=True)
    ]
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {}),
    ]

    upstream.replies = [whole("Done.")]
    assistant = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": c.function.model_dump()} for c in calls],
    }
    final = await olm.chat(
        model="gpt",
        messages=[
            ASK,
            assistant,
            {"role": "tool", "content": "12:00", "tool_name": "get_time"},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
        tools=[WEATHER, CLOCK],
        stream=False,
    )
    assert final.message.content == "Done."
    history = upstream.requests[-1].json["messages"]
    ids = {c["function"]["name"]: c["id"] for c in history[1]["tool_calls"]}
    assert len(set(ids.values())) == 2
    assert json.loads(history[1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert [(m["tool_call_id"], m["content"]) for m in history[2:]] == [
        (ids["get_time"], "12:00"),
        (ids["get_weather"], "sunny"),
    ]


async def test_ollama_client_format_json_and_schema(olm: ollama.AsyncClient) -> None:
    reply = await olm.chat(model="scripted-json", messages=[ASK], format="json")
    assert json.loads(reply.message.content or "") == {"city": "Paris", "sunny": True}
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    generated = await olm.generate(model="scripted-json", prompt="Weather?", format=schema)
    assert json.loads(generated.response or "")["city"] == "Paris"


async def test_ollama_format_schema_reaches_an_openai_upstream(
    api: Any, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    upstream.replies = [whole("{}")]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    resp = await api.post(
        "/api/chat", json={"model": "gpt", "messages": [ASK], "format": schema, "stream": False}
    )
    assert resp.status == 200, await resp.text()
    assert upstream.requests[-1].json["response_format"]["json_schema"]["schema"] == schema


async def test_ollama_results_without_tool_name_answer_the_calls_in_order(
    api: Any, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    upstream.replies = [whole("Done.")]
    calls = [{"function": {"name": "get_weather", "arguments": {"city": c}}} for c in ("Paris", "Rome")]
    messages = [
        ASK,
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "rainy"},
    ]
    resp = await api.post(
        "/api/chat", json={"model": "gpt", "messages": messages, "tools": [WEATHER], "stream": False}
    )
    assert resp.status == 200, await resp.text()
    history = upstream.requests[-1].json["messages"]
    ids = [c["id"] for c in history[1]["tool_calls"]]
    assert [m["tool_call_id"] for m in history[2:]] == ids and len(set(ids)) == 2
    resp = await api.post(
        "/api/chat", json={"model": "gpt", "messages": [*messages, {"role": "tool", "content": "?"}]}
    )
    assert resp.status == 400 and "'messages[4].tool_name'" in (await resp.json())["error"]


async def test_an_ollama_upstreams_tool_calls_through_both_endpoints(
    oai: openai.AsyncOpenAI, olm: ollama.AsyncClient, fake_ollama: tuple[FakeUpstream, str]
) -> None:
    """Ollama hands over whole calls with object arguments: OpenAI's client gets them as fragments of
    JSON text with ids, Ollama's as they came."""
    upstream, _ = fake_ollama
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    upstream.replies = [stream_reply(calls_line(call), line(final()))]
    stream = await oai.chat.completions.create(model="llama", messages=[ASK], tools=[WEATHER], stream=True)
    chunks = [chunk async for chunk in stream]
    fragments = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
    assert fragments[0].id and fragments[0].function is not None
    assert fragments[0].function.name == "get_weather"
    arguments = "".join(f.function.arguments or "" for f in fragments if f.function is not None)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert upstream.requests[-1].json["tools"][0]["function"]["name"] == "get_weather"

    parts = [p async for p in await olm.chat(model="llama", messages=[ASK], tools=[WEATHER], stream=True)]
    calls = [c for p in parts for c in p.message.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert parts[-1].done_reason == "stop"
