"""Who calls: the `Caller` a key (or the open server) acts as, and how it reaches the code that serves it.

The auth interceptor authenticates each RPC and hands its caller to the handler in a context variable
(grpc.aio has no other per-call slot to put it in); each handler reads it once, with `current()`, and
from there the caller is an argument: to orchestration (which owns what, which run acts for whom), to
the registry (which models it may use) and so to the metering of its model calls. A background run
keeps its caller in its `Run`. `None` is the server's own work (recovery of orphaned runs whose owner
is unknown): every resource, every model, no limits.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

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
    """The caller the auth interceptor authenticated for the call being served (handlers only)."""
    return _caller.get()


def set_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    return _caller.set(caller)


def reset_caller(token: contextvars.Token[Caller | None]) -> None:
    _caller.reset(token)


async def check_still_usable(caller: Caller) -> None:
    """A long-lived call (a Converse socket, a conversation's or session's background run) outlives the
    check made when it began: its key may have been revoked or have expired since. Checked again before
    each further request it carries and each model call it makes (one primary-key read)."""
    if caller.keys is None or caller.admin or not caller.key_id:
        return
    check_usable(await caller.keys.get_key(caller.key_id), caller.key_id)


async def admit_request(caller: Caller | None) -> None:
    """One more request carried by a call that carries many (a Converse frame): the key is checked
    again and the request counts against its rpm, as a separate call's would."""
    if caller is None:
        return
    await check_still_usable(caller)
    if caller.limited and caller.limiter is not None:
        await caller.limiter.take_request(caller)
