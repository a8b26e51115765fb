"""Secrets and slots: an upstream that echoes its key leaks it nowhere; stream slots come back however a
stream ends; a budget is never overspent by a prompt longer than the model's context.

Real components throughout: the gRPC server on a file-backed SQLite database, its in-process HTTP
gateway, and aiohttp upstreams speaking OpenAI's chat completions wire format (SSE and JSON).
"""

from __future__ import annotations

import asyncio
import gc
import json
import secrets
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from pydantic import SecretStr

from aibattle.v1 import (
    completions_pb2,
    completions_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from gateway import start_gateway
from server.app import AIBattleServer
from server.config import Config
from server.providers.http.base import HttpClient
from server.providers.http.errors import UpstreamError
from server.providers.http.ollama import discover_models
from tests.conftest import RECORDER, error_info, make_config
from tests.security_testlib import ADMIN_KEY, SECRETS, bearer, new_key

KEY_ENV = "HARDENING_UPSTREAM_KEY"
UPSTREAM_KEY = f"sk-proj-{secrets.token_hex(20)}"
SECRETS.add(UPSTREAM_KEY)
# Every 8-character piece of the key's random part: the redactor leaves none, and a random one turning up
# by chance in a few hundred KiB is a 1 in 10^7 event.
PIECES = [UPSTREAM_KEY[8:][i : i + 8] for i in range(len(UPSTREAM_KEY) - 15)]


def leaks(text: str | bytes) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [p for p in PIECES if p.encode() in data]


def keyed(config: Config) -> Config:
    """`config` behind keys: the admin key set."""
    return config.model_copy(
        update={"security": config.security.model_copy(update={"admin_key": SecretStr(ADMIN_KEY)})}
    )


@pytest.fixture(autouse=True)
def _upstream_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, UPSTREAM_KEY)


def sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def chunk(content: str) -> bytes:
    return sse(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1694268190,
            "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
        }
    )


# --- an upstream that echoes its key ------------------------------------------------------------


async def echoing_upstream(request: web.Request) -> web.StreamResponse:
    """OpenAI-compatible and careless: every failure quotes the Authorization header it was sent.

    upstream_model picks the failure: `late-frame` (a token, then a frame that does not parse),
    `early-frame` (an unparsable frame first), `refused` (401 with an OpenAI error body) and `broken`
    (500 with a plain-text body). Unary calls (stream: false) get a JSON answer of the wrong shape.
    """
    auth = request.headers.get("Authorization", "")
    body = await request.json()
    kind = body["model"]
    if kind == "refused":
        error = {"error": {"message": f"Incorrect API key provided: {auth}", "type": "invalid_request_error"}}
        return web.json_response(error, status=401)
    if kind == "broken":
        return web.Response(status=500, text=f"internal error while serving {auth}")
    if not body.get("stream"):
        return web.json_response({"id": "chatcmpl-1", "choices": [{"index": 0, "message": auth}]})
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    if kind == "late-frame":
        await response.write(chunk("Hello"))
    await response.write(sse(f'{{"echo": "{auth}", broken'))
    await response.write_eof()
    return response


def echo_model(kind: str) -> dict[str, Any]:
    return {
        "id": f"echo-{kind}",
        "provider": "openai",
        "upstream_model": kind,
        "capabilities": ["text", "conversation"],
        # No retries or cooldown: each call reaches the upstream, and so its echo.
        "upstream": {"retries": 0, "cooldown_after_failures": 1000},
    }


KINDS = ("late-frame", "early-frame", "refused", "broken")


@pytest.fixture
async def echo_server(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[AIBattleServer]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", echoing_upstream)
    upstream = await aiohttp_server(app)
    config = Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": str(tmp_path / "db.sqlite")},
            "providers": {
                "openai": {"base_url": f"http://127.0.0.1:{upstream.port}/v1", "api_key_env": KEY_ENV}
            },
            "models": [echo_model(k) for k in KINDS],
        }
    )
    server = AIBattleServer(config)
    await server.start()
    yield server
    await server.stop(grace=0.5)


def status_text(error: grpc.aio.AioRpcError) -> bytes:
    """Everything a gRPC client receives with an error: code, message and every trailer."""
    parts = [str(error.code()).encode(), (error.details() or "").encode()]
    for _, value in error.trailing_metadata() or ():
        parts.append(value if isinstance(value, bytes) else str(value).encode())
    return b"\n".join(parts)


async def test_an_upstream_echoing_its_key_leaks_it_nowhere(
    echo_server: AIBattleServer, tmp_path: Path
) -> None:
    start = len(RECORDER.lines)
    seen: list[bytes] = []  # every byte any client received
    async with grpc.aio.insecure_channel(echo_server.grpc_target) as channel:
        completions = completions_pb2_grpc.CompletionServiceStub(channel)
        reasons: dict[str, str] = {}
        for kind in KINDS:
            with pytest.raises(grpc.aio.AioRpcError) as unary:
                await completions.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model=f"echo-{kind}", prompt="hi"), timeout=10
                )
            seen.append(status_text(unary.value))
            streamed = completions.StreamCompletion(
                completions_pb2.StreamCompletionRequest(model=f"echo-{kind}", prompt="hi"), timeout=10
            )
            with pytest.raises(grpc.aio.AioRpcError) as stream:
                async for response in streamed:
                    seen.append(response.SerializeToString())
            seen.append(status_text(stream.value))
            reasons[kind] = error_info(stream.value).reason
        # Each failure is reported as what it is, the frame errors after a first token included.
        assert reasons == {
            "late-frame": "UPSTREAM_PROTOCOL_ERROR",
            "early-frame": "UPSTREAM_PROTOCOL_ERROR",
            "refused": "UPSTREAM_AUTH_FAILED",
            "broken": "UPSTREAM_UNAVAILABLE",
        }

        conversations = conversations_pb2_grpc.ConversationServiceStub(channel)
        created = await conversations.CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=[
                    conversations_pb2.Participant(id="echo-late-frame", role="first"),
                    conversations_pb2.Participant(id="echo-early-frame", role="second"),
                ],
                mode="ai-ai",
                initial_prompt="Hi",
                wait=True,
            ),
            timeout=20,
        )
        cid = created.conversation.conversation_id
        got = await conversations.GetConversation(
            conversations_pb2.GetConversationRequest(conversation_id=cid)
        )
        assert got.conversation.error.message  # it failed, with the upstream's (redacted) words
        seen += [created.SerializeToString(), got.SerializeToString()]
        events = conversations.StreamConversationEvents(
            conversations_pb2.StreamConversationEventsRequest(conversation_id=cid), timeout=10
        )
        conversation_events = [e async for e in events]
        assert any(e.event.error.message for e in conversation_events)
        seen += [e.SerializeToString() for e in conversation_events]

        reasoning = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        session = await reasoning.CreateReasoning(
            reasoning_pb2.CreateReasoningRequest(
                primary_model="echo-late-frame", secondary_model="echo-refused", prompt="Why?", wait=True
            ),
            timeout=20,
        )
        rid = session.reasoning.reasoning_id
        got_session = await reasoning.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=rid))
        assert got_session.reasoning.error.message
        seen += [session.SerializeToString(), got_session.SerializeToString()]
        watch = reasoning.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=rid), timeout=10
        )
        reasoning_events = [e async for e in watch]
        assert any(e.event.error.message for e in reasoning_events)
        seen += [e.SerializeToString() for e in reasoning_events]

    # The same over HTTP: JSON errors, and SSE error frames after a first token.
    gateway = await start_gateway(grpc_target=echo_server.grpc_target, host="127.0.0.1", port=0)
    try:
        async with aiohttp.ClientSession(gateway.url) as http:
            frames: dict[str, bytes] = {}
            for kind in KINDS:
                body = {"model": f"echo-{kind}", "prompt": "hi"}
                async with http.post("/api/v1/completions", json=body) as r:
                    assert r.status >= 400
                    seen.append(await r.read())
                sse_headers = {"Accept": "text/event-stream"}
                async with http.post("/api/v1/completions:stream", json=body, headers=sse_headers) as r:
                    frames[kind] = await r.read()
            seen += frames.values()
            assert b"event: error" in frames["late-frame"]  # an error frame after its token
    finally:
        await gateway.close()

    everything = b"\n".join(seen)
    assert b"[redacted]" in everything  # the upstream did echo it, and it was caught
    assert not leaks(everything)

    db = tmp_path / "db.sqlite"
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        rows = [repr(row) for t in tables for row in conn.execute(f'SELECT * FROM "{t}"')]
    assert rows and not leaks("\n".join(rows))
    for path in db.parent.glob("db.sqlite*"):  # the database, its WAL and shared memory
        assert not leaks(path.read_bytes()), path.name
    assert not leaks("\n".join(RECORDER.lines[start:]))


@pytest.mark.parametrize("refuses", [True, False])
async def test_ollama_discovery_echoing_its_key_leaks_it_nowhere(aiohttp_server: Any, refuses: bool) -> None:
    async def tags(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if refuses:
            return web.json_response({"error": f"bad token {auth}"}, status=403)
        return web.Response(text=f"not JSON: {auth}")  # a 200 that is no list of models

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    upstream = await aiohttp_server(app)
    client = HttpClient()
    try:
        with pytest.raises(UpstreamError) as caught:
            await discover_models(client, f"http://127.0.0.1:{upstream.port}", key=UPSTREAM_KEY)
    finally:
        await client.close()
    error = caught.value
    assert "[redacted]" in error.message
    assert not leaks(f"{error} {error.message} {error.to_status()}")


# --- stream slots -------------------------------------------------------------------------------

# A stream far larger than any flow-control window or socket buffer: a client that stops reading leaves
# the server blocked writing it.
FIREHOSE = {
    "id": "scripted-firehose",
    "provider": "scripted",
    "capabilities": ["text"],
    "script": [("y" * 4000 + " ") * 5000],
    "context_length": 8192,
}
FIREHOSE_REQUEST = {"model": "scripted-firehose", "prompt": "go", "max_tokens": 5000}


@pytest.fixture
async def firehose_server() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(keyed(make_config([FIREHOSE])))
    await server.start()
    yield server
    await server.stop(grace=0.5)


def context_errors(start: int) -> list[str]:
    """Log lines since `start` of a contextvar reset in the wrong context, or an asyncio error
    (an async generator that failed to close, a task whose exception nobody read)."""
    return [
        line
        for line in RECORDER.lines[start:]
        if "different Context" in line or ('"logger": "asyncio"' in line and '"level": "error"' in line)
    ]


async def settle_finalizers() -> None:
    """Let abandoned generators be finalized now (their closing runs in tasks of their own)."""
    for _ in range(3):
        gc.collect()
        await asyncio.sleep(0.05)


async def test_stream_slots_come_back_after_grpc_streams_aborted_under_back_pressure(
    firehose_server: AIBattleServer,
) -> None:
    start = len(RECORDER.lines)
    async with grpc.aio.insecure_channel(firehose_server.grpc_target) as channel:
        _, secret = await new_key(channel, max_concurrent_streams=2)
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.StreamCompletionRequest(**FIREHOSE_REQUEST)
        for _ in range(3):  # every round takes both slots and aborts them while the server is blocked
            calls = [stub.StreamCompletion(request, metadata=bearer(secret)) for _ in range(2)]
            for call in calls:
                assert (await call.read()).content  # started; from now on nobody reads
            await asyncio.sleep(0.3)  # the server fills the window and blocks writing
            for call in calls:
                call.cancel()
            await _two_streams_accepted(
                lambda: stub.StreamCompletion(request, metadata=bearer(secret)), _grpc_first_message
            )
    await settle_finalizers()
    assert not context_errors(start)


async def _grpc_first_message(call: Any) -> bool:
    """Whether the stream started (False: refused for lack of a slot)."""
    try:
        return bool((await call.read()).content)
    except grpc.aio.AioRpcError as error:
        assert error_info(error).reason == "TOO_MANY_STREAMS"
        return False
    finally:
        call.cancel()


async def _two_streams_accepted(open_stream: Any, started: Any) -> None:
    """Both slots come back once the server has seen the aborts (a bounded wait, not a timing)."""
    for _ in range(100):
        results = []
        for _ in range(2):
            results.append(await started(await _maybe_await(open_stream())))
        if all(results):
            return
        await asyncio.sleep(0.05)
    pytest.fail("the stream slots never came back")


async def _maybe_await(value: Any) -> Any:
    return await value if asyncio.iscoroutine(value) else value


async def test_stream_slots_come_back_after_sse_streams_aborted_under_back_pressure(
    firehose_server: AIBattleServer,
) -> None:
    start = len(RECORDER.lines)
    gateway = await start_gateway(grpc_target=firehose_server.grpc_target, host="127.0.0.1", port=0)
    try:
        async with grpc.aio.insecure_channel(firehose_server.grpc_target) as channel:
            _, secret = await new_key(channel, max_concurrent_streams=2)
        headers = {"Accept": "text/event-stream", "Authorization": f"Bearer {secret}"}
        url = f"{gateway.url}/api/v1/completions:stream"
        async with aiohttp.ClientSession() as http:

            async def open_stream() -> aiohttp.ClientResponse:
                return await http.post(url, json=FIREHOSE_REQUEST, headers=headers)

            async def started(response: aiohttp.ClientResponse) -> bool:
                try:
                    if response.status == 429:
                        assert (await response.json())["details"][0]["reason"] == "TOO_MANY_STREAMS"
                        return False
                    assert response.status == 200
                    return bool(await response.content.readline())
                finally:
                    response.close()

            for _ in range(3):
                responses = [await open_stream() for _ in range(2)]
                for response in responses:
                    assert response.status == 200
                    assert await response.content.readline()  # started; from now on nobody reads
                await asyncio.sleep(0.3)  # buffers fill up to the server, which blocks writing
                for response in responses:
                    response.close()  # abort the connection
                await _two_streams_accepted(open_stream, started)
    finally:
        await gateway.close()
    await settle_finalizers()
    assert not context_errors(start)


# --- budget -------------------------------------------------------------------------------------


class BillingUpstream:
    """OpenAI-compatible, billing one prompt token per character (as a tokenizer may for some scripts),
    whatever our estimate says; counts the requests that reached it."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        body = await request.json()
        prompt = sum(len(m["content"]) for m in body["messages"])
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1694268190,
                "model": body["model"],
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}
                ],
                "usage": {"prompt_tokens": prompt, "completion_tokens": 1, "total_tokens": prompt + 1},
            }
        )


@pytest.fixture
async def billed(aiohttp_server: Any) -> AsyncIterator[tuple[AIBattleServer, BillingUpstream]]:
    upstream = BillingUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", upstream.handle)
    http = await aiohttp_server(app)
    model = {
        "id": "remote",
        "provider": "openai",
        "upstream_model": "remote",
        "base_url": f"http://127.0.0.1:{http.port}/v1",
        "api_key_env": KEY_ENV,
        "capabilities": ["text"],
        "context_length": 1000,
        "default_max_tokens": 16,
        "pricing": {"input": 0.0001, "output": 0.0},
    }
    server = AIBattleServer(keyed(make_config([model])))
    await server.start()
    yield server, upstream
    await server.stop(grace=0.5)


async def test_a_prompt_longer_than_a_remote_models_context_is_refused_before_it_is_sent(
    billed: tuple[AIBattleServer, BillingUpstream],
) -> None:
    server, upstream = billed
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        key, secret = await new_key(channel, budget_usd=0.2)
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        for call in (stub.CreateCompletion, stub.StreamCompletion):
            request_cls = (
                completions_pb2.CreateCompletionRequest
                if call is stub.CreateCompletion
                else completions_pb2.StreamCompletionRequest
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                answer = call(request_cls(model="remote", prompt="word " * 4000), metadata=bearer(secret))
                if call is stub.StreamCompletion:
                    async for _ in answer:
                        pass
                else:
                    await answer
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(caught.value).reason == "CONTEXT_LENGTH_EXCEEDED"
    assert upstream.requests == 0
    row = await server.store.get_key(key.key_id)
    assert row is not None and row.spent_usd == 0.0


async def test_a_budget_is_reserved_on_the_real_prompt_size(
    billed: tuple[AIBattleServer, BillingUpstream],
) -> None:
    server, upstream = billed
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        key, secret = await new_key(channel, budget_usd=0.2)
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        # Within the context by our estimate (~4 characters a token), but billed 3,000 tokens ($0.30)
        # each: a reservation capped at the context (1,000 tokens, $0.10) let two of them through.
        dense = "字" * 3000
        small = "x" * 200  # billed $0.02 each
        prompts = [dense] * 4 + [small] * 6
        results = await asyncio.gather(
            *(
                stub.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(model="remote", prompt=p), metadata=bearer(secret)
                )
                for p in prompts
            ),
            return_exceptions=True,
        )
    done = [r for r in results if isinstance(r, completions_pb2.CreateCompletionResponse)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert {error_info(e).reason for e in refused} <= {"BUDGET_EXCEEDED"}
    assert all(r.usage.prompt_tokens == 200 for r in done)  # no dense prompt was sent
    row = await server.store.get_key(key.key_id)
    assert row is not None
    assert row.spent_usd <= 0.2 + 1e-9
    assert row.spent_usd == pytest.approx(sum(r.usage.cost_usd for r in done))
    assert upstream.requests == len(done) > 0
