"""In-process dispatch, the gateway's half: the upstream of a gateway that runs inside the server's process.

`InProcessUpstream` has `Upstream`'s interface, but a call reaches the server's method handler directly,
without the loopback gRPC hop (JSON → protobuf → HTTP/2 → protobuf and back): the handler is found by a
`common.inprocess.Dispatcher`, which runs the server's own interceptor chain (request id, errors,
admission, auth and limits, bounds, metrics, tracing), so no policy exists on one path only.

What grpc.aio does between the two ends is done here instead, with the same observable behaviour:

* The handler runs in a task of its own, in a context of its own (a copy of the server's), as grpc.aio
  runs each call: the HTTP request's context variables never reach the handler, nor its the request's.
* `_ServicerContext` is the handler's grpc.aio.ServicerContext: metadata, deadline, done callbacks
  (however the call ends), initial and trailing metadata, abort and status codes.
* The call objects are grpc.aio's: awaitable (unary responses), `read()` / `async for` (response
  streams, through a bounded buffer, so a slow reader holds back its own stream only), `write()` and
  `done_writing()` (request streams), `initial_metadata()`, `trailing_metadata()`, `code()`,
  `details()`, `cancel()`. A failure is the `grpc.aio.AioRpcError` the network raises, with the
  status's trailing metadata (grpc-status-details-bin); a cancelled call raises CancelledError; a
  deadline that passes cancels the handler and ends the call DEADLINE_EXCEEDED.
* Messages are handed over as they are (no serialization) when both sides use the same classes, and
  the server's message limit (`max_message_bytes`) holds as gRPC core enforces it on the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

from common.inprocess import Dispatcher
from common.observability import tracing
from gateway import access
from gateway.descriptors import Rpc
from gateway.upstream import HEALTH_CHECK, Metadata, health_status, traced

log = logging.getLogger(__name__)

#: Response messages a stream holds for a reader that has not taken them (its flow-control window).
STREAM_BUFFER = 8
#: Request messages written and not yet read by the handler.
REQUEST_BUFFER = 8
PEER = "in-process"
_EMPTY: tuple[tuple[str, str | bytes], ...] = ()


class InProcessUpstream:
    """The server's handlers, called in-process; the interface of `gateway.upstream.Upstream`."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.target = PEER
        self._dispatcher = dispatcher
        self._calls: set[InProcessCall] = set()

    def start(self, rpc: Rpc, request: Any, *, metadata: Metadata, timeout: float | None) -> InProcessCall:
        """Start a call; a request-streaming call starts without a request (write() feeds it)."""
        access.note_request(request)  # the access log names the model the request is for
        if tracing.enabled():
            metadata = traced(metadata)
        return self._start(rpc.grpc_path, rpc.response_cls, request, metadata, timeout)

    def _start(
        self,
        method: str,
        response_cls: type[Message],
        request: Any,
        metadata: Metadata,
        timeout: float | None,
    ) -> InProcessCall:
        call = InProcessCall(self._dispatcher, method, response_cls, request, tuple(metadata), timeout)
        self._calls.add(call)
        call.add_done_callback(self._calls.discard)
        return call

    async def health(self, service: str = "", *, deadline: float = 2.0) -> str:
        """The server's grpc.health.v1 status name ("SERVING", "NOT_SERVING", …) or an error code name."""
        call = self._start(
            HEALTH_CHECK,
            health_pb2.HealthCheckResponse,
            health_pb2.HealthCheckRequest(service=service),
            (),
            deadline,
        )
        return await health_status(call)

    async def close(self) -> None:
        """Cancel the calls still running, as closing a channel does."""
        calls = list(self._calls)
        for call in calls:
            call.cancel()
        await asyncio.gather(*(call.finished() for call in calls), return_exceptions=True)


class _Abort(Exception):
    """The call ended with a status of ours (no such method, a message over the limit)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class InProcessCall:
    """One call, of any shape, as grpc.aio's client call objects present it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        method: str,
        response_cls: type[Message],
        request: Any,
        metadata: tuple[tuple[str, str | bytes], ...],
        timeout: float | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._dispatcher = dispatcher
        self._method = method
        self._response_cls = response_cls
        self._request = request
        self._metadata = metadata
        self._limit = dispatcher.max_message_bytes
        self._deadline = None if timeout is None else loop.time() + timeout
        self._timer = None if timeout is None else loop.call_later(max(timeout, 0.0), self._expire)
        # The client's view
        self._initial: grpc.aio.Metadata | None = None
        self._initial_sent: asyncio.Future[None] = loop.create_future()
        self._ended: asyncio.Future[None] = loop.create_future()
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._trailing = grpc.aio.Metadata()
        self._response: Any = None
        self._locally_cancelled = False
        self._callbacks: list[Callable[[Any], None]] = []
        # Response stream
        self._responses: deque[Any] = deque()
        self._readable = asyncio.Event()
        self._writable = asyncio.Event()
        # Request stream
        self._requests: deque[Any] = deque()
        self._requests_closed = False
        self._request_readable = asyncio.Event()
        self._request_writable = asyncio.Event()
        self.context = _ServicerContext(self)
        self._refused = dispatcher.stopping  # started after the server began to stop
        # As grpc.aio runs each call: a task of its own, in a context of its own.
        self._task = loop.create_task(self._run(), context=dispatcher.context.copy())
        self._task.add_done_callback(self._handler_done)
        dispatcher.calls.add(self)

    # -- the client's side: grpc.aio.Call -----------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        if not self._ended.done():
            try:
                yield from asyncio.shield(self._ended).__await__()
            except asyncio.CancelledError:
                self.cancel()  # as grpc.aio's: the awaiting task cancelled cancels the call
                raise
        self._raise_unless_ok()
        return self._response

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while (message := await self.read()) is not grpc.aio.EOF:
            yield message

    async def read(self) -> Any:
        """The next response message, or grpc.aio.EOF after the last one."""
        while not self._responses:
            if self._ended.done():
                self._raise_unless_ok()
                return grpc.aio.EOF
            self._readable.clear()
            try:
                await self._readable.wait()
            except asyncio.CancelledError:
                self.cancel()  # as grpc.aio's: the reading task cancelled cancels the call
                raise
        if self._locally_cancelled:
            raise asyncio.CancelledError
        message = self._responses.popleft()
        self._writable.set()
        return message

    async def write(self, request: Any) -> None:
        """Send one request message of a request stream."""
        if self._requests_closed:
            raise grpc.aio.UsageError("write after done_writing")
        while len(self._requests) >= REQUEST_BUFFER and not self._ended.done():
            self._request_writable.clear()
            await self._request_writable.wait()
        if self._ended.done():
            self._raise_unless_ok()
            raise asyncio.InvalidStateError("RPC already finished")
        oversize = self._oversize(request, received=True)
        if oversize is not None:
            self._end(grpc.StatusCode.RESOURCE_EXHAUSTED, oversize)
            self._task.cancel()
            self._raise_unless_ok()
        self._requests.append(request)
        self._request_readable.set()

    async def done_writing(self) -> None:
        """The end of the request stream."""
        if self._ended.done():
            self._raise_unless_ok()
            return
        self._requests_closed = True
        self._request_readable.set()

    async def initial_metadata(self) -> grpc.aio.Metadata:
        if self._initial is None:
            await asyncio.wait((self._initial_sent, self._ended), return_when=asyncio.FIRST_COMPLETED)
        return self._initial if self._initial is not None else grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        await self._wait_end()
        return self._trailing

    async def code(self) -> grpc.StatusCode:
        await self._wait_end()
        return self._code

    async def details(self) -> str:
        await self._wait_end()
        return self._details

    async def wait_for_connection(self) -> None:
        return None

    def cancel(self) -> bool:
        if self._ended.done():
            return False
        self._locally_cancelled = True
        self._end(grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        self._task.cancel()
        return True

    def cancelled(self) -> bool:
        return self._locally_cancelled

    def shut_down(self) -> None:
        if not self._ended.done():
            self.context.interrupted = True  # the handler sees itself cancelled
            self._end(grpc.StatusCode.UNAVAILABLE, "Cancelling all calls")
            self._task.cancel()

    def done(self) -> bool:
        return self._ended.done()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - self._loop.time())

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._ended.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    async def finished(self) -> None:
        """Wait until the handler's task has ended too (its cleanup done)."""
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self._task)

    async def _wait_end(self) -> None:
        if not self._ended.done():
            await asyncio.shield(self._ended)

    def _raise_unless_ok(self) -> None:
        if self._locally_cancelled:
            raise asyncio.CancelledError
        if self._code is not grpc.StatusCode.OK:
            raise grpc.aio.AioRpcError(
                self._code,
                self._initial or grpc.aio.Metadata(),
                self._trailing,
                self._details,
                f"in-process call to {self._method}",
            )

    # -- the end, however it comes -----------------------------------------------------------------

    def _end(
        self,
        code: grpc.StatusCode,
        details: str,
        trailing: tuple[tuple[str, str | bytes], ...] = _EMPTY,
    ) -> None:
        if self._ended.done():
            return
        self._code, self._details = code, details
        self._trailing = grpc.aio.Metadata(*trailing)
        self._send_initial(_EMPTY)
        self._ended.set_result(None)
        if self._timer is not None:
            self._timer.cancel()
        self._readable.set()
        self._request_writable.set()
        self._request_readable.set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self)

    def _expire(self) -> None:
        if not self._ended.done():
            self.context.interrupted = True
            self._end(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
            self._task.cancel()

    def _send_initial(self, metadata: tuple[tuple[str, str | bytes], ...]) -> None:
        if self._initial is None:
            self._initial = grpc.aio.Metadata(*metadata)
            self._initial_sent.set_result(None)

    def _handler_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:  # never: _run catches all
            self._end(grpc.StatusCode.UNKNOWN, repr(task.exception()))
        self._end(grpc.StatusCode.CANCELLED, "Cancelled")
        self._dispatcher.calls.discard(self)
        self.context.run_done_callbacks()

    # -- the server's side --------------------------------------------------------------------------

    async def _run(self) -> None:
        context = self.context
        try:
            if self._refused:
                raise _Abort(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
            handler = await self._dispatcher.handler(self._method, self._metadata)
            if handler is None:
                raise _Abort(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            if handler.request_streaming:
                argument: Any = self._request_stream(handler.request_deserializer)
            else:
                self._check_size(self._request, received=True)
                argument = _handed_over(self._request, handler.request_deserializer)
            if handler.response_streaming:
                behavior = handler.stream_stream if handler.request_streaming else handler.unary_stream
                responses = behavior(argument, context)
                if hasattr(responses, "__aiter__"):
                    try:
                        async for response in responses:
                            await self._emit(response)
                    finally:
                        # Closed now, however the call ends (its cleanup not left to the collector).
                        aclose = getattr(responses, "aclose", None)
                        if aclose is not None:
                            await aclose()
                else:  # a handler that writes with context.write()
                    await responses
            else:
                behavior = handler.stream_unary if handler.request_streaming else handler.unary_unary
                response = await behavior(argument, context)
                code = context.status_code()
                if code is grpc.StatusCode.OK:
                    self._check_size(response, received=False)
                    self._response = self._as_response(response)
            self._end(context.status_code(), context.status_details(), context.trailing)
        except grpc.aio.AbortError:
            self._end(context.status_code(), context.status_details(), context.trailing)
        except _Abort as exc:
            self._end(exc.code, exc.details, context.trailing)
        except asyncio.CancelledError:
            self._end(grpc.StatusCode.CANCELLED, "Cancelled")
        except Exception as exc:
            log.exception("in-process call %s failed", self._method)
            self._end(grpc.StatusCode.UNKNOWN, f"Unexpected {type(exc)}: {exc}")

    async def _emit(self, response: Any) -> None:
        """Hand one response message to the reader; waits while the reader's buffer is full."""
        while len(self._responses) >= STREAM_BUFFER and not self._ended.done():
            self._writable.clear()
            await self._writable.wait()
        if self._ended.done():
            raise asyncio.CancelledError  # the call ended under the handler (cancelled, deadline)
        self._check_size(response, received=False)
        self._send_initial(_EMPTY)
        self._responses.append(self._as_response(response))
        self._readable.set()

    async def _request_stream(self, deserializer: Callable[[bytes], Any] | None) -> AsyncIterator[Any]:
        while True:
            message = await self.read_request()
            if message is grpc.aio.EOF:
                return
            yield _handed_over(message, deserializer)

    async def read_request(self) -> Any:
        while not self._requests:
            if self._requests_closed or self._ended.done():
                return grpc.aio.EOF
            self._request_readable.clear()
            await self._request_readable.wait()
        message = self._requests.popleft()
        self._request_writable.set()
        return message

    def _as_response(self, response: Any) -> Any:
        if type(response) is self._response_cls or not isinstance(response, Message):
            return response
        return self._response_cls.FromString(response.SerializeToString())

    def _check_size(self, message: Any, *, received: bool) -> None:
        oversize = self._oversize(message, received=received)
        if oversize is not None:
            raise _Abort(grpc.StatusCode.RESOURCE_EXHAUSTED, oversize)

    def _oversize(self, message: Any, *, received: bool) -> str | None:
        """gRPC core's message limit, where the network would apply it: what it says of a message over."""
        if self._limit < 0 or not isinstance(message, Message):
            return None
        size = message.ByteSize()
        if size <= self._limit:
            return None
        return f"{'Received' if received else 'Sent'} message larger than max ({size} vs. {self._limit})"


def _handed_over(message: Any, deserializer: Callable[[bytes], Any] | None) -> Any:
    """The request as the handler takes it: the same object when both sides share its class (the
    default descriptor pool's), else parsed from its bytes by the handler's own deserializer."""
    if deserializer is None or not isinstance(message, Message):
        return message
    if message.DESCRIPTOR.file.pool is descriptor_pool.Default():
        return message
    return deserializer(message.SerializeToString())


class _ServicerContext:
    """grpc.aio.ServicerContext of an in-process call: what the interceptors and servicers call."""

    def __init__(self, call: InProcessCall) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self.trailing: tuple[tuple[str, str | bytes], ...] = _EMPTY
        self.interrupted = False
        self._done_callbacks: list[Callable[[Any], None]] = []
        self._done = False

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._call._metadata

    def peer(self) -> str:
        return PEER

    def peer_identities(self) -> None:
        return None

    def peer_identity_key(self) -> None:
        return None

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def cancelled(self) -> bool:
        return self._call._locally_cancelled or self.interrupted

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self._done:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    def run_done_callbacks(self) -> None:
        self._done = True
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("done callback of an in-process call failed")

    async def send_initial_metadata(self, metadata: Any) -> None:
        if self._call._initial is not None:
            raise grpc.aio.UsageError("Initial metadata already sent")
        self._call._send_initial(tuple(metadata))

    def set_trailing_metadata(self, metadata: Any) -> None:
        self.trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self.trailing

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = _EMPTY) -> None:
        if code is grpc.StatusCode.OK:
            log.error("abort() called with StatusCode.OK; returning UNKNOWN")
            code = grpc.StatusCode.UNKNOWN
            details = ""
        self._code, self._details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def status_code(self) -> grpc.StatusCode:
        return self._code or grpc.StatusCode.OK

    def status_details(self) -> str:
        return self._details or ""

    async def read(self) -> Any:
        return await self._call.read_request()

    async def write(self, message: Any) -> None:
        await self._call._emit(message)

    def set_compression(self, compression: Any) -> None:
        return None

    def disable_next_message_compression(self) -> None:
        return None
