"""A real server process with scripted models, shared by the SDK tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aibattle_sdk import Client
from tests.e2e.process import server_process

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
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gRPC target of a `python -m server` process serving the scripted models above."""
    with server_process(SCRIPTED, tmp_path_factory.mktemp("sdk")) as running:
        yield running.grpc_target


@pytest.fixture
def client(target: str) -> Iterator[Client]:
    with Client(target, timeout=30) as c:
        yield c


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
