"""Reasoning text in every client dialect, and collaboration models through the official clients.

Part one: a model's reasoning (here a fake Anthropic upstream's thinking, the wire format byte for byte)
reaches each official client where it looks for it: `reasoning_content` (openai), `thinking` (ollama),
thinking blocks (anthropic, when the request enables thinking). Part two, the acceptance of issue 20:
a `[[collaborations]]` model of scripted members called with the `openai`, `ollama` and `anthropic`
clients streams its steps as thinking and its answer as content, sums the run's usage, names its
session in `x-aibattle-reasoning-id` (readable over REST with every iteration), and a dropped stream
cancels the run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import anthropic
import ollama
import openai
import pytest

from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config
from tests.server.providers.fake_upstream import (
    FakeUpstream,
    Reply,
    anthropic_event,
    anthropic_message,
    start_fake,
)

KEY_ENV = "AIBATTLE_TEST_ANTHROPIC_KEY"
REASONING_HEADER = "x-aibattle-reasoning-id"
ASK: Any = [{"role": "user", "content": "What is the capital of Australia?"}]
THOUGHT = ["The largest city is Sydney, ", "but the capital is Canberra."]
ANSWER = ["The capital", " is Canberra."]

# The members' scripts (as tests/server/test_reasoning.py's iterative_refinement): a wrong draft, a
# critique asking for a revision, the revision, an approval.
DRAFT = "Sydney is the capital of Australia, since it is the largest city and the best known abroad."
REVISION = (
    "Canberra is the capital of Australia. It was chosen in 1908 as a compromise between Sydney and"
    " Melbourne, and Parliament has sat there since 1927."
)
CRITIQUE_REVISE = (
    "The draft names the wrong city: size does not make a capital.\nVERDICT: REVISE\n"
    "FOCUS: factual accuracy; historical context"
)
CRITIQUE_APPROVE = "Correct and well supported.\nVERDICT: APPROVE\nFOCUS: none"
STEPS = [("draft", "drafter"), ("critique", "critic"), ("revision", "drafter"), ("critique", "critic")]


def scripted(model_id: str, *replies: str, delay_ms: int = 0) -> dict[str, Any]:
    model: dict[str, Any] = {
        "id": model_id,
        "provider": "scripted",
        "capabilities": ["text"],
        "script": list(replies),
        "pricing": {"input": 0.001, "output": 0.002},
    }
    if delay_ms:
        model["chunk_delay_ms"] = delay_ms
    return model


def config(fake_url: str) -> Config:
    return Config.from_dict(
        {
            "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
            "models": [
                {
                    "id": "claude",
                    "provider": "anthropic",
                    "upstream_model": "claude-sonnet-4-5",
                    "base_url": fake_url,
                    "api_key_env": KEY_ENV,
                    "upstream": {"retries": 0, "backoff_seconds": 0.0},
                },
                scripted("drafter", DRAFT, REVISION),
                scripted("critic", CRITIQUE_REVISE, CRITIQUE_APPROVE),
                scripted("slow-drafter", " ".join(f"word{i}" for i in range(400)), delay_ms=20),
                scripted("steady-drafter", " ".join(f"word{i}" for i in range(30)), delay_ms=20),
            ],
            "collaborations": [
                {
                    "id": "panel",
                    "strategy": "iterative_refinement",
                    "primary": "drafter",
                    "secondary": "critic",
                    "max_iterations": 3,
                },
                {
                    "id": "slow-panel",
                    "strategy": "iterative_refinement",
                    "primary": "slow-drafter",
                    "secondary": "critic",
                    "max_iterations": 3,
                },
                {
                    "id": "keeper",
                    "strategy": "iterative_refinement",
                    "primary": "steady-drafter",
                    "secondary": "critic",
                    "max_iterations": 2,
                    "run_to_completion": True,
                },
            ],
        }
    )


def thinking_stream(thought: Sequence[str], answer: Sequence[str]) -> list[bytes | float]:
    """A streamed Message with a thinking block (deltas, then its signature) and a text block, as
    Anthropic sends one with extended thinking on."""
    start: dict[str, Any] = {
        "model": "claude-sonnet-4-5",
        "id": "msg_01ThinkingStream",
        "type": "message",
        "role": "assistant",
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": 25, "output_tokens": 1},
    }
    events: list[bytes | float] = [
        anthropic_event("message_start", message=start),
        anthropic_event("content_block_start", index=0, content_block={"type": "thinking", "thinking": ""}),
        anthropic_event("ping"),
    ]
    for piece in thought:
        events.append(
            anthropic_event(
                "content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": piece}
            )
        )
    events += [
        anthropic_event(
            "content_block_delta", index=0, delta={"type": "signature_delta", "signature": "EqQB"}
        ),
        anthropic_event("content_block_stop", index=0),
        anthropic_event("content_block_start", index=1, content_block={"type": "text", "text": ""}),
    ]
    for piece in answer:
        events.append(
            anthropic_event("content_block_delta", index=1, delta={"type": "text_delta", "text": piece})
        )
    events += [
        anthropic_event("content_block_stop", index=1),
        anthropic_event(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"input_tokens": 25, "output_tokens": 40},
        ),
        anthropic_event("message_stop"),
    ]
    return events


def thinking_message() -> Reply:
    return anthropic_message(
        [
            {"type": "thinking", "thinking": "".join(THOUGHT), "signature": "EqQB"},
            {"type": "text", "text": "".join(ANSWER)},
        ],
        output_tokens=40,
    )


@pytest.fixture
async def fake(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeUpstream, str]:
    monkeypatch.setenv(KEY_ENV, "sk-ant-api03-test-Collab2Secret")
    return await start_fake(aiohttp_server)


@pytest.fixture
async def server(fake: tuple[FakeUpstream, str]) -> AsyncIterator[AIBattleServer]:
    app = AIBattleServer(config(fake[1]))
    await app.start()
    yield app
    await app.stop(grace=0.5)


@pytest.fixture
async def gw(aiohttp_client: Any, server: AIBattleServer, api_descriptor_set: Path) -> Any:
    """The gateway (in-process, as `python -m server` runs it), cancelling a handler whose client left."""
    app = create_app(
        server.grpc_target, GatewayOptions(descriptor_set=api_descriptor_set), dispatcher=server.dispatcher()
    )
    return await aiohttp_client(app, server_kwargs={"handler_cancellation": True})


class Headers:
    """The headers of each response an httpx-based client received (its `response` event hook)."""

    def __init__(self) -> None:
        self.seen: list[Any] = []

    async def __call__(self, response: Any) -> None:
        self.seen.append(response.headers)

    @property
    def last(self) -> Any:
        return self.seen[-1]


@pytest.fixture
def headers() -> Headers:
    return Headers()


@pytest.fixture
async def oai(gw: Any, headers: Headers) -> AsyncIterator[openai.AsyncOpenAI]:
    http = openai.DefaultAsyncHttpxClient(event_hooks={"response": [headers]})
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{gw.port}/v1", api_key="sk-test", max_retries=0, http_client=http
    )
    yield client
    await client.close()


@pytest.fixture
async def olm(gw: Any, headers: Headers) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=f"http://127.0.0.1:{gw.port}", event_hooks={"response": [headers]})
    yield client
    await client.close()


@pytest.fixture
async def claude(gw: Any, headers: Headers) -> AsyncIterator[anthropic.AsyncAnthropic]:
    http = anthropic.DefaultAsyncHttpxClient(event_hooks={"response": [headers]})  # its own httpx
    client = anthropic.AsyncAnthropic(
        base_url=f"http://127.0.0.1:{gw.port}", api_key="sk-unused", max_retries=0, http_client=http
    )
    yield client
    await client.close()


def reasoning_of(delta: Any) -> str:
    """`reasoning_content` as the official openai client keeps it: an extra field of the delta/message."""
    return (delta.model_extra or {}).get("reasoning_content") or ""


# --- part one: a model's reasoning in each dialect ----------------------------------------------------


async def test_openai_streams_reasoning_content_before_the_answer(
    oai: openai.AsyncOpenAI, fake: tuple[FakeUpstream, str], headers: Headers
) -> None:
    fake[0].replies = [Reply(chunks=thinking_stream(THOUGHT, ANSWER))]
    stream = await oai.chat.completions.create(model="claude", messages=ASK, stream=True)
    order: list[str] = []
    reasoning, content = "", ""
    async for chunk in stream:
        delta = chunk.choices[0].delta
        if reasoning_of(delta):
            reasoning += reasoning_of(delta)
            order.append("reasoning")
        if delta.content:
            content += delta.content
            order.append("content")
    assert reasoning == "".join(THOUGHT) and content == "".join(ANSWER)
    assert order == sorted(order, reverse=True)  # every reasoning delta before the answer's
    assert REASONING_HEADER not in headers.last  # not a collaboration: no session to name


async def test_openai_whole_answer_carries_reasoning_content(
    oai: openai.AsyncOpenAI, fake: tuple[FakeUpstream, str]
) -> None:
    fake[0].replies = [thinking_message()]
    reply = await oai.chat.completions.create(model="claude", messages=ASK)
    message = reply.choices[0].message
    assert message.content == "".join(ANSWER) and reasoning_of(message) == "".join(THOUGHT)
    # Sent back with its reasoning (as `messages.append(message)` does), the turn is taken; the
    # reasoning is not carried to the model.
    history = [*ASK, message.model_dump(exclude_none=True), {"role": "user", "content": "And Brazil?"}]
    again = await oai.chat.completions.create(model="claude", messages=history)
    assert again.choices[0].message.content == "".join(ANSWER)
    sent = fake[0].requests[-1].json
    assert "".join(THOUGHT) not in json.dumps(sent) and "reasoning_content" not in json.dumps(sent)


async def test_ollama_relays_thinking_unless_think_is_false(
    olm: ollama.AsyncClient, fake: tuple[FakeUpstream, str]
) -> None:
    fake[0].replies = [Reply(chunks=thinking_stream(THOUGHT, ANSWER))]
    parts = [part async for part in await olm.chat(model="claude", messages=ASK, stream=True, think=True)]
    thinking = "".join(p.message.thinking or "" for p in parts)
    content = "".join(p.message.content or "" for p in parts)
    assert thinking == "".join(THOUGHT) and content == "".join(ANSWER)
    first_content = next(i for i, p in enumerate(parts) if p.message.content)
    assert all(not p.message.thinking for p in parts[first_content:])
    # think unset: relayed just the same; think false: suppressed.
    fake[0].replies = [thinking_message()]
    whole = await olm.chat(model="claude", messages=ASK, stream=False)
    assert whole.message.thinking == "".join(THOUGHT) and whole.message.content == "".join(ANSWER)
    quiet = await olm.chat(model="claude", messages=ASK, stream=False, think=False)
    assert not quiet.message.thinking and quiet.message.content == "".join(ANSWER)
    generated = await olm.generate(model="claude", prompt="Capital of Australia?", stream=False)
    assert generated.thinking == "".join(THOUGHT) and generated.response == "".join(ANSWER)
    # The history's thinking is taken and not carried.
    history = [*ASK, {"role": "assistant", "content": "x", "thinking": "secret steps"}, *ASK]
    await olm.chat(model="claude", messages=history, stream=False)
    assert "secret steps" not in json.dumps(fake[0].requests[-1].json)


async def test_ollama_refuses_a_thinking_level_naming_think(gw: Any) -> None:
    resp = await gw.post(
        "/api/chat", json={"model": "claude", "messages": ASK, "think": "high", "stream": False}
    )
    assert resp.status == 400 and "'think'" in (await resp.json())["error"]


async def test_anthropic_thinking_blocks_only_when_enabled(
    claude: anthropic.AsyncAnthropic, fake: tuple[FakeUpstream, str]
) -> None:
    enabled: Any = {"type": "enabled", "budget_tokens": 1024}
    fake[0].replies = [Reply(chunks=thinking_stream(THOUGHT, ANSWER))]
    kinds: list[str] = []
    async with claude.messages.stream(
        model="claude", max_tokens=2048, messages=ASK, thinking=enabled
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                kinds.append(event.delta.type)
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "".join(THOUGHT)  # type: ignore[union-attr]
    assert final.content[1].text == "".join(ANSWER)  # type: ignore[union-attr]
    assert kinds == ["thinking_delta"] * len(THOUGHT) + ["signature_delta"] + ["text_delta"] * len(ANSWER)
    # Not enabled: the text only, so `content[0].text` code keeps working.
    fake[0].replies = [thinking_message()]
    plain = await claude.messages.create(model="claude", max_tokens=64, messages=ASK)
    assert [b.type for b in plain.content] == ["text"]
    whole = await claude.messages.create(
        model="claude", max_tokens=2048, messages=ASK, thinking={"type": "adaptive"}
    )
    assert [b.type for b in whole.content] == ["thinking", "text"]
    # Sent back, a thinking block is taken and not carried to the model.
    history: Any = [*ASK, {"role": "assistant", "content": whole.content}, *ASK]
    await claude.messages.create(model="claude", max_tokens=2048, messages=history, thinking=enabled)
    assert "".join(THOUGHT) not in json.dumps(fake[0].requests[-1].json)


@pytest.mark.parametrize(
    ("thinking", "named"),
    [
        ({"type": "enabled", "budget_tokens": 512}, "thinking.budget_tokens"),
        ({"type": "enabled", "budget_tokens": 4096}, "thinking.budget_tokens"),  # not below max_tokens
        ({"type": "enabled"}, "thinking.budget_tokens"),
        ({"type": "between_tools"}, "thinking.type"),
        ({"type": "adaptive", "display": "omitted"}, "thinking.display"),
        ({"type": "sometimes"}, "thinking.type"),
    ],
)
async def test_anthropic_refuses_thinking_it_cannot_honour(
    claude: anthropic.AsyncAnthropic, thinking: Any, named: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        await claude.messages.create(model="claude", max_tokens=2048, messages=ASK, thinking=thinking)
    assert repr(named) in str(bad.value.message) or named in str(bad.value.message)


# --- part two: collaboration models (issue 20's acceptance) -------------------------------------------


async def session(gw: Any, reasoning_id: str, *, until: str = "RUN_STATUS_COMPLETED") -> dict[str, Any]:
    """The stored session over REST, once its status is `until` (within 10 s)."""
    body: dict[str, Any] = {}
    for _ in range(200):
        resp = await gw.get(f"/api/v1/collaborative-reasoning/{reasoning_id}")
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        if body["status"] == until:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"session {reasoning_id} is {body.get('status')}, not {until}")


def assert_steps(thinking: str, body: dict[str, Any]) -> None:
    """The thinking shows each step labelled by kind and model, and the session holds every iteration."""
    assert [(it["kind"], it["model"]) for it in body["iterations"]] == STEPS
    assert body["final_result"] == REVISION and body["collaboration_model"] == "panel"
    for kind, model in STEPS:
        assert kind in thinking and model in thinking
    assert DRAFT in thinking and "VERDICT: REVISE" in thinking


async def test_openai_streaming_shows_the_steps_then_the_answer(
    oai: openai.AsyncOpenAI, gw: Any, headers: Headers
) -> None:
    stream = await oai.chat.completions.create(
        model="panel",
        messages=ASK,
        stream=True,
        stream_options={"include_usage": True},
    )
    order: list[str] = []
    reasoning, content, usage = "", "", None
    async for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if reasoning_of(delta):
            reasoning += reasoning_of(delta)
            order.append("reasoning")
        if delta.content:
            content += delta.content
            order.append("content")
    assert content == REVISION
    assert order and order[0] == "reasoning" and order == sorted(order, reverse=True)
    reasoning_id = headers.last[REASONING_HEADER]
    body = await session(gw, reasoning_id)
    assert_steps(reasoning, body)
    assert usage is not None and usage.total_tokens == body["usage"]["total_tokens"]


async def test_openai_whole_answer_with_the_summed_usage(
    oai: openai.AsyncOpenAI, gw: Any, headers: Headers
) -> None:
    reply = await oai.chat.completions.create(model="panel", messages=ASK)
    message = reply.choices[0].message
    assert message.content == REVISION and reply.choices[0].finish_reason == "stop"
    body = await session(gw, headers.last[REASONING_HEADER])
    assert_steps(reasoning_of(message), body)
    # The run's usage, summed over every step.
    assert reply.usage is not None
    steps = body["iterations"]
    assert reply.usage.completion_tokens == sum(int(it["usage"]["completion_tokens"]) for it in steps)
    assert reply.usage.total_tokens == body["usage"]["total_tokens"]
    assert reply.usage.total_tokens > max(int(it["usage"]["total_tokens"]) for it in steps)


async def test_ollama_shows_the_steps_then_the_answer(
    olm: ollama.AsyncClient, gw: Any, headers: Headers
) -> None:
    parts = [part async for part in await olm.chat(model="panel", messages=ASK, stream=True)]
    thinking = "".join(p.message.thinking or "" for p in parts)
    content = "".join(p.message.content or "" for p in parts)
    assert content == REVISION
    first_content = next(i for i, p in enumerate(parts) if p.message.content)
    assert first_content > 0 and all(not p.message.thinking for p in parts[first_content:])
    body = await session(gw, headers.last[REASONING_HEADER])
    assert_steps(thinking, body)
    assert parts[-1].done and parts[-1].eval_count == sum(
        int(it["usage"]["completion_tokens"]) for it in body["iterations"]
    )
    generated = await olm.generate(model="panel", prompt=ASK[0]["content"], stream=False)
    assert generated.response == REVISION and generated.thinking
    assert headers.last[REASONING_HEADER] != body["reasoning_id"]  # a run of its own
    await session(gw, headers.last[REASONING_HEADER])


async def test_anthropic_shows_the_steps_as_thinking_blocks(
    claude: anthropic.AsyncAnthropic, gw: Any, headers: Headers
) -> None:
    async with claude.messages.stream(
        model="panel", max_tokens=2048, messages=ASK, thinking={"type": "enabled", "budget_tokens": 1024}
    ) as stream:
        final = await stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[1].text == REVISION  # type: ignore[union-attr]
    body = await session(gw, headers.last[REASONING_HEADER])
    assert_steps(final.content[0].thinking, body)  # type: ignore[union-attr]
    assert final.usage.output_tokens == sum(
        int(it["usage"]["completion_tokens"]) for it in body["iterations"]
    )
    # Thinking not enabled: the answer alone, and the session still named.
    plain = await claude.messages.create(model="panel", max_tokens=2048, messages=ASK)
    assert [b.type for b in plain.content] == ["text"]
    assert plain.content[0].text == REVISION  # type: ignore[union-attr]
    other = await session(gw, headers.last[REASONING_HEADER])
    assert other["reasoning_id"] != body["reasoning_id"] and len(other["iterations"]) == len(STEPS)


async def test_native_rest_names_the_session(gw: Any) -> None:
    whole = await gw.post("/api/v1/completions", json={"model": "panel", "prompt": ASK[0]["content"]})
    assert whole.status == 200
    answer = await whole.json()
    assert answer["content"] == REVISION and whole.headers[REASONING_HEADER] == answer["reasoning_id"]
    streamed = await gw.post(
        "/api/v1/completions:stream",
        json={"model": "panel", "prompt": ASK[0]["content"]},
        headers={"Accept": "text/event-stream"},
    )
    frames = [
        json.loads(line[6:])["result"]
        for line in (await streamed.text()).splitlines()
        if line[:6] == "data: "
    ]
    assert {f["reasoning_id"] for f in frames} == {streamed.headers[REASONING_HEADER]}
    await session(gw, streamed.headers[REASONING_HEADER])


async def test_a_dropped_stream_cancels_its_run(oai: openai.AsyncOpenAI, gw: Any, headers: Headers) -> None:
    stream = await oai.chat.completions.create(model="slow-panel", messages=ASK, stream=True)
    async for chunk in stream:
        if chunk.choices and reasoning_of(chunk.choices[0].delta):
            break  # the run is under way: the draft is streaming
    await stream.close()
    body = await session(gw, headers.last[REASONING_HEADER], until="RUN_STATUS_CANCELLED")
    assert body["final_result"] == ""


async def test_ollama_dropping_the_stream_cancels_the_run_too(
    olm: ollama.AsyncClient, gw: Any, headers: Headers
) -> None:
    parts = await olm.chat(model="slow-panel", messages=ASK, stream=True)
    async for part in parts:
        if part.message.thinking:
            break
    await parts.aclose()  # type: ignore[attr-defined]
    await session(gw, headers.last[REASONING_HEADER], until="RUN_STATUS_CANCELLED")


async def test_a_model_that_runs_to_completion_outlives_its_caller(
    claude: anthropic.AsyncAnthropic, gw: Any, headers: Headers
) -> None:
    async with claude.messages.stream(
        model="keeper", max_tokens=2048, messages=ASK, thinking={"type": "adaptive"}
    ) as stream:
        async for event in stream:
            if event.type == "content_block_delta":
                break  # the draft is streaming; the client leaves
    body = await session(gw, headers.last[REASONING_HEADER])
    assert [it["kind"] for it in body["iterations"]][:2] == ["draft", "critique"]
    assert body["final_result"]


async def test_collaboration_models_are_listed_as_thinking_models(
    oai: openai.AsyncOpenAI, olm: ollama.AsyncClient
) -> None:
    assert {"panel", "slow-panel", "keeper"} <= {m.id for m in (await oai.models.list()).data}
    assert {"panel", "slow-panel", "keeper"} <= {m.model for m in (await olm.list()).models}
    shown = await olm.show("panel")
    assert shown.capabilities is not None and "thinking" in shown.capabilities
