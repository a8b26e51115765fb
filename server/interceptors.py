"""Server interceptors (grpc-interceptor): request context and logging, error mapping, bounds.

Order matters: RequestContextInterceptor is outermost so the request id is set before
anything logs and the access log sees the final status; ErrorInterceptor is the one
place where exceptions become statuses; AuthInterceptor (server/security) then knows the
caller; BoundsInterceptor, innermost, refuses requests outside the bounds their schema declares
before any handler runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_interceptor.server import AsyncServerInterceptor
from grpc_status import rpc_status
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from common import bounds
from common.errors import INTERNAL, MALFORMED_REQUEST, ApiError, InvalidArgument, internal_error, status_code
from common.observability import (
    ECHO_IN_TRAILERS,
    ECHO_METADATA,
    UPSTREAM_MS_METADATA,
    conventions,
    metrics,
    requests,
    tracing,
)
from server import logs
from server.security.observed import series

log = logging.getLogger("aibattle.access")
errlog = logging.getLogger("aibattle.errors")

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128


def _incoming(context: grpc.aio.ServicerContext) -> tuple[str, bool]:
    """The caller's request id (or a new one), and whether it asks for the echo in trailers."""
    rid = ""
    trailers = False
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            rid = rid or value
        elif key == ECHO_METADATA and value == ECHO_IN_TRAILERS:
            trailers = True
    return rid or uuid.uuid4().hex, trailers


class RequestContextInterceptor(AsyncServerInterceptor):
    """Takes or makes the request id; observes each call (`_Rpc`): its metrics, its SERVER span (when
    tracing is on), its access-log line; echoes the request id as initial metadata, or with a unary
    answer's status when the caller asks (see `_Rpc.echo`)."""

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        rid, trailers = _incoming(context)
        token = logs.request_id.set(rid)
        try:
            response = method(request, context)
            if inspect.isasyncgen(response):
                return self._stream(response, context, method_name, rid)
            rpc = _Rpc(context, method_name, rid, streaming=False, trailers=trailers)
            rpc_token = _current.set(rpc)
            try:
                with tracing.use(rpc.span):
                    try:
                        result = await response
                        await rpc.echo()
                    finally:
                        rpc.finish()
                return result
            finally:
                _current.reset(rpc_token)
                requests.end(rpc.observation_token)
        finally:
            logs.request_id.reset(token)

    async def _stream(
        self, responses: AsyncIterator[Any], context: grpc.aio.ServicerContext, method_name: str, rid: str
    ) -> AsyncIterator[Any]:
        # Set, never reset (the request id, the observation, the span made current): grpc runs each call
        # in a task (and context) of its own, and a generator abandoned mid-stream is finalized later in
        # some other context, where a reset raises ValueError. Set again before the access line for the
        # same reason.
        logs.request_id.set(rid)
        rpc = _Rpc(context, method_name, rid, streaming=True)
        _current.set(rpc)
        if rpc.span is not None:
            otel_context.attach(trace.set_span_in_context(rpc.span))
        # A client gone while grpc is blocked writing abandons this generator at its yield, and its
        # finally runs only when it is garbage-collected: the call's end closes the books instead.
        ended = contextvars.copy_context()
        context.add_done_callback(lambda _: ended.run(rpc.finish, interrupted=True))
        interrupted = False
        try:
            async for response in responses:
                if not rpc.echoed:
                    await rpc.echo()
                yield response
            await rpc.echo()  # a stream with no message: at its end
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (or its deadline passed) mid-stream: grpc cancels our task or
            # closes the generator, and context.code() stays unset.
            interrupted = True
            raise
        finally:
            logs.request_id.set(rid)
            rpc.finish(interrupted=interrupted)


_current: contextvars.ContextVar[_Rpc | None] = contextvars.ContextVar("rpc", default=None)


async def echo_now(key: str, value: str) -> None:
    """Metadata a handler adds to what its call echoes (`_Rpc.echo`), echoed at once rather than with
    the first message or the answer (unless the caller asked for it in trailers): e.g. the reasoning
    session a collaboration model answers from, which a client may read or cancel while the call runs.
    Before the call's first message; outside an intercepted call, nothing."""
    rpc = _current.get()
    if rpc is None or rpc.echoed:
        return
    rpc.extra += ((key, value),)
    if not rpc.trailers:
        await rpc.echo()


_IN_FLIGHT = metrics.IN_FLIGHT.labels("grpc")
_OPEN_STREAMS = metrics.OPEN_STREAMS.labels("grpc")
#: Codes a gRPC SERVER span is an error for (the RPC conventions): the server's faults, not the caller's.
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class _Rpc:
    """One call as the service sees it: its `Observation` (model, tokens, wait on providers), the
    metrics and span it records when it ends (`finish`, once however it ends), and the request id it
    echoes with the milliseconds it waited on model providers (`echo`).

    The metadata goes out when the answer does: right before a stream's first message (or at its end,
    if it has none), after a unary handler returns, and before a failure's status (ErrorInterceptor), so
    a failed call still carries its request id and the upstream wait is known when it is sent. It is
    initial metadata, except for a unary call whose caller asked for it in trailers (`ECHO_METADATA`,
    as the gateway does): then it goes with the status, and grpc.aio makes no write for it alone.
    """

    __slots__ = (
        "_context",
        "echoed",
        "extra",
        "finished",
        "method",
        "observation",
        "observation_token",
        "overhead",
        "rid",
        "span",
        "streaming",
        "trailers",
    )

    def __init__(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        rid: str,
        *,
        streaming: bool,
        trailers: bool = False,
    ) -> None:
        self._context = context
        self.method = method
        self.rid = rid
        self.streaming = streaming
        self.trailers = trailers and not streaming
        self.echoed = False
        self.extra: tuple[tuple[str, str], ...] = ()
        self.finished = False
        self.overhead: float | None = None
        self.observation, self.observation_token = requests.begin("grpc", method)
        self.span = _server_span(context, method) if tracing.enabled() else None
        if metrics.enabled:
            _IN_FLIGHT.inc()
            if streaming:
                _OPEN_STREAMS.inc()

    async def echo(self) -> None:
        """The initial metadata, once: request id and upstream milliseconds so far (or, asked for in
        trailers, the same added to the trailing metadata)."""
        if self.echoed:
            return
        if self.trailers:
            self._context.set_trailing_metadata(
                (*(self._context.trailing_metadata() or ()), *self.echo_pairs())
            )
            return
        await self._context.send_initial_metadata(self.echo_pairs())

    def echo_pairs(self) -> tuple[tuple[str, str], ...]:
        """What `echo` sends, once (afterwards nothing): the request id, the upstream milliseconds so far."""
        if self.echoed:
            return ()
        self.echoed = True
        self.overhead = self.observation.overhead_seconds()
        upstream_ms = f"{self.observation.upstream_seconds * 1000:.3f}"
        return ((REQUEST_ID_HEADER, self.rid), (UPSTREAM_MS_METADATA, upstream_ms), *self.extra)

    def finish(self, *, interrupted: bool = False) -> None:
        """Metrics, span and access line, once (a stream's end, or its call's done callback)."""
        if self.finished:
            return
        self.finished = True
        context = self._context
        code = context.code() or grpc.StatusCode.OK
        if (interrupted or context.cancelled()) and code == grpc.StatusCode.OK:
            code = grpc.StatusCode.CANCELLED
        if not isinstance(code, grpc.StatusCode):  # an int set by a handler; never ours
            code = status_code(code)
        observation = self.observation
        elapsed = observation.elapsed()
        overhead = observation.overhead_seconds() if self.overhead is None else self.overhead
        if metrics.enabled:
            _record(self, code, elapsed, overhead)
        if self.span is not None:
            self.span.set_attribute(conventions.RPC_GRPC_STATUS_CODE, code.value[0])
            if code in _SERVER_FAULTS:
                tracing.fail(self.span, code.name)
            self.span.end()
        line: dict[str, object] = {
            "method": self.method,
            "code": code.name,
            "ms": round(elapsed * 1000, 1),
            "overhead_ms": round(overhead * 1000, 3),
        }
        if observation.model:
            line.update(
                model=observation.model,
                input_tokens=observation.input_tokens,
                output_tokens=observation.output_tokens,
                cost_usd=round(observation.cost_usd, 10),
            )
        log.info("rpc", extra=line)


def _record(rpc: _Rpc, code: grpc.StatusCode, elapsed: float, overhead: float) -> None:
    route = rpc.method
    kind = metrics.error_type(code, rpc.observation.reason)
    series(metrics.REQUESTS, "grpc", route, code.name, kind).inc()
    series(metrics.REQUEST_DURATION, "grpc", route).observe(elapsed)
    series(metrics.REQUEST_OVERHEAD, "grpc", route).observe(overhead)
    _IN_FLIGHT.dec()
    if rpc.streaming:
        _OPEN_STREAMS.dec()
    if metrics.key_label and (key := logs.key_id.get()):
        metrics.KEY_REQUESTS.labels(key).inc()


def _server_span(context: grpc.aio.ServicerContext, method: str) -> Span | None:
    """The call's SERVER span, child of the trace context its caller sent (the gateway's, a client's)."""
    name = method.lstrip("/")
    service, _, rpc_method = name.partition("/")
    return tracing.start_span(
        name,
        kind=SpanKind.SERVER,
        parent=tracing.extract(context.invocation_metadata() or ()),
        attributes={
            conventions.RPC_SYSTEM: "grpc",
            conventions.RPC_SERVICE: service,
            conventions.RPC_METHOD: rpc_method,
        },
    )


class ErrorInterceptor(AsyncServerInterceptor):
    """ApiError → rich status; anything unexpected → INTERNAL with a logged traceback."""

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        try:
            response = method(request, context)
            if inspect.isasyncgen(response):
                return self._stream(response, context, method_name)
            return await response
        except Exception as exc:
            await _abort(context, exc, method_name)

    async def _stream(
        self, responses: AsyncIterator[Any], context: grpc.aio.ServicerContext, method_name: str
    ) -> AsyncIterator[Any]:
        try:
            async for response in responses:
                yield response
        except Exception as exc:
            await _abort(context, exc, method_name)


class Malformed:
    """A single request message whose bytes do not parse, as its handler chain receives it.

    grpc deserializes a unary request before any interceptor runs, and a deserializer that raises
    there makes grpc answer UNKNOWN and log a traceback. So the deserializer hands this on instead,
    and BoundsInterceptor (after authentication) refuses it as INVALID_ARGUMENT.
    """

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def error(self) -> InvalidArgument:
        return malformed(self.type_name)


def malformed(type_name: str) -> InvalidArgument:
    return InvalidArgument(
        None, f"the request is not a valid {type_name} message (protobuf)", reason=MALFORMED_REQUEST
    )


def _tolerant(deserializer: Callable[[bytes], Any], *, streaming: bool) -> Callable[[bytes], Any]:
    cls = getattr(deserializer, "__self__", None)
    descriptor = getattr(cls, "DESCRIPTOR", None)
    type_name = getattr(descriptor, "full_name", "request")

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:
            if streaming:
                # A request stream is read by its handler: the error surfaces there, in the handler
                # chain, and becomes a status like any other.
                raise malformed(type_name) from None
            return Malformed(type_name)

    return deserialize


class RequestParsingInterceptor(grpc.aio.ServerInterceptor):
    """Every method's request deserializer, made to report bytes that do not parse (see Malformed)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        tolerant = _tolerant(handler.request_deserializer, streaming=handler.request_streaming)
        replaced: grpc.RpcMethodHandler = handler._replace(request_deserializer=tolerant)
        return replaced


class BoundsInterceptor(AsyncServerInterceptor):
    """A single request message against its `(aibattle.v1.bounds)`, before the handler sees it.

    Request streams are the handler's to check, frame by frame: a bidi call answers a bad frame
    and goes on (Converse's `rejected`), which only the handler knows how to do.
    """

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        if isinstance(request, Malformed):
            raise request.error()
        if isinstance(request, Message):
            bounds.check(request)
        response = method(request, context)
        return response if inspect.isasyncgen(response) else await response


async def _abort(context: grpc.aio.ServicerContext, exc: Exception, method_name: str) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc  # already a status (health, reflection, or context.abort in a handler)
    if isinstance(exc, ApiError):
        status = exc.to_status()
        requests.note_reason(exc.reason)
    else:
        errlog.exception("unhandled error", extra={"method": method_name})
        status = internal_error(logs.request_id.get()).to_status()
        requests.note_reason(INTERNAL.name)
    rpc = _current.get()
    grpc_status = rpc_status.to_status(status)
    trailing = tuple(grpc_status.trailing_metadata)
    if rpc is not None and not rpc.echoed:
        # Before the status, so a failed call still carries its request id (after it, too late); or
        # with it, in the trailers the caller asked for (abort replaces any set before).
        if rpc.trailers:
            trailing += rpc.echo_pairs()
        else:
            with contextlib.suppress(Exception):
                await rpc.echo()
    await context.abort(grpc_status.code, grpc_status.details, trailing)
