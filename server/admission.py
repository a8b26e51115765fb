"""Admission: the server's response streams, counted against `[server].max_concurrent_streams`.

A response stream (a server-streaming RPC, or Converse; every SSE, NDJSON and WebSocket stream of the
gateway is one) takes one of the server's `max_concurrent_streams` when it starts and gives it back
when it ends, however it ends (`server.security.interceptor.StreamSlot`). One more is refused at once
with RESOURCE_EXHAUSTED `SERVER_BUSY` and a RetryInfo, which the gateway answers as 429 + Retry-After:
a burst past what the server can hold is told to come back, never left to time out or be cancelled.
gRPC's own services (health, reflection) are not counted: probes get through a full server.

`AdmissionInterceptor` sits after the error interceptor (which renders its refusal) and before
authentication (a full server refuses before looking a key up). A unary call passes it untouched; a
stream's handler is wrapped in one generator, so the count costs one check per stream, not per message.

`core_options` are the gRPC core arguments that let a burst reach the count at all; see there.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from common.errors import SERVER_BUSY, LimitExceeded
from server.security.interceptor import StreamSlot
from server.security.limits import STREAM_RETRY_SECONDS, refused

#: gRPC core's own services (health, reflection): never counted nor refused.
_GRPC_SERVICES = "/grpc."
#: Calls gRPC core may hold for this process before its event loop takes them (see core_options).
MIN_PENDING_CALLS = 10_000
#: How long a call may wait in gRPC core before its event loop takes it (see core_options).
MAX_UNREQUESTED_SECONDS = 300


def core_options(max_concurrent_streams: int) -> tuple[tuple[str, int], ...]:
    """gRPC core arguments for the server, so that a burst of calls is answered by us, not cancelled.

    grpc.aio takes the calls gRPC core has received one at a time, one per turn of the event loop; the
    others wait in core's queue of pending calls. By default core keeps at most 1,000 there and cancels
    a growing share of the calls beyond (random early detection up to 3,000: `grpc.server.
    max_pending_requests` and `…_hard_limit`), and cancels a call that waited 30 s
    (`grpc.server_max_unrequested_time_in_server`): 3,000 simultaneous streams on one channel saw some
    500 CANCELLED before any handler ran, and an SSE burst as many 499s (bench/burst.py). The queue is
    sized to twice `max_concurrent_streams` (at least MIN_PENDING_CALLS), with no random early
    rejection below it, so every call of a burst reaches `AdmissionInterceptor`, which admits or refuses
    it properly; and a call may wait MAX_UNREQUESTED_SECONDS, since on a saturated loop (10,000 SSE
    streams on one core) the last of a burst is taken well after 30 s.
    """
    pending = max(MIN_PENDING_CALLS, 2 * max_concurrent_streams)
    return (
        ("grpc.server.max_pending_requests", pending),
        ("grpc.server.max_pending_requests_hard_limit", pending),
        ("grpc.server_max_unrequested_time_in_server", MAX_UNREQUESTED_SECONDS),
    )


class AdmissionInterceptor(grpc.aio.ServerInterceptor):
    """Counts the server's open response streams; refuses one past `max_concurrent_streams` (0: none)."""

    def __init__(self, max_concurrent_streams: int) -> None:
        self.limit = max_concurrent_streams
        #: Response streams open now (counted even with no limit: it costs nothing and tests read it).
        self.open = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler.response_streaming:
            return handler
        if handler_call_details.method.startswith(_GRPC_SERVICES):
            return handler
        if handler.request_streaming:
            admitted: grpc.RpcMethodHandler = handler._replace(
                stream_stream=self._admit(handler.stream_stream)
            )
        else:
            admitted = handler._replace(unary_stream=self._admit(handler.unary_stream))
        return admitted

    def _admit(self, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def admitted(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            # Taken where grpc starts consuming the stream, so a refusal is the stream's status (the
            # error interceptor renders it) and comes before anything else runs.
            if self.limit and self.open >= self.limit:
                raise busy(self.limit)
            self.open += 1
            slot = StreamSlot(self._give_back)
            context.add_done_callback(slot.on_done)
            try:
                responses = behavior(request, context)
                if inspect.isasyncgen(responses):
                    async for response in responses:
                        yield response
                else:  # a handler that writes with context.write()
                    await responses
            finally:
                await slot.release()

        return admitted

    async def _give_back(self) -> None:
        self.open -= 1


def busy(limit: int) -> LimitExceeded:
    return refused(
        LimitExceeded(
            SERVER_BUSY,
            f"the server holds {limit} response streams, the most it may ([server].max_concurrent_streams);"
            " retry shortly",
            limit="server_max_concurrent_streams",
            retry_after=STREAM_RETRY_SECONDS,
        )
    )
