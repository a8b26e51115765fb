"""In-process dispatch, the server's half: a gRPC server's method handlers behind its interceptor chain,
found without the network (grpc-gateway's RegisterXHandlerServer).

`Dispatcher` records the handlers the generated `add_XServicer_to_server` functions (and health,
reflection) register on a grpc.aio server, and `handler()` finds one the way grpc.aio does for a call
that arrives over the network: each interceptor's `intercept_service`, in order, ending in the
registered handlers. So a call dispatched here passes the same chain as a network call, and no policy
exists on one path only. The gateway's `gateway.inprocess` runs what it finds (the ServicerContext, the
call objects); `server/__main__.py` hands one to the other.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, Protocol

import grpc

Metadata = tuple[tuple[str, str | bytes], ...]


class CallDetails(NamedTuple):
    """grpc.HandlerCallDetails of a call dispatched in-process."""

    method: str
    invocation_metadata: Metadata


class Call(Protocol):
    """A call dispatched in-process, as the dispatcher tracks it (gateway.inprocess.InProcessCall)."""

    def shut_down(self) -> None:
        """End the call UNAVAILABLE, its handler cancelled (what a stopping grpc.aio server does)."""

    async def finished(self) -> None: ...


class Dispatcher:
    """A server's registered method handlers behind its interceptors (`interceptors`, in the order
    the grpc.aio server was given them); `max_message_bytes`: the server's message limit, both ways."""

    def __init__(
        self, interceptors: Sequence[grpc.aio.ServerInterceptor], *, max_message_bytes: int = -1
    ) -> None:
        self.interceptors = tuple(interceptors)
        self.max_message_bytes = max_message_bytes
        #: What each call's context starts from (a copy per call): the server's, as where grpc.aio
        #: runs its calls, never the caller's.
        self.context = contextvars.copy_context()
        #: Calls running now; `stop` lets them finish, then cancels the rest, as grpc.aio's stop does.
        self.calls: set[Call] = set()
        #: Stopping: no new call is taken (UNAVAILABLE, as a server that stopped listening).
        self.stopping = False
        self._generic: list[grpc.GenericRpcHandler] = []
        self._registered: dict[str, grpc.RpcMethodHandler] = {}

    def recording(self, server: Any) -> Any:
        """`server`, recording here the handlers registered on it (pass it to add_XServicer_to_server)."""
        return _Recorder(server, self)

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        for name, handler in handlers.items():
            self._registered[f"/{service}/{name}"] = handler

    async def stop(self, grace: float | None) -> None:
        """Take no new call; give those running `grace` seconds (None: as long as they take), then
        cancel the rest and wait for their handlers to end (before the server closes what they use)."""
        self.stopping = True
        running = [asyncio.ensure_future(call.finished()) for call in self.calls]
        if running and (grace is None or grace > 0):
            await asyncio.wait(running, timeout=grace)
        for call in list(self.calls):
            call.shut_down()
        await asyncio.gather(
            *running, *(call.finished() for call in list(self.calls)), return_exceptions=True
        )

    async def handler(self, method: str, metadata: Metadata) -> grpc.RpcMethodHandler | None:
        """The handler a call to `method` runs, wrapped by every interceptor; None: no such method."""
        details = CallDetails(method, metadata)
        return await self._intercept(0, details)

    async def _intercept(self, index: int, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        if index == len(self.interceptors):
            return self._find(details)
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]
        continuation = functools.partial(self._intercept, index + 1)
        handler: grpc.RpcMethodHandler | None = await self.interceptors[index].intercept_service(
            continuation, details
        )
        return handler

    def _find(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._registered.get(details.method)
        if handler is not None:
            return handler
        for generic in self._generic:
            handler = generic.service(details)
            if handler is not None:
                return handler
        return None


class _Recorder:
    """A grpc.aio server that also tells a Dispatcher of the handlers registered on it."""

    def __init__(self, server: Any, dispatcher: Dispatcher) -> None:
        self._server = server
        self._dispatcher = dispatcher

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers(handlers)
        self._dispatcher.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self._server.add_registered_method_handlers(service, handlers)
        self._dispatcher.add_registered_method_handlers(service, handlers)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)
