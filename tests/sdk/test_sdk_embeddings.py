"""`embeddings.create` and `aibattle embed` through the real gRPC server, whose `openai` model embeds on a
fake upstream speaking OpenAI's /v1/embeddings (tests/server/providers' FakeUpstream and its replies)."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aibattle_sdk import AsyncClient, InvalidArgumentError
from server.app import AIBattleServer
from tests.server.providers.fake_upstream import FakeUpstream, serving, start_fake
from tests.server.providers.test_openai import KEY
from tests.server.providers.test_openai_tools import embedding_reply, model_entry

AIBATTLE = Path(sys.executable).parent / "aibattle"
SCRIPTED = {"id": "echo", "provider": "scripted", "script": ["Hello."]}


@pytest.fixture
async def upstream(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[FakeUpstream, AIBattleServer]]:
    monkeypatch.setenv("TEST_OPENAI_KEY", KEY)
    fake, url = await start_fake(aiohttp_server)
    async with serving([model_entry(url), SCRIPTED]) as server:
        yield fake, server


async def test_a_batch_comes_back_in_input_order_with_usage(
    upstream: tuple[FakeUpstream, AIBattleServer],
) -> None:
    fake, server = upstream
    fake.replies = [embedding_reply([[0.25, 0.75], [0.5, -0.5]], prompt=6, order=[1, 0])]
    async with AsyncClient(server.grpc_target, timeout=10) as client:
        response = await client.embeddings.create(model="gpt", input=["first text", "second"], dimensions=2)
    assert response.model == "gpt"
    assert [(e.index, e.values) for e in response.embeddings] == [(0, [0.25, 0.75]), (1, [0.5, -0.5])]
    assert response.usage is not None and response.usage.prompt_tokens == 6
    sent = fake.requests[-1].json
    assert (sent["input"], sent["dimensions"]) == (["first text", "second"], 2)


async def test_one_text_and_no_dimensions(upstream: tuple[FakeUpstream, AIBattleServer]) -> None:
    fake, server = upstream
    fake.replies = [embedding_reply([[0.1, 0.2, 0.3]])]
    async with AsyncClient(server.grpc_target, timeout=10) as client:
        response = await client.embeddings.create(model="gpt", input="just one")
    assert [len(e.values) for e in response.embeddings] == [3]
    assert fake.requests[-1].json["input"] == ["just one"] and "dimensions" not in fake.requests[-1].json


async def test_refusals_are_typed_errors(upstream: tuple[FakeUpstream, AIBattleServer]) -> None:
    fake, server = upstream
    async with AsyncClient(server.grpc_target, timeout=10) as client:
        with pytest.raises(InvalidArgumentError) as caught:
            await client.embeddings.create(model="echo", input="Hi")
        assert caught.value.reason == "CAPABILITY_MISSING"
        assert [field for field, _ in caught.value.field_violations] == ["model"]
        with pytest.raises(InvalidArgumentError) as caught:
            await client.embeddings.create(model="gpt", input=["fine", ""])
        assert [field for field, _ in caught.value.field_violations] == ["input[1]"]
    assert fake.requests == []  # refused before any upstream call


async def aibattle(target: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(AIBATTLE),
        "--target",
        target,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_embed_command(upstream: tuple[FakeUpstream, AIBattleServer]) -> None:
    fake, server = upstream
    fake.replies = [embedding_reply([[0.25, 0.75, 0.0], [0.5, -0.5, 1.0]], prompt=4)]
    code, out, err = await aibattle(server.grpc_target, "embed", "--model", "gpt", "a cat", "a dog")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "0: 3 dims [0.2500, 0.7500, 0.0000, …]",
        "1: 3 dims [0.5000, -0.5000, 1.0000, …]",
        "[4 tokens]",
    ]

    code, out, err = await aibattle(
        server.grpc_target, "--json", "embed", "--model", "gpt", "--dimensions", "3", "x", "y"
    )
    assert code == 0
    [line] = out.splitlines()
    assert [e["values"] for e in json.loads(line)["embeddings"]] == [[0.25, 0.75, 0.0], [0.5, -0.5, 1.0]]
    assert fake.requests[-1].json["dimensions"] == 3

    code, out, err = await aibattle(server.grpc_target, "embed", "--model", "echo", "x")
    assert code == 1 and out == ""
    assert err.startswith("aibattle: error: ") and "embedding" in err and len(err.splitlines()) == 1
