"""The local model's sampling options, with the real SmolLM2: the default repeat penalty keeps the
README's demos from looping, and a request's own penalties reach llama.cpp."""

from __future__ import annotations

import collections
from collections.abc import AsyncIterator

import pytest

from server.config import LocalProviderConfig, ModelConfig
from server.providers.base import ChatMessage, ChatRequest, Delta, Role
from server.providers.local import LocalProvider

pytestmark = pytest.mark.slow
MODEL = ModelConfig(id="smollm2-135m", provider="local")
# At the default temperature, without a repeat penalty, seed 3 makes SmolLM2 write one line of this
# haiku over and over ("A moon, a silent companion," eight times in 100 tokens).
HAIKU = "Write a haiku about the moon."
SEEDS = (1, 2, 3)


@pytest.fixture
async def local() -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(LocalProviderConfig())
    await provider.start()
    yield provider
    await provider.close()


async def haiku(local: LocalProvider, seed: int, **sampling: float) -> str:
    request = ChatRequest(messages=(ChatMessage(Role.USER, HAIKU),), max_tokens=100, seed=seed, **sampling)
    return "".join([item.content async for item in local.stream(MODEL, request) if isinstance(item, Delta)])


def most_repeated_line(text: str) -> int:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return collections.Counter(lines).most_common(1)[0][1] if lines else 0


@pytest.mark.parametrize("seed", SEEDS)
async def test_the_default_repeat_penalty_keeps_a_haiku_from_looping(local: LocalProvider, seed: int) -> None:
    text = await haiku(local, seed)
    assert text.strip()
    assert most_repeated_line(text) <= 2, text


async def test_a_requests_repeat_penalty_replaces_the_default(local: LocalProvider) -> None:
    """1.0 (none) brings the loop back: the request's value, not the default, reached the sampler."""
    looping = [await haiku(local, seed, repeat_penalty=1.0) for seed in SEEDS]
    assert max(most_repeated_line(text) for text in looping) >= 4, looping


async def test_presence_and_frequency_penalties_and_top_k_reach_the_sampler(local: LocalProvider) -> None:
    """Greedy decoding is fixed by the prompt alone, so any change comes from the penalties."""
    plain = await haiku(local, 1, temperature=0.0)
    assert await haiku(local, 1, temperature=0.0) == plain
    assert await haiku(local, 1, temperature=0.0, presence_penalty=1.5) != plain
    assert await haiku(local, 1, temperature=0.0, frequency_penalty=1.5) != plain
    # top_k=1 is greedy whatever the temperature.
    assert await haiku(local, 1, temperature=1.5, top_k=1) == plain


async def test_the_default_is_configurable() -> None:
    """[providers.local].repeat_penalty = 1.0 (none) is what the model did before it had a default."""
    provider = LocalProvider(LocalProviderConfig(repeat_penalty=1.0))
    await provider.start()
    try:
        looping = [await haiku(provider, seed) for seed in SEEDS]
    finally:
        await provider.close()
    assert max(most_repeated_line(text) for text in looping) >= 4, looping
