"""Background runs of resources, each under a lease in the store.

Every attempt at running a resource has a runner id of its own (`Runs.lease()` makes a new one each
time), never one per process: two attempts in one process are as distinct as two on different
replicas, so a conditional write in the store lets exactly one of them hold the lease. The lease is
taken before the run starts (`Lifecycle` does it in the same transaction that records the run) and
renewed while it works; every step it commits names its runner, so an attempt that lost its lease
cannot write over the one that took over, and a lost lease cancels the attempt at once.

The runner id is the lease's fencing token: unique to one attempt and never reused, and checked by
every commit in the commit's own transaction (`Store.commit(runner_id=)`), so a stalled attempt that
wakes up after another took over writes nothing. (A counting epoch would fence the same way here: the
store keeps the holder, and a commit compares with it for equality.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from server.security.context import Caller
from server.storage import Lease, Store
from server.storage.base import StoreUnavailable

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0


@dataclass
class Run:
    """One attempt at running one resource."""

    resource_id: str
    runner_id: str
    caller: Caller | None = None
    """Who the run acts for: the key that started it (or owns it, when adopted); None: the server."""
    cancel_requested: bool = False
    """A client asked to stop it (CANCELLED), as opposed to the server stopping (INTERRUPTED)."""
    lease_lost: bool = False
    """Another runner took the resource over: this attempt ends without writing anything."""
    last_status: int | None = None
    """The status of the attempt's latest commit: where it left the resource when it ends."""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Runs:
    """The runs of this process: one task per resource, see the module docstring."""

    def __init__(self, store: Store, *, lease_seconds: float = LEASE_SECONDS) -> None:
        # Readable in the database: which host and process an attempt belongs to.
        self.process_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._store = store
        self.lease_seconds = lease_seconds
        self._runs: dict[str, Run] = {}

    def lease(self, runner_id: str | None = None) -> Lease:
        """A lease for a new attempt (a fresh runner id), or the renewal of an attempt's."""
        runner_id = runner_id or f"{self.process_id}/{uuid.uuid4().hex[:12]}"
        return Lease(runner_id, time.time() + self.lease_seconds)

    def get(self, resource_id: str) -> Run | None:
        run = self._runs.get(resource_id)
        return run if run is not None and run.task is not None and not run.task.done() else None

    def running(self, resource_id: str) -> bool:
        return self.get(resource_id) is not None

    def start(
        self,
        resource_id: str,
        lease: Lease,
        work: Callable[[Run], Awaitable[None]],
        caller: Caller | None = None,
    ) -> Run:
        """Run `work` in the background under `lease`, which the caller already holds, for `caller`
        (None: the server's own work)."""
        run = Run(resource_id, lease.runner_id, caller)
        run.task = asyncio.create_task(self._supervise(run, work), name=f"run {resource_id}")
        self._runs[resource_id] = run
        return run

    async def _supervise(self, run: Run, work: Callable[[Run], Awaitable[None]]) -> None:
        renewer = asyncio.create_task(self._renew(run))
        try:
            await work(run)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(Exception):
                await asyncio.shield(self._store.release(run.resource_id, run.runner_id))
            if self._runs.get(run.resource_id) is run:
                del self._runs[run.resource_id]

    async def _renew(self, run: Run) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                held = await self._store.renew(run.resource_id, self.lease(run.runner_id))
            except StoreUnavailable:
                # The lease may still hold; the next renewal tells (a commit meanwhile stops the run).
                log.warning(
                    "lease not renewed: the database went away", extra={"resource_id": run.resource_id}
                )
                continue
            except Exception:
                log.exception("lease renewal failed", extra={"resource_id": run.resource_id})
                continue
            if not held:
                log.warning("lease lost; the run stops", extra={"resource_id": run.resource_id})
                run.lease_lost = True
                if run.task is not None:
                    run.task.cancel()
                return

    def cancel(self, resource_id: str) -> bool:
        """Cancel the run here at a client's request, if it runs here; its cleanup records it."""
        run = self.get(resource_id)
        if run is None or run.task is None:
            return False
        if not run.cancel_requested:  # once: a second cancel would cut short the first one's cleanup
            run.cancel_requested = True
            run.task.cancel()
        return True

    async def wait(self, resource_id: str) -> None:
        """Until the run of this resource (if any, here) ends. The run being cancelled is an end; the
        caller being cancelled (its client left) is not swallowed: it propagates, the run goes on."""
        run = self._runs.get(resource_id)
        if run is None or run.task is None:
            return
        task = run.task
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise
        except Exception:
            pass  # the run's failure is recorded by the run; waiting for it is not failing

    async def close(self) -> None:
        """Cancel every run (shutdown): each records INTERRUPTED and releases its lease."""
        tasks = [run.task for run in self._runs.values() if run.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
