"""Tools, structured output and token counts through the SDK, against a real server process with scripted
models that call tools (server/providers/scripted.py's `tool:` lines): a round trip whole and streamed,
over gRPC and over the gateway's URL, a conversation's TOOL_USE event, and the server's refusals as the
SDK's typed errors."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aibattle_sdk import AsyncClient, Client, InvalidArgumentError, NotFoundError, join_tool_calls, v1
from tests.e2e.process import Running, server_process

CONFIG = r"""
[[models]]
id = "echo"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["Hello there, friend."]

[[models]]
id = "weather"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["Let me look.\ntool:get_weather {\"city\": \"Oslo\", \"unit\": \"celsius\"}", "It is 4 °C in Oslo."]

[[models]]
id = "weather-stream"
provider = "scripted"
script = ["tool:get_weather {\"city\": \"Oslo\", \"unit\": \"celsius\"}\ntool:get_time {}"]

[[models]]
id = "weather-talk"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["tool:get_weather {\"city\": \"Bergen\"}"]

[[models]]
id = "cutoff"
provider = "scripted"
script = ["one two three four"]
error_after_chunks = 2
fallbacks = ["steady"]
failover_mid_stream = true

[[models]]
id = "steady"
provider = "scripted"
script = ["three four."]

[[models]]
id = "json-bot"
provider = "scripted"
capabilities = ["text", "json"]
script = ['{"city": "Oslo", "temp_c": 4}']
"""

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city now.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
    },
}
TIME = {"name": "get_time", "description": "The time now."}
AIBATTLE = Path(sys.executable).parent / "aibattle"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with server_process(
        CONFIG, tmp_path_factory.mktemp("sdk-tools"), AIBATTLE_HTTP_ADDR="127.0.0.1:0"
    ) as running:
        yield running


@pytest.fixture(params=["grpc", "rest"])
def client(request: pytest.FixtureRequest, server: Running) -> Iterator[Client]:
    """The sync client over gRPC, and over the gateway's URL (the same calls as REST)."""
    target = server.grpc_target if request.param == "grpc" else server.http_url
    with Client(target, timeout=30) as c:
        yield c


def test_a_tool_round_trip(client: Client) -> None:
    """Offered a tool, the model calls it; the result goes back as a "tool" message; it answers."""
    history: list[v1.Message | dict[str, str]] = [{"role": "user", "content": "Weather in Oslo?"}]
    first = client.completions.create(model="weather", messages=history, tools=[WEATHER, TIME])
    assert first.finish_reason == v1.FinishReason.TOOL_CALLS
    assert first.content == "Let me look."
    [call] = first.tool_calls
    assert call.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.arguments) == {"city": "Oslo", "unit": "celsius"}

    history.append(v1.Message(role="assistant", content=first.content, tool_calls=first.tool_calls))
    history.append({"role": "tool", "tool_call_id": call.id, "content": '{"temp_c": 4}'})
    second = client.completions.create(model="weather", messages=history, tools=[WEATHER, TIME])
    assert second.finish_reason == v1.FinishReason.STOP and second.tool_calls == []
    assert second.content == "It is 4 °C in Oslo."
    # the tool round trip was read: the prompt counts the call's and the result's words
    assert second.usage is not None and first.usage is not None
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_a_streamed_tool_call_comes_in_pieces_that_join_whole(client: Client) -> None:
    with client.completions.create(
        model="weather-stream", prompt="Weather and time?", tools=[WEATHER, TIME], stream=True
    ) as stream:
        chunks = list(stream)
    pieces = [piece for chunk in chunks for piece in chunk.tool_calls]
    assert len(pieces) > 2  # the arguments arrive in fragments
    assert {p.index for p in pieces} == {0, 1}
    calls = join_tool_calls(chunks)
    assert [c.name for c in calls] == ["get_weather", "get_time"]
    assert json.loads(calls[0].arguments) == {"city": "Oslo", "unit": "celsius"}
    assert json.loads(calls[1].arguments) == {}
    assert calls[0].id != calls[1].id
    assert chunks[-1].is_final and chunks[-1].finish_reason == v1.FinishReason.TOOL_CALLS


def test_tool_choice_none_and_a_named_tool(client: Client) -> None:
    # "none": the model may not call, so the scripted call is left out and the text answers
    plain = client.completions.create(
        model="weather-stream", prompt="Hi", tools=[WEATHER, TIME], tool_choice="none"
    )
    assert plain.tool_calls == [] and plain.finish_reason == v1.FinishReason.STOP
    named = client.completions.create(
        model="weather-stream", prompt="Hi", tools=[WEATHER, TIME], tool_choice="get_time"
    )
    assert [c.name for c in named.tool_calls] == ["get_time"]


def test_refusals_are_typed_errors_naming_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:  # a model that cannot call tools
        client.completions.create(model="echo", prompt="Hi", tools=[WEATHER])
    assert caught.value.reason == "CAPABILITY_MISSING"
    assert [field for field, _ in caught.value.field_violations] == ["tools"]

    with pytest.raises(InvalidArgumentError) as caught:  # nor answer in JSON
        client.completions.create(model="echo", prompt="Hi", response_format="json_object")
    assert caught.value.reason == "CAPABILITY_MISSING"
    assert [field for field, _ in caught.value.field_violations] == ["response_format"]

    bad_schema = {**WEATHER, "parameters": {"type": "string"}}
    with pytest.raises(InvalidArgumentError) as caught:
        client.completions.create(model="weather", prompt="Hi", tools=[bad_schema])
    assert [field for field, _ in caught.value.field_violations] == ["tools[0].parameters"]


def test_json_output(client: Client) -> None:
    answer = client.completions.create(model="json-bot", prompt="Weather?", response_format="json_object")
    assert json.loads(answer.content) == {"city": "Oslo", "temp_c": 4}
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "temp_c": {"type": "number"}}}
    streamed = client.completions.create(
        model="json-bot", prompt="Weather?", response_format=schema, stream=True
    )
    assert json.loads("".join(chunk.content for chunk in streamed)) == {"city": "Oslo", "temp_c": 4}


def test_count_tokens(client: Client) -> None:
    short = client.completions.count_tokens(model="echo", prompt="one two three")
    assert short.model == "echo" and short.input_tokens > 0
    longer = client.completions.count_tokens(
        model="echo",
        prompt="one two three",
        system_instruction="Answer in one short sentence.",
        messages=[{"role": "user", "content": "Earlier"}, {"role": "assistant", "content": "Yes, earlier."}],
    )
    assert longer.input_tokens > short.input_tokens
    with_tools = client.completions.count_tokens(model="weather", prompt="one two three", tools=[WEATHER])
    assert (
        with_tools.input_tokens
        > client.completions.count_tokens(model="weather", prompt="one two three").input_tokens
    )
    with pytest.raises(NotFoundError):
        client.completions.count_tokens(model="no-such-model", prompt="Hi")


def test_a_conversation_participant_calls_a_tool(server: Running) -> None:
    with Client(server.grpc_target, timeout=30) as client:
        conversation = client.conversations.create(
            models=[("echo", "human"), ("weather-talk", "assistant")],
            initial_prompt="Weather in Bergen?",
            rounds=1,
            tools=[WEATHER],
            wait=True,
        )
        assert [t.name for t in conversation.tools] == ["get_weather"]
        [called] = [m for m in conversation.messages if m.tool_calls]
        assert called.model == "weather-talk"
        assert json.loads(called.tool_calls[0].arguments) == {"city": "Bergen"}
        with client.conversations.events(conversation.conversation_id) as events:
            uses = [e for e in events if e.type == v1.ConversationEventType.TOOL_USE]
        assert [(e.model, e.tool) for e in uses] == [("weather-talk", "get_weather")]
        assert uses[0].tool_call is not None and uses[0].tool_call.id == called.tool_calls[0].id


def test_the_async_client_calls_tools_and_counts(server: Running) -> None:
    async def main() -> tuple[v1.CreateCompletionResponse, list[v1.ToolCall], v1.CountTokensResponse]:
        async with AsyncClient(server.grpc_target, timeout=30) as client:
            whole = await client.completions.create(
                model="weather-stream", prompt="Hi", tools=[WEATHER, TIME]
            )
            stream = await client.completions.create(
                model="weather-stream", prompt="Hi", tools=[WEATHER, TIME], stream=True
            )
            joined = join_tool_calls([chunk async for chunk in stream])
            counted = await client.completions.count_tokens(model="echo", prompt="one two three")
            return whole, joined, counted

    whole, joined, counted = asyncio.run(main())
    assert [c.name for c in whole.tool_calls] == [c.name for c in joined] == ["get_weather", "get_time"]
    assert counted.input_tokens > 0


def aibattle(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIBATTLE), "--target", target, *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_the_cli_shows_a_tool_use_and_counts_tokens(server: Running) -> None:
    with Client(server.grpc_target, timeout=30) as client:
        conversation = client.conversations.create(
            models=[("echo", "human"), ("weather-talk", "assistant")],
            initial_prompt="Weather in Bergen?",
            rounds=1,
            tools=[WEATHER],
            auto_run=False,
        )
    joined = aibattle(server.grpc_target, "converse", "--id", conversation.conversation_id)
    assert joined.returncode == 0, joined.stderr
    assert '[weather-talk calls get_weather({"city": "Bergen"})]' in joined.stdout

    counted = aibattle(server.grpc_target, "count-tokens", "--model", "echo", "one two three")
    assert counted.returncode == 0, counted.stderr
    assert re.fullmatch(r"\d+ tokens( \(estimated\))?\n", counted.stdout)
    as_json = aibattle(server.grpc_target, "--json", "count-tokens", "--model", "echo", "one two three")
    assert json.loads(as_json.stdout)["model"] == "echo"


def test_a_mid_stream_failover_is_marked_whole_and_streamed(server: Running) -> None:
    with Client(server.grpc_target, timeout=30) as client:
        chunks = list(client.completions.create(model="cutoff", prompt="Count", stream=True))
        whole = client.completions.create(model="cutoff", prompt="Count")
    marked = [c for c in chunks if c.failover is not None]
    assert len(marked) == 1 and chunks.index(marked[0]) == 2  # after the two chunks "cutoff" gave
    assert (marked[0].failover.from_model, marked[0].failover.to_model) == ("cutoff", "steady")
    assert "".join(c.content for c in chunks) == "one two three four."
    assert [(f.from_model, f.to_model) for f in whole.failovers] == [("cutoff", "steady")]
    assert whole.content == "one two three four."

    shown = aibattle(server.grpc_target, "complete", "--model", "cutoff", "Count")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("one two \n[failover: cutoff → steady, ")
    assert "]\nthree four.\n[stop; " in shown.stdout
