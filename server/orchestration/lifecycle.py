"""One durable-run lifecycle, the same for conversations and reasoning sessions.

A *run* is a resource's work in the background (a conversation's AI turns, a session's strategy).
This module owns everything about runs that does not depend on what is being run:

* **start**: a new resource is created already leased to its first attempt, in one transaction
  (`Lifecycle.create`); an existing one is taken over by a conditional write (`Lifecycle.claim`) that
  succeeds only if nobody holds a live lease and the state the caller decided from is still the
  current one, so of six concurrent `:resume` calls exactly one wins and the rest get
  FAILED_PRECONDITION. Each attempt has its own runner id (`runs.Runs`).
* **lease and heartbeat**: `runs.Runs` renews the lease while the attempt works and cancels the attempt
  when the lease is lost.
* **commit-and-notify**: `Lifecycle.commit` writes a step's state and events in one transaction, in
  the attempt's name (refused once its lease is lost), then wakes the followers.
* **token batching**: `stream_model` calls a model and commits its deltas in batches (`Deltas`: one
  rule, with a timer flush while the model pauses).
* **the end**: a client's cancel is CANCELLED, the server stopping is INTERRUPTED, an error is FAILED
  with its status (`error_status`: an ApiError as it is, anything else a generic INTERNAL and a
  logged traceback); the resource says how each is recorded (`Resource.ended`).
* **the database going away** (`StoreUnavailable`): the attempt stops without writing anything more, its
  resource left IN_PROGRESS as last committed; once its lease expires, a live process adopts it (this
  one too), so nothing stays "in progress" with nobody running it, and nothing committed is redone.
* **recovery**: at start-up and every `sweep_seconds`, a resource left IN_PROGRESS whose lease expired
  (its runner died) is adopted and continued from its last committed step (`Resource.adopt`), acting
  for the key that owns it; with `resume_orphans` off it is marked INTERRUPTED instead.

Every entry point names its caller (`server.security.context.Caller`): a resource is created owned by
the caller's key, and only that key finds it again (another key's resource answers NOT_FOUND, exactly
as a missing one); a run acts for its caller (`Run.caller`: models, limits, budget). `None` is the
server's own work, which sees every resource.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Protocol

from google.rpc import status_pb2

from aibattle.v1 import common_pb2
from common.errors import (
    RUNNING_ELSEWHERE,
    ApiError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    internal_error,
)
from common.observability import metrics, tracing
from server.orchestration.runs import Run, Runs
from server.orchestration.telemetry import LEASE_LOST, RunWatch, status_name
from server.pagination import keyset_page
from server.providers.base import ChatRequest, Delta, Finish, StreamItem, ToolCall, Usage
from server.providers.registry import ModelRegistry
from server.providers.resilience import Answering, resilient_stream
from server.providers.tools import ToolCalls
from server.security.context import Caller
from server.settings import ModelConfig
from server.storage import EventHub, Store, Stored, follow
from server.storage.base import LeaseLost, StoreUnavailable

log = logging.getLogger(__name__)

IN_PROGRESS = common_pb2.RUN_STATUS_IN_PROGRESS
CANCELLED = common_pb2.RUN_STATUS_CANCELLED
FAILED = common_pb2.RUN_STATUS_FAILED
INTERRUPTED = common_pb2.RUN_STATUS_INTERRUPTED
SWEEP_SECONDS = 5.0

Work = Callable[[Run], Awaitable[None]]


def owner_of(caller: Caller | None) -> str | None:
    """The owner whose resources a caller sees: its key's id; None (every owner's) for the server."""
    return None if caller is None else caller.key_id


class Resource(Protocol):
    """What a kind of resource tells the lifecycle."""

    kind: str

    def ended(
        self, body: bytes, status: common_pb2.RunStatus.ValueType, error: status_pb2.Status | None
    ) -> tuple[bytes, list[bytes]]:
        """The stored body with the run's end recorded, and the events that announce it."""
        ...

    async def adopt(self, run: Run, stored: Stored) -> None:
        """Continue an orphaned run (already claimed for `run`) from its last committed step."""
        ...

    def strategy(self, body: bytes) -> str:
        """How a run of this stored body works, for its metrics and span: a reasoning session's
        collaboration strategy, a conversation's mode."""
        ...


def running_elsewhere(kind: str, resource_id: str) -> ApiError:
    """The one answer for "someone else runs it", whatever the resource and the verb."""
    return FailedPrecondition(
        RUNNING_ELSEWHERE,
        f"{kind} {resource_id!r} is being run by another request or server; wait for it, or cancel it",
    )


def error_status(exc: BaseException, **log_extra: str) -> status_pb2.Status:
    """What a failed run records and its followers see (see the module docstring)."""
    if isinstance(exc, ApiError):
        return exc.to_status()
    log.error("run failed", exc_info=exc, extra=log_extra)
    return internal_error().to_status()


class Lifecycle:
    """The runs of this process's resources, and recovery of everyone's; see the module docstring."""

    def __init__(
        self,
        *,
        store: Store,
        hub: EventHub,
        runs: Runs,
        resume_orphans: bool = True,
        sweep_seconds: float = SWEEP_SECONDS,
        caller_for: Callable[[str], Awaitable[Caller | None]] | None = None,
    ) -> None:
        """`caller_for(owner)` is the caller an adopted run acts for: the key that owns the resource (its
        limits, models and budget apply as to the run it continues); None, or no `caller_for`: the
        server itself."""
        self.store = store
        self.hub = hub
        self.runs = runs
        self.resume_orphans = resume_orphans
        self.sweep_seconds = sweep_seconds
        self._caller_for = caller_for
        self._resources: list[Resource] = []
        self._sweeper: asyncio.Task[None] | None = None

    def register(self, resource: Resource) -> None:
        self._resources.append(resource)

    # ---- starting runs

    async def create(
        self,
        resource: Resource,
        resource_id: str,
        caller: Caller | None,
        *,
        status: int,
        body: bytes,
        events: Sequence[bytes],
        work: Work | None,
    ) -> int:
        """Store a new resource, owned by `caller`, with its first events; with `work`, leased to it and
        started in the caller's name."""
        lease = self.runs.lease() if work is not None else None
        watch = self._watch(resource, resource_id, body) if work is not None else None
        owner = owner_of(caller) or ""
        try:
            last = await self.store.create(
                resource.kind,
                resource_id,
                owner=owner,
                status=status,
                body=body,
                events=events,
                lease=lease,
                traceparent=None if watch is None else watch.traceparent,
            )
        except BaseException:
            if watch is not None:
                watch.abandon()
            raise
        self.hub.notify(resource_id, last)
        if work is not None and lease is not None and watch is not None:
            self.runs.start(resource_id, lease, self._supervised(resource, work, watch), caller)
        return last

    async def claim(
        self,
        resource: Resource,
        stored: Stored,
        caller: Caller | None,
        *,
        status: int,
        body: bytes,
        events: Sequence[bytes],
        work: Work | None,
    ) -> int:
        """Record a new state decided from `stored` (which `caller` found), and take the run if `work`
        is given, in the caller's name: exactly one of concurrent callers wins; the others get
        FAILED_PRECONDITION (RUNNING_ELSEWHERE)."""
        lease = self.runs.lease()
        # A new run links back to the trace of the one before it (a resume, an adoption, a conversation
        # run again).
        watch = None if work is None else self._watch(resource, stored.resource_id, body, stored.traceparent)
        try:
            last = await self.store.claim(
                stored.resource_id,
                lease,
                expected_sequence=stored.last_sequence,
                status=status,
                body=body,
                events=events,
                now=time.time(),
                traceparent=None if watch is None else watch.traceparent,
            )
        except BaseException:
            if watch is not None:
                watch.abandon()
            raise
        if last is None:
            if watch is not None:
                watch.abandon()
            raise running_elsewhere(resource.kind, stored.resource_id)
        self.hub.notify(stored.resource_id, last)
        if work is None or watch is None:
            await self.store.release(stored.resource_id, lease.runner_id)
        else:
            self.runs.start(stored.resource_id, lease, self._supervised(resource, work, watch), caller)
        return last

    async def commit(
        self, run: Run | None, resource_id: str, *, status: int, body: bytes | None, events: Sequence[bytes]
    ) -> int:
        """One step in one transaction, then the followers woken. In a run's name (`run`), refused
        with LeaseLost once another runner holds the lease. `body` None: only events (token deltas),
        the stored state unchanged. Shielded: a cancellation arriving
        mid-commit must not leave the step half done; the run's cleanup then sees it committed."""
        last = await asyncio.shield(
            self.store.commit(
                resource_id,
                status=status,
                body=body,
                events=events,
                runner_id=None if run is None else run.runner_id,
            )
        )
        self.hub.notify(resource_id, last)
        if run is not None:
            run.last_status = status
        return last

    # ---- ending runs

    def _watch(
        self, resource: Resource, resource_id: str, body: bytes, earlier: str | None = None
    ) -> RunWatch:
        strategy = resource.strategy(body) if metrics.enabled or tracing.enabled() else ""
        return RunWatch(resource.kind, resource_id, strategy, earlier_traceparent=earlier)

    def _supervised(self, resource: Resource, work: Work, watch: RunWatch) -> Work:
        async def supervised(run: Run) -> None:
            outcome = LEASE_LOST
            try:
                with watch.working():
                    try:
                        await work(run)
                        outcome = status_name(run.last_status)
                    except asyncio.CancelledError:
                        if not run.lease_lost:
                            ending = CANCELLED if run.cancel_requested else INTERRUPTED
                            outcome = status_name(ending)
                            await self._end(resource, run, ending)
                        raise
                    except LeaseLost:
                        log.warning(
                            "lease lost; another runner continues", extra={"resource_id": run.resource_id}
                        )
                    except StoreUnavailable:
                        outcome = status_name(INTERRUPTED)
                        log.warning(
                            "the database went away; the run stops and is adopted once it is back and the"
                            " lease has expired",
                            extra={"resource_id": run.resource_id},
                        )
                    except Exception as exc:
                        outcome = status_name(FAILED)
                        watch.failed(exc)
                        error = error_status(exc, resource_id=run.resource_id)
                        await self._end(resource, run, FAILED, error)
            finally:
                watch.ended(outcome)

        return supervised

    async def _end(
        self,
        resource: Resource,
        run: Run,
        status: common_pb2.RunStatus.ValueType,
        error: status_pb2.Status | None = None,
    ) -> None:
        try:
            stored = await self.store.get(run.resource_id, kind=resource.kind)
            if stored is None or stored.status != IN_PROGRESS:
                return  # deleted, or the run already recorded where it rests
            body, events = resource.ended(stored.body, status, error)
            await self.commit(run, run.resource_id, status=status, body=body, events=events)
        except LeaseLost:
            pass  # another runner holds it: its end is that runner's to record
        except StoreUnavailable:
            # Left IN_PROGRESS as last committed: adopted once the database is back (module docstring).
            log.warning(
                "the database went away; the run's end is not recorded",
                extra={"resource_id": run.resource_id},
            )

    async def cancel(self, resource: Resource, resource_id: str, caller: Caller | None) -> None:
        """A client's cancel: the run here stops and records CANCELLED; a run nobody holds (an
        orphan) is marked CANCELLED; a run another server holds is refused (RUNNING_ELSEWHERE)."""
        await self.stored(resource, resource_id, caller)  # the caller's, or NOT_FOUND before anything stops
        if self.runs.cancel(resource_id):
            await self.runs.wait(resource_id)
        stored = await self.stored(resource, resource_id, caller)
        if stored.status != IN_PROGRESS:
            return
        body, events = resource.ended(stored.body, CANCELLED, None)
        await self.claim(resource, stored, caller, status=CANCELLED, body=body, events=events, work=None)

    # ---- reading

    async def stored(self, resource: Resource, resource_id: str, caller: Caller | None) -> Stored:
        """The caller's resource as stored; INVALID_ARGUMENT without an id, NOT_FOUND if it has none
        of that id (another key's is none of its)."""
        if not resource_id:
            raise InvalidArgument(f"{resource.kind}_id", "is required")
        stored = await self.store.get(resource_id, kind=resource.kind, owner=owner_of(caller))
        if stored is None:
            raise NotFound(resource.kind, resource_id)
        return stored

    async def page(
        self, resource: Resource, caller: Caller | None, *, listing: str, status: int, size: int, token: str
    ) -> tuple[Sequence[Stored], str]:
        """One page of the caller's resources of a kind, newest first, by key (`keyset_page`)."""
        owner = owner_of(caller)
        return await keyset_page(
            lambda after, limit: self.store.list(
                resource.kind, owner=owner, status=status or None, after=after, limit=limit
            ),
            lambda stored: (stored.created_at, stored.resource_id),
            size=size,
            token=token,
            filters=[listing, status],
            default=20,
            maximum=100,
        )

    # ---- following

    async def follow(
        self, stored: Stored, *, after: int, finished: bool, is_terminal: Callable[[bytes], bool]
    ) -> AsyncGenerator[tuple[int, bytes], None]:
        """A resource's events after `after`, then live ones until a terminal event (`follow`).

        Ends at once when there is nothing to wait for: the run is over and the follower has seen its
        last event, or `after` lies beyond the log (a stale or made-up Last-Event-ID). Waiting there
        would pin a browser's EventSource reconnect, and a stream slot, for good.
        """
        if after > stored.last_sequence or (finished and after >= stored.last_sequence):
            return
        events = follow(self.store, self.hub, stored.resource_id, after=after, is_terminal=is_terminal)
        async with aclosing(events) as items:
            async for item in items:
                yield item

    # ---- recovery

    async def recover(self) -> int:
        """Adopt (or, with resume_orphans off, interrupt) every orphaned run; how many there were."""
        count = 0
        for resource in self._resources:
            for stored in await self.store.orphans(resource.kind, statuses=[IN_PROGRESS], now=time.time()):
                if not self.runs.running(stored.resource_id):
                    count += await self._recover(resource, stored)
        return count

    async def _recover(self, resource: Resource, stored: Stored) -> int:
        try:
            if self.resume_orphans:
                work = self._adoption(resource, stored)
                # The run acts for the key that owns it, as the run it continues did; a key since
                # revoked fails the run at its next model call.
                caller = None if self._caller_for is None else await self._caller_for(stored.owner)
                await self.claim(
                    resource, stored, caller, status=IN_PROGRESS, body=stored.body, events=[], work=work
                )
                log.info("orphaned run adopted", extra={"resource_id": stored.resource_id})
            else:
                body, events = resource.ended(stored.body, INTERRUPTED, None)
                await self.claim(
                    resource, stored, None, status=INTERRUPTED, body=body, events=events, work=None
                )
                log.info("orphaned run interrupted", extra={"resource_id": stored.resource_id})
        except ApiError:
            return 0  # another replica (or a client) got to it first
        return 1

    def _adoption(self, resource: Resource, stored: Stored) -> Work:
        async def adopt(run: Run) -> None:
            current = await self.store.get(stored.resource_id, kind=resource.kind)
            if current is not None:
                await resource.adopt(run, current)

        return adopt

    def start(self) -> None:
        """The periodic sweep: a run whose runner died after our start-up (on a replica, or just
        before we started) is found once its lease expires."""
        self._sweeper = asyncio.create_task(self._sweep(), name="orphan sweep")

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_seconds)
            try:
                await self.recover()
            except StoreUnavailable:
                pass  # readiness says so (server/app.py); the next sweep tries again
            except Exception:
                log.exception("orphan sweep failed")

    async def close(self) -> None:
        """Stop the sweep, then every run here (each records INTERRUPTED and releases its lease)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.runs.close()


# ---- model calls with batched deltas

THINKING = "thinking"
TOKEN = "token"


@dataclass(frozen=True)
class DeltaEvent:
    """A run of consecutive deltas of one kind (THINKING or TOKEN) from one model."""

    kind: str
    text: str
    model: str


class Deltas:
    """A model's deltas, committed a batch at a time.

    One transaction per token would make the database, not the model, the bottleneck (each commit is
    a write serialized with every other run's, and wakes every follower); batching for at most
    `SECONDS` or `SIZE` deltas keeps watchers within a few tens of milliseconds of the model (50
    updates a second, faster than anyone reads) while a fast upstream makes 50 commits a second
    instead of 1,000. `stream_model` flushes on the timer too, so deltas never wait for the next one
    while the model pauses (a slow first token after a burst, a long thinking phase).
    """

    SECONDS = 0.02
    SIZE = 32

    def __init__(self) -> None:
        self._parts: list[DeltaEvent] = []
        self._since = 0.0

    def add(self, kind: str, text: str, model: str) -> None:
        if not text:
            return
        if not self._parts:
            self._since = time.monotonic()
        self._parts.append(DeltaEvent(kind, text, model))

    def due(self) -> bool:
        return len(self._parts) >= self.SIZE or (
            bool(self._parts) and time.monotonic() - self._since >= self.SECONDS
        )

    def wait(self) -> float | None:
        """How long the next delta may be waited for before the pending ones must go out anyway."""
        return None if not self._parts else max(0.0, self._since + self.SECONDS - time.monotonic())

    def take(self) -> list[DeltaEvent]:
        """The batch as one event per (kind, model), in order of first appearance: a model that
        interleaves thinking and content within one batch yields one THINKING and one TOKEN event, so
        replay stays short; each kind's text keeps its order."""
        merged: dict[tuple[str, str], DeltaEvent] = {}
        for part in self._parts:
            key = (part.kind, part.model)
            seen = merged.get(key)
            merged[key] = part if seen is None else DeltaEvent(part.kind, seen.text + part.text, part.model)
        self._parts.clear()
        return list(merged.values())


@dataclass(frozen=True)
class ModelReply:
    """One finished model call."""

    text: str
    thinking: str
    model: ModelConfig
    """The model that answered (a fallback, if the first one failed before its first token)."""
    usage: Usage
    tool_calls: tuple[ToolCall, ...] = ()
    """The tools it called, whole."""


async def stream_model(
    registry: ModelRegistry,
    model: ModelConfig,
    request: ChatRequest,
    flush: Callable[[list[DeltaEvent]], Awaitable[None]],
    caller: Caller | None,
) -> ModelReply:
    """Call a model (along its fallback chain) for `caller`, handing its deltas to `flush` in batches
    (`Deltas`).

    Closing the provider's stream on the way out (`aclosing`) stops the model when the run is
    cancelled; the next item is awaited in a task so that a batch goes out on time while it pauses.
    """
    text: list[str] = []
    thinking: list[str] = []
    finish = Finish(Usage())
    answering = model
    batch = Deltas()
    calls = ToolCalls()
    stream = resilient_stream(registry.chain(model, caller), request, registry.circuits)
    async with aclosing(stream) as items:
        pending: asyncio.Future[Answering | StreamItem] | None = None
        try:
            while True:
                if pending is None:
                    pending = asyncio.ensure_future(anext(items))
                done, _ = await asyncio.wait({pending}, timeout=batch.wait())
                if not done:
                    await flush(batch.take())
                    continue
                try:
                    item = pending.result()
                except StopAsyncIteration:
                    break
                finally:
                    pending = None
                if isinstance(item, Answering):
                    answering = item.model
                elif isinstance(item, Delta):
                    text.append(item.content)
                    thinking.append(item.thinking)
                    calls.add(item.tool_calls)
                    batch.add(THINKING, item.thinking, answering.id)
                    batch.add(TOKEN, item.content, answering.id)
                    if batch.due():
                        await flush(batch.take())
                else:
                    finish = item
        finally:
            if pending is not None:  # cancelled or failed while the model was producing
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
    rest = batch.take()
    if rest:
        await flush(rest)
    return ModelReply("".join(text), "".join(thinking), answering, finish.usage, calls.calls())
