"""Fixtures shared by every test folder: real servers on port 0, channels, config helpers."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from server.app import AIBattleServer
from server.config import Config
from server.logs import JsonFormatter

SCRIPTED_MODELS: list[dict[str, Any]] = [
    {
        "id": "scripted-echo",
        "provider": "scripted",
        "capabilities": ["text", "conversation"],
        "script": ["Hello there, friend. This is a scripted reply."],
        "pricing": {"input": 0.001, "output": 0.002},
    },
    {
        "id": "scripted-slow",
        "provider": "scripted",
        "capabilities": ["text"],
        "script": [" ".join(f"word{i}" for i in range(200))],
        "chunk_delay_ms": 20,
    },
    {
        "id": "scripted-fail",
        "provider": "scripted",
        "script": ["one two three four"],
        "error_after_chunks": 2,
    },
    {
        "id": "scripted-vision",
        "provider": "scripted",
        "capabilities": ["text", "image"],
        "script": ["I see."],
    },
]


def make_config(models: list[dict[str, Any]] | None = None, **server: Any) -> Config:
    return Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:", **server},
            "models": SCRIPTED_MODELS if models is None else models,
        }
    )


@pytest.fixture
async def scripted_server() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(make_config())
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def channel(scripted_server: AIBattleServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(scripted_server.grpc_target) as chan:
        yield chan


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The google.rpc.Status a server put in grpc-status-details-bin (fails the test if absent)."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError(f"no grpc-status-details-bin in {error.trailing_metadata()!r}")


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rich_status(error)
    assert status.code == error.code().value[0]
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    raise AssertionError(f"no ErrorInfo in {status}")


class _Recorder(logging.Handler):
    """Every log line of the run, formatted as the server writes them (extras included)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted is no secret leak; keep its message
            self.lines.append(str(record.msg))


RECORDER = _Recorder()


@pytest.fixture(scope="session", autouse=True)
def no_secret_in_logs() -> Iterator[None]:
    """Secrets appear in no log line of the whole run (in-process servers and gateways, at DEBUG).

    Tests that hand out or present API keys add them to tests.security_testlib.SECRETS; processes
    started by end-to-end tests are scanned by those tests (their stderr).
    """
    from tests.security_testlib import SECRETS

    recorder = RECORDER
    root = logging.getLogger()
    level = root.level
    root.addHandler(recorder)
    root.setLevel(logging.DEBUG)
    # asyncio and grpc are chatty and log no request data; aiosqlite is kept at INFO by the server
    # itself (server/logs.py), since its DEBUG lines carry statement parameters.
    for name in ("asyncio", "grpc"):
        logging.getLogger(name).setLevel(logging.INFO)
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(recorder)
        root.setLevel(level)
    # A stored hash is no credential, but it is no log's business either: its hex and its bytes' repr.
    hashes = {
        h for s in SECRETS for d in [hashlib.sha256(s.encode()).digest()] for h in (d.hex(), repr(d)[2:-1])
    }
    leaks = [line.replace(s, s[:12] + "…") for line in recorder.lines for s in SECRETS | hashes if s in line]
    assert not leaks, f"secrets or their hashes (cut here) appear in log lines: {leaks[:5]}"
