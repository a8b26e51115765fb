"""`[server] max_concurrent_streams`: past it a response stream is refused at once, RESOURCE_EXHAUSTED
`SERVER_BUSY` with a RetryInfo, never CANCELLED; the count is exact and comes back as streams end.

The streams are held open by a gate: the scripted model sends its first word, then waits for the test
to open the gate, so which streams are open is known without a clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import completions_pb2 as pb
from aibattle.v1 import (
    completions_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from common.errors import SERVER_BUSY
from server.admission import core_options
from server.app import AIBattleServer
from server.config import ModelConfig
from server.providers.base import ChatRequest, StreamItem
from server.providers.scripted import ScriptedProvider
from tests.conftest import error_info, make_config, rich_status

LIMIT = 3
BURST = 10
REQUEST = pb.StreamCompletionRequest(model="scripted-echo", prompt="hi")


async def until(check: Callable[[], bool]) -> None:
    """Until `check()` holds (a bound only against hanging: what is asserted is the outcome)."""
    async with asyncio.timeout(30):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


def hold_streams(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """An event: while unset, every scripted stream stops after its first item."""
    opened = asyncio.Event()
    original = ScriptedProvider.stream

    async def held(
        self: ScriptedProvider, model: ModelConfig, request: ChatRequest
    ) -> AsyncIterator[StreamItem]:
        first = True
        async for item in original(self, model, request):
            yield item
            if first:
                first = False
                await opened.wait()

    monkeypatch.setattr(ScriptedProvider, "stream", held)
    return opened


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    return hold_streams(monkeypatch)


@pytest.fixture
async def busy_server() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(make_config(max_concurrent_streams=LIMIT))
    await server.start()
    yield server
    await server.stop(grace=0.5)


def assert_busy(error: grpc.aio.AioRpcError) -> None:
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert error_info(error).reason == SERVER_BUSY.name
    delays = []
    for detail in rich_status(error).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            delays.append(info.retry_delay.ToTimedelta().total_seconds())
    assert delays and delays[0] > 0, rich_status(error)


class Burst:
    """Streams opened at once: who got a first message, who was refused, how each ended."""

    def __init__(self) -> None:
        self.admitted = 0
        self.refused: list[grpc.aio.AioRpcError] = []
        self.completed = 0

    async def one(self, stub: completions_pb2_grpc.CompletionServiceStub) -> None:
        first = True
        try:
            async for _ in stub.StreamCompletion(REQUEST, timeout=60):
                if first:
                    first = False
                    self.admitted += 1
        except grpc.aio.AioRpcError as exc:
            if not first:
                raise  # an admitted stream must end well
            self.refused.append(exc)
            return
        self.completed += 1

    def settled(self, count: int) -> bool:
        """Whether every stream of the burst is either admitted (a first message) or refused."""
        return self.admitted + len(self.refused) >= count


async def test_a_burst_past_the_limit_is_refused_at_once_and_admitted_again_after(
    busy_server: AIBattleServer, gate: asyncio.Event
) -> None:
    async with grpc.aio.insecure_channel(busy_server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        burst = Burst()
        tasks = [asyncio.create_task(burst.one(stub)) for _ in range(BURST)]
        await until(lambda: burst.settled(BURST))
        # While the admitted ones are held open: exactly the limit, the rest refused properly.
        assert burst.admitted == LIMIT
        assert busy_server.admission.open == LIMIT
        assert len(burst.refused) == BURST - LIMIT
        for error in burst.refused:
            assert_busy(error)
        # Converse is a response stream too.
        converse = conversations_pb2_grpc.ConversationServiceStub(channel).Converse(
            iter([conversations_pb2.ConverseRequest(conversation_id="conv-none")])
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in converse:
                pass
        assert_busy(refused.value)

        gate.set()
        await asyncio.gather(*tasks)
        assert burst.completed == LIMIT
        assert busy_server.admission.open == 0
        # Their slots came back: as many streams as the limit are admitted again, all of them.
        again = Burst()
        await asyncio.gather(*(again.one(stub) for _ in range(LIMIT)))
        assert (again.completed, again.refused) == (LIMIT, [])


async def test_a_stream_its_client_abandons_gives_its_slot_back(
    busy_server: AIBattleServer, gate: asyncio.Event
) -> None:
    async with grpc.aio.insecure_channel(busy_server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        calls: list[Any] = []
        for _ in range(LIMIT):
            call = stub.StreamCompletion(REQUEST, timeout=60)
            await call.read()  # admitted: held at its first message
            calls.append(call)
        assert busy_server.admission.open == LIMIT
        for call in calls:
            call.cancel()
        await until(lambda: not busy_server.admission.open)  # given back however the call ended
        gate.set()
        again = Burst()
        await asyncio.gather(*(again.one(stub) for _ in range(LIMIT)))
        assert (again.completed, again.refused) == (LIMIT, [])


async def test_unary_calls_and_health_are_not_counted(
    busy_server: AIBattleServer, gate: asyncio.Event
) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.insecure_channel(busy_server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        calls = [stub.StreamCompletion(REQUEST, timeout=60) for _ in range(LIMIT)]
        for call in calls:
            await call.read()
        # Full: a unary call and a health probe still pass.
        listed = await models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest())
        assert listed.models
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        gate.set()
        for call in calls:
            while await call.read() is not grpc.aio.EOF:
                pass
            assert await call.code() == grpc.StatusCode.OK


def test_core_queues_calls_beyond_its_defaults() -> None:
    """gRPC core's defaults cancel calls of a burst that wait for the event loop (bench/burst.py)."""
    options = dict(core_options(10_000))
    assert (
        options["grpc.server.max_pending_requests"] == options["grpc.server.max_pending_requests_hard_limit"]
    )
    assert options["grpc.server.max_pending_requests"] >= 2 * 10_000
    assert options["grpc.server_max_unrequested_time_in_server"] > 30
