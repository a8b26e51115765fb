"""`buf curl` (npm @bufbuild/buf), a Connect and gRPC-Web client nobody here wrote, against the server's
HTTP port, with the schema read from proto/ as a user would point it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.process import ECHO_CONFIG, server_process

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
PROTOCOLS = ("connect", "grpcweb")


@pytest.fixture(scope="module")
def http_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with server_process(
        ECHO_CONFIG, tmp_path_factory.mktemp("bufcurl"), AIBATTLE_HTTP_ADDR="127.0.0.1:0"
    ) as running:
        yield running.http_url


def buf_curl(url: str, protocol: str, method: str, data: str) -> subprocess.CompletedProcess[str]:
    command = [str(BUF), "curl", "--protocol", protocol, "--schema", "proto/", "-d", data, f"{url}/{method}"]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def json_documents(text: str) -> list[dict[str, object]]:
    """buf curl prints one indented JSON document per response message."""
    decoder, documents, index = json.JSONDecoder(), [], 0
    while index < len(text.strip()):
        document, index = decoder.raw_decode(text, index)
        documents.append(document)
        while index < len(text) and text[index].isspace():
            index += 1
    return documents


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_list_models(http_url: str, protocol: str) -> None:
    result = buf_curl(http_url, protocol, "aibattle.v1.ModelService/ListModels", "{}")
    assert result.returncode == 0, result.stderr
    [answer] = json_documents(result.stdout)
    assert [model["id"] for model in answer["models"]] == ["echo"]  # type: ignore[index,union-attr]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_stream_completion(http_url: str, protocol: str) -> None:
    request = json.dumps({"model": "echo", "prompt": "Say hello", "max_tokens": 16})
    result = buf_curl(http_url, protocol, "aibattle.v1.CompletionService/StreamCompletion", request)
    assert result.returncode == 0, result.stderr
    chunks = json_documents(result.stdout)
    assert len(chunks) > 1, "a stream of chunks, not one answer"
    assert "".join(str(chunk.get("content", "")) for chunk in chunks) == "Hello from a scripted model."
    assert chunks[-1]["isFinal"] is True
    assert chunks[-1]["finishReason"] == "FINISH_REASON_STOP"


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_an_error_reaches_buf_curl_with_its_code(http_url: str, protocol: str) -> None:
    result = buf_curl(http_url, protocol, "aibattle.v1.ModelService/GetModel", '{"model_id": "nope"}')
    assert result.returncode != 0
    error = json.loads(result.stderr or result.stdout)
    assert error["code"] == "not_found"
    assert "nope" in error["message"]
