"""The `openai` adapter against a real OpenAI-compatible server nobody here wrote: llama-cpp-python's.

`python -m llama_cpp.server` serves the same SmolLM2 GGUF the local provider embeds, with an API key;
we drive CreateCompletion and StreamCompletion through our gRPC API to it. Its dialect differs from
OpenAI's where it matters: no usage in streams (we estimate), FastAPI's `{"detail": ...}` on a 401.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from server.providers.local import default_model_path
from tests.conftest import error_info
from tests.server.providers.fake_upstream import serving

pytestmark = pytest.mark.slow

KEY = "llama-test-key-5f3a9c"
START_WITHIN = 45.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _models(base_url: str) -> list[dict[str, Any]] | None:
    """The server's /v1/models listing, or None while it is not answering yet."""
    request = urllib.request.Request(f"{base_url}/models", headers={"Authorization": f"Bearer {KEY}"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            data: list[dict[str, Any]] = json.load(response)["data"]
            return data
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """The server's base URL and the model name it serves."""
    try:
        model_path = default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    command = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model_path),
        "--api_key", KEY,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_ctx", "2048",
        "--verbose", "False",
    ]  # fmt: skip
    # A file, not a pipe: uvicorn logs every request and a full pipe would stall the server.
    log = tmp_path_factory.mktemp("llama-server") / "stderr.log"
    with log.open("wb") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + START_WITHIN
        while (listing := _models(base_url)) is None:
            if process.poll() is not None:
                said = log.read_text(errors="replace")[-2000:]
                pytest.fail(f"llama_cpp.server exited with {process.returncode}: {said}")
            if time.monotonic() > deadline:
                pytest.fail(f"llama_cpp.server did not answer GET /v1/models within {START_WITHIN:g} s")
            time.sleep(0.2)
        yield base_url, listing[0]["id"]
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _model(base_url: str, upstream_model: str) -> dict[str, Any]:
    return {
        "id": "llama-server",
        "provider": "openai",
        "base_url": base_url,
        "upstream_model": upstream_model,
        "api_key_env": "LLAMA_SERVER_KEY",
        "upstream": {"retries": 0},
    }


@pytest.fixture
def key() -> str:
    """The key our server sends (set before it starts: it checks the variable at start-up)."""
    return KEY


@pytest.fixture
async def stub(
    llama_server: tuple[str, str], key: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[completions_pb2_grpc.CompletionServiceStub]:
    monkeypatch.setenv("LLAMA_SERVER_KEY", key)
    async with serving([_model(*llama_server)]) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            yield completions_pb2_grpc.CompletionServiceStub(channel)


async def test_create_and_stream_completion(stub: completions_pb2_grpc.CompletionServiceStub) -> None:
    reply = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="llama-server", prompt="What is the capital of France?", max_tokens=16, seed=1
        )
    )
    assert reply.content.strip()
    assert reply.finish_reason in (common_pb2.FINISH_REASON_STOP, common_pb2.FINISH_REASON_LENGTH)
    assert reply.usage.prompt_tokens > 0 and reply.usage.completion_tokens > 0

    chunks = [
        c
        async for c in stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(
                model="llama-server", prompt="Count from one to ten.", max_tokens=8, seed=1
            )
        )
    ]
    assert len(chunks) > 2  # text arrives in pieces, then the final chunk
    assert "".join(c.content for c in chunks).strip()
    final = chunks[-1]
    assert final.is_final
    # 8 tokens cannot count to ten: the server says "length".
    assert final.finish_reason == common_pb2.FINISH_REASON_LENGTH
    # llama-cpp-python streams no usage: these are our estimates, but present and plausible.
    assert final.usage.prompt_tokens > 0 and final.usage.completion_tokens > 0


@pytest.mark.parametrize("key", ["not-the-key"])
async def test_wrong_key_is_auth_failed(stub: completions_pb2_grpc.CompletionServiceStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="llama-server", prompt="hi")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "UPSTREAM_AUTH_FAILED"
    assert "Invalid API key" in caught.value.details()
    assert "not-the-key" not in caught.value.details()
