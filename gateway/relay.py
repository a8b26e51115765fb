"""The one stream relay: an upstream call's response messages, out to a client, for every transport.

Native SSE and NDJSON, WebSocket, and the OpenAI and Ollama compat streams differ only in how a
message, an error and the end are written (a `Sink`); what happens when is decided here, once:

* Nothing is sent before the first message (or the end of an empty stream): a failure before it
  is still an ordinary error answer — HTTP status and the dialect's error body.
* After it, a failure is the dialect's final error frame: upstream statuses pass through, a bad
  request message that the pump fed is reported instead of the CANCELLED it caused, and anything
  unexpected is logged with its traceback and sent as a generic INTERNAL.
* A client that goes away ends the relay quietly; the caller's `cancel_on_exit` cancels the call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

import grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from common.errors import ApiError
from gateway import observe
from gateway.calls import RequestPump
from gateway.errors import status_of

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a relayed stream goes; one per request, in one transport and dialect."""

    @property
    def started(self) -> bool:
        """Whether anything (headers, a frame) has reached the client."""
        ...

    async def start(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        """Commit to a successful answer: send headers (HTTP) before the first message."""

    async def message(self, message: Message) -> None:
        """Send one response message."""

    async def end(self) -> None:
        """The call ended OK after at least one message: the dialect's end of stream."""

    async def end_empty(self, initial_metadata: grpc.aio.Metadata | None) -> None:
        """The call ended OK without a message (`start` may not have been called)."""

    async def fail(self, status: status_pb2.Status, http: int | None, headers: dict[str, str]) -> None:
        """The call failed: before `start`, an ordinary error answer (`http` overrides the status table,
        `headers` go with it); after it, the final error frame."""


async def relay(call: Any, sink: Sink, *, streaming: bool, pump: RequestPump | None = None) -> None:
    """Relay `call`'s responses into `sink` until the call ends, fails or the client leaves."""
    try:
        relayed = False
        async for message in _responses(call, streaming=streaming):
            if not sink.started:
                initial = await call.initial_metadata()
                observe.note_upstream(initial)  # its wait on providers, before the headers go out
                await sink.start(initial)
            await sink.message(message)
            relayed = True
        if relayed:
            await sink.end()
        else:
            initial = await call.initial_metadata()
            observe.note_upstream(initial)
            await sink.end_empty(initial)
        return
    except ConnectionError:
        log.debug("client went away during a stream")
        return
    except asyncio.CancelledError:
        # grpc.aio raises CancelledError from a call the pump cancelled (bad message, client gone);
        # any other cancellation is our own task's and must propagate.
        if pump is None or not pump.caused_failure():
            raise
        failure: BaseException = pump.failure(None)
    except grpc.aio.AioRpcError as exc:
        if not sink.started:  # its error answer's headers are still to go out
            observe.note_failed_call(exc)
        failure = pump.failure(exc) if pump is not None else exc
    except Exception as exc:
        if not isinstance(exc, ApiError):
            log.exception("stream relay failed")
        failure = exc
    if pump is not None and pump.client_gone:
        return
    status, http, headers = status_of(failure)
    observe.note_status(status)
    try:
        await sink.fail(status, http, headers)
    except ConnectionError:
        log.debug("client went away before the stream's error frame")


async def _responses(call: Any, *, streaming: bool) -> AsyncIterator[Message]:
    if not streaming:
        yield await call
        return
    while (message := await call.read()) is not grpc.aio.EOF:
        yield message
