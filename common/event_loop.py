"""The event loop `python -m server` and `python -m gateway` run on: uvloop's, unless told otherwise.

grpc.aio drives any asyncio loop that can watch a file descriptor (`loop.add_reader`): grpc-core's
completion queue is polled by a thread of its own, which wakes the loop through a socket pair. uvloop
is such a loop, and on the hot path (gateway HTTP, loopback gRPC, the provider's HTTP call) it took
about a tenth off the server's CPU per request (gateway/README.md, "What a request costs"). The test
suites of the server and the gateway pass on it as they do on asyncio's own loop.

`AIBATTLE_EVENT_LOOP=asyncio` runs asyncio's loop instead (a debugging aid, or a platform without
uvloop); uvloop missing from the environment does the same.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

ENV = "AIBATTLE_EVENT_LOOP"


def loop_factory(env: dict[str, str] | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None for asyncio's (asked for, or uvloop not installed)."""
    choice = (os.environ if env is None else env).get(ENV, "uvloop").strip().lower()
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise SystemExit(f"{ENV}={choice!r}: expected 'uvloop' or 'asyncio'")
    try:
        import uvloop
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
