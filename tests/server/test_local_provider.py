"""LocalProvider driven directly with the real SmolLM2 model: turns, deadlines, attachments."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from common.errors import ApiError, DeadlineExceeded
from server.config import LocalProviderConfig, ModelConfig
from server.providers.base import Attachment, ChatMessage, ChatRequest, Delta, Finish, Role, StreamItem
from server.providers.local import LocalProvider
from server.security.metering import prompt_bound

pytestmark = pytest.mark.slow
MODEL = ModelConfig(id="smollm2-135m", provider="local")
# Greedy decoding of this prompt never ends on its own within the context: a long-running turn.
ENDLESS = "Write a very long essay."
HANG = 90.0  # only detects a hang (under the per-test timeout); unloaded, every outcome takes seconds


def ask(prompt: str, max_tokens: int, deadline: float | None = None) -> ChatRequest:
    return ChatRequest(
        messages=(ChatMessage(Role.USER, prompt),), max_tokens=max_tokens, temperature=0.0, deadline=deadline
    )


async def drain(stream: AsyncIterator[StreamItem]) -> list[StreamItem]:
    return [item async for item in stream]


def text(items: list[StreamItem]) -> str:
    return "".join(i.content for i in items if isinstance(i, Delta))


async def until_idle(local: LocalProvider) -> None:
    while local.generating:  # noqa: ASYNC110 - the flag belongs to a worker thread
        await asyncio.sleep(0.01)


@pytest.fixture
async def local() -> AsyncIterator[LocalProvider]:
    provider = LocalProvider(LocalProviderConfig())
    await provider.start()
    yield provider
    await provider.close()


async def test_a_reader_that_stops_reading_does_not_hold_the_model(local: LocalProvider) -> None:
    slow = local.stream(MODEL, ask("Tell a story about a cat.", max_tokens=12))
    first = await anext(slow)
    assert isinstance(first, Delta)
    # Stream A is neither read nor closed; B must still get the model and finish.
    other = await asyncio.wait_for(drain(local.stream(MODEL, ask("Say hello.", max_tokens=4))), HANG)
    assert isinstance(other[-1], Finish) and text(other)
    rest = await asyncio.wait_for(drain(slow), HANG)
    assert isinstance(rest[-1], Finish)
    assert rest[-1].usage.completion_tokens == 12
    # Nothing was lost while A waited: the same greedy request, read eagerly, says the same.
    again = await drain(local.stream(MODEL, ask("Tell a story about a cat.", max_tokens=12)))
    assert text([first, *rest]) == text(again)


async def test_requests_start_in_arrival_order(local: LocalProvider) -> None:
    started: list[int] = []

    async def run(i: int) -> None:
        async for _ in local.stream(MODEL, ask(f"Say the number {i}.", max_tokens=6)):
            if not started or started[-1] != i:
                started.append(i)

    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(run(i)))
        await asyncio.sleep(0)  # let task i queue before i + 1 arrives
    await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    assert started == [0, 1, 2]


async def test_closing_a_stream_frees_the_model_for_the_next(local: LocalProvider) -> None:
    stream = local.stream(MODEL, ask(ENDLESS, max_tokens=1500))
    await anext(stream)
    await stream.aclose()
    reply = await asyncio.wait_for(drain(local.stream(MODEL, ask("Say hello.", max_tokens=4))), HANG)
    assert isinstance(reply[-1], Finish)


async def test_deadline_while_waiting_for_a_turn(local: LocalProvider) -> None:
    busy = local.stream(MODEL, ask(ENDLESS, max_tokens=1500))
    await anext(busy)
    queued = local.stream(MODEL, ask("Say hello.", max_tokens=8, deadline=time.monotonic() + 0.2))
    with pytest.raises(DeadlineExceeded, match="waiting for a turn on the local model 'smollm2-135m'"):
        await asyncio.wait_for(anext(queued), HANG)
    assert local.generating  # it gave up while the other request still held the model
    await busy.aclose()
    # The abandoned wait left no turn behind: the next request runs.
    reply = await asyncio.wait_for(drain(local.stream(MODEL, ask("Say hello.", max_tokens=4))), HANG)
    assert isinstance(reply[-1], Finish)


async def test_deadline_while_generating_stops_the_worker(local: LocalProvider) -> None:
    received: list[StreamItem] = []
    stream = local.stream(MODEL, ask(ENDLESS, max_tokens=1500, deadline=time.monotonic() + 0.5))
    with pytest.raises(DeadlineExceeded, match="while the local model was generating"):
        async for item in stream:
            received.append(item)
    assert not any(isinstance(i, Finish) for i in received)
    assert len(received) < 1500
    await asyncio.wait_for(until_idle(local), HANG)


async def test_non_text_attachment_is_refused_not_dropped(local: LocalProvider) -> None:
    image = Attachment(type="image", mime_type="image/png", content=b"\x89PNG\r\n")
    request = ChatRequest(messages=(ChatMessage(Role.USER, "What is this?", (image,)),), max_tokens=8)
    with pytest.raises(ApiError) as caught:
        await anext(local.stream(MODEL, request))
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "CAPABILITY_MISSING"
    assert "'image'" in caught.value.message
    assert not local.generating


@pytest.mark.parametrize(
    "messages",
    [
        (ChatMessage(Role.USER, "hi"),),  # the chat template's default system prompt is most of it
        (ChatMessage(Role.SYSTEM, "Be brief."), ChatMessage(Role.USER, "Name a colour.")),
        (
            ChatMessage(Role.USER, "Ünïcödé ✓ 数学"),
            ChatMessage(Role.ASSISTANT, "ok"),
            ChatMessage(Role.USER, "again"),
        ),
    ],
)
async def test_the_budgets_prompt_bound_holds_for_the_real_template(
    local: LocalProvider, messages: tuple[ChatMessage, ...]
) -> None:
    """Budgets reserve `prompt_bound` before a call (server/security/metering.py): the real model's
    prompt, chat template included, must never count more tokens than that bound."""
    request = ChatRequest(messages=messages, max_tokens=1, temperature=0.0)
    items = await asyncio.wait_for(drain(local.stream(MODEL, request)), HANG)
    assert isinstance(items[-1], Finish)
    assert 0 < items[-1].usage.prompt_tokens <= prompt_bound(MODEL, request)
