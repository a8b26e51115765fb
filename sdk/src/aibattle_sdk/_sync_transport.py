"""The sync client's calls over grpcio: deadlines, metadata, retries, resumption, typed errors."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Generic, Protocol, TypeVar

import grpc

from aibattle_sdk._config import NO_RETRY, ClientConfig, RetryPolicy, remaining
from aibattle_sdk._gen.aibattle import v1
from aibattle_sdk._rpcs import Rpc
from aibattle_sdk.errors import APIError, from_rpc_error

T = TypeVar("T")


def open_channel(config: ClientConfig) -> grpc.Channel:
    if config.credentials is not None:
        return grpc.secure_channel(config.target, config.credentials, options=config.options)
    return grpc.insecure_channel(config.target, options=config.options)


class SyncTransport(Protocol):
    """What the sync client's namespaces call: gRPC (`Transport`) or an HTTP gateway (`RestTransport`)."""

    config: ClientConfig

    def unary(self, rpc: Rpc, request: Any, *, timeout: float | None) -> Any: ...

    def stream(
        self,
        rpc: Rpc,
        request: Any,
        *,
        timeout: float | None,
        resume: Callable[[int], Any] | None = None,
        sequence: Callable[[Any], int] | None = None,
        unwrap: Callable[[Any], Any] | None = None,
    ) -> Stream[Any]: ...

    def open_stream(self, rpc: Rpc, request: Any, timeout: float | None) -> Any:
        """Start one server-streaming call: an iterable of responses with `cancel()`. It raises
        grpc.RpcError or APIError; opening must not block (Stream holds a lock across it)."""
        ...

    def converse(self, rpc: Rpc, first: Any, *, timeout: float | None) -> ConverseSession: ...


def retrying(policy: RetryPolicy, deadline: float | None, attempt_once: Callable[[], T]) -> T:
    """`attempt_once()` until it succeeds or `policy` gives up; it raises APIError on failure."""
    attempt = 1
    while True:
        try:
            return attempt_once()
        except APIError as error:
            wait = policy.should_retry(attempt, error, deadline)
            if wait is None:
                raise
        time.sleep(wait)
        attempt += 1


class Streaming:
    """What every sync transport's server streams share: resumption and retries are `Stream`'s,
    over whatever `open_stream` the transport has."""

    def stream(
        self,
        rpc: Rpc,
        request: Any,
        *,
        timeout: float | None,
        resume: Callable[[int], Any] | None = None,
        sequence: Callable[[Any], int] | None = None,
        unwrap: Callable[[Any], Any] | None = None,
    ) -> Stream[Any]:
        """A server stream; see `Stream`."""
        return Stream(
            self,  # type: ignore[arg-type]
            rpc,
            request,
            timeout=timeout,
            resume=resume,
            sequence=sequence,
            unwrap=unwrap,
        )


class Transport(Streaming):
    """Runs Rpcs on one channel with the client's policy; the only place that catches grpc.RpcError."""

    def __init__(self, channel: grpc.Channel, config: ClientConfig) -> None:
        self.channel = channel
        self.config = config

    def unary(self, rpc: Rpc, request: Any, *, timeout: float | None) -> Any:
        """One unary call; retried on UNAVAILABLE when `rpc.safe`."""
        deadline = self.config.deadline(timeout)
        call = self.channel.unary_unary(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )

        def once() -> Any:
            try:
                return call(request, timeout=remaining(deadline), metadata=self.config.metadata())
            except grpc.RpcError as exc:
                raise from_rpc_error(exc) from None

        return retrying(self.config.retry if rpc.safe else NO_RETRY, deadline, once)

    def open_stream(self, rpc: Rpc, request: Any, timeout: float | None) -> Any:
        multicallable = self.channel.unary_stream(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )
        return multicallable(request, timeout=timeout, metadata=self.config.metadata())

    def converse(self, rpc: Rpc, first: Any, *, timeout: float | None) -> ConverseSession:
        return ConverseSession(self, rpc, first, timeout=timeout)


class Stream(Generic[T]):
    """The responses of a server-streaming call, as an iterator.

    `cancel()` (or leaving a `with` block, or closing the iterator) cancels the call on the server; the
    iteration then ends quietly. An event stream resumes by itself after a dropped connection
    (UNAVAILABLE) from the last sequence it yielded, so no event is lost or repeated; other safe streams
    are retried only until their first response.
    """

    def __init__(
        self,
        transport: SyncTransport,
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

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        return next(self._iterator)

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *_: object) -> None:
        self.cancel()

    def cancel(self) -> None:
        """Cancel the call; safe from any thread, and more than once."""
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

    def _run(self) -> Iterator[T]:
        request, received, attempt = self._request, False, 1
        try:
            while True:
                call = self._open(request)
                if call is None:
                    return
                try:
                    for response in call:
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
                if not self._retry(error, received, attempt):
                    raise error
                attempt += 1
                self.reconnects += 1
                if self._resume is not None:
                    request = self._resume(self.last_sequence)
        finally:
            self.cancel()

    def _retry(self, error: APIError, received: bool, attempt: int) -> bool:
        if not self._rpc.safe or (received and self._resume is None):
            return False
        wait = self._transport.config.retry.should_retry(attempt, error, self._deadline)
        if wait is None:
            return False
        time.sleep(wait)
        return True


_END = object()


class ConverseSession:
    """A Converse call: send actions with `send`, `run` and `cancel`; iterate for ConverseResponses.

    Each response carries an `event`, or `rejected` (a google.rpc.Status) when an action of this session
    was refused; the call goes on either way. `close()` half-closes: the server then sends what is left
    of the running turns and ends the call. Not retried: actions are not idempotent.
    """

    def __init__(self, transport: Transport, rpc: Rpc, first: Any, *, timeout: float | None) -> None:
        self._outbox: queue.Queue[Any] = queue.Queue()
        self._rpc = rpc
        self._outbox.put(first)
        deadline = transport.config.deadline(timeout, default=False)
        self._call = transport.channel.stream_stream(
            rpc.route, rpc.request_type.SerializeToString, rpc.response_type.FromString
        )(self._frames(), timeout=remaining(deadline), metadata=transport.config.metadata())
        self._cancelled = False

    def _frames(self) -> Iterator[Any]:
        while (frame := self._outbox.get()) is not _END:
            yield frame

    def send_frame(self, frame: Any) -> None:
        """Send a ConverseRequest as is."""
        self._outbox.put(frame)

    def send(self, content: str, *, role: str = "human", model: str = "") -> None:
        """Say something as the participant with this role (and model, to tell two apart)."""
        self._outbox.put(
            v1.ConverseRequest(message=v1.ConverseMessage(content=content, role=role, model=model))
        )

    def run(self, *, additional_rounds: int = 0) -> None:
        """Run the pending AI turns (adding rounds first, if given)."""
        self._outbox.put(
            v1.ConverseRequest(run=v1.RunConversationRequest(additional_rounds=additional_rounds))
        )

    def cancel_turn(self) -> None:
        """Cancel the running turn; the conversation keeps what was recorded."""
        self._outbox.put(v1.ConverseRequest(cancel=v1.CancelConversationRequest()))

    def close(self) -> None:
        """Half-close: no more actions; the responses still to come are delivered, then iteration ends."""
        self._outbox.put(_END)

    def cancel(self) -> None:
        """Abort the call at once (the conversation itself is not cancelled; see `cancel_turn`)."""
        self._cancelled = True
        self._call.cancel()

    def __iter__(self) -> Iterator[Any]:
        try:
            yield from self._call
        except grpc.RpcError as exc:
            if not self._cancelled:
                raise from_rpc_error(exc) from None

    def __enter__(self) -> ConverseSession:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()
        self.cancel()
