"""Driving an upstream call from HTTP: cancellation on exit and a background request pump.

The pump feeds request messages (NDJSON lines, WebSocket frames) into a client- or bidi-streaming
call while the response side is being relayed. A bad message cancels the call and is reported
instead of the CANCELLED it causes; a client that goes away cancels the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
from google.protobuf.message import Message

from common.errors import CANCELLED, ApiError, internal_error

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The HTTP or WebSocket client went away; its upstream call is cancelled."""


@contextlib.contextmanager
def cancel_on_exit(call: Any) -> Iterator[None]:
    """Cancel the upstream call if the block ends (returns, raises, is cancelled) before the call does."""
    try:
        yield
    finally:
        if not call.done():
            call.cancel()


class RequestPump:
    """Writes request messages into a call in the background.

    `half_close`: whether the call takes a request stream (then the end of `requests` is done_writing);
    for a unary-request call the pump only watches the client (any message is an error by then).
    """

    def __init__(self, call: Any, requests: AsyncIterator[Message], *, half_close: bool) -> None:
        self.error: ApiError | None = None
        self.client_gone = False
        self._call = call
        self._task = asyncio.ensure_future(self._run(requests, half_close))

    async def _run(self, requests: AsyncIterator[Message], half_close: bool) -> None:
        call = self._call
        try:
            async for message in requests:
                await call.write(message)
            if half_close:
                await call.done_writing()
        except ApiError as exc:
            self.error = exc
            call.cancel()
        except ClientGone:
            self.client_gone = True
            call.cancel()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            # The call already ended; the response side reports its outcome.
            log.debug("request pump stopped: %r", exc)
        except Exception:
            # Never die silently: a call left without its requests would hang until the client leaves.
            log.exception("request pump failed")
            self.error = internal_error()
            call.cancel()

    def caused_failure(self) -> bool:
        """Whether the pump cancelled the call (bad message, client gone), rather than our own task
        being cancelled: grpc.aio raises CancelledError from a call cancelled either way."""
        task = asyncio.current_task()
        ours = task is not None and task.cancelling() > 0
        return (self.error is not None or self.client_gone) and not ours

    def failure(self, error: BaseException | None) -> BaseException:
        """What to report for a failed call: the pump's own error if it caused the failure."""
        if self.error is not None:
            return self.error
        if isinstance(error, grpc.aio.AioRpcError):
            return error
        return CANCELLED.error("the request stream was abandoned")

    def raise_own_error(self) -> None:
        """Raise the pump's ApiError, if a bad request message caused the call to fail."""
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
