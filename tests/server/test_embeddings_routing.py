"""EmbeddingService along a model's chain: deployments, fallbacks, members that cannot embed, and
faults of the request (which end the call), with fake OpenAI-speaking upstreams (/v1/embeddings)."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from aibattle.v1 import embeddings_pb2, embeddings_pb2_grpc
from tests.conftest import error_info
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake

VECTOR = [0.6, 0.8]


def vectors_reply(count: int, prompt: int = 3) -> Reply:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": VECTOR} for i in range(count)],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return Reply(chunks=[json.dumps(body).encode()], content_type="application/json")


def error_reply(status: int) -> Reply:
    body = {"error": {"message": "no", "type": "server_error" if status >= 500 else "invalid_request_error"}}
    return Reply(status=status, chunks=[json.dumps(body).encode()], content_type="application/json")


def embedder(model_id: str, url: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "provider": "openai",
        "base_url": f"{url}/v1",
        "capabilities": ["embedding"],
        "upstream": {"retries": 0},
        **fields,
    }


@pytest.fixture
async def upstreams(aiohttp_server: Any) -> list[tuple[FakeUpstream, str]]:
    return [await start_fake(aiohttp_server) for _ in range(2)]


async def create(server: Any, model: str, *texts: str) -> embeddings_pb2.CreateEmbeddingsResponse:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
        return await stub.CreateEmbeddings(embeddings_pb2.CreateEmbeddingsRequest(model=model, input=texts))


async def test_a_failed_deployment_passes_to_the_next_which_is_named(
    upstreams: list[tuple[FakeUpstream, str]],
) -> None:
    (dead, url_1), (alive, url_2) = upstreams
    dead.replies = [error_reply(500)]
    alive.replies = [vectors_reply(2)]
    model = {
        **embedder("embed", url_1),
        # Weights this far apart make "a" first (the other order: about once in 10^18).
        "deployments": [
            {"name": "a", "weight": 1e9},
            {"name": "b", "base_url": f"{url_2}/v1", "weight": 1e-9},
        ],
    }
    async with serving([model]) as server:
        response = await create(server, "embed", "one", "two")
    assert (response.model, response.deployment) == ("embed", "b")
    assert [list(e.values) for e in response.embeddings] == [pytest.approx(VECTOR)] * 2
    assert response.usage.prompt_tokens == 3
    assert len(dead.requests) == 1 and len(alive.requests) == 1


async def test_fallbacks_that_cannot_embed_are_skipped(upstreams: list[tuple[FakeUpstream, str]]) -> None:
    (dead, url_1), (alive, url_2) = upstreams
    dead.replies = [error_reply(503)]
    alive.replies = [vectors_reply(1)]
    models = [
        embedder("primary", url_1, fallbacks=["chat-only", "backup"]),
        {"id": "chat-only", "provider": "scripted", "script": ["never asked"]},
        embedder("backup", url_2),
    ]
    async with serving(models) as server:
        response = await create(server, "primary", "text")
    assert (response.model, response.deployment) == ("backup", "")
    assert len(dead.requests) == 1 and len(alive.requests) == 1


async def test_a_fault_of_the_request_does_not_fall_back(upstreams: list[tuple[FakeUpstream, str]]) -> None:
    """A text longer than the model reads is the request's fault: the fallback is not asked either."""
    (primary, url_1), (backup, url_2) = upstreams
    models = [
        embedder("primary", url_1, fallbacks=["backup"], context_length=16, default_max_tokens=16),
        embedder("backup", url_2),
    ]
    async with serving(models) as server:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await create(server, "primary", "short", "x" * 200)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "CONTEXT_LENGTH_EXCEEDED"
    assert error_info(caught.value).metadata["field"] == "input[1]"
    assert primary.requests == [] and backup.requests == []
