"""In-process dispatch (gateway/inprocess.py, common/inprocess.py): grpc.aio's behaviour without the network.

The gateway's suite runs both ways (conftest's `dispatch` fixture); these pin what only the in-process
path has to get right by itself: the handler's own task and context, deadlines, cancellation and
done callbacks, back-pressure, request streams, unknown methods and the message limit.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import wrappers_pb2

from common.inprocess import Dispatcher
from gateway.inprocess import STREAM_BUFFER, InProcessCall, InProcessUpstream
from gateway.web_state import STATE
from server.app import AIBattleServer
from server.config import Config
from tests.gateway.conftest import CONFIG
from tests.gateway.gateway_testlib import wait_for

Text = wrappers_pb2.StringValue
gateway_var: contextvars.ContextVar[str] = contextvars.ContextVar("gateway_var", default="unset")
handler_var: contextvars.ContextVar[str] = contextvars.ContextVar("handler_var", default="unset")


class Recorder:
    """What the handlers saw: their contexts, and what ran at their end."""

    def __init__(self) -> None:
        self.contexts: list[Any] = []
        self.seen: list[str] = []
        self.done: list[str] = []
        self.finally_ran: list[str] = []
        self.produced = 0


def dispatcher_with(recorder: Recorder, *, max_message_bytes: int = -1) -> Dispatcher:
    async def unary(request: Text, context: Any) -> Text:
        recorder.contexts.append(context)
        context.add_done_callback(lambda _: recorder.done.append("unary"))
        recorder.seen.append(gateway_var.get())
        handler_var.set("set by the handler")
        if request.value == "sleep":
            await asyncio.sleep(10)
        if request.value == "abort":
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no", (("x-why", "because"),))
        await context.send_initial_metadata((("x-initial", "1"),))
        context.set_trailing_metadata((("x-trailing", "2"),))
        return Text(value=request.value.upper())

    async def stream(request: Text, context: Any) -> AsyncIterator[Text]:
        recorder.contexts.append(context)
        context.add_done_callback(lambda _: recorder.done.append("stream"))
        try:
            for i in range(100):
                recorder.produced += 1
                yield Text(value=f"{request.value}{i}")
        finally:
            recorder.finally_ran.append("stream")

    async def echo(requests: AsyncIterator[Text], context: Any) -> AsyncIterator[Text]:
        async for request in requests:
            yield Text(value=request.value[::-1])

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Stream": grpc.unary_stream_rpc_method_handler(stream),
        "Echo": grpc.stream_stream_rpc_method_handler(echo),
    }
    dispatcher = Dispatcher((), max_message_bytes=max_message_bytes)
    dispatcher.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.T", handlers),))
    return dispatcher


def call(
    upstream: InProcessUpstream, method: str, request: Any = None, timeout: float | None = None
) -> InProcessCall:
    return upstream._start(f"/test.T/{method}", Text, request, (("x-request-id", "r1"),), timeout)


async def test_unary_runs_in_a_context_of_its_own_and_carries_metadata() -> None:
    recorder = Recorder()
    upstream = InProcessUpstream(dispatcher_with(recorder))
    gateway_var.set("set by the gateway")
    unary = call(upstream, "Unary", Text(value="hi"))
    assert (await unary).value == "HI"
    assert recorder.seen == ["unset"]  # the gateway's variables do not reach the handler…
    assert handler_var.get() == "unset"  # … nor the handler's the gateway
    assert tuple(await unary.initial_metadata()) == (("x-initial", "1"),)
    assert tuple(await unary.trailing_metadata()) == (("x-trailing", "2"),)
    assert await unary.code() == grpc.StatusCode.OK
    assert recorder.contexts[0].invocation_metadata() == (("x-request-id", "r1"),)
    assert recorder.contexts[0].peer() == "in-process"
    assert await wait_for(lambda: recorder.done == ["unary"])


async def test_abort_is_the_networks_rpc_error() -> None:
    upstream = InProcessUpstream(dispatcher_with(Recorder()))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(upstream, "Unary", Text(value="abort"))
    assert failed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert failed.value.details() == "no"
    assert tuple(failed.value.trailing_metadata()) == (("x-why", "because"),)


async def test_a_deadline_cancels_the_handler() -> None:
    recorder = Recorder()
    upstream = InProcessUpstream(dispatcher_with(recorder))
    unary = call(upstream, "Unary", Text(value="sleep"), timeout=0.05)
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await unary
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert await wait_for(lambda: recorder.done == ["unary"])
    assert recorder.contexts[0].cancelled()


async def test_cancel_ends_the_stream_and_runs_its_cleanup() -> None:
    recorder = Recorder()
    upstream = InProcessUpstream(dispatcher_with(recorder))
    stream = call(upstream, "Stream", Text(value="m"))
    assert (await stream.read()).value == "m0"
    assert stream.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stream.read()
    assert await stream.code() == grpc.StatusCode.CANCELLED
    assert await wait_for(lambda: recorder.done == ["stream"] and recorder.finally_ran == ["stream"])
    assert not upstream._calls


async def test_a_slow_reader_holds_back_its_stream() -> None:
    recorder = Recorder()
    upstream = InProcessUpstream(dispatcher_with(recorder))
    stream = call(upstream, "Stream", Text(value="m"))
    await asyncio.sleep(0.05)
    assert recorder.produced <= STREAM_BUFFER + 1
    messages = [m.value async for m in stream]
    assert messages == [f"m{i}" for i in range(100)]
    assert await stream.code() == grpc.StatusCode.OK


async def test_a_request_stream() -> None:
    upstream = InProcessUpstream(dispatcher_with(Recorder()))
    echo = call(upstream, "Echo")
    for word in ("abc", "def"):
        await echo.write(Text(value=word))
        assert (await echo.read()).value == word[::-1]
    await echo.done_writing()
    assert await echo.read() is grpc.aio.EOF
    with pytest.raises(grpc.aio.UsageError):
        await echo.write(Text(value="late"))


async def test_an_unknown_method_is_unimplemented() -> None:
    upstream = InProcessUpstream(dispatcher_with(Recorder()))
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await call(upstream, "Nothing", Text())
    assert failed.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_the_message_limit_holds_both_ways() -> None:
    upstream = InProcessUpstream(dispatcher_with(Recorder(), max_message_bytes=20))
    with pytest.raises(grpc.aio.AioRpcError) as received:
        await call(upstream, "Unary", Text(value="x" * 19))  # 21 bytes
    assert received.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    stream = call(upstream, "Stream", Text(value="y" * 18))  # 20 bytes in, 21 out
    with pytest.raises(grpc.aio.AioRpcError) as sent:
        await stream.read()
    assert sent.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "Sent message larger than max" in sent.value.details()


async def test_close_cancels_the_calls_in_flight() -> None:
    recorder = Recorder()
    upstream = InProcessUpstream(dispatcher_with(recorder))
    unary = call(upstream, "Unary", Text(value="sleep"))
    assert await wait_for(lambda: bool(recorder.contexts))
    await upstream.close()
    assert unary.done()
    assert recorder.done == ["unary"]


async def test_the_server_gateway_runs_in_process_by_default(api: Any, dispatch: str) -> None:
    assert Config.from_dict(CONFIG).server.gateway_in_process
    upstream = api.server.app[STATE].upstream
    assert isinstance(upstream, InProcessUpstream) == (dispatch == "in-process")
    response = await api.get("/readyz")
    assert response.status == 200


async def test_the_dispatcher_runs_the_servers_interceptors(aibattle: AIBattleServer) -> None:
    interceptors = aibattle.dispatcher().interceptors
    assert [type(i).__name__ for i in interceptors] == [
        "RequestParsingInterceptor",
        "RequestContextInterceptor",
        "ErrorInterceptor",
        "AdmissionInterceptor",
        "AuthInterceptor",
        "BoundsInterceptor",
    ]
    assert interceptors[3] is aibattle.admission


async def test_a_stopping_server_lets_calls_finish_then_cancels_and_refuses() -> None:
    recorder = Recorder()
    dispatcher = dispatcher_with(recorder)
    upstream = InProcessUpstream(dispatcher)
    quick = call(upstream, "Unary", Text(value="quick"))
    slow = call(upstream, "Unary", Text(value="sleep"))
    await dispatcher.stop(grace=0.1)
    assert (await quick).value == "QUICK"
    with pytest.raises(grpc.aio.AioRpcError) as cancelled:
        await slow
    assert cancelled.value.code() == grpc.StatusCode.UNAVAILABLE
    assert sorted(recorder.done) == ["unary", "unary"]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(upstream, "Unary", Text(value="late"))
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_cancelling_the_waiting_task_cancels_the_call() -> None:
    recorder = Recorder()
    upstream = InProcessUpstream(dispatcher_with(recorder))
    unary = call(upstream, "Unary", Text(value="sleep"))
    waiter = asyncio.ensure_future(_wait(unary))
    assert await wait_for(lambda: bool(recorder.contexts))
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert unary.cancelled()
    assert await wait_for(lambda: recorder.done == ["unary"])


async def _wait(call: InProcessCall) -> Any:
    return await call
