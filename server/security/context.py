"""The caller of the call being served: set by the auth interceptor, read wherever policy applies.

A context variable, so the model registry, the store and the metering around provider calls see the
caller without it being passed through every layer, and a background run started by a call (a
conversation's turns, a reasoning session) keeps acting for the key that started it. Work started by
the server itself (recovery at start-up) has no caller and no limits.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from common.errors import PermissionDenied, clip, shown
from server.security.keys import check_usable

if TYPE_CHECKING:
    from server.security.limits import Limiter
    from server.storage import KeyStore


@dataclass(frozen=True)
class Caller:
    """Who calls: a key's id (the owner of what it creates), its models and its limits."""

    key_id: str
    """Owner of the resources it creates; "" when the server runs open (no admin key)."""
    admin: bool = False
    allowed_models: frozenset[str] = frozenset()
    """Empty: every model."""
    rpm: int = 0
    tpm: int = 0
    max_concurrent_streams: int = 0
    budget_usd: float = 0.0
    spent_usd: float = 0.0
    """Spent before this process first saw the key (the limiter's budget starts from it)."""
    limiter: Limiter | None = field(default=None, compare=False)
    keys: KeyStore | None = field(default=None, compare=False)

    @property
    def limited(self) -> bool:
        return self.limiter is not None and not self.admin

    def may_use(self, model_id: str) -> bool:
        return self.admin or not self.allowed_models or model_id in self.allowed_models


ANONYMOUS = Caller(key_id="")
"""Every caller when the server runs open: one owner, no limits."""

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def current() -> Caller | None:
    """The caller of the call being served, None for the server's own work."""
    return _caller.get()


def set_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    return _caller.set(caller)


def reset_caller(token: contextvars.Token[Caller | None]) -> None:
    _caller.reset(token)


def may_use(model_id: str) -> bool:
    caller = current()
    return caller is None or caller.may_use(model_id)


def check_model(model_id: str) -> None:
    """PERMISSION_DENIED naming the model when the caller's key may not use it."""
    if not may_use(model_id):
        raise PermissionDenied(
            "MODEL_NOT_ALLOWED",
            f"this API key may not use model {shown(model_id)}",
            metadata={"model": clip(model_id)},
        )


async def check_still_usable(caller: Caller) -> None:
    """A long-lived call (a Converse socket, a conversation's or session's background run) outlives the
    check made when it began: its key may have been revoked or have expired since. Checked again before
    each further request it carries and each model call it makes (one primary-key read)."""
    if caller.keys is None or caller.admin or not caller.key_id:
        return
    check_usable(await caller.keys.get_key(caller.key_id), caller.key_id)


async def admit_request() -> None:
    """One more request carried by a call that carries many (a Converse frame): the key is checked
    again and the request counts against its rpm, as a separate call's would."""
    caller = current()
    if caller is None:
        return
    await check_still_usable(caller)
    if caller.limited and caller.limiter is not None:
        await caller.limiter.take_request(caller)
