"""The upstream gRPC channel: generic calls per route (no generated stubs needed) and health checks.

Every call goes out here, so here it gets the request's trace context (W3C `traceparent`), when tracing is
on."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from common.addresses import AddressError, is_loopback, parse_host_port
from common.observability import tracing
from gateway import access
from gateway.descriptors import Rpc, Shape

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: What health() says of a service the server does not report on (grpc.health's NOT_FOUND).
SERVICE_UNKNOWN = "SERVICE_UNKNOWN"

Metadata = Sequence[tuple[str, str | bytes]]


#: W3C trace context keys: the gateway's own context replaces any a client had forwarded.
_TRACE_CONTEXT = frozenset({"traceparent", "tracestate"})


async def health_status(check: Awaitable[health_pb2.HealthCheckResponse]) -> str:
    """A health check's answer as a status name ("SERVING", "NOT_SERVING", …), or its error code's name
    (SERVICE_UNKNOWN for a service the server does not report on)."""
    try:
        response = await check
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return SERVICE_UNKNOWN
        return str(exc.code().name)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def traced(metadata: Metadata) -> Metadata:
    """The call's metadata carrying the current trace context (the request's span), so the server's RPC
    span is its child."""
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    return [*(item for item in metadata if item[0] not in _TRACE_CONTEXT), *carrier.items()]


def channel_options(target: str) -> list[tuple[str, int]]:
    """The upstream channel's gRPC arguments.

    Size limits are enforced on the HTTP side; the upstream is trusted with what it sends back. A
    loopback upstream (the in-process gateway's) keeps HTTP/2's 64 KiB stream window rather than one grown
    by BDP probing: on loopback that buys no throughput, and every response stream whose HTTP client
    stops reading holds its window in this process (about 6.5 MiB each with probing, 2 MiB without, in
    bench/burst.py's terms). A remote upstream keeps probing, which a long round trip needs.
    """
    options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
    try:
        loopback = is_loopback(parse_host_port(target)[0])
    except AddressError:  # a resolver target (dns:///…, unix:…): not known to be loopback
        loopback = False
    if loopback:
        options.append(("grpc.http2.bdp_probe", 0))
    return options


class Upstream:
    """One channel to the gRPC target, shared by every request."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.channel = grpc.aio.insecure_channel(target, options=channel_options(target))
        self._callables: dict[str, Any] = {}

    def start(self, rpc: Rpc, request: Any, *, metadata: Metadata, timeout: float | None) -> Any:
        """Start a call; a request-streaming call starts without a request (write() feeds it).

        Returns the grpc.aio call object of the RPC's shape.
        """
        access.note_request(request)  # the access log names the model the request is for
        if tracing.enabled():
            metadata = traced(metadata)
        multi = self._callables.get(rpc.grpc_path)
        if multi is None:
            factory = {
                Shape.UNARY: self.channel.unary_unary,
                Shape.SERVER_STREAMING: self.channel.unary_stream,
                Shape.CLIENT_STREAMING: self.channel.stream_unary,
                Shape.BIDI_STREAMING: self.channel.stream_stream,
            }[rpc.shape]
            multi = factory(
                rpc.grpc_path,
                request_serializer=rpc.request_cls.SerializeToString,
                response_deserializer=rpc.response_cls.FromString,
            )
            self._callables[rpc.grpc_path] = multi
        if rpc.shape.streams_requests:
            return multi(metadata=metadata, timeout=timeout)
        return multi(request, metadata=metadata, timeout=timeout)

    async def health(self, service: str = "", *, deadline: float = 2.0) -> str:
        """The upstream's grpc.health.v1 status name ("SERVING", "NOT_SERVING", …) or an error code name."""
        check = self.channel.unary_unary(
            HEALTH_CHECK,
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        return await health_status(check(health_pb2.HealthCheckRequest(service=service), timeout=deadline))

    async def close(self) -> None:
        await self.channel.close()
