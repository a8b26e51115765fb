"""Live followers of event logs: woken after each commit, always reading from the store.

A follower subscribes first (notes the hub's version), replays everything after the sequence it was
given, then waits for a commit beyond what it has sent and reads again from the store. Because what
it sends always comes from the committed log, in order, starting after the last sequence it sent,
nothing is lost between replay and live and nothing is sent twice; many followers can watch one
resource.

The hub hears of this process's commits from the lifecycle, and of every other process's from the
store (`Store.watch`: PostgreSQL LISTEN/NOTIFY, one listener connection per process), both as
(resource, last sequence); a commit heard twice, or late, wakes nobody twice. A wake-up only says
where a log now ends, so one that never arrives costs a follower its poll (`follow(poll=)`), never an
event.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable

from common.observability import metrics
from server.storage.base import Store

#: Resources whose latest sequence the hub remembers (the most recently committed): with replicas it
#: hears of every commit in the database, and one it forgot costs a follower at most its poll.
REMEMBERED = 65_536


class EventHub:
    """The latest committed sequence per resource, and a wake-up for whoever waits beyond it."""

    def __init__(self, *, remembered: int = REMEMBERED) -> None:
        self._latest: OrderedDict[str, int] = OrderedDict()
        self._remembered = remembered
        self._changed: dict[str, asyncio.Event] = {}

    def latest(self, resource_id: str) -> int:
        """The last sequence committed that this process heard of (0: none)."""
        return self._latest.get(resource_id, 0)

    def notify(self, resource_id: str, last_sequence: int) -> None:
        """Called after a commit (never before: a follower woken early would read nothing new), here
        or on another replica; a sequence no later than one already heard of changes nothing."""
        if last_sequence <= self._latest.get(resource_id, 0):
            return
        self._latest[resource_id] = last_sequence
        self._latest.move_to_end(resource_id)
        if len(self._latest) > self._remembered:
            self._latest.popitem(last=False)
        event = self._changed.pop(resource_id, None)
        if event is not None:
            event.set()

    def wake_all(self) -> None:
        """Everyone waiting reads again: commits may have gone unheard (the listener reconnected)."""
        changed, self._changed = self._changed, {}
        for event in changed.values():
            event.set()

    async def wait_beyond(self, resource_id: str, sequence: int, *, within: float) -> None:
        """Return once a commit beyond `sequence` was notified, or after `within` seconds anyway."""
        if self._latest.get(resource_id, 0) > sequence:
            return
        event = self._changed.setdefault(resource_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), within)
        except TimeoutError:
            return


async def follow(
    store: Store,
    hub: EventHub,
    resource_id: str,
    *,
    after: int,
    is_terminal: Callable[[bytes], bool],
    poll: float = 5.0,
) -> AsyncGenerator[tuple[int, bytes], None]:
    """Every event after `after`, then live ones, ending after a terminal event (see module docstring).

    `poll` bounds each wait, so a commit made by another process (a replica, a restarted runner) is
    seen even without a wake-up from this hub.
    """
    sent = after
    while True:
        batch = await store.events(resource_id, after=sent)
        if batch and metrics.enabled:
            # What it had yet to read: this batch, or more when the log ran ahead beyond one batch.
            metrics.FOLLOWER_LAG.observe(max(len(batch), hub.latest(resource_id) - sent))
        for i, (sequence, body) in enumerate(batch):
            yield sequence, body
            sent = sequence
            # A terminal event ends the stream only if it is the latest: a session that was resumed
            # (or a conversation run again) has gone on past it, and a replay goes on with it.
            if (
                is_terminal(body)
                and i == len(batch) - 1
                and not await store.events(resource_id, after=sent, limit=1)
            ):
                return
        if not batch:
            await hub.wait_beyond(resource_id, sent, within=poll)
