"""The official `anthropic` client against the gateway's /v1/messages, unchanged but for its base_url:
scripted models, a fake upstream speaking Anthropic's own wire format behind the `anthropic` provider,
keys, and (slow) the embedded local model."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config
from tests.security_testlib import ADMIN_KEY, SECRETS, secure_config
from tests.server.providers.fake_upstream import (
    FakeUpstream,
    Reply,
    anthropic_message,
    anthropic_stream,
    start_fake,
)

KEY_ENV = "AIBATTLE_TEST_ANTHROPIC_KEY"
UPSTREAM_KEY = "sk-ant-api03-test-Gw7Secret"
UPSTREAM_MODEL = "claude-sonnet-4-5"
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


def models(fake_url: str) -> list[dict[str, Any]]:
    return [
        {"id": "scripted-echo", "provider": "scripted", "script": ["Hello there, friend."]},
        {
            "id": "scripted-tools",
            "provider": "scripted",
            "script": ['Let me look.\ntool:get_weather {"city": "Paris"}', "It is sunny in Paris."],
        },
        {"id": "scripted-fail", "provider": "scripted", "script": ["one two three"], "error_after_chunks": 1},
        {
            "id": "claude",
            "provider": "anthropic",
            "upstream_model": UPSTREAM_MODEL,
            "base_url": fake_url,
            "api_key_env": KEY_ENV,
            "upstream": {"retries": 0, "backoff_seconds": 0.0},
        },
    ]


@pytest.fixture
async def fake(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv(KEY_ENV, UPSTREAM_KEY)
    return await start_fake(aiohttp_server)


async def client_for(
    aiohttp_client: Any, server: AIBattleServer, descriptors: Path, *, gateway: Any = None, **options: Any
) -> Any:
    """The official client of a gateway (in-process, `gateway` its GatewayOptions fields) before `server`."""
    gateway_options = GatewayOptions(descriptor_set=descriptors, **(gateway or {}))
    app = create_app(server.grpc_target, gateway_options, dispatcher=server.dispatcher())
    gw = await aiohttp_client(app, server_kwargs={"handler_cancellation": True})
    options.setdefault("api_key", "sk-unused")
    return anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{gw.port}", max_retries=0, **options)


@pytest.fixture
async def server(fake: tuple[FakeUpstream, str]) -> AsyncIterator[AIBattleServer]:
    config = Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
            "models": models(fake[1]),
        }
    )
    srv = AIBattleServer(config)
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def claude(
    aiohttp_client: Any, server: AIBattleServer, api_descriptor_set: Path
) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = await client_for(aiohttp_client, server, api_descriptor_set)
    yield client
    await client.close()


async def test_create_and_stream(claude: anthropic.AsyncAnthropic) -> None:
    message = await claude.messages.create(
        model="scripted-echo",
        max_tokens=64,
        system="Be brief.",
        messages=[{"role": "user", "content": "Hi"}],
        stop_sequences=["zzz"],
        metadata={"user_id": "u-1"},
        # Dropped from the client's signature since; older clients and raw callers still send it.
        extra_body={"temperature": 0.2, "top_k": 40},
    )
    assert message.type == "message" and message.role == "assistant" and message.model == "scripted-echo"
    assert [(b.type, getattr(b, "text", None)) for b in message.content] == [("text", "Hello there, friend.")]
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 3

    async with claude.messages.stream(
        model="scripted-echo", max_tokens=64, system="Be brief.", messages=[{"role": "user", "content": "Hi"}]
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) == 3 and "".join(pieces) == "Hello there, friend."
    assert final.id.startswith("msg_") and final.stop_reason == "end_turn"
    # message_start can't know the prompt's count; message_delta's cumulative usage brings it.
    assert (final.usage.input_tokens, final.usage.output_tokens) == (message.usage.input_tokens, 3)


async def test_tool_round_trip_with_a_scripted_model(claude: anthropic.AsyncAnthropic) -> None:
    first = await claude.messages.create(
        model="scripted-tools",
        max_tokens=64,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"},
    )
    assert first.stop_reason == "tool_use"
    text, call = first.content
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}],
        },
    ]
    async with claude.messages.stream(
        model="scripted-tools", max_tokens=64, messages=history, tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "end_turn"
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "It is sunny in Paris.")]


async def test_streamed_tool_use_reassembles_in_the_client(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(
        model="scripted-tools", max_tokens=64, messages=ASK, tools=[WEATHER_TOOL]
    ) as stream:
        final = await stream.get_final_message()
    assert final.stop_reason == "tool_use"
    [call] = [b for b in final.content if b.type == "tool_use"]
    assert call.name == "get_weather" and call.input == {"city": "Paris"} and call.id


async def test_tool_round_trip_through_an_anthropic_upstream(
    claude: anthropic.AsyncAnthropic, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    call_id = "toolu_01A09q90qw90lq917835lq9"
    upstream.replies = [
        Reply(
            chunks=anthropic_stream(
                [
                    {"type": "text", "text": ["I'll check ", "the weather."]},
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": "get_weather",
                        "input": ['{"ci', 'ty": "Par', 'is"}'],
                    },
                ],
                stop_reason="tool_use",
                input_tokens=380,
                output_tokens=42,
            )
        ),
        anthropic_message(
            [{"type": "text", "text": "It is sunny in Paris."}], input_tokens=450, output_tokens=9
        ),
    ]
    async with claude.messages.stream(
        model="claude", max_tokens=300, messages=ASK, tools=[WEATHER_TOOL]
    ) as stream:
        first = await stream.get_final_message()
    assert first.stop_reason == "tool_use"
    assert (first.usage.input_tokens, first.usage.output_tokens) == (380, 42)
    text, call = first.content
    assert text.type == "text" and text.text == "I'll check the weather."
    assert (call.type, call.id, call.name, call.input) == (
        "tool_use",
        call_id,
        "get_weather",
        {"city": "Paris"},
    )
    sent = upstream.requests[-1]
    assert sent.headers["x-api-key"] == UPSTREAM_KEY and sent.json["model"] == UPSTREAM_MODEL
    assert sent.json["tools"] == [WEATHER_TOOL] and sent.json["stream"] is True

    final = await claude.messages.create(
        model="claude",
        max_tokens=300,
        tools=[WEATHER_TOOL],
        messages=[
            *ASK,
            {"role": "assistant", "content": first.content},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call_id, "content": "sunny, 21 C"}],
            },
        ],
    )
    assert [(b.type, getattr(b, "text", None)) for b in final.content] == [("text", "It is sunny in Paris.")]
    assert final.stop_reason == "end_turn" and (final.usage.input_tokens, final.usage.output_tokens) == (
        450,
        9,
    )
    # The upstream got the whole round trip in its own format: the call, then its result.
    turns = upstream.requests[-1].json["messages"]
    assert turns[1]["role"] == "assistant"
    assert {"type": "tool_use", "id": call_id, "name": "get_weather", "input": {"city": "Paris"}} in turns[1][
        "content"
    ]
    assert turns[2]["role"] == "user"
    [result] = [b for b in turns[2]["content"] if b["type"] == "tool_result"]
    assert result["tool_use_id"] == call_id and "sunny, 21 C" in json.dumps(result["content"])


async def test_count_tokens(claude: anthropic.AsyncAnthropic, fake: tuple[FakeUpstream, str]) -> None:
    upstream, _ = fake
    upstream.replies = [Reply(content_type="application/json", chunks=[b'{"input_tokens": 2095}'])]
    counted = await claude.messages.count_tokens(
        model="claude", messages=ASK, tools=[WEATHER_TOOL], system="Be brief."
    )
    assert counted.input_tokens == 2095  # the upstream's own count
    sent = upstream.requests[-1]
    assert sent.path == "/v1/messages/count_tokens" and sent.json["tools"] == [WEATHER_TOOL]
    # A provider that cannot count: the gateway's estimate, and its header says so.
    raw = await claude.messages.with_raw_response.count_tokens(
        model="scripted-echo", system="Be brief.", messages=[{"role": "user", "content": "Hello"}]
    )
    assert (await raw.parse()).input_tokens == 13 and raw.headers["x-aibattle-tokens-estimated"] == "true"


async def test_errors_as_the_client_raises_them(claude: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        await claude.messages.create(model="nope", max_tokens=16, messages=ASK)
    assert missing.value.type == "not_found_error" and "nope" in str(missing.value.api_message)
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(model="scripted-echo", max_tokens=16, messages=ASK, extra_body={"n": 2})
    assert bad.value.type == "invalid_request_error" and "'n'" in str(bad.value.api_message)
    with pytest.raises(anthropic.BadRequestError):
        await claude.messages.create(
            model="scripted-echo",
            max_tokens=16,
            messages=ASK,
            thinking={"type": "enabled", "budget_tokens": 100},  # below Anthropic's least
        )
    # After the first event, a failure is an `error` event, which the client raises.
    with pytest.raises(anthropic.APIStatusError, match="scripted failure") as failed:
        async with claude.messages.stream(model="scripted-fail", max_tokens=16, messages=ASK) as stream:
            async for _ in stream:
                pass
    assert failed.value.type == "overloaded_error"


async def test_keys_401_and_403(aiohttp_client: Any, api_descriptor_set: Path) -> None:
    server = AIBattleServer(secure_config())
    await server.start()
    try:
        admin = await client_for(aiohttp_client, server, api_descriptor_set, api_key=ADMIN_KEY)
        answer = await admin.messages.create(model="scripted-echo", max_tokens=16, messages=ASK)
        assert answer.content[0].type == "text"
        stranger = admin.with_options(api_key="aib_nope_0000000000000000")
        with pytest.raises(anthropic.AuthenticationError) as unknown:
            await stranger.messages.create(model="scripted-echo", max_tokens=16, messages=ASK)
        assert unknown.value.type == "authentication_error"
        with pytest.raises(anthropic.AuthenticationError):
            await stranger.messages.count_tokens(model="scripted-echo", messages=ASK)
        created = await admin.post(
            "/api/v1/keys", body={"name": "narrow", "allowed_models": ["scripted-echo"]}, cast_to=object
        )
        SECRETS.add(created["secret"])  # type: ignore[index]
        narrow = admin.with_options(api_key=created["secret"])  # type: ignore[index]
        assert (await narrow.messages.count_tokens(model="scripted-echo", messages=ASK)).input_tokens > 0
        for call in (
            narrow.messages.create(model="scripted-vision", max_tokens=16, messages=ASK),
            narrow.messages.count_tokens(model="scripted-vision", messages=ASK),
        ):
            with pytest.raises(anthropic.PermissionDeniedError) as denied:
                await call
            assert denied.value.type == "permission_error"
        limited = await admin.post("/api/v1/keys", body={"name": "one", "rpm": 1}, cast_to=object)
        SECRETS.add(limited["secret"])  # type: ignore[index]
        once = admin.with_options(api_key=limited["secret"])  # type: ignore[index]
        for _ in range(2):  # rpm 1 allows a burst of 2
            await once.messages.create(model="scripted-echo", max_tokens=16, messages=ASK)
        with pytest.raises(anthropic.RateLimitError) as limited_error:
            await once.messages.create(model="scripted-echo", max_tokens=16, messages=ASK)
        assert limited_error.value.type == "rate_limit_error"
        assert int(limited_error.value.response.headers["retry-after"]) >= 1
        await admin.close()
    finally:
        await server.stop(grace=0.5)


async def test_a_body_over_the_limit_is_request_too_large(
    aiohttp_client: Any, server: AIBattleServer, api_descriptor_set: Path
) -> None:
    small = await client_for(aiohttp_client, server, api_descriptor_set, gateway={"max_body_bytes": 2048})
    with pytest.raises(anthropic.RequestTooLargeError) as caught:
        await small.messages.create(
            model="scripted-echo", max_tokens=16, messages=[{"role": "user", "content": "x" * 4096}]
        )
    assert caught.value.status_code == 413 and caught.value.type == "request_too_large"  # type: ignore[comparison-overlap]
    await small.close()


# ---- the embedded local model


@pytest.fixture
async def local(aiohttp_client: Any, api_descriptor_set: Path) -> AsyncIterator[anthropic.AsyncAnthropic]:
    server = AIBattleServer(
        Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}})
    )
    await server.start()
    client = await client_for(aiohttp_client, server, api_descriptor_set)
    yield client
    await client.close()
    await server.stop(grace=0.5)


@pytest.mark.slow
async def test_the_local_model_through_the_anthropic_client(local: anthropic.AsyncAnthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]
    message = await local.messages.create(
        model="smollm2-135m",
        max_tokens=40,
        system="Answer in one short sentence.",
        messages=ask,
        extra_body={"temperature": 0.2},
    )
    assert message.stop_reason in ("end_turn", "max_tokens")
    assert "Paris" in message.content[0].text  # type: ignore[union-attr]
    assert message.usage.input_tokens > 10 and 0 < message.usage.output_tokens <= 40

    async with local.messages.stream(
        model="smollm2-135m",
        max_tokens=40,
        system="Answer in one short sentence.",
        messages=ask,
        extra_body={"temperature": 0.2},
    ) as stream:
        pieces = [text async for text in stream.text_stream]
        final = await stream.get_final_message()
    assert len(pieces) > 3 and "Paris" in "".join(pieces)
    assert final.usage.input_tokens == message.usage.input_tokens and final.usage.output_tokens > 0

    counted = await local.messages.with_raw_response.count_tokens(
        model="smollm2-135m", system="Answer in one short sentence.", messages=ask
    )
    # The model's own tokenizer counts the prompt it generated from: no estimate.
    assert "x-aibattle-tokens-estimated" not in counted.headers
    assert (await counted.parse()).input_tokens == message.usage.input_tokens
