"""top_k, repeat_penalty, frequency_penalty and presence_penalty on the wire of every HTTP provider.

Each provider's fake upstream speaks its real format (the replies of its own test module); what is
asserted is the exact JSON the upstream received: each field under the API's own name, or, for a
field the API has no name for, a refusal naming it before anything is sent (never a silent drop).
The last tests go the whole way: an official client's request through a compat endpoint of the
gateway, the gRPC server and a provider, to the upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import ollama
import openai
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from tests.conftest import error_info, rich_status
from tests.server.providers import test_anthropic, test_gemini, test_ollama, test_openai
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

ALL = {"top_k": 20, "repeat_penalty": 1.3, "frequency_penalty": 0.5, "presence_penalty": -0.25}
KEY_ENV = "AIBATTLE_TEST_SAMPLING_KEY"


def _models(url: str) -> list[dict[str, Any]]:
    """One model per HTTP provider, all on the same fake upstream (paths tell them apart)."""
    keyed = {"api_key_env": KEY_ENV, "upstream": {"retries": 0, "backoff_seconds": 0.0}}
    return [
        {
            "id": "oai",
            "provider": "openai",
            "upstream_model": "gpt-4o-mini",
            "base_url": f"{url}/v1",
            **keyed,
        },
        {"id": "oll", "provider": "ollama", "upstream_model": "llama3.2:3b", "base_url": url, **keyed},
        {"id": "ant", "provider": "anthropic", "upstream_model": "claude-x", "base_url": url, **keyed},
        {"id": "gem", "provider": "gemini", "upstream_model": "gemini-x", "base_url": url, **keyed},
    ]


#: A whole streamed answer in each provider's own wire format.
REPLIES = {
    "oai": Reply(chunks=test_openai.HELLO),
    "oll": test_ollama.stream_reply(*test_ollama.HELLO),
    "ant": Reply(
        chunks=[
            test_anthropic.message_start(),
            test_anthropic.text_start(),
            test_anthropic.text_delta("Hello"),
            *test_anthropic.finish(),
        ]
    ),
    "gem": Reply(chunks=test_gemini.STREAM),
}

#: What each API takes, under its own names; a field missing here is one it must refuse.
WIRE = {
    "oai": {"frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"},
    "oll": {name: name for name in ALL},
    "ant": {"top_k": "top_k"},
    "gem": {"top_k": "topK", "frequency_penalty": "frequencyPenalty", "presence_penalty": "presencePenalty"},
}


def _sampling_sent(model_id: str, body: dict[str, Any]) -> dict[str, Any]:
    """Where each API keeps its sampling options in a request body."""
    if model_id == "oll":
        return dict(body["options"])
    if model_id == "gem":
        return dict(body["generationConfig"])
    return body


@pytest.fixture
async def upstream(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv(KEY_ENV, "sk-sampling-test")
    return await start_fake(aiohttp_server)


@asynccontextmanager
async def _stub(url: str) -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    async with serving(_models(url)) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield completions_pb2_grpc.CompletionServiceStub(channel)


async def _stream(stub: completions_pb2_grpc.CompletionServiceStub, model_id: str, **fields: Any) -> str:
    request = completions_pb2.StreamCompletionRequest(model=model_id, prompt="hi", **fields)
    return "".join([chunk.content async for chunk in stub.StreamCompletion(request)])


@pytest.mark.parametrize("model_id", sorted(WIRE))
async def test_each_api_receives_the_fields_it_takes_under_its_own_names(
    upstream: tuple[FakeUpstream, str], model_id: str
) -> None:
    fake, url = upstream
    fake.replies = [REPLIES[model_id]]
    taken = {ours: ALL[ours] for ours in WIRE[model_id]}
    async with _stub(url) as stub:
        assert await _stream(stub, model_id, **taken)
    (sent,) = fake.requests
    options = _sampling_sent(model_id, sent.json)
    expected = {theirs: pytest.approx(ALL[ours]) for ours, theirs in WIRE[model_id].items()}
    assert {k: options[k] for k in expected if k in options} == expected
    # None of our names leaks under a name the API does not know (gemini's are camelCase).
    assert not (set(ALL) - set(WIRE[model_id].values())) & set(options)


@pytest.mark.parametrize("model_id", sorted(WIRE))
async def test_unset_fields_are_not_sent(upstream: tuple[FakeUpstream, str], model_id: str) -> None:
    fake, url = upstream
    fake.replies = [REPLIES[model_id]]
    async with _stub(url) as stub:
        await _stream(stub, model_id)
    options = _sampling_sent(model_id, fake.requests[-1].json)
    assert not set(options) & (set(ALL) | {"topK", "frequencyPenalty", "presencePenalty"})


REFUSED = [(model_id, field) for model_id in sorted(WIRE) for field in ALL if field not in WIRE[model_id]]


@pytest.mark.parametrize(("model_id", "field"), REFUSED)
async def test_a_field_the_api_does_not_take_is_refused_naming_it(
    upstream: tuple[FakeUpstream, str], model_id: str, field: str
) -> None:
    fake, url = upstream
    fake.replies = [REPLIES[model_id]]
    async with _stub(url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _stream(stub, model_id, **{field: ALL[field]})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: model {model_id!r}")
    assert error_info(caught.value).reason == "UNSUPPORTED_PARAMETER"
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in rich_status(caught.value).details)
    assert bad.field_violations[0].field == field
    assert fake.requests == []  # refused before anything went upstream


async def test_a_refusal_is_not_a_reason_to_fall_back(upstream: tuple[FakeUpstream, str]) -> None:
    """The fault is the request's: a fallback that takes the field must not answer in its place."""
    fake, url = upstream
    models = _models(url)
    models[0]["fallbacks"] = ["oll"]
    fake.replies = [REPLIES["oll"]]
    async with serving(models) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _stream(stub, "oai", top_k=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fake.requests == []


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("top_k", 0, "top_k: must be at least 1, got 0"),
        ("repeat_penalty", 0.0, "repeat_penalty: must be in (0, 2], got 0.0"),
        ("repeat_penalty", 2.5, "repeat_penalty: must be 0 to 2, got 2.5"),
        ("frequency_penalty", -2.5, "frequency_penalty: must be -2 to 2, got -2.5"),
        ("presence_penalty", float("nan"), "presence_penalty: must be -2 to 2, got nan"),
    ],
)
async def test_out_of_range_values_are_refused_naming_the_field(
    upstream: tuple[FakeUpstream, str], field: str, value: float, message: str
) -> None:
    fake, url = upstream
    async with _stub(url) as stub:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _stream(stub, "oll", **{field: value})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == message
    assert fake.requests == []


# --- from an official client, through the gateway's compat endpoints -------------------------------


@asynccontextmanager
async def _gateway(aiohttp_client: Any, url: str) -> AsyncIterator[str]:
    async with serving(_models(url)) as server:
        yield await _client_base(aiohttp_client, server)


async def _client_base(aiohttp_client: Any, server: AIBattleServer) -> str:
    client = await aiohttp_client(create_app(server.grpc_target, GatewayOptions()))
    return f"http://127.0.0.1:{client.port}"


async def test_openai_client_sampling_reaches_an_ollama_upstream(
    upstream: tuple[FakeUpstream, str], aiohttp_client: Any
) -> None:
    fake, url = upstream
    fake.replies = [test_ollama.stream_reply(*test_ollama.HELLO)]
    async with _gateway(aiohttp_client, url) as base:
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="sk-x", max_retries=0)
        stream = await client.chat.completions.create(
            model="oll",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            frequency_penalty=0.5,
            presence_penalty=-0.25,
            extra_body={"top_k": 20, "repeat_penalty": 1.3},
        )
        chunks = [chunk async for chunk in stream]
        await client.close()
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello there friend"
    options = fake.requests[-1].json["options"]
    assert {k: options[k] for k in ALL} == {k: pytest.approx(v) for k, v in ALL.items()}


async def test_ollama_client_options_reach_a_gemini_upstream(
    upstream: tuple[FakeUpstream, str], aiohttp_client: Any
) -> None:
    fake, url = upstream
    fake.replies = [Reply(chunks=test_gemini.STREAM)]
    async with _gateway(aiohttp_client, url) as base:
        client = ollama.AsyncClient(host=base)
        parts = await client.chat(
            model="gem",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            options={"top_k": 20, "frequency_penalty": 0.5, "presence_penalty": -0.25},
        )
        text = "".join([part.message.content or "" async for part in parts])
        # repeat_penalty is not Gemini's: refused in Ollama's dialect, naming the field.
        with pytest.raises(ollama.ResponseError) as caught:
            await client.chat(
                model="gem", messages=[{"role": "user", "content": "hi"}], options={"repeat_penalty": 1.3}
            )
        await client.close()
    assert text == "Hello there, friend."
    config = fake.requests[0].json["generationConfig"]
    assert (config["topK"], config["frequencyPenalty"], config["presencePenalty"]) == (20, 0.5, -0.25)
    assert caught.value.status_code == 400
    assert caught.value.error.startswith("repeat_penalty: model 'gem' (provider gemini) does not take")
    assert len(fake.requests) == 1
