"""EmbeddingService over gRPC with the embedded model's embeddings (SmolLM2 run by llama.cpp with
embedding=True), behind keys: vectors, errors, metering (budget, token and request rates), deadlines.

SmolLM2 is no trained embedding model: these tests check the mechanism (shapes, order, determinism,
unit length, usage), never retrieval quality.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc, embeddings_pb2, embeddings_pb2_grpc
from common.errors import DeadlineExceeded
from server.app import AIBattleServer
from server.config import Config, LocalProviderConfig, ModelConfig
from server.providers.base import Embedder
from server.providers.local import LocalProvider
from server.security.metering import MeteredEmbedder, MeteredProvider, Metering
from tests.conftest import error_info
from tests.security_testlib import ADMIN, ADMIN_KEY, bearer, new_key

pytestmark = pytest.mark.slow
EMBED = "smollm2-embed"
CHAT = "smollm2-135m"
N_EMBD = 576  # SmolLM2-135M's hidden size
PRICE = 0.001  # USD per token read
HANG = 60.0  # only detects a hang
ENDLESS = "Write a very long essay."

MODELS: list[dict[str, Any]] = [
    {"id": CHAT, "provider": "local"},
    {"id": EMBED, "provider": "local", "capabilities": ["embedding"], "pricing": {"input": PRICE}},
]


def config(**server: Any) -> Config:
    return Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:", **server},
            "security": {"admin_key": ADMIN_KEY},
            "models": MODELS,
        }
    )


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    srv = AIBattleServer(config(max_prompt_chars=1000))
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def channel(server: AIBattleServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target) as chan:
        yield chan


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> embeddings_pb2_grpc.EmbeddingServiceStub:
    return embeddings_pb2_grpc.EmbeddingServiceStub(channel)


def embed(*texts: str, model: str = EMBED, **fields: Any) -> embeddings_pb2.CreateEmbeddingsRequest:
    return embeddings_pb2.CreateEmbeddingsRequest(model=model, input=texts, **fields)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def norm(values: Any) -> float:
    return math.sqrt(sum(v * v for v in values))


# ---- vectors


async def test_vectors_in_input_order_with_usage(stub: embeddings_pb2_grpc.EmbeddingServiceStub) -> None:
    texts = ("The cat sat on the mat.", "Stock markets fell sharply today.", "The cat sat on the mat.")
    response = await stub.CreateEmbeddings(embed(*texts), metadata=ADMIN)
    assert response.model == EMBED
    assert [e.index for e in response.embeddings] == [0, 1, 2]
    vectors = [list(e.values) for e in response.embeddings]
    assert all(len(v) == N_EMBD for v in vectors)
    assert all(norm(v) == pytest.approx(1.0, abs=1e-5) for v in vectors)  # unit length, as OpenAI's
    # The same text: the same vector (to float noise within one batch; exactly, asked again).
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-4)
    assert vectors[0] != pytest.approx(vectors[1], abs=1e-2)
    again = await stub.CreateEmbeddings(embed(*texts), metadata=ADMIN)
    assert [list(e.values) for e in again.embeddings] == vectors
    # Each text alone gives its vector again (another batch, another call): order is kept, not shuffled.
    alone = await stub.CreateEmbeddings(embed(texts[1]), metadata=ADMIN)
    assert list(alone.embeddings[0].values) == pytest.approx(vectors[1], abs=1e-5)
    # prompt_tokens = the tokens read, which every text's own call adds up to.
    parts = [await stub.CreateEmbeddings(embed(t), metadata=ADMIN) for t in texts]
    assert response.usage.prompt_tokens == sum(p.usage.prompt_tokens for p in parts) > len(texts)
    assert response.usage.completion_tokens == 0
    assert response.usage.total_tokens == response.usage.prompt_tokens
    assert response.usage.cost_usd == pytest.approx(response.usage.prompt_tokens * PRICE)


async def test_similar_texts_are_closer_than_unrelated_ones(
    stub: embeddings_pb2_grpc.EmbeddingServiceStub,
) -> None:
    """Not retrieval quality: only that the vectors come from the text (mean-pooled hidden states)."""
    texts = ("I love cats.", "I love cats!", "Quarterly revenue grew 4 percent in Norway.")
    vectors = [
        list(e.values) for e in (await stub.CreateEmbeddings(embed(*texts), metadata=ADMIN)).embeddings
    ]

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))  # unit vectors

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


async def test_more_texts_than_one_llama_batch_holds(server: AIBattleServer) -> None:
    """300 texts, more sequences than one llama.cpp batch takes (256): two decodes, one answer, in input
    order (tiny texts: prompt processing is the cost)."""
    local = server.registry.providers["local"]
    assert isinstance(local, LocalProvider)
    model = ModelConfig(id=EMBED, provider="local", capabilities=("embedding",))
    texts = [str(i) for i in range(300)]
    batch = await local.embed(model, texts, dimensions=None, deadline=None)
    assert len(batch.vectors) == len(texts)
    assert batch.prompt_tokens >= len(texts)
    for i in (0, 150, 299):
        alone = await local.embed(model, [texts[i]], dimensions=None, deadline=None)
        assert batch.vectors[i] == pytest.approx(alone.vectors[0], abs=1e-4)
    assert batch.vectors[0] != pytest.approx(batch.vectors[299], abs=1e-4)


# ---- errors


async def test_a_model_without_the_embedding_capability(
    stub: embeddings_pb2_grpc.EmbeddingServiceStub,
) -> None:
    error = await refused(stub.CreateEmbeddings(embed("hi", model=CHAT), metadata=ADMIN))
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "CAPABILITY_MISSING",
    )
    assert error_info(error).metadata["field"] == "model"


async def test_an_embedding_model_does_not_chat(channel: grpc.aio.Channel) -> None:
    completions = completions_pb2_grpc.CompletionServiceStub(channel)
    request = completions_pb2.CreateCompletionRequest(model=EMBED, prompt="Hello", max_tokens=4)
    error = await refused(completions.CreateCompletion(request, metadata=ADMIN))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).reason == "CAPABILITY_MISSING"
    assert "only embeds" in (error.details() or "")


async def test_bad_requests_name_their_field(stub: embeddings_pb2_grpc.EmbeddingServiceStub) -> None:
    cases = [
        (embed("fine", "", "also fine"), "input[1]", "INVALID_FIELD"),
        (embed("hi", dimensions=256), "dimensions", "UNSUPPORTED_PARAMETER"),
        (embed("hi", model=""), "model", "INVALID_FIELD"),
        (embed("x" * 600, "y" * 600), "input", "PROMPT_TOO_LONG"),  # max_prompt_chars = 1000 in all
    ]
    for request, field, reason in cases:
        error = await refused(stub.CreateEmbeddings(request, metadata=ADMIN))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, error.details())
        assert (error_info(error).reason, error_info(error).metadata["field"]) == (reason, field)
    # Its own length is no change, and is accepted.
    same = await stub.CreateEmbeddings(embed("hi", dimensions=N_EMBD), metadata=ADMIN)
    assert len(same.embeddings[0].values) == N_EMBD


async def test_unknown_model_and_a_restricted_key(
    stub: embeddings_pb2_grpc.EmbeddingServiceStub, channel: grpc.aio.Channel
) -> None:
    error = await refused(stub.CreateEmbeddings(embed("hi", model="no-such-model"), metadata=ADMIN))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    _, secret = await new_key(channel, allowed_models=[CHAT])
    error = await refused(stub.CreateEmbeddings(embed("hi"), metadata=bearer(secret)))
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "MODEL_NOT_ALLOWED",
    )
    _, allowed = await new_key(channel, allowed_models=[EMBED])
    assert len((await stub.CreateEmbeddings(embed("hi"), metadata=bearer(allowed))).embeddings) == 1


# ---- metering


async def test_a_budgeted_keys_spend_grows_by_the_tokens_read(
    stub: embeddings_pb2_grpc.EmbeddingServiceStub, channel: grpc.aio.Channel, server: AIBattleServer
) -> None:
    key, secret = await new_key(channel, budget_usd=0.05)
    first = await stub.CreateEmbeddings(embed("one small text", "and another"), metadata=bearer(secret))
    second = await stub.CreateEmbeddings(embed("a third"), metadata=bearer(secret))
    spent = first.usage.cost_usd + second.usage.cost_usd
    assert spent > 0
    assert spent == pytest.approx((first.usage.prompt_tokens + second.usage.prompt_tokens) * PRICE)
    row = await server.store.get_key(key.key_id)
    assert row is not None and row.spent_usd == pytest.approx(spent)
    # The worst case of a text is a token per UTF-8 byte (+2): 100 bytes reserve $0.102, over the budget.
    error = await refused(stub.CreateEmbeddings(embed("z" * 100), metadata=bearer(secret)))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    row = await server.store.get_key(key.key_id)
    assert row is not None and row.spent_usd == pytest.approx(spent)  # a refusal costs nothing
    # A refused call's reservation went back: what fits still passes.
    await stub.CreateEmbeddings(embed("ok"), metadata=bearer(secret))


async def test_token_and_request_rates(
    stub: embeddings_pb2_grpc.EmbeddingServiceStub, channel: grpc.aio.Channel
) -> None:
    _, secret = await new_key(channel, tpm=4)  # a bucket of 8 tokens
    first = await stub.CreateEmbeddings(
        embed("a text of well over eight tokens, read in full"), metadata=bearer(secret)
    )
    assert first.usage.prompt_tokens > 8  # the bucket is now in debt
    error = await refused(stub.CreateEmbeddings(embed("hi"), metadata=bearer(secret)))
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOKEN_RATE_LIMITED",
    )
    _, limited = await new_key(channel, rpm=1)  # a burst of 2
    for _ in range(2):
        await stub.CreateEmbeddings(embed("hi"), metadata=bearer(limited))
    error = await refused(stub.CreateEmbeddings(embed("hi"), metadata=bearer(limited)))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


def test_the_metering_wrapper_embeds_only_over_a_provider_that_does() -> None:
    from server.providers.scripted import ScriptedProvider

    metering = Metering(max_prompt_chars=100)
    local = metering.bind(LocalProvider(LocalProviderConfig()), None)
    assert isinstance(local, MeteredEmbedder) and isinstance(local, Embedder)
    scripted = metering.bind(ScriptedProvider(), None)
    assert isinstance(scripted, MeteredProvider) and not isinstance(scripted, Embedder)


# ---- deadlines


async def test_an_embedding_waits_for_its_turn_only_until_its_deadline(server: AIBattleServer) -> None:
    """The local model serves one call at a time: behind a long generation, an embedding call stops at
    its deadline (DeadlineExceeded from the provider itself, DEADLINE_EXCEEDED to the client), and the
    generation goes on."""
    local = server.registry.providers["local"]
    assert isinstance(local, LocalProvider)
    model = ModelConfig(id=EMBED, provider="local", capabilities=("embedding",))
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        completions = completions_pb2_grpc.CompletionServiceStub(channel)
        generation = completions.StreamCompletion(
            completions_pb2.StreamCompletionRequest(
                model=CHAT, prompt=ENDLESS, max_tokens=400, temperature=0
            ),
            metadata=ADMIN,
        )
        first = await asyncio.wait_for(generation.read(), HANG)  # the turn is taken
        assert first.content or first.is_final
        began = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            await local.embed(model, ["hi"], dimensions=None, deadline=time.monotonic() + 0.3)
        assert time.monotonic() - began < 5
        stub = embeddings_pb2_grpc.EmbeddingServiceStub(channel)
        error = await refused(stub.CreateEmbeddings(embed("hi"), metadata=ADMIN, timeout=0.3))
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert local.generating  # the generation was not disturbed
        generation.cancel()
    # Once the model is free, embedding works again.
    deadline = time.monotonic() + HANG
    vectors = await local.embed(model, ["hi"], dimensions=None, deadline=deadline)
    assert len(vectors.vectors[0]) == N_EMBD
