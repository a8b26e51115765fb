"""A throwaway Redis for the tests: `redis-server` on a free port of 127.0.0.1, nothing saved.

Started per test (it takes a few milliseconds), waited for until it answers PING, stopped afterwards,
also when the test or the start fails. Use: import the fixture into a test module
(`from tests.redis_testlib import redis_server`) and take `redis_server` (a `RedisServer`: its `url`,
and `stop()` for a test that needs Redis gone).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def start_redis(timeout: float = 20.0) -> RedisServer:
    """Start `redis-server` and wait for its PING; on any failure, stop it."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (make install brings Debian's)")
    server = RedisServer(_free_port())
    try:
        server.process = subprocess.Popen(
            [binary, "--port", str(server.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=server.port, socket_timeout=1) as client:
                    if client.ping():
                        return server
            except redis.ConnectionError:
                pass
            if server.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
    except BaseException:
        server.stop()
        raise


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    try:
        yield server
    finally:
        server.stop()
