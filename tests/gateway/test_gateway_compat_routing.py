"""Routing as the OpenAI and Ollama endpoints show it: `x-aibattle-deployment` on answers of a model with
several deployments, and the `failover` field on the chunk (OpenAI) or line (Ollama) where an answer cut
off mid-stream continues on another deployment (`failover_mid_stream`). The upstreams are fake OpenAI
servers on 127.0.0.1; the one that dies drops its connection mid-body."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest

from server.app import AIBattleServer
from server.config import Config
from tests.gateway.conftest import CONFIG
from tests.server.providers.fake_upstream import FakeUpstream, Reply, start_fake
from tests.server.test_failover import CONTINUES, DIES, KEY
from tests.server.test_failover import openai as openai_model

FAILOVER = {"from_model": "gpt", "from_deployment": "a", "to_model": "gpt", "to_deployment": "b"}


@pytest.fixture
async def upstreams(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> list[tuple[FakeUpstream, str]]:
    monkeypatch.setenv("FAILOVER_KEY", KEY)
    first, second = await start_fake(aiohttp_server), await start_fake(aiohttp_server)
    first[0].replies = [DIES]
    second[0].replies = [CONTINUES]
    return [first, second]


@pytest.fixture
async def aibattle(upstreams: list[tuple[FakeUpstream, str]]) -> AsyncIterator[AIBattleServer]:
    (_, url_1), (_, url_2) = upstreams
    model = {
        **openai_model("gpt", url_1, failover_mid_stream=True),
        # Weights this far apart make "a" first (the other order: about once in 10^18).
        "deployments": [
            {"name": "a", "weight": 1e9},
            {"name": "b", "base_url": f"{url_2}/v1", "weight": 1e-9},
        ],
    }
    server = AIBattleServer(Config.from_dict({**CONFIG, "models": [model]}))
    await server.start()
    yield server
    await server.stop(grace=0.5)


ASK = {"model": "gpt", "messages": [{"role": "user", "content": "Count to four."}]}


async def test_openai_stream_marks_the_failover_chunk_and_names_the_deployment(api: Any) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="sk-test", max_retries=0)
    async with client:
        raw = await client.chat.completions.with_raw_response.create(**ASK, stream=True)  # type: ignore[call-overload]
        assert raw.headers["x-aibattle-deployment"] == "a"
        chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "One two three four."  # one continuous answer
    marked = [c for c in chunks if (c.model_extra or {}).get("failover")]
    assert len(marked) == 1 and marked[0].choices[0].delta.content == " three"
    failover = marked[0].model_extra["failover"]  # type: ignore[index]
    assert {k: failover[k] for k in FAILOVER} == FAILOVER and failover["reason"]


async def test_ollama_stream_marks_the_failover_line(api: Any) -> None:
    resp = await api.post("/api/chat", json=ASK)
    assert resp.status == 200 and resp.headers["x-aibattle-deployment"] == "a"
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == "One two three four."
    marked = [line for line in lines if "failover" in line]
    assert len(marked) == 1 and marked[0]["message"]["content"] == " three"
    assert {k: marked[0]["failover"][k] for k in FAILOVER} == FAILOVER
    assert lines[-1]["done"] is True


async def test_whole_answers_name_the_deployment(api: Any, upstreams: list[tuple[FakeUpstream, str]]) -> None:
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Four."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    upstreams[0][0].replies = [Reply(chunks=[json.dumps(body).encode()], content_type="application/json")]
    resp = await api.post("/v1/chat/completions", json=ASK)
    assert resp.status == 200 and resp.headers["x-aibattle-deployment"] == "a"
    assert (await resp.json())["choices"][0]["message"]["content"] == "Four."
    resp = await api.post("/api/chat", json={**ASK, "stream": False})
    assert resp.status == 200 and resp.headers["x-aibattle-deployment"] == "a"
