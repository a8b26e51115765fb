"""Around every model call: hard limits, then the caller's token rate and budget.

The server composes the registry with `Metering.bind` (server/app.py): each chain the registry hands
out has its providers wrapped in a `MeteredProvider` bound to the caller it was asked for, so every
model call (a completion, a conversation's turn, a reasoning step, each fallback) passes here, charged
to that caller.

A prompt estimated longer than the model's context_length is refused for every provider
(CONTEXT_LENGTH_EXCEEDED), before anything is reserved or sent.

Budget and token rate (exact under concurrency): before the call, its worst case is reserved: prompt
tokens bounded by the prompt's UTF-8 bytes (a token covers at least one byte) plus an allowance for what
a chat template adds (role markers, a default system prompt such as SmolLM2's), and by the model's
context_length only where the provider enforces it on the real count (the local model), plus
max_tokens; tokens from the tpm bucket, dollars at the model's pricing. A call that the budget cannot
cover with every call in flight counted at its worst case is refused before it starts,
so N simultaneous first requests never spend more than the budget. After the call the reservation is
settled at the cost of its reported usage (and the tokens it did not use go back to the bucket); a
provider that reports more than the bound allows is logged, and charged what it reports. A call that
fails before its first token costs nothing; one cut short after it (usage unknown) is charged its
reservation.

Embeddings (`MeteredEmbedder.embed`) pass the same checks and accounting, their usage being the tokens
read: the texts' characters bounded by max_prompt_chars, each text's estimate by context_length, their
worst case (UTF-8 bytes, plus a token or two of BOS/EOS per text) reserved, and the reported tokens
charged; a call that fails or is cancelled returns no vector and costs nothing.

A run of several calls (a collaboration model's session) first holds its own worst case from the budget
as one reservation (`RunHold.take`: refused as one call would be, before any model is called); its
calls then reserve from that hold instead of the budget (past it, from the budget as above) and are
charged to it, and when the run ends the hold is settled at what they cost together (`RunHold.release`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass, replace

from common.errors import CONTEXT_LENGTH_EXCEEDED, PROMPT_TOO_LONG, InvalidArgument
from common.observability import requests
from server.providers.base import ChatRequest, Embedder, Embeddings, Finish, Provider, StreamItem, Usage
from server.providers.text import estimate_prompt_tokens, estimate_tokens
from server.security import context
from server.security.context import Caller
from server.security.limits import KeyLimits, Limiter
from server.security.observed import ModelCall
from server.settings import ModelConfig

log = logging.getLogger(__name__)

#: Tokens a chat template may add per message (role markers), and per request (a default system
#: prompt: SmolLM2's is about 20 tokens; Ollama Modelfiles may add longer ones, hence the margin).
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS = 128
#: Tokens a tokenizer may add around each text it embeds (BOS, EOS).
SPECIAL_TOKENS_PER_TEXT = 2


#: Providers that count a prompt's real tokens against the model's context before anything is spent
#: (llama.cpp in-process): only their prompts are bounded by context_length. A remote upstream's own
#: context may be larger than the one configured, and it bills whatever it was sent.
COUNTS_CONTEXT_ITSELF = frozenset({"local"})


def prompt_bound(model: ModelConfig, request: ChatRequest) -> int:
    """An upper bound of the prompt's tokens (see the module docstring)."""
    if any(m.attachments for m in request.messages):
        return model.context_length  # images and audio are not bounded by their bytes
    size = sum(len(m.content.encode()) + TEMPLATE_TOKENS_PER_MESSAGE for m in request.messages)
    if model.provider in COUNTS_CONTEXT_ITSELF:
        return min(model.context_length, size + TEMPLATE_TOKENS)
    return size + TEMPLATE_TOKENS


def texts_bound(model: ModelConfig, texts: list[str]) -> int:
    """An upper bound of the tokens an embedding call reads (see the module docstring)."""
    sizes = (len(text.encode()) + SPECIAL_TOKENS_PER_TEXT for text in texts)
    if model.provider in COUNTS_CONTEXT_ITSELF:
        return sum(min(model.context_length, size) for size in sizes)
    return sum(sizes)


def check_texts(model: ModelConfig, texts: list[str], *, max_prompt_chars: int) -> None:
    """The hard limits of `check_request`, for the texts of an embedding call."""
    chars = sum(len(text) for text in texts)
    if chars > max_prompt_chars:
        raise InvalidArgument(
            "input",
            f"the input has {chars} characters; at most {max_prompt_chars} are accepted",
            reason=PROMPT_TOO_LONG,
        )
    for i, text in enumerate(texts):
        if (estimate := estimate_tokens(text)) > model.context_length:
            raise InvalidArgument(
                f"input[{i}]",
                f"is about {estimate} tokens; model {model.id!r} reads at most {model.context_length}",
                reason=CONTEXT_LENGTH_EXCEEDED,
            )


def check_request(model: ModelConfig, request: ChatRequest, *, max_prompt_chars: int) -> None:
    """Hard limits that hold for every caller and every provider."""
    if request.max_tokens > model.context_length:
        raise InvalidArgument(
            "max_tokens",
            f"{request.max_tokens} exceeds model {model.id!r}'s context of {model.context_length} tokens",
        )
    chars = sum(len(m.content) for m in request.messages)
    if chars > max_prompt_chars:
        raise InvalidArgument(
            "prompt",
            f"the prompt has {chars} characters; at most {max_prompt_chars} are accepted",
            reason=PROMPT_TOO_LONG,
        )
    # Refused here rather than left to the upstream: one that accepts a longer prompt than configured
    # bills all of it (the local model also refuses by its real count, with the same reason).
    estimate = estimate_prompt_tokens(request.messages)
    if estimate > model.context_length:
        raise InvalidArgument(
            None,
            f"the prompt is about {estimate} tokens; the context of model {model.id!r} holds"
            f" {model.context_length}",
            reason=CONTEXT_LENGTH_EXCEEDED,
        )


class Metering:
    """The metering of every model call, as the server composes it into the registry."""

    def __init__(self, *, max_prompt_chars: int) -> None:
        self.max_prompt_chars = max_prompt_chars

    def bind(self, provider: Provider, caller: Caller | None) -> Provider:
        """`provider` as `caller`'s model calls see it (None: the server's own work, unlimited)."""
        # Only a provider that embeds is wrapped in one that says it does (isinstance(_, Embedder)).
        wrapper = MeteredEmbedder if isinstance(provider, Embedder) else MeteredProvider
        return wrapper(provider, caller, max_prompt_chars=self.max_prompt_chars)


class MeteredProvider:
    """A provider whose calls, in the name of one caller, pass the checks and accounting of the module
    docstring."""

    def __init__(self, inner: Provider, caller: Caller | None, *, max_prompt_chars: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.caller = caller
        self._max_prompt_chars = max_prompt_chars

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        caller = self.caller
        call = ModelCall(model, request, "" if caller is None else caller.key_id)
        try:
            check_request(model, request, max_prompt_chars=self._max_prompt_chars)
            if caller is not None:
                await context.check_still_usable(caller)  # a background run outlives its key's revocation
            held = None
            if caller is not None and caller.limiter is not None and not caller.admin:
                worst = Usage(prompt_bound(model, request), completion_tokens=request.max_tokens)
                held = await _Reservation.take(caller, caller.limiter, model, worst)
            try:
                async with aclosing(self.inner.stream(model, request)) as items:
                    while (item := await call.next(items)) is not None:
                        yield item
            finally:
                if held is not None:
                    # What the key is charged is what the metrics count, a call cut short included.
                    call.charged_usd = await held.settle(call.finish, started=call.started)
        except BaseException as exc:
            call.failed(exc)
            raise
        finally:
            call.end()


class MeteredEmbedder(MeteredProvider):
    """A `MeteredProvider` over a provider that embeds: its embedding calls are metered too."""

    async def embed(
        self, model: ModelConfig, texts: list[str], *, dimensions: int | None, deadline: float | None
    ) -> Embeddings:
        inner = self.inner
        assert isinstance(inner, Embedder)  # Metering.bind's choice
        check_texts(model, texts, max_prompt_chars=self._max_prompt_chars)
        caller = self.caller
        held = None
        if caller is not None:
            await context.check_still_usable(caller)
            if caller.limiter is not None and not caller.admin:
                worst = Usage(prompt_tokens=texts_bound(model, texts))
                held = await _Reservation.take(caller, caller.limiter, model, worst)
        result: Embeddings | None = None
        before = time.perf_counter()
        try:
            result = await inner.embed(model, texts, dimensions=dimensions, deadline=deadline)
        finally:
            requests.add_upstream(time.perf_counter() - before)
            charged = None
            if held is not None:
                finish = None if result is None else Finish(Usage(prompt_tokens=result.prompt_tokens))
                # No vector without the whole answer: a call that fails or is cut short costs nothing.
                charged = await held.settle(finish, started=False)
        tokens = result.prompt_tokens
        cost = charged if charged is not None else model.cost_usd(tokens, 0)
        requests.note_usage(model.id, str(model.provider), tokens, 0, cost)
        return result


@dataclass
class _Reservation:
    """A call's worst case, held from a key's budget and token rate until the call settles it."""

    caller: Caller
    limiter: Limiter
    model: ModelConfig
    worst: Usage
    reserved: float
    tokens: int

    @classmethod
    async def take(cls, caller: Caller, limiter: Limiter, model: ModelConfig, worst: Usage) -> _Reservation:
        reserved = model.cost_usd(worst.prompt_tokens, worst.completion_tokens)
        await limiter.reserve(caller, reserved)
        try:
            tokens = await limiter.reserve_tokens(caller, worst.total_tokens)
        except BaseException:
            await limiter.settle(caller, reserved, 0.0)
            raise
        return cls(caller, limiter, model, worst, reserved, tokens)

    async def settle(self, finish: Finish | None, *, started: bool) -> float:
        """At the cost of the call's reported usage; cut short after its first token (usage unknown),
        at its reservation; failed before it, nothing. Returns what was charged."""
        caller, model, worst = self.caller, self.model, self.worst
        charged = finish.usage if finish is not None else worst if started else None
        cost = 0.0 if charged is None else model.cost_usd(charged.prompt_tokens, charged.completion_tokens)
        if charged is not None and charged.prompt_tokens > worst.prompt_tokens:
            log.warning(
                "usage above the reserved bound",
                extra={
                    "model": model.id,
                    "prompt_tokens": charged.prompt_tokens,
                    "bound": worst.prompt_tokens,
                },
            )
        await self.limiter.settle(caller, self.reserved, cost)
        await self.limiter.settle_tokens(caller, self.tokens, 0 if charged is None else charged.total_tokens)
        if cost and caller.keys is not None:
            try:
                await caller.keys.add_key_spend(caller.key_id, cost)
            except Exception:  # the in-memory count holds; the record catches up on the next call
                log.exception("could not record spend", extra={"key_id": caller.key_id})
        return cost


class RunHold:
    """A run's worst case in dollars, held from its caller's budget as one reservation; see the module
    docstring. Its calls draw from it (`draw`, `settled`) and are charged to it; the reservation is
    settled once, at what they cost together, when the run ends (`release`). What a call needs past it
    is a reservation of its own in the limiter, settled with the call: every reservation the limiter
    sees is settled by its own amount (as the Redis limiter matches them)."""

    def __init__(self, caller: Caller, limiter: Limiter, usd: float) -> None:
        self.caller = caller
        self._limiter = limiter
        self.usd = usd
        self.charged = 0.0
        self._drawn: list[tuple[float, float]] = []
        """Calls in flight: what each reserved, and the part of it drawn from the hold."""
        self._released = False

    @classmethod
    async def take(cls, caller: Caller | None, usd: float) -> RunHold | None:
        """Hold `usd` of the caller's budget (BUDGET_EXCEEDED, as for a call, if it cannot be covered);
        None when the caller has no budget to hold from."""
        if caller is None or not caller.limited or not caller.budget_usd:
            return None
        assert caller.limiter is not None  # limited
        await caller.limiter.reserve(caller, usd)
        return cls(caller, caller.limiter, usd)

    def bound(self) -> Caller:
        """The caller as the run's calls see it: their reservations drawn from this hold."""
        return replace(self.caller, limiter=_HeldLimiter(self, self._limiter))

    @property
    def available(self) -> float:
        if self._released:
            return 0.0
        return max(0.0, self.usd - self.charged - sum(part for _, part in self._drawn))

    def draw(self, usd: float) -> float:
        """A call's reservation of `usd`, as much as the hold has of it; returns the rest, which the call
        reserves from the budget itself."""
        part = min(usd, self.available)
        self._drawn.append((usd, part))
        return usd - part

    def undraw(self, usd: float) -> None:
        """A reservation that did not happen after all (its rest was refused)."""
        self._take_back(usd)

    def settled(self, reserved: float, cost: float) -> tuple[float, float]:
        """A call that reserved `reserved` cost `cost`: the hold is charged its part. Returns the call's
        own reservation (what the hold did not give) and the cost left to it."""
        part = self._take_back(reserved)
        own = reserved - part
        charged = min(cost, part) if own else cost  # beyond its bound, still charged (module docstring)
        self.charged += charged
        return own, cost - charged

    def _take_back(self, usd: float) -> float:
        for i, (amount, part) in enumerate(self._drawn):
            if amount == usd:
                del self._drawn[i]
                return part
        return 0.0

    async def release(self) -> None:
        """The hold settled at what its calls cost (once; later calls do nothing)."""
        if self._released:
            return
        self._released = True
        await self._limiter.settle(self.caller, self.usd, self.charged)


class _HeldLimiter:
    """A key's limiter whose budget reservations come from a `RunHold` first (see RunHold)."""

    def __init__(self, hold: RunHold, inner: Limiter) -> None:
        self._hold = hold
        self._inner = inner

    # Rates, streams, spending and health: the key's own.
    async def take_request(self, caller: KeyLimits) -> None:
        await self._inner.take_request(caller)

    async def reserve_tokens(self, caller: KeyLimits, tokens: int) -> int:
        return await self._inner.reserve_tokens(caller, tokens)

    async def settle_tokens(self, caller: KeyLimits, reserved: int, used: int) -> None:
        await self._inner.settle_tokens(caller, reserved, used)

    async def open_stream(self, caller: KeyLimits) -> None:
        await self._inner.open_stream(caller)

    async def close_stream(self, caller: KeyLimits) -> None:
        await self._inner.close_stream(caller)

    def spent(self, caller: KeyLimits) -> float:
        return self._inner.spent(caller)

    async def ping(self) -> bool:
        return await self._inner.ping()

    async def aclose(self) -> None:
        return None  # the key's limiter is the server's to close

    async def reserve(self, caller: KeyLimits, usd: float) -> None:
        rest = self._hold.draw(usd)
        if rest:
            try:
                await self._inner.reserve(caller, rest)
            except BaseException:
                self._hold.undraw(usd)
                raise

    async def settle(self, caller: KeyLimits, reserved: float, cost: float) -> None:
        own, rest = self._hold.settled(reserved, cost)
        if own:
            await self._inner.settle(caller, own, rest)
