"""Background runs of resources, each under a lease in the store.

A run takes the resource's lease (`runner_id`, expiry) before it starts and renews it while it works;
every step it commits names the runner, so a run that lost its lease cannot write over the one that
took over. At start-up, and on any replica later, a resource left IN_PROGRESS with an expired lease has
nobody running it: its service marks it INTERRUPTED (runnable again) — never "running" forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from server.storage import Lease, Store

log = logging.getLogger(__name__)

LEASE_SECONDS = 30.0


class Runs:
    """The runs of this process: one task per resource; see the module docstring."""

    def __init__(self, store: Store, *, lease_seconds: float = LEASE_SECONDS) -> None:
        self.runner_id = f"runner-{uuid.uuid4().hex[:12]}"
        self._store = store
        self._lease_seconds = lease_seconds
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def lease(self) -> Lease:
        return Lease(self.runner_id, time.time() + self._lease_seconds)

    def running(self, resource_id: str) -> bool:
        task = self._tasks.get(resource_id)
        return task is not None and not task.done()

    async def start(self, resource_id: str, work: Callable[[], Awaitable[None]]) -> bool:
        """Run `work` in the background under the resource's lease; False if someone else holds it."""
        if self.running(resource_id):
            return False
        if not await self._store.acquire(resource_id, self.lease(), now=time.time()):
            return False
        task = asyncio.create_task(self._run(resource_id, work), name=f"run {resource_id}")
        self._tasks[resource_id] = task
        return True

    async def _run(self, resource_id: str, work: Callable[[], Awaitable[None]]) -> None:
        renewer = asyncio.create_task(self._renew(resource_id))
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("run failed", extra={"resource_id": resource_id})
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(Exception):
                await self._store.release(resource_id, self.runner_id)
            self._tasks.pop(resource_id, None)

    async def _renew(self, resource_id: str) -> None:
        while True:
            await asyncio.sleep(self._lease_seconds / 3)
            if not await self._store.renew(resource_id, self.lease()):
                log.warning("lease lost", extra={"resource_id": resource_id})
                return

    def cancel(self, resource_id: str) -> bool:
        """Cancel the run here, if it runs here; the work's own cleanup records the cancellation."""
        task = self._tasks.get(resource_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def wait(self, resource_id: str) -> None:
        """Until the run of this resource (if any, here) ends. The run being cancelled is an end; the
        caller being cancelled (its client left) is not swallowed: it propagates, the run goes on."""
        task = self._tasks.get(resource_id)
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                raise

    async def close(self) -> None:
        """Cancel every run (shutdown): their leases are released, or expire."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
