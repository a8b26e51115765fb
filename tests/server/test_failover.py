"""Mid-stream failover (`failover_mid_stream`, opt-in per model; issue 19).

The upstreams are real aiohttp servers on 127.0.0.1 speaking OpenAI's streaming wire format; the one
that dies sends a few chunks and then drops the connection mid-body (`Reply(reset=True)`), as a crashed
server does.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config
from server.orchestration.lifecycle import TOKEN, stream_model
from server.providers.base import ChatMessage, ChatRequest, Role
from server.providers.registry import ModelRegistry
from server.providers.resilience import CONTINUE
from server.providers.text import estimate_prompt_tokens, estimate_tokens
from tests.conftest import error_info
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake
from tests.server.providers.test_openai import DONE, chunk, usage_chunk

KEY = "sk-failover-test-key"
FAST = {"retries": 0, "backoff_seconds": 0.01}
# The pause lets the gateway read the chunks before the connection drops (see Reply.reset).
DIES = Reply(chunks=[chunk("", role="assistant"), chunk("One"), chunk(" two"), 0.3], reset=True)
CONTINUES = Reply(
    chunks=[
        chunk("", role="assistant"),
        chunk(" three"),
        chunk(" four."),
        chunk(finish="stop"),
        usage_chunk(31, 3),
        DONE,
    ]
)


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAILOVER_KEY", KEY)


def openai(model_id: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": model_id,
        "provider": "openai",
        "base_url": f"{url}/v1",
        "api_key_env": "FAILOVER_KEY",
        "upstream": FAST,
        **extra,
    }


@pytest.fixture
async def upstreams(aiohttp_server: Any) -> tuple[tuple[FakeUpstream, str], tuple[FakeUpstream, str]]:
    first, second = await start_fake(aiohttp_server), await start_fake(aiohttp_server)
    first[0].replies = [DIES]
    second[0].replies = [CONTINUES]
    return first, second


async def stream(
    server: AIBattleServer, model: str
) -> tuple[list[completions_pb2.StreamCompletionResponse], grpc.aio.AioRpcError | None]:
    received: list[completions_pb2.StreamCompletionResponse] = []
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        try:
            async for c in stub.StreamCompletion(
                completions_pb2.StreamCompletionRequest(model=model, prompt="Count to four.")
            ):
                received.append(c)
        except grpc.aio.AioRpcError as exc:
            return received, exc
    return received, None


PROMPT = (ChatMessage(Role.USER, "Count to four."),)
# The cut-off part reports no usage: its prompt and text are estimated; the continuation reports its own.
CUT_USAGE = (estimate_prompt_tokens(PROMPT), estimate_tokens("One two"))


async def test_a_fallback_continues_an_answer_cut_off_mid_stream(upstreams: Any) -> None:
    (first, url_1), (second, url_2) = upstreams
    models = [openai("gpt", url_1, fallbacks=["backup"], failover_mid_stream=True), openai("backup", url_2)]
    async with serving(models) as server:
        chunks, error = await stream(server, "gpt")
    assert error is None
    assert "".join(c.content for c in chunks) == "One two three four."  # one continuous answer
    marked = [c for c in chunks if c.HasField("failover")]
    assert len(marked) == 1 and marked[0].content == " three"  # on the first chunk of the continuation
    failover = marked[0].failover
    assert (failover.from_model, failover.to_model, failover.reason) == (
        "gpt",
        "backup",
        "UPSTREAM_UNREACHABLE",
    )
    assert [c.model for c in chunks if c.content] == ["gpt", "gpt", "backup", "backup"]
    final = chunks[-1]
    assert final.is_final
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (CUT_USAGE[0] + 31, CUT_USAGE[1] + 3)

    # The second upstream was asked to continue: the text so far as the assistant's, then the
    # instruction (OpenAI's API has no prefill), with the tokens already spent taken off the budget.
    [asked] = second.requests
    messages = asked.json["messages"]
    assert messages[-2:] == [
        {"role": "assistant", "content": "One two"},
        {"role": "user", "content": CONTINUE},
    ]
    assert messages[:-2] == first.requests[0].json["messages"]
    assert asked.json["max_tokens"] == first.requests[0].json["max_tokens"] - estimate_tokens("One two")


async def test_failover_between_deployments_names_both(upstreams: Any) -> None:
    (first, url_1), (second, url_2) = upstreams  # noqa: RUF059
    model = {
        **openai("gpt", url_1, failover_mid_stream=True),
        # Weights this far apart make "a" first (the other order: about once in 10^18).
        "deployments": [
            {"name": "a", "weight": 1e9},
            {"name": "b", "base_url": f"{url_2}/v1", "weight": 1e-9},
        ],
    }
    async with serving([model]) as server:
        chunks, error = await stream(server, "gpt")
    assert error is None
    assert "".join(c.content for c in chunks) == "One two three four."
    [marked] = [c for c in chunks if c.HasField("failover")]
    failover = marked.failover
    assert (failover.from_model, failover.from_deployment, failover.to_model, failover.to_deployment) == (
        "gpt",
        "a",
        "gpt",
        "b",
    )
    assert [c.deployment for c in chunks if c.content] == ["a", "a", "b", "b"]
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (
        CUT_USAGE[0] + 31,
        CUT_USAGE[1] + 3,
    )


async def test_without_failover_the_stream_ends_with_the_error_and_nothing_is_spliced(upstreams: Any) -> None:
    (first, url_1), (second, url_2) = upstreams  # noqa: RUF059
    models = [openai("gpt", url_1, fallbacks=["backup"]), openai("backup", url_2)]
    async with serving(models) as server:
        chunks, error = await stream(server, "gpt")
    assert "".join(c.content for c in chunks) == "One two"
    assert not any(c.HasField("failover") for c in chunks)
    assert error is not None and error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(error).reason == "UPSTREAM_UNREACHABLE"
    assert second.requests == []


async def test_an_answer_calling_a_tool_is_never_continued_elsewhere(upstreams: Any) -> None:
    (first, url_1), (second, url_2) = upstreams
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"ci'},
    }
    first.replies = [
        Reply(chunks=[chunk("", role="assistant"), chunk(None, tool_calls=[call]), 0.3], reset=True)
    ]
    models = [
        openai("gpt", url_1, fallbacks=["backup"], failover_mid_stream=True, capabilities=["text", "tools"]),
        openai("backup", url_2),
    ]
    async with serving(models) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.StreamCompletionRequest(model="gpt", prompt="Weather in Paris?")
        request.tools.add(name="get_weather").parameters.update({"type": "object"})
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            _ = [c async for c in stub.StreamCompletion(request)]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert second.requests == []


async def test_the_callers_deadline_mid_answer_is_not_failed_over(upstreams: Any) -> None:
    (first, url_1), (second, url_2) = upstreams
    # The answer begins, then the upstream falls silent until the caller's deadline: no other upstream
    # would meet that deadline, so nothing is continued (DEADLINE_EXCEEDED is no provider failure).
    first.replies = [Reply(chunks=[chunk("", role="assistant"), chunk("One")], hang=True)]
    models = [openai("gpt", url_1, fallbacks=["backup"], failover_mid_stream=True), openai("backup", url_2)]
    async with serving(models) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        request = completions_pb2.StreamCompletionRequest(model="gpt", prompt="Count to four.")
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for c in stub.StreamCompletion(request, timeout=1.0):
                received.append(c.content)
    assert "".join(received) == "One"
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert second.requests == []


async def test_the_native_sse_stream_carries_the_failover(upstreams: Any, aiohttp_client: Any) -> None:
    (first, url_1), (second, url_2) = upstreams  # noqa: RUF059
    model = {
        **openai("gpt", url_1, failover_mid_stream=True),
        "deployments": [
            {"name": "a", "weight": 1e9},
            {"name": "b", "base_url": f"{url_2}/v1", "weight": 1e-9},
        ],
    }
    async with serving([model]) as server:
        client = await aiohttp_client(create_app(server.grpc_target, GatewayOptions(descriptor_set=None)))
        sse = await client.post(
            "/api/v1/completions:stream",
            json={"model": "gpt", "prompt": "Count to four."},
            headers={"Accept": "text/event-stream"},
        )
        assert sse.status == 200
        assert sse.headers["x-aibattle-deployment"] == "a"  # who began the answer
        results = [
            json.loads(line.removeprefix("data:"))["result"]
            for line in (await sse.text()).splitlines()
            if line.startswith("data:")
        ]
        assert "".join(r["content"] for r in results) == "One two three four."
        [marked] = [r for r in results if r.get("failover")]
        assert marked["failover"] == {
            "from_model": "gpt",
            "from_deployment": "a",
            "to_model": "gpt",
            "to_deployment": "b",
            "reason": "UPSTREAM_UNREACHABLE",
        }
        assert results[-1]["usage"]["completion_tokens"] == CUT_USAGE[1] + 3
        await client.close()


async def test_a_run_takes_the_continued_answer_as_one_reply() -> None:
    """Conversations and reasoning runs call models through `stream_model`: with failover the reply is
    the whole continued text, from the model that finished it, with both parts' usage."""
    models = [
        {
            "id": "cut",
            "provider": "scripted",
            "script": ["one two three"],
            "error_after_chunks": 2,
            "failover_mid_stream": True,
            "fallbacks": ["finisher"],
        },
        {"id": "finisher", "provider": "scripted", "script": ["three four."]},
    ]
    config = Config.from_dict({"server": {"http_addr": ""}, "models": models})
    registry = ModelRegistry(config.models, config.local)
    await registry.start()
    try:
        flushed: list[str] = []

        async def flush(events: list[Any]) -> None:
            flushed.extend(e.text for e in events if e.kind == TOKEN)

        model, _ = registry.get("cut", None)
        request = ChatRequest(messages=PROMPT, max_tokens=50)
        reply = await stream_model(registry, model, request, flush, None)
    finally:
        await registry.close()
    assert reply.text == "one two three four."
    assert "".join(flushed) == reply.text
    assert reply.model.id == "finisher"
    # The cut part's tokens (estimated) plus the finisher's (the scripted model counts words).
    assert reply.usage.completion_tokens == estimate_tokens("one two ") + 2
