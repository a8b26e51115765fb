"""The gateway in front of the real AI Battle server (scripted models): seed 000's bodies, streams, modes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from typing import Any

import aiohttp
import pytest
import sseclient

from gateway import start_gateway
from server.app import AIBattleServer
from tests.gateway.gateway_testlib import ROOT

# Seed 000 §3.1 request bodies, as written; only the model ids are ours.
SEED_COMPLETION = """{
  "model": "scripted-echo",
  "prompt": "Explain quantum computing in simple terms",
  "max_tokens": 1000,
  "temperature": 0.7,
  "system_instruction": "You are a helpful assistant that explains complex topics simply."
}"""
SEED_CONVERSATION = """{
  "models": [
    {
      "id": "scripted-peer",
      "role": "human"
    },
    {
      "id": "scripted-echo",
      "role": "assistant"
    }
  ],
  "initial_prompt": "Let's discuss the implications of quantum computing on cryptography",
  "mode": "human-ai",
  "rounds": 3,
  "system_instruction": "This is a technical discussion between experts."
}"""
SEED_MESSAGE = """{
  "content": "What about Shor's algorithm specifically?",
  "role": "human",
  "model": "scripted-peer"
}"""


async def test_list_and_get_models(api: Any) -> None:
    resp = await api.get("/api/v1/models")
    assert resp.status == 200
    ids = [m["id"] for m in (await resp.json())["models"]]
    assert ids == ["scripted-echo", "scripted-fail", "scripted-peer", "scripted-slow"]

    resp = await api.get("/api/v1/models?capability=text&page_size=1")
    body = await resp.json()
    assert len(body["models"]) == 1 and body["next_page_token"]

    resp = await api.get("/api/v1/models/scripted-echo")
    model = await resp.json()
    assert model["id"] == "scripted-echo" and model["provider"] == "scripted"  # bare Model: response_body


async def test_unknown_model_is_404_with_server_details(api: Any) -> None:
    resp = await api.get("/api/v1/models/nope")
    assert resp.status == 404
    body = await resp.json()
    assert body["code"] == 5
    info = next(d for d in body["details"] if d["@type"].endswith("ErrorInfo"))
    assert info["domain"] == "aibattle.dev" and info["reason"].isupper()


async def test_seed_completion_body_as_written(api: Any) -> None:
    resp = await api.post(
        "/api/v1/completions", data=SEED_COMPLETION, headers={"Content-Type": "application/json"}
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["model"] == "scripted-echo"
    assert body["content"] == "Hello there, friend."
    assert body["id"] and body["usage"]["completion_tokens"] == 3


async def test_completion_stream_sse(api: Any) -> None:
    resp = await api.post(
        "/api/v1/completions:stream",
        json={"model": "scripted-echo", "prompt": "hi"},
        headers={"Accept": "text/event-stream"},
    )
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = list(sseclient.SSEClient(iter([await resp.read()])).events())
    chunks = [json.loads(e.data)["result"] for e in events]
    assert "".join(c["content"] for c in chunks) == "Hello there, friend."
    assert chunks[-1]["is_final"] is True and chunks[-1]["finish_reason"] == "FINISH_REASON_STOP"


async def test_completion_stream_ndjson_and_websocket_agree(api: Any, aibattle: AIBattleServer) -> None:
    resp = await api.post("/api/v1/completions:stream", json={"model": "scripted-peer", "prompt": "hi"})
    ndjson = [json.loads(line)["result"] for line in (await resp.text()).splitlines()]
    async with api.ws_connect("/api/v1/ws/completions") as ws:
        await ws.send_str(json.dumps({"model": "scripted-peer", "prompt": "hi"}))
        frames = [json.loads(m.data)["result"] async for m in ws]
    assert ws.close_code == 1000

    def strip(chunks: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        return [(c["content"], c["is_final"]) for c in chunks]

    assert strip(frames) == strip(ndjson)
    assert "".join(c["content"] for c in frames) == "Peer reply."


async def test_websocket_request_from_the_url(api: Any) -> None:
    async with api.ws_connect("/api/v1/ws/completions?model=scripted-echo&prompt=hi") as ws:
        frames = [json.loads(m.data)["result"] async for m in ws]
    assert "".join(c["content"] for c in frames) == "Hello there, friend."


async def test_failure_before_first_chunk_is_plain_http(api: Any) -> None:
    resp = await api.post(
        "/api/v1/completions:stream",
        json={"model": "nope", "prompt": "x"},
        headers={"Accept": "text/event-stream"},
    )
    assert resp.status == 404 and resp.content_type == "application/json"
    assert (await resp.json())["code"] == 5


async def test_failure_after_first_chunk(api: Any) -> None:
    resp = await api.post("/api/v1/completions:stream", json={"model": "scripted-fail", "prompt": "x"})
    assert resp.status == 200
    frames = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert "result" in frames[0]
    assert frames[-1]["error"]["code"] == 14
    assert any(d["@type"].endswith("ErrorInfo") for d in frames[-1]["error"]["details"])

    async with api.ws_connect("/api/v1/ws/completions") as ws:
        await ws.send_str(json.dumps({"model": "scripted-fail", "prompt": "x"}))
        frames = [json.loads(m.data) async for m in ws]
    assert frames[-1]["error"]["code"] == 14
    assert ws.close_code == 4014


async def test_request_id_round_trip(api: Any) -> None:
    resp = await api.get("/api/v1/models", headers={"X-Request-Id": "trace-42"})
    assert resp.headers["X-Request-Id"] == "trace-42"
    assert "Grpc-Metadata-x-request-id" not in resp.headers


async def test_health_endpoints(api: Any, aibattle: AIBattleServer) -> None:
    assert (await api.get("/livez")).status == 200
    healthz = await api.get("/healthz")
    assert healthz.status == 200 and (await healthz.json()) == {"status": "SERVING"}
    ready = await api.get("/readyz")
    assert ready.status == 200
    per_service = await api.get("/healthz?service=aibattle.v1.ModelService")
    assert per_service.status == 200
    unknown = await api.get("/healthz?service=no.Such")
    assert unknown.status == 404 and (await unknown.json())["status"] == "SERVICE_UNKNOWN"
    await aibattle.drain()
    assert (await api.get("/healthz")).status == 503
    assert (await api.get("/readyz")).status == 503


async def test_in_process_mode(aibattle: AIBattleServer) -> None:
    handle = await start_gateway(grpc_target=aibattle.grpc_target, host="127.0.0.1", port=0)
    try:
        assert handle.port > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{handle.port}/api/v1/models") as resp:
                assert resp.status == 200
                assert len((await resp.json())["models"]) == len(aibattle.registry.models())
            async with session.ws_connect(f"http://127.0.0.1:{handle.port}/api/v1/ws/completions") as ws:
                await ws.send_str(json.dumps({"model": "scripted-echo", "prompt": "hi"}))
                frames = [json.loads(m.data) async for m in ws]
                assert frames[-1]["result"]["is_final"] is True
    finally:
        await handle.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{handle.port}/livez")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_standalone_proxy(aibattle: AIBattleServer) -> None:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--grpc-target",
        aibattle.grpc_target,
        "--http-addr",
        f"127.0.0.1:{port}",
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            async with session.post(
                f"http://127.0.0.1:{port}/api/v1/completions", data=SEED_COMPLETION
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["content"] == "Hello there, friend."
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0, stderr.decode()
    # It logs as the server does: JSON lines, among them one access line per request.
    lines = [json.loads(line) for line in stderr.decode().splitlines()]
    assert any(line["msg"].startswith("gateway on http://127.0.0.1:") for line in lines)
    access = [line for line in lines if line["logger"] == "gateway.access"]
    completion = next(line for line in access if line["route"] == "/api/v1/completions")
    assert (completion["method"], completion["status"], completion["model"]) == ("POST", 200, "scripted-echo")
    assert completion["request_id"] and completion["ms"] >= 0
    assert {line["route"] for line in access} == {"/readyz", "/api/v1/completions"}
