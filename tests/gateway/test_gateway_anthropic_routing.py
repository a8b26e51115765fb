"""Routing as the Anthropic endpoint shows it: `x-aibattle-deployment` on answers of a model with several
deployments, and the non-standard `failover` field on the `content_block_delta` where an answer cut off
mid-stream continues on another deployment (the fake OpenAI upstreams of the OpenAI and Ollama routing
tests: the first drops its connection mid-body), read by the official `anthropic` client."""

from __future__ import annotations

import json
from typing import Any

import anthropic

from tests.gateway.test_gateway_compat_routing import FAILOVER, aibattle, upstreams  # noqa: F401 - fixtures
from tests.server.providers.fake_upstream import FakeUpstream, Reply

Fakes = list[tuple[FakeUpstream, str]]
ASK: list[Any] = [{"role": "user", "content": "Count to four."}]


async def test_a_stream_marks_the_failover_delta_and_names_the_deployment(api: Any) -> None:
    client = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{api.port}", api_key="sk-test", max_retries=0
    )
    async with client:
        raw = await client.messages.with_raw_response.create(
            model="gpt", max_tokens=64, messages=ASK, stream=True
        )
        assert raw.headers["x-aibattle-deployment"] == "a"
        stream = await raw.parse()
        got = [event async for event in stream]
    deltas = [e for e in got if e.type == "content_block_delta"]
    assert "".join(e.delta.text for e in deltas) == "One two three four."  # type: ignore[union-attr]
    marked = [e for e in deltas if (e.model_extra or {}).get("failover")]
    assert len(marked) == 1 and marked[0].delta.text == " three"  # type: ignore[union-attr]
    failover = marked[0].model_extra["failover"]  # type: ignore[index]
    assert {k: failover[k] for k in FAILOVER} == FAILOVER and failover["reason"]
    # One message, one text block, ended once.
    kinds = [e.type for e in got]
    assert (
        kinds.count("message_start") == kinds.count("content_block_start") == kinds.count("message_stop") == 1
    )


async def test_a_whole_answer_names_the_deployment(api: Any, upstreams: Fakes) -> None:  # noqa: F811
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Four."}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    upstreams[0][0].replies = [Reply(chunks=[json.dumps(body).encode()], content_type="application/json")]
    resp = await api.post("/v1/messages", json={"model": "gpt", "max_tokens": 64, "messages": ASK})
    assert resp.status == 200 and resp.headers["x-aibattle-deployment"] == "a"
    answer = await resp.json()
    assert answer["content"] == [{"type": "text", "text": "Four."}]
    assert answer["usage"] == {"input_tokens": 3, "output_tokens": 1}
