"""A real server process with scripted models, shared by the SDK tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aibattle_sdk import Client
from tests.e2e.process import Running, server_process

SCRIPTED = """
[[models]]
id = "echo"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["Hello there, friend. This is a scripted reply."]

[[models]]
id = "slow"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["{slow}"]
chunk_delay_ms = 25

[[models]]
id = "critic"
provider = "scripted"
script = ["Looks right to me.\\nVERDICT: APPROVE"]

[[models]]
id = "flaky"
provider = "scripted"
script = ["one two three four"]
error_after_chunks = 2
""".replace("{slow}", " ".join(f"word{i}" for i in range(80)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A `python -m server` process serving the scripted models above, over gRPC and, as `make run`
    does, HTTP (the gateway)."""
    with server_process(
        SCRIPTED, tmp_path_factory.mktemp("sdk"), AIBATTLE_HTTP_ADDR="127.0.0.1:0"
    ) as running:
        yield running


@pytest.fixture(scope="module")
def target(server: Running) -> str:
    """The server's gRPC target, host:port."""
    return server.grpc_target


@pytest.fixture(scope="module")
def gateway_url(server: Running) -> str:
    """The URL of the server's HTTP gateway, e.g. http://127.0.0.1:8080."""
    assert server.http_url.startswith("http://")
    return server.http_url


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    with Client(target, timeout=30) as c:
        yield c


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
