"""The embedded default: SmolLM2-135M-Instruct run by llama.cpp, driven for real."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc, models_pb2, models_pb2_grpc
from server.app import AIBattleServer
from server.config import Config
from server.providers.local import LocalProvider

pytestmark = pytest.mark.slow
MODEL = "smollm2-135m"
# Greedy decoding of this prompt never ends on its own within the context.
ENDLESS = "Write a very long essay."
HANG = 90.0  # only detects a hang; unloaded, every outcome here takes a second or two


def stopped(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    """(why, tokens generated) of every early stop the local provider logged."""
    return [
        (r.why, r.completion_tokens)  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "server.providers.local" and r.getMessage() == "local generation stopped"
    ]


async def until_idle(local: LocalProvider) -> None:
    while local.generating:  # noqa: ASYNC110 - the flag belongs to a worker thread
        await asyncio.sleep(0.01)


@pytest.fixture
async def local_server() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(
        Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}})
    )
    await server.start()
    yield server
    await server.stop(grace=0.5)
    # A call cancelled by the stop ends in the model's thread a little later, and logs its stop: let it,
    # so that no test's stop lands in the next test's log capture.
    await asyncio.wait_for(until_idle(provider(server)), HANG)


@pytest.fixture
async def stub(local_server: AIBattleServer) -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    async with grpc.aio.insecure_channel(local_server.grpc_target) as channel:
        yield completions_pb2_grpc.CompletionServiceStub(channel)


def provider(server: AIBattleServer) -> LocalProvider:
    local = server.registry.providers["local"]
    assert isinstance(local, LocalProvider)
    return local


async def test_streams_real_text_then_usage(stub: completions_pb2_grpc.CompletionServiceStub) -> None:
    request = completions_pb2.StreamCompletionRequest(
        model=MODEL,
        system_instruction="Answer in one short sentence.",
        prompt="What is the capital of France?",
        max_tokens=40,
        temperature=0.2,
        seed=7,
    )
    chunks = [c async for c in stub.StreamCompletion(request)]
    text = "".join(c.content for c in chunks)
    assert len(chunks) > 3
    assert "Paris" in text
    final = chunks[-1]
    assert final.is_final
    assert final.finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    assert final.usage.prompt_tokens > 10
    assert 3 <= final.usage.completion_tokens <= 40
    assert final.usage.total_tokens == final.usage.prompt_tokens + final.usage.completion_tokens


async def test_greedy_decoding_is_repeatable_and_max_tokens_bounds_it(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    request = completions_pb2.CreateCompletionRequest(
        model=MODEL, prompt="Count from one to twenty in words.", max_tokens=12, temperature=0.0
    )
    first, second = await stub.CreateCompletion(request), await stub.CreateCompletion(request)
    assert first.content == second.content and first.content
    assert first.usage.completion_tokens == 12
    assert first.finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_list_models_answers_while_a_stream_generates(local_server: AIBattleServer) -> None:
    local = provider(local_server)
    async with grpc.aio.insecure_channel(local_server.grpc_target) as channel:
        completions = completions_pb2_grpc.CompletionServiceStub(channel)
        models = models_pb2_grpc.ModelServiceStub(channel)
        stream = completions.StreamCompletion(
            completions_pb2.StreamCompletionRequest(
                model=MODEL, prompt=ENDLESS, max_tokens=1500, temperature=0.0
            )
        )
        await stream.read()
        for _ in range(5):
            assert local.generating
            reply = await models.ListModels(models_pb2.ListModelsRequest(), timeout=HANG)
            assert [m.id for m in reply.models] == [MODEL, "smollm2-embed"]  # the default models
            # The unary call was answered while the worker thread was still producing tokens.
            assert local.generating
        stream.cancel()
    # Latency figures: bench/local_model.py.


async def test_cancelling_a_stream_stops_generation(
    local_server: AIBattleServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.providers.local")
    local = provider(local_server)
    async with grpc.aio.insecure_channel(local_server.grpc_target) as channel:
        stream = completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
            completions_pb2.StreamCompletionRequest(
                model=MODEL, prompt=ENDLESS, max_tokens=1500, temperature=0.0
            )
        )
        for _ in range(3):
            await stream.read()
        assert local.generating
        stream.cancel()
        await asyncio.wait_for(until_idle(local), HANG)
    # Only this call is cancelled (a stop of an earlier test's call may land in the same capture).
    (produced,) = [tokens for why, tokens in stopped(caplog) if why == "cancelled"]
    assert produced < 1500  # stopped before the stream could have finished


async def test_concurrent_requests_are_served_in_arrival_order(
    stub: completions_pb2_grpc.CompletionServiceStub,
) -> None:
    finished: list[int] = []

    async def ask(i: int) -> str:
        reply = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model=MODEL, prompt=f"Say the number {i}.", max_tokens=8)
        )
        finished.append(i)
        return reply.content

    tasks = []
    for i in range(3):
        tasks.append(asyncio.create_task(ask(i)))
        await asyncio.sleep(0.02)  # arrival order 0, 1, 2
    replies = await asyncio.gather(*tasks)
    assert all(replies)
    assert finished == [0, 1, 2]


async def test_client_deadline_stops_generation(
    local_server: AIBattleServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="server.providers.local")
    local = provider(local_server)
    async with grpc.aio.insecure_channel(local_server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CreateCompletion(
                completions_pb2.CreateCompletionRequest(
                    model=MODEL, prompt=ENDLESS, max_tokens=1500, temperature=0.0
                ),
                timeout=0.5,
            )
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.wait_for(until_idle(local), HANG)
    # Whichever saw it first (the worker's deadline check or the cancelled call), the worker stopped
    # early rather than generating to max_tokens for nobody.
    ((why, produced),) = stopped(caplog)
    assert why in ("deadline", "cancelled")
    assert produced < 1500


async def test_text_attachment_reaches_the_prompt(stub: completions_pb2_grpc.CompletionServiceStub) -> None:
    question = "What is the secret word in the attachment? Reply with the word only."
    secret = common_pb2.FileData(
        type="text", mime_type="text/plain", content=b"The secret word is PINEAPPLE."
    )
    bare = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model=MODEL, prompt=question, max_tokens=12, temperature=0.0)
    )
    attached = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model=MODEL, prompt=question, file_data=secret, max_tokens=12, temperature=0.0
        )
    )
    assert attached.usage.prompt_tokens > bare.usage.prompt_tokens + 5
    assert "PINEAPPLE" in attached.content
    assert "PINEAPPLE" not in bare.content
