"""Server interceptors (grpc-interceptor): request context and logging, error mapping, bounds.

Order matters: RequestContextInterceptor is outermost so the request id is set before
anything logs and the access log sees the final status; ErrorInterceptor is the one
place where exceptions become statuses; AuthInterceptor (server/security) then knows the
caller; BoundsInterceptor, innermost, refuses requests outside the bounds their schema declares
before any handler runs.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import Message
from grpc_interceptor.server import AsyncServerInterceptor
from grpc_status import rpc_status

from common import bounds
from common.errors import MALFORMED_REQUEST, ApiError, InvalidArgument, internal_error
from server import logs

log = logging.getLogger("aibattle.access")
errlog = logging.getLogger("aibattle.errors")

REQUEST_ID_HEADER = "x-request-id"
_MAX_REQUEST_ID = 128


def _incoming_request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_HEADER and isinstance(value, str) and 0 < len(value) <= _MAX_REQUEST_ID:
            return value
    return uuid.uuid4().hex


class RequestContextInterceptor(AsyncServerInterceptor):
    """Takes or makes the request id, echoes it as initial metadata, writes one access-log line."""

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        rid = _incoming_request_id(context)
        token = logs.request_id.set(rid)
        await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
        started = time.perf_counter()
        try:
            response = method(request, context)
            if inspect.isasyncgen(response):
                return self._stream(response, context, method_name, started, rid)
            result = await response
            self._log(context, method_name, started)
            return result
        except BaseException:
            self._log(context, method_name, started)
            raise
        finally:
            logs.request_id.reset(token)

    async def _stream(
        self,
        responses: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        method_name: str,
        started: float,
        rid: str,
    ) -> AsyncIterator[Any]:
        # Set, never reset: grpc runs each call in a task (and context) of its own, and a generator
        # abandoned mid-stream is finalized later in some other context, where a reset raises
        # ValueError. Set again before the access line for the same reason.
        logs.request_id.set(rid)
        interrupted = False
        try:
            async for response in responses:
                yield response
        except (asyncio.CancelledError, GeneratorExit):
            # The client went away (or its deadline passed) mid-stream: grpc cancels our task or
            # closes the generator, and context.code() stays unset.
            interrupted = True
            raise
        finally:
            logs.request_id.set(rid)
            self._log(context, method_name, started, interrupted=interrupted)

    @staticmethod
    def _log(
        context: grpc.aio.ServicerContext, method_name: str, started: float, *, interrupted: bool = False
    ) -> None:
        code = context.code() or grpc.StatusCode.OK
        if (interrupted or context.cancelled()) and code == grpc.StatusCode.OK:
            code = grpc.StatusCode.CANCELLED
        name = code.name if isinstance(code, grpc.StatusCode) else str(code)
        log.info(
            "rpc",
            extra={
                "method": method_name,
                "code": name,
                "ms": round((time.perf_counter() - started) * 1000, 1),
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
    else:
        errlog.exception("unhandled error", extra={"method": method_name})
        status = internal_error(logs.request_id.get()).to_status()
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
