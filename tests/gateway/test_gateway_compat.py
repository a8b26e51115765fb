"""OpenAI and Ollama compatibility endpoints, driven by the official `openai` and `ollama` clients."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import ollama
import openai
import pytest

from server.app import AIBattleServer
from tests.gateway.gateway_testlib import wait_for


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


async def test_openai_models(oai: openai.AsyncOpenAI) -> None:
    page = await oai.models.list()
    assert [m.id for m in page.data] == ["scripted-echo", "scripted-fail", "scripted-peer", "scripted-slow"]
    model = await oai.models.retrieve("scripted-peer")
    assert model.owned_by == "scripted"
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.models.retrieve("nope")
    assert caught.value.code == "model_not_found"


async def test_openai_chat_completion(oai: openai.AsyncOpenAI, aibattle: AIBattleServer) -> None:
    reply = await oai.chat.completions.create(
        model="scripted-echo",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        max_tokens=50,
        temperature=0.2,
        stop=["zzz"],
    )
    assert reply.choices[0].message.content == "Hello there, friend."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


async def test_openai_streaming_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="scripted-echo",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, friend."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 3


async def test_openai_errors(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model="scripted-echo", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert caught.value.param == "n"
    with pytest.raises(openai.APIError, match="scripted failure"):
        stream = await oai.chat.completions.create(
            model="scripted-fail", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            pass


async def test_openai_raw_sse_ends_with_done(api: Any) -> None:
    resp = await api.post(
        "/v1/chat/completions",
        json={"model": "scripted-peer", "messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert resp.content_type == "text/event-stream"
    events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


async def test_ollama_list(olm: ollama.AsyncClient) -> None:
    listed = await olm.list()
    assert [m.model for m in listed.models] == [
        "scripted-echo",
        "scripted-fail",
        "scripted-peer",
        "scripted-slow",
    ]


async def test_ollama_chat(olm: ollama.AsyncClient) -> None:
    reply = await olm.chat(
        model="scripted-echo",
        messages=[{"role": "user", "content": "Hi"}],
        stream=False,
        options={"temperature": 0.1, "num_predict": 64},
    )
    assert reply.message.content == "Hello there, friend."
    assert reply.done and reply.done_reason == "stop" and reply.eval_count == 3

    parts = [
        p
        async for p in await olm.chat(
            model="scripted-echo", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    ]
    assert "".join(p.message.content or "" for p in parts) == "Second reply."
    assert parts[-1].done and not any(p.done for p in parts[:-1])


async def test_ollama_generate(olm: ollama.AsyncClient) -> None:
    reply = await olm.generate(model="scripted-peer", prompt="Hi", system="Be brief.", stream=False)
    assert reply.response == "Peer reply." and reply.done
    parts = [p async for p in await olm.generate(model="scripted-peer", prompt="Hi", stream=True)]
    assert "".join(p.response or "" for p in parts) == "Peer reply."
    loaded = await olm.generate(model="scripted-peer")
    assert loaded.done and loaded.response == ""


async def test_ollama_errors(olm: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.chat(model="nope", messages=[{"role": "user", "content": "x"}], stream=False)
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError, match="scripted failure"):
        async for _ in await olm.chat(
            model="scripted-fail", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "scripted-slow", "messages": [{"role": "user", "content": "x"}]}),
        (
            "/v1/chat/completions",
            {"model": "scripted-slow", "messages": [{"role": "user", "content": "x"}], "stream": True},
        ),
    ],
)
async def test_compat_disconnect_cancels_the_upstream_call(
    api: Any, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any]
) -> None:
    """The server's access log is the witness: the stream it served ended CANCELLED, not OK."""
    caplog.set_level(logging.INFO, logger="aibattle.access")
    resp = await api.post(path, json=body)
    assert resp.status == 200
    assert (await resp.content.readline()).strip()  # the stream has started: 100 words, 20 ms apart
    resp.close()  # the client goes away

    def served() -> list[str]:
        return [
            getattr(r, "code", "")
            for r in caplog.records
            if r.name == "aibattle.access" and getattr(r, "method", "").endswith("/StreamCompletion")
        ]

    assert await wait_for(lambda: bool(served()), within=10)
    assert served() == ["CANCELLED"]
