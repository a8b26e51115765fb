"""A throwaway Redis for the tests: `redis-server` on a free port of 127.0.0.1, nothing saved.

The server is `tools.local_services`' (shared with `make run-cluster`). Started per test (it takes a
few milliseconds), waited for until it answers PING, stopped afterwards, also when the test or the start
fails. Use: import the fixture into a test module (`from tests.redis_testlib import redis_server`) and
take `redis_server` (a `RedisServer`: its `url`, and `stop()` for a test that needs Redis gone).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tools import local_services
from tools.local_services import RedisServer

__all__ = ["RedisServer", "redis_server", "start_redis"]


def start_redis(timeout: float = 20.0) -> RedisServer:
    """Start `redis-server` and wait for its PING; on any failure, stop it."""
    try:
        return local_services.start_redis(timeout)
    except local_services.RedisMissing as missing:
        pytest.fail(str(missing))


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
