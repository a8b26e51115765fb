"""The README's Deployment section states the numbers the code has: each figure it gives an operator
(how soon a dead replica's runs are adopted, how long a lost wake-up can delay a follower, how soon
readiness follows a dependency, when a dead replica's Redis leases come back) is read here from the code,
so changing one without the other fails."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from server import app
from server.security import redis_limits
from server.settings import ServerConfig
from server.storage import events

ROOT = Path(__file__).resolve().parents[1]


def deployment() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Deployment\n")
    end = text.find("\n## ", start + 1)
    return " ".join(text[start:end].split())  # table cells and wrapped lines alike


def test_the_lease_and_the_sweep_are_the_servers_defaults() -> None:
    server = ServerConfig()
    section = deployment()
    assert f"`[server] lease_seconds`, {server.lease_seconds:g} s" in section
    assert f"every `orphan_sweep_seconds`, {server.orphan_sweep_seconds:g} s" in section
    # A lease is renewed every third of it: a dead replica's runs are orphans after 2/3 to all of it,
    # then wait for the next sweep.
    earliest = server.lease_seconds * 2 / 3
    latest = server.lease_seconds + server.orphan_sweep_seconds
    assert f"{earliest:g} to {latest:g} s after the death" in section


def test_a_lost_wake_up_costs_the_followers_poll() -> None:
    poll = inspect.signature(events.follow).parameters["poll"].default
    assert f"waits for its next poll (every {poll:g} s)" in deployment()


def test_readiness_and_the_redis_leases() -> None:
    section = deployment()
    assert app.READINESS_SECONDS == 1.0 and "checked every second" in section
    lease = f"{redis_limits.LEASE_SECONDS:g} s"
    assert f"leases of {lease}" in section and f"their {lease} leases expire" in section
    days = redis_limits.SPENT_TTL_MS / (24 * 3600 * 1000)
    assert f"kept {days:g} days unused" in section


def test_make_run_cluster_is_a_documented_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run-cluster:.*## ", makefile, re.MULTILINE)
    assert "make run-cluster" in deployment()
