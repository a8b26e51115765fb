"""The async client's calls over grpc.aio: the same policy as the sync transport, awaited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

from aibattle_sdk._config import NO_RETRY, ClientConfig, remaining
from aibattle_sdk._gen.aibattle import v1
from aibattle_sdk._rpcs import Rpc
from aibattle_sdk.errors import APIError, from_rpc_error

T = TypeVar("T")


def open_channel(config: ClientConfig) -> grpc.aio.Channel:
    if config.credentials is not None:
        return grpc.aio.secure_channel(config.target, config.credentials, options=config.options)
    return grpc.aio.insecure_channel(config.target, options=config.options)


class AsyncTransport:
    """Runs Rpcs on one grpc.aio channel with the client's policy; catches every grpc.RpcError."""

    def __init__(self, channel: Callable[[], grpc.aio.Channel], config: ClientConfig) -> None:
        self._channel = channel
        self.config = config

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel()

    async def unary(self, rpc: Rpc, request: Any, *, timeout: float | None) -> Any:
        """One unary call; retried on UNAVAILABLE when `rpc.safe`."""
        deadline = self.config.deadline(timeout)
        call = self.channel.unary_unary(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )
        policy = self.config.retry if rpc.safe else NO_RETRY
        attempt = 1
        while True:
            try:
                return await call(request, timeout=remaining(deadline), metadata=self.config.metadata())
            except grpc.RpcError as exc:
                error = from_rpc_error(exc)
            wait = policy.should_retry(attempt, error, deadline)
            if wait is None:
                raise error
            await asyncio.sleep(wait)
            attempt += 1

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
            self, rpc, request, timeout=timeout, resume=resume, sequence=sequence, unwrap=unwrap
        )


class AsyncStream(Generic[T]):
    """The responses of a server-streaming call, as an async iterator; `Stream`'s async twin.

    `cancel()` (or leaving an `async with` block) cancels the call; the iteration then ends quietly.
    Event streams resume by themselves after a dropped connection, from the last sequence yielded.
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
        unwrap: Callable[[Any], Any] | None,
    ) -> None:
        self._transport = transport
        self._rpc = rpc
        self._request = request
        self._deadline = transport.config.deadline(timeout, default=False)
        self._resume = resume
        self._sequence = sequence
        self._unwrap = unwrap or (lambda response: response)
        self._call: Any = None
        self._cancelled = False
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
        await self._iterator.aclose()

    def cancel(self) -> None:
        """Cancel the call; safe more than once."""
        self._cancelled = True
        if self._call is not None:
            self._call.cancel()

    async def _run(self) -> AsyncGenerator[T, None]:
        request, received, attempt = self._request, False, 1
        multicallable = self._transport.channel.unary_stream(
            self._rpc.route, self._rpc.request_type.SerializeToString, self._rpc.response_type.FromString
        )
        try:
            while not self._cancelled:
                self._call = multicallable(
                    request, timeout=remaining(self._deadline), metadata=self._transport.config.metadata()
                )
                try:
                    async for response in self._call:
                        if self._sequence is not None:
                            seq = self._sequence(response)
                            if seq <= self.last_sequence:
                                continue  # already yielded before a reconnect
                            self.last_sequence = seq
                        received, attempt = True, 1
                        yield self._unwrap(response)
                    return
                except grpc.RpcError as exc:
                    if self._cancelled:
                        return
                    error = from_rpc_error(exc)
                except asyncio.CancelledError:
                    if self._cancelled:  # grpc.aio raises this for a call we cancelled ourselves
                        return
                    raise
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
    """A Converse call, async: `await send(...)`, `run`, `cancel_turn`; `async for` the responses.

    Each response carries an `event`, or `rejected` when an action of this session was refused.
    `await close()` half-closes; the server then ends the call once the running turns are sent.
    """

    def __init__(self, transport: AsyncTransport, rpc: Rpc, first: Any, *, timeout: float | None) -> None:
        deadline = transport.config.deadline(timeout, default=False)
        self._call = transport.channel.stream_stream(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )(timeout=remaining(deadline), metadata=transport.config.metadata())
        self._first: Any = first
        self._cancelled = False

    async def send_frame(self, frame: Any) -> None:
        """Send a ConverseRequest as is."""
        await self._flush_first()
        try:
            await self._call.write(frame)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def _flush_first(self) -> None:
        if self._first is not None:
            first, self._first = self._first, None
            try:
                await self._call.write(first)
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

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
        """Half-close: no more actions; the responses still to come are delivered."""
        await self._flush_first()
        await self._call.done_writing()

    def cancel(self) -> None:
        """Abort the call at once (the conversation itself is not cancelled; see `cancel_turn`)."""
        self._cancelled = True
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[Any]:
        await self._flush_first()
        try:
            async for response in self._call:
                yield response
        except grpc.RpcError as exc:
            if not self._cancelled:
                raise from_rpc_error(exc) from None
        except asyncio.CancelledError:
            if not self._cancelled:
                raise

    async def __aenter__(self) -> AsyncConverseSession:
        return self

    async def __aexit__(self, *_: object) -> None:
        self.cancel()
