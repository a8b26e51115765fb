"""Tools through the gateway's REST transcoding (/api/v1/completions): JSON carries the tools in, and
the tool calls and their finish reason out, whole and streamed; errors name the JSON field."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config
from tests.gateway.conftest import CONFIG

ARGS = '{"city": "Paris"}'
MODELS = [
    {
        "id": "scripted-tools",
        "provider": "scripted",
        "script": [f"tool:get_weather {ARGS}", "Sunny in Paris."],
    },
    {"id": "scripted-plain", "provider": "scripted", "script": ["Words."]},
]
WEATHER = {
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
async def api(aiohttp_client: Any, api_descriptor_set: Path) -> AsyncIterator[Any]:
    server = AIBattleServer(Config.from_dict({**CONFIG, "models": MODELS}))
    await server.start()
    try:
        yield await aiohttp_client(
            create_app(server.grpc_target, GatewayOptions(descriptor_set=api_descriptor_set))
        )
    finally:
        await server.stop(grace=0.5)


async def test_tool_round_trip_over_rest(api: Any) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    resp = await api.post(
        "/api/v1/completions",
        json={"model": "scripted-tools", "messages": [question], "tools": [WEATHER]},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["finish_reason"] == "FINISH_REASON_TOOL_CALLS"
    [call] = body["tool_calls"]
    assert call["id"].startswith("call_")
    assert (call["name"], call["arguments"]) == ("get_weather", ARGS)

    history = [
        question,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": '{"sky": "clear"}'},
    ]
    resp = await api.post(
        "/api/v1/completions",
        json={
            "model": "scripted-tools",
            "messages": history,
            "tools": [WEATHER],
            "tool_choice": {"mode": "TOOL_CHOICE_MODE_AUTO"},
        },
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert (body["content"], body["finish_reason"]) == ("Sunny in Paris.", "FINISH_REASON_STOP")
    assert not body.get("tool_calls")


async def test_streamed_tool_call_over_ndjson(api: Any) -> None:
    resp = await api.post(
        "/api/v1/completions:stream", json={"model": "scripted-tools", "prompt": "x", "tools": [WEATHER]}
    )
    assert resp.status == 200
    chunks = [json.loads(line)["result"] for line in (await resp.text()).splitlines()]
    pieces = [p for c in chunks for p in c.get("tool_calls", [])]
    assert len(pieces) >= 2
    assert pieces[0]["name"] == "get_weather" and pieces[0]["id"].startswith("call_")
    assert "".join(p.get("arguments", "") for p in pieces) == ARGS
    assert chunks[-1]["finish_reason"] == "FINISH_REASON_TOOL_CALLS"


async def test_rest_errors_name_the_field(api: Any) -> None:
    resp = await api.post(
        "/api/v1/completions", json={"model": "scripted-plain", "prompt": "x", "tools": [WEATHER]}
    )
    assert resp.status == 400
    body = await resp.json()
    info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
    assert (info["reason"], info["metadata"]["field"]) == ("CAPABILITY_MISSING", "tools")
    resp = await api.post(
        "/api/v1/completions",
        json={"model": "scripted-tools", "prompt": "x", "tools": [WEATHER, WEATHER]},
    )
    assert resp.status == 400
    assert (await resp.json())["message"].startswith("tools[1].name:")


async def test_conversation_with_tools_over_rest(api: Any) -> None:
    resp = await api.post(
        "/api/v1/conversations",
        json={
            "models": [
                {"id": "scripted-plain", "role": "human"},
                {"id": "scripted-tools", "role": "assistant"},
            ],
            "initial_prompt": "Weather in Paris?",
            "tools": [WEATHER],
            "wait": True,
        },
    )
    assert resp.status == 200, await resp.text()
    conversation = await resp.json()  # response_body: the bare Conversation
    assert [t["name"] for t in conversation["tools"]] == ["get_weather"]
    assert conversation["tools"][0]["parameters"] == WEATHER["parameters"]
    reply = conversation["messages"][-1]
    assert reply["model"] == "scripted-tools"
    assert [(c["name"], c["arguments"]) for c in reply["tool_calls"]] == [("get_weather", ARGS)]
