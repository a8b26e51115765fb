"""The calls of `AsyncClient` over grpc.aio: deadlines, metadata, retries, resumption, typed errors.

The asyncio module is the source: `make gen` (tools/unasync.py) generates the sync one from it.
"""

from __future__ import annotations

# unasync: async-only
import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable

# unasync: sync-only
# import queue
# import threading
# import time
# from collections.abc import Callable, Generator, Iterator
# unasync: end
from typing import Any, Generic, Protocol, TypeVar

import grpc
import grpc.aio

from aibattle_sdk._config import NO_RETRY, ClientConfig, RetryPolicy, remaining
from aibattle_sdk._gen.aibattle import v1
from aibattle_sdk._rpcs import Rpc
from aibattle_sdk.errors import APIError, from_rpc_error

T = TypeVar("T")


def open_channel(config: ClientConfig) -> grpc.aio.Channel:
    if config.credentials is not None:
        return grpc.aio.secure_channel(config.target, config.credentials, options=config.options)
    return grpc.aio.insecure_channel(config.target, options=config.options)


class AsyncTransport(Protocol):
    """What the client's namespaces call: gRPC (`AsyncGrpcTransport`), or for the sync client also an HTTP
    gateway (`RestTransport`). Whether a call may be retried is its Rpc's (`Rpc.safe`)."""

    config: ClientConfig

    async def unary(self, rpc: Rpc, request: Any, *, timeout: float | None) -> Any: ...

    def stream(
        self,
        rpc: Rpc,
        request: Any,
        *,
        timeout: float | None,
        resume: Callable[[int], Any] | None = None,
        sequence: Callable[[Any], int] | None = None,
        unwrap: Callable[[Any], Any] | None = None,
    ) -> AsyncStream[Any]: ...

    def open_stream(self, rpc: Rpc, request: Any, timeout: float | None) -> Any:
        """Start one server-streaming call: the responses to iterate, with `cancel()`. It raises
        grpc.RpcError or APIError; opening must not block (the stream holds a lock across it)."""
        ...

    def converse(self, rpc: Rpc, first: Any, *, timeout: float | None) -> AsyncConverseSession: ...


async def retrying(
    policy: RetryPolicy, deadline: float | None, attempt_once: Callable[[], Awaitable[T]]
) -> T:
    """`attempt_once()` until it succeeds or `policy` gives up; it raises APIError on failure."""
    attempt = 1
    while True:
        try:
            return await attempt_once()
        except APIError as error:
            wait = policy.should_retry(attempt, error, deadline)
            if wait is None:
                raise
        await asyncio.sleep(wait)
        attempt += 1


class AsyncStreaming:
    """What every transport's server streams share: resumption and retries are `AsyncStream`'s, over
    whatever `open_stream` the transport has."""

    def stream(
        self,
        rpc: Rpc,
        request: Any,
        *,
        timeout: float | None,
        resume: Callable[[int], Any] | None = None,
        sequence: Callable[[Any], int] | None = None,
        unwrap: Callable[[Any], Any] | None = None,
    ) -> AsyncStream[Any]:
        """A server stream; see `AsyncStream`."""
        return AsyncStream(
            self,  # type: ignore[arg-type]
            rpc,
            request,
            timeout=timeout,
            resume=resume,
            sequence=sequence,
            unwrap=unwrap,
        )


class AsyncGrpcTransport(AsyncStreaming):
    """Runs Rpcs on one channel with the client's policy; the only place that catches grpc.RpcError."""

    def __init__(self, config: ClientConfig, channel: grpc.aio.Channel | None = None) -> None:
        self.config = config
        self._channel = channel
        # unasync: sync-only
        # if channel is None:  # opened at once (an asyncio channel waits for its event loop: `channel`)
        #     self._channel = open_channel(config)
        # unasync: end

    @property
    def channel(self) -> grpc.aio.Channel:
        """The channel: a sync transport's opens at once; an asyncio one's on first use, in the caller's
        event loop (which it then belongs to)."""
        if self._channel is None:
            self._channel = open_channel(self.config)
        return self._channel

    async def close(self) -> None:
        """Close the channel, if open (open streams end)."""
        if self._channel is not None:
            await self._channel.close()
            # unasync: async-only
            self._channel = None  # a later call opens another, in its event loop
            # unasync: end

    async def unary(self, rpc: Rpc, request: Any, *, timeout: float | None) -> Any:
        """One unary call; retried on UNAVAILABLE when `rpc.safe`."""
        deadline = self.config.deadline(timeout)
        call = self.channel.unary_unary(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )

        async def once() -> Any:
            try:
                return await call(request, timeout=remaining(deadline), metadata=self.config.metadata())
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        return await retrying(self.config.retry if rpc.safe else NO_RETRY, deadline, once)

    def open_stream(self, rpc: Rpc, request: Any, timeout: float | None) -> Any:
        multicallable = self.channel.unary_stream(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )
        return multicallable(request, timeout=timeout, metadata=self.config.metadata())

    def converse(self, rpc: Rpc, first: Any, *, timeout: float | None) -> AsyncConverseSession:
        return AsyncConverseSession(self, rpc, first, timeout=timeout)


class AsyncStream(Generic[T]):
    """The responses of a server-streaming call, as an iterator (`async for`, from `AsyncClient`).

    `cancel()` (or leaving the `async with` block) cancels the call on the server; the iteration then ends
    quietly. An event stream resumes by itself after a dropped connection (UNAVAILABLE) from the last
    sequence it yielded, so no event is lost or repeated; other safe streams are retried only until their
    first response.
    """

    def __init__(
        self,
        transport: AsyncTransport,
        rpc: Rpc,
        request: Any,
        *,
        timeout: float | None,
        resume: Callable[[int], Any] | None,
        sequence: Callable[[Any], int] | None,
        unwrap: Callable[[Any], Any] | None = None,
    ) -> None:
        self._unwrap = unwrap or (lambda response: response)
        self._transport = transport
        self._rpc = rpc
        self._request = request
        self._deadline = transport.config.deadline(timeout, default=False)
        self._resume = resume
        self._sequence = sequence
        self._call: Any = None
        self._cancelled = False
        self._lock = threading.Lock()
        self._iterator = self._run()
        self.last_sequence = 0
        """Sequence of the last event yielded (event streams only)."""
        self.reconnects = 0
        """How many times the stream was reopened after a dropped connection."""

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        return await anext(self._iterator)

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cancel()
        # unasync: async-only
        await self._iterator.aclose()
        # unasync: end

    def cancel(self) -> None:
        """Cancel the call; safe more than once (and, for a sync stream, from any thread)."""
        with self._lock:
            self._cancelled = True
            if self._call is not None:
                self._call.cancel()

    def _open(self, request: Any) -> Any:
        with self._lock:
            if self._cancelled:
                return None
            self._call = self._transport.open_stream(self._rpc, request, remaining(self._deadline))
            return self._call

    async def _run(self) -> AsyncGenerator[T, None]:
        request, received, attempt = self._request, False, 1
        try:
            while True:
                call = self._open(request)
                if call is None:
                    return
                try:
                    async for response in call:
                        if self._sequence is not None:
                            seq = self._sequence(response)
                            if seq <= self.last_sequence:
                                continue  # already yielded before a reconnect
                            self.last_sequence = seq
                        received, attempt = True, 1
                        yield self._unwrap(response)
                    return
                except (grpc.RpcError, APIError) as exc:
                    if self._cancelled:
                        return
                    error = exc if isinstance(exc, APIError) else from_rpc_error(exc)
                # unasync: async-only
                except asyncio.CancelledError:
                    if self._cancelled:  # grpc.aio raises this for a call we cancelled ourselves
                        return
                    raise
                # unasync: end
                if not await self._retry(error, received, attempt):
                    raise error
                attempt += 1
                self.reconnects += 1
                if self._resume is not None:
                    request = self._resume(self.last_sequence)
        finally:
            self.cancel()

    async def _retry(self, error: APIError, received: bool, attempt: int) -> bool:
        if not self._rpc.safe or (received and self._resume is None):
            return False
        wait = self._transport.config.retry.should_retry(attempt, error, self._deadline)
        if wait is None:
            return False
        await asyncio.sleep(wait)
        return True


class AsyncConverseSession:
    """A Converse call: send actions with `send`, `run` and `cancel_turn`; iterate for ConverseResponses.

    Each response carries an `event`, or `rejected` (a google.rpc.Status) when an action of this session
    was refused; the call goes on either way. `close()` half-closes: the server then sends what is left
    of the running turns and ends the call. Not retried: actions are not idempotent.
    """

    def __init__(self, transport: AsyncGrpcTransport, rpc: Rpc, first: Any, *, timeout: float | None) -> None:
        deadline = transport.config.deadline(timeout, default=False)
        multicallable = transport.channel.stream_stream(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )
        self._cancelled = False
        # unasync: async-only
        # grpc.aio's call is written to (`await write()`): the first frame goes with the first await.
        self._first: Any = first
        self._call = multicallable(timeout=remaining(deadline), metadata=transport.config.metadata())
        # unasync: sync-only
        # # grpc's call reads its frames from an iterator, on a thread of its own: a queue feeds it.
        # self._outbox: queue.Queue[Any] = queue.Queue()
        # self._outbox.put(first)
        # self._call = multicallable(
        #     self._frames(), timeout=remaining(deadline), metadata=transport.config.metadata()
        # )
        # unasync: end

    # unasync: async-only
    async def _flush_first(self) -> None:
        if self._first is not None:
            first, self._first = self._first, None
            await self._write(first)

    async def _write(self, frame: Any) -> None:
        try:
            await self._call.write(frame)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def _done_writing(self) -> None:
        await self._flush_first()
        await self._call.done_writing()

    # unasync: sync-only
    # _END = object()
    # """What `_done_writing` queues: the frames end there, and grpc half-closes the call."""
    #
    # def _frames(self) -> Iterator[Any]:
    #     while (frame := self._outbox.get()) is not self._END:
    #         yield frame
    #
    # def _flush_first(self) -> None:
    #     """Nothing to send: the first frame was queued at once."""
    #
    # def _write(self, frame: Any) -> None:
    #     self._outbox.put(frame)
    #
    # def _done_writing(self) -> None:
    #     self._outbox.put(self._END)
    #
    # unasync: end
    async def send_frame(self, frame: Any) -> None:
        """Send a ConverseRequest as is."""
        await self._flush_first()
        await self._write(frame)

    async def send(self, content: str, *, role: str = "human", model: str = "") -> None:
        """Say something as the participant with this role (and model, to tell two apart)."""
        await self.send_frame(
            v1.ConverseRequest(message=v1.ConverseMessage(content=content, role=role, model=model))
        )

    async def run(self, *, additional_rounds: int = 0) -> None:
        """Run the pending AI turns (adding rounds first, if given)."""
        await self.send_frame(
            v1.ConverseRequest(run=v1.RunConversationRequest(additional_rounds=additional_rounds))
        )

    async def cancel_turn(self) -> None:
        """Cancel the running turn; the conversation keeps what was recorded."""
        await self.send_frame(v1.ConverseRequest(cancel=v1.CancelConversationRequest()))

    async def close(self) -> None:
        """Half-close: no more actions; the responses still to come are delivered, then iteration ends."""
        await self._done_writing()

    def cancel(self) -> None:
        """Abort the call at once (the conversation itself is not cancelled; see `cancel_turn`)."""
        self._cancelled = True
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[Any]:
        await self._flush_first()
        try:
            # unasync: async-only
            async for response in self._call:
                yield response
            # unasync: sync-only
            # yield from self._call
            # unasync: end
        except grpc.RpcError as exc:
            if not self._cancelled:
                raise from_rpc_error(exc) from None
        # unasync: async-only
        except asyncio.CancelledError:
            if not self._cancelled:
                raise
        # unasync: end

    async def __aenter__(self) -> AsyncConverseSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        # unasync: sync-only
        # self.close()
        # unasync: end
        self.cancel()
