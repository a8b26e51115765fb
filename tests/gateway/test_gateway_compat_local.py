"""The official `openai` and `ollama` clients against the embedded model (slow): structured output that
llama.cpp's grammar makes parse, and embeddings from the local embedding model."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from typing import Any

import ollama
import openai
import pytest

from server.app import AIBattleServer
from server.config import Config
from tests.gateway.conftest import CONFIG

pytestmark = pytest.mark.slow
LOCAL = "smollm2-135m"
EMBED = "smollm2-embed"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(params=["network"])
def dispatch(request: pytest.FixtureRequest) -> str:
    """Once, over the network: the embedded model is slow, and dispatch is what the other tests vary."""
    return str(request.param)


@pytest.fixture
async def aibattle() -> AsyncIterator[AIBattleServer]:
    models = [
        {"id": LOCAL, "provider": "local"},
        {"id": EMBED, "provider": "local", "capabilities": ["embedding"]},
    ]
    server = AIBattleServer(Config.from_dict({**CONFIG, "models": models}))
    await server.start()
    yield server
    await server.stop(grace=0.5)


async def test_openai_client_response_format_json_schema_and_embeddings(api: Any) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="sk-test", max_retries=0)
    async with client:
        reply = await client.chat.completions.create(
            model=LOCAL,
            messages=[
                {"role": "system", "content": "You answer in JSON."},
                {"role": "user", "content": "Invent a person."},
            ],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}},
            max_tokens=48,
            seed=1,
        )
        value = json.loads(reply.choices[0].message.content or "")
        assert set(value) == {"name", "age"} and type(value["age"]) is int, value
        assert reply.choices[0].finish_reason == "stop"

        embedded = await client.embeddings.create(model=EMBED, input=["a cat", "a kitten"])  # base64 asked
    vectors = [e.embedding for e in embedded.data]
    assert [len(v) for v in vectors] == [576, 576]
    assert all(abs(math.hypot(*v) - 1) < 1e-3 for v in vectors)  # unit length, as the model gives them
    assert vectors[0] != vectors[1] and embedded.usage.prompt_tokens > 0


async def test_ollama_client_embed_and_format_json(api: Any) -> None:
    client = ollama.AsyncClient(host=f"http://127.0.0.1:{api.port}")
    try:
        reply = await client.embed(model=EMBED, input="a cat")
        assert len(reply.embeddings) == 1 and len(reply.embeddings[0]) == 576
        answer = await client.chat(
            model=LOCAL,
            messages=[{"role": "user", "content": "Describe a cat in JSON."}],
            format="json",
            options={"num_predict": 96, "seed": 2},
        )
        assert isinstance(json.loads(answer.message.content or ""), dict), answer.message.content
    finally:
        await client.close()
