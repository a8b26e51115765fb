"""Authentication and per-call limits for every RPC (grpc-interceptor).

Runs inside the error interceptor, so its refusals become statuses like any other error:

* gRPC health is always open (probes); reflection too unless `[security].reflection_requires_key`.
* With no admin key configured the server runs open (on loopback only, see server.config): every
  call acts as one anonymous caller, and KeyService refuses with PERMISSION_DENIED (no admin key).
* Otherwise a call presents `authorization: Bearer <secret>` (or `x-api-key: <secret>`): the admin key,
  or a key from KeyService. Missing, unknown, revoked or expired: UNAUTHENTICATED. KeyService needs
  the admin key: PERMISSION_DENIED.
* A key's requests per minute are counted here, and its response streams held open (server
  streams, Converse) against max_concurrent_streams; model calls are metered in server.security.metering.

The caller is set in a context variable for the handler (and any task it starts); see context.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health
from grpc_interceptor.server import AsyncServerInterceptor

from common.api_keys import presented_secret
from common.errors import (
    ADMIN_KEY_NOT_CONFIGURED,
    ADMIN_KEY_REQUIRED,
    API_KEY_INVALID,
    API_KEY_MISSING,
    PermissionDenied,
    Unauthenticated,
)
from server import logs
from server.security import context as caller_context
from server.security import keys
from server.security.context import ANONYMOUS, Caller
from server.security.limits import Limiter
from server.settings import SecurityConfig
from server.storage import KeyRow, KeyStore

KEY_SERVICE = "aibattle.v1.KeyService"
REFLECTION_SERVICES = frozenset(
    {"grpc.reflection.v1alpha.ServerReflection", "grpc.reflection.v1.ServerReflection"}
)
ADMIN_ID = "admin"
_HOW = "send 'authorization: Bearer <key>' (or 'x-api-key: <key>')"


class AuthInterceptor(AsyncServerInterceptor):
    """See the module docstring."""

    def __init__(self, security: SecurityConfig, keystore: KeyStore, limiter: Limiter) -> None:
        self._admin_key = security.admin_key.get_secret_value()
        self._reflection_open = not security.reflection_requires_key
        self._keys = keystore
        self._limiter = limiter

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: grpc.aio.ServicerContext, method_name: str
    ) -> Any:
        service = method_name.lstrip("/").partition("/")[0]
        caller = await self._authenticate(service, context)
        if caller is None:  # an open service: no caller, no limits
            response = method(request, context)
            return response if inspect.isasyncgen(response) else await response
        if caller.key_id:
            # Not reset: each RPC runs in a context of its own, and its access line comes after this.
            logs.key_id.set(caller.key_id)
        if caller.limited:
            await self._limiter.take_request(caller)
        token = caller_context.set_caller(caller)
        try:
            response = method(request, context)
            if inspect.isasyncgen(response):
                return self._stream(response, caller, context)
            return await response
        finally:
            caller_context.reset_caller(token)

    async def _stream(
        self, responses: AsyncIterator[Any], caller: Caller, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        slot: StreamSlot | None = None
        if caller.limited:
            # Taken here, where the stream is consumed, and given back however the call ends: when the
            # client goes away while grpc is blocked writing, grpc cancels the call's task and abandons
            # this generator suspended at its yield; its finally then runs only when the garbage
            # collector finalizes it (in another task, maybe never soon). The call's done callback
            # does not wait for that.
            await self._limiter.open_stream(caller)
            slot = StreamSlot(functools.partial(self._limiter.close_stream, caller))
            context.add_done_callback(slot.on_done)
        # Set and never reset: grpc runs each call in a task (and context) of its own, and a finalized
        # generator resumes in some other context, where resetting raises ValueError.
        caller_context.set_caller(caller)
        try:
            async for response in responses:
                yield response
        finally:
            if slot is not None:
                await slot.release()

    async def _authenticate(self, service: str, context: grpc.aio.ServicerContext) -> Caller | None:
        if service == health.SERVICE_NAME or (service in REFLECTION_SERVICES and self._reflection_open):
            return None
        if not self._admin_key:
            if service == KEY_SERVICE:
                # Nobody can hold the admin key this service needs, so nobody may call it.
                raise PermissionDenied(
                    ADMIN_KEY_NOT_CONFIGURED,
                    "managing API keys needs the admin key, and none is configured: this server runs "
                    "open (loopback only); set AIBATTLE_ADMIN_KEY (or [security].admin_key) to use keys",
                )
            return ANONYMOUS
        secret = presented_secret(context.invocation_metadata())
        if not secret:
            raise Unauthenticated(API_KEY_MISSING, f"this server needs an API key: {_HOW}")
        if keys.is_admin(secret, self._admin_key):
            return Caller(key_id=ADMIN_ID, admin=True)
        caller = await self._key_caller(secret)
        if service == KEY_SERVICE:
            raise PermissionDenied(ADMIN_KEY_REQUIRED, "managing API keys needs the admin key")
        return caller

    async def _key_caller(self, secret: str) -> Caller:
        key_id = keys.key_id_of(secret)
        row = await self._keys.get_key(key_id) if key_id else None
        # One answer for "no such key" and "wrong secret": the difference would help a guesser.
        if row is None or not keys.same_secret(secret, row.secret_hash):
            raise Unauthenticated(API_KEY_INVALID, f"the API key is not valid: {_HOW}")
        keys.check_usable(row, row.key_id)
        return caller_of(row, self._limiter, self._keys)


def caller_of(row: KeyRow, limiter: Limiter, keystore: KeyStore) -> Caller:
    return Caller(
        key_id=row.key_id,
        allowed_models=frozenset(row.allowed_models),
        rpm=row.rpm,
        tpm=row.tpm,
        max_concurrent_streams=row.max_concurrent_streams,
        budget_usd=row.budget_usd,
        spent_usd=row.spent_usd,
        limiter=limiter,
        keys=keystore,
    )


class StreamSlot:
    """A stream's hold on a count (one of a key's max_concurrent_streams here, one of the server's in
    server.admission), held by one call; `give_back` runs exactly once, on whichever comes first: the
    stream's own end (`release`), or the call's done callback (`on_done`)."""

    __slots__ = ("_give_back",)

    def __init__(self, give_back: Callable[[], Awaitable[None]]) -> None:
        self._give_back: Callable[[], Awaitable[None]] | None = give_back

    async def release(self) -> None:
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            await give_back()

    def on_done(self, _context: object = None) -> None:
        if self._give_back is not None:
            task = asyncio.get_running_loop().create_task(self.release())
            _releasing.add(task)
            task.add_done_callback(_releasing.discard)


# Releases under way; a task nobody references may be garbage-collected before it runs.
_releasing: set[asyncio.Task[None]] = set()
