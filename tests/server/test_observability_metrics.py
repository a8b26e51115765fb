"""The server's Prometheus series after known traffic, read from `metrics.REGISTRY` in process.

The registry is the process's one and counts every test's traffic, so each test compares the values
before and after its own calls (`Delta`). Scripted models stand in for providers, and a fake
OpenAI-compatible upstream where retries and cooldown need a real HTTP upstream.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc, reasoning_pb2
from common.observability import UPSTREAM_MS_METADATA, metrics
from server.app import AIBattleServer
from server.storage import Lease, SqliteStore
from tests.conftest import error_info
from tests.security_testlib import ADMIN, bearer, new_key, secure_config
from tests.server.providers.fake_upstream import Reply, serving, start_fake
from tests.server.reasoning_testlib import create, events, scripted
from tests.server.reasoning_testlib import serving as reasoning_serving
from tests.server.test_reasoning import CRITIQUE_REVISE, DRAFT

COMPLETE = "/aibattle.v1.CompletionService/CreateCompletion"
STREAM = "/aibattle.v1.CompletionService/StreamCompletion"
ECHO_REPLY_WORDS = 8  # "Hello there, friend. This is a scripted reply." (tests/conftest.py)


def value(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


class Delta:
    """Sample values now, to compare with after some traffic: `delta(name, **labels)`."""

    def __init__(self) -> None:
        self._before = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in metrics.REGISTRY.collect()
            for sample in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        before = self._before.get((name, tuple(sorted(labels.items()))), 0.0)
        return value(name, **labels) - before


@pytest.fixture
async def secure() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(secure_config())
    await server.start()
    yield server
    await server.stop(grace=0.5)


async def test_grpc_calls_are_counted_by_route_status_and_whose_fault(
    secure: AIBattleServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(metrics, "key_label", True)
    caplog.set_level(logging.INFO, logger="aibattle.access")
    async with grpc.aio.insecure_channel(secure.grpc_target) as channel:
        key, secret = await new_key(channel, rpm=1)  # a burst of 2 requests, then refusals
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        delta = Delta()
        # 1. answered
        call = stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="hello world"),
            metadata=bearer(secret),
        )
        reply = await call
        echoed = dict(await call.initial_metadata())
        # 2. the caller's mistake: no model
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await stub.CreateCompletion(
                completions_pb2.CreateCompletionRequest(prompt="x"), metadata=bearer(secret)
            )
        # 3. the key's limit
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await stub.CreateCompletion(
                completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="x"),
                metadata=bearer(secret),
            )
        # 4. the provider's failure, mid-stream (the admin key has no limits)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            async for _ in stub.StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="scripted-fail", prompt="x"), metadata=ADMIN
            ):
                pass

    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(limited.value).reason == "RATE_LIMITED"
    assert error_info(failed.value).reason == "PROVIDER_ERROR"
    # A failed call echoes its request id too (sent before its status).
    assert dict(invalid.value.initial_metadata() or ())["x-request-id"]
    assert len(echoed["x-request-id"]) == 32
    assert float(echoed[UPSTREAM_MS_METADATA]) > 0  # the scripted model's stream, however quick

    requests = "aibattle_requests_total"
    assert delta(requests, surface="grpc", route=COMPLETE, status="OK", error_type="") == 1
    assert (
        delta(
            requests, surface="grpc", route=COMPLETE, status="INVALID_ARGUMENT", error_type="caller_invalid"
        )
        == 1
    )
    assert (
        delta(
            requests,
            surface="grpc",
            route=COMPLETE,
            status="RESOURCE_EXHAUSTED",
            error_type="policy_rate_limited",
        )
        == 1
    )
    assert (
        delta(requests, surface="grpc", route=STREAM, status="UNAVAILABLE", error_type="provider_unavailable")
        == 1
    )
    assert delta("aibattle_limit_refusals_total", limit="rpm") == 1
    assert delta("aibattle_request_duration_seconds_count", surface="grpc", route=COMPLETE) == 3
    assert delta("aibattle_request_overhead_seconds_count", surface="grpc", route=STREAM) == 1
    assert value("aibattle_requests_in_flight", surface="grpc") == 0
    assert value("aibattle_open_streams", transport="grpc") == 0

    # Model calls: tokens, time, cost; the failed one by whose fault.
    model = {"model": "scripted-echo", "provider": "scripted", "deployment": ""}
    assert delta("aibattle_model_calls_total", **model, error_type="") == 1
    assert (
        delta(
            "aibattle_model_calls_total",
            model="scripted-fail",
            provider="scripted",
            deployment="",
            error_type="provider_unavailable",
        )
        == 1
    )
    assert delta("aibattle_tokens_total", **model, direction="input") == reply.usage.prompt_tokens == 2
    assert delta("aibattle_tokens_total", **model, direction="output") == ECHO_REPLY_WORDS
    assert delta("aibattle_time_to_first_token_seconds_count", **model) == 1
    assert delta("aibattle_time_per_output_token_seconds_count", **model) == 1
    assert delta("aibattle_upstream_duration_seconds_count", **model) == 1
    assert delta("aibattle_cost_usd_total", **model) == pytest.approx(reply.usage.cost_usd)
    assert reply.usage.cost_usd > 0

    # The opt-in series, by key id (never its secret).
    assert delta("aibattle_key_requests_total", key_id=key.key_id) == 3
    assert delta("aibattle_key_cost_usd_total", key_id=key.key_id) == pytest.approx(reply.usage.cost_usd)
    assert secret not in metrics.exposition().decode()

    # The access line of the answered call: its model, tokens, cost and overhead.
    [line] = [
        r
        for r in caplog.records
        if r.name == "aibattle.access" and getattr(r, "model", "") == "scripted-echo"
    ]
    assert line.method == COMPLETE and line.code == "OK"  # type: ignore[attr-defined]
    assert (line.input_tokens, line.output_tokens) == (2, ECHO_REPLY_WORDS)  # type: ignore[attr-defined]
    assert line.cost_usd == pytest.approx(reply.usage.cost_usd)  # type: ignore[attr-defined]
    assert 0 <= line.overhead_ms <= line.ms  # type: ignore[attr-defined]


async def test_a_stream_sends_its_metadata_with_its_first_message(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    call = stub.StreamCompletion(
        completions_pb2.StreamCompletionRequest(model="scripted-slow", prompt="x"),
        metadata=(("x-request-id", "stream-7"),),
    )
    first = await call.read()
    metadata = dict(await call.initial_metadata())
    assert first.content and metadata["x-request-id"] == "stream-7"
    # Sent with the first message: the wait on the provider up to it is in it.
    assert float(metadata[UPSTREAM_MS_METADATA]) > 0
    call.cancel()


async def test_switched_off_metrics_record_nothing(
    channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "enabled", False)
    delta = Delta()
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="x"))
    assert delta("aibattle_requests_total", surface="grpc", route=COMPLETE, status="OK", error_type="") == 0
    assert (
        delta(
            "aibattle_model_calls_total",
            model="scripted-echo",
            provider="scripted",
            deployment="",
            error_type="",
        )
        == 0
    )
    assert delta("aibattle_store_duration_seconds_count", operation="get") == 0


async def test_retries_fallbacks_and_cooldown(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIBATTLE_TEST_KEY", "sk-test-metrics-0123456789")
    upstream, url = await start_fake(aiohttp_server)
    upstream.replies = [
        Reply(status=503, chunks=[b'{"error": {"message": "busy"}}'], content_type="application/json")
    ]
    models: list[dict[str, Any]] = [
        {
            "id": "flaky",
            "provider": "openai",
            "base_url": f"{url}/v1",
            "api_key_env": "AIBATTLE_TEST_KEY",
            "fallbacks": ["steady"],
            "upstream": {
                "retries": 1,
                "backoff_seconds": 0,
                "cooldown_after_failures": 2,
                "cooldown_seconds": 0.3,
            },
        },
        {"id": "steady", "provider": "scripted", "script": ["Steady answer."]},
    ]
    port = url.rsplit(":", 1)[1]
    cooldown = {"provider": "openai", "upstream": f"127.0.0.1:{port}"}
    delta = Delta()
    async with serving(models) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        reply = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="flaky", prompt="x")
        )
        assert reply.model == "steady" and len(upstream.requests) == 2
        assert value("aibattle_upstream_cooldown", **cooldown) == 1
        await asyncio.sleep(0.6)
        assert value("aibattle_upstream_cooldown", **cooldown) == 0
    assert delta("aibattle_upstream_retries_total", model="flaky", provider="openai", deployment="") == 1
    assert delta("aibattle_fallbacks_total", model="flaky", fallback="steady") == 1
    assert (
        delta(
            "aibattle_model_calls_total",
            model="flaky",
            provider="openai",
            deployment="",
            error_type="provider_unavailable",
        )
        == 2
    )
    assert (
        delta("aibattle_model_calls_total", model="steady", provider="scripted", deployment="", error_type="")
        == 1
    )


async def test_a_reasoning_session_counts_its_run_handoffs_stuck_signals_and_store_time() -> None:
    takeover = "Canberra is the capital; the seat of government moved there from Melbourne in 1927."
    improved = "Canberra, the planned capital in the Australian Capital Territory, chosen in 1908."
    delta = Delta()
    async with reasoning_serving(
        scripted("looper", DRAFT),  # the same reply every time: its revision loops
        scripted("rescuer", CRITIQUE_REVISE, takeover, improved),
    ) as (_, stub):
        reasoning = await create(
            stub, primary_model="looper", secondary_model="rescuer", max_iterations=2, wait=True
        )
        await events(stub, reasoning.reasoning_id)
    strategy = "iterative_refinement"
    assert delta("aibattle_runs_total", kind="reasoning", strategy=strategy, status="completed") == 1
    assert value("aibattle_runs_in_progress", kind="reasoning") == 0
    assert delta("aibattle_stuck_signals_total", signal="loop") == 1
    # critique <- draft, revision <- critique, takeover <- the looping revision, then once more each way
    assert delta("aibattle_handoffs_total", strategy=strategy) == 5
    assert delta("aibattle_store_duration_seconds_count", operation="create") == 1
    assert delta("aibattle_store_duration_seconds_count", operation="commit") >= len(reasoning.iterations)
    assert delta("aibattle_follower_lag_events_count") >= 1
    assert (
        delta("aibattle_model_calls_total", model="looper", provider="scripted", deployment="", error_type="")
        == 3
    )


async def test_a_cascade_escalation_is_counted() -> None:
    delta = Delta()
    async with reasoning_serving(
        scripted("cheap", "I cannot help with that request."), scripted("strong", "Canberra.")
    ) as (_, stub):
        reasoning = await create(
            stub, primary_model="cheap", secondary_model="strong", collaboration_strategy="cascade", wait=True
        )
    assert reasoning.usage.escalated
    assert delta("aibattle_escalations_total", strategy="cascade") == 1
    assert delta("aibattle_stuck_signals_total", signal="refusal") == 1
    assert delta("aibattle_runs_total", kind="reasoning", strategy="cascade", status="completed") == 1


async def test_a_failed_and_a_cancelled_run_are_counted_by_status() -> None:
    delta = Delta()
    broken = {"id": "broken", "provider": "scripted", "script": ["x"], "error_after_chunks": 0}
    async with reasoning_serving(scripted("slow", " ".join(["word"] * 50), delay_ms=20), broken) as (_, stub):
        failed = await create(stub, primary_model="broken", wait=True)
        running = await create(stub, primary_model="slow")
        await asyncio.sleep(0.1)
        await stub.CancelReasoning(reasoning_pb2.CancelReasoningRequest(reasoning_id=running.reasoning_id))
    assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    strategy = "iterative_refinement"
    assert delta("aibattle_runs_total", kind="reasoning", strategy=strategy, status="failed") == 1
    assert delta("aibattle_runs_total", kind="reasoning", strategy=strategy, status="cancelled") == 1
    assert value("aibattle_runs_in_progress", kind="reasoning") == 0


# ---- the stored trace context


_OLD_SCHEMA = """
CREATE TABLE resources (
    resource_id TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL DEFAULT '',
    status INTEGER NOT NULL, body BLOB NOT NULL, last_sequence INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL, updated_at REAL NOT NULL, runner_id TEXT, lease_until REAL
);
INSERT INTO resources VALUES ('old-1', 'reasoning', '', 1, x'', 0, 1.0, 1.0, NULL, NULL);
"""
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
LATER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_an_older_database_gains_the_traceparent_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.executescript(_OLD_SCHEMA)
    store = SqliteStore(str(path))
    await store.open()
    try:
        old = await store.get("old-1", kind="reasoning")
        assert old is not None and old.traceparent is None
        await store.create(
            "reasoning", "new-1", owner="", status=1, body=b"", events=[], traceparent=TRACEPARENT
        )
        new = await store.get("new-1", kind="reasoning")
        assert new is not None and new.traceparent == TRACEPARENT
        # A claim that starts a run stores its trace context; one that starts none keeps the last.
        lease = Lease("runner", 0.0)
        claim: dict[str, Any] = {"expected_sequence": 0, "status": 1, "body": b"", "events": [], "now": 1.0}
        assert await store.claim("new-1", lease, **claim, traceparent=LATER) == 0
        assert await store.claim("new-1", lease, **claim) == 0
        claimed = await store.get("new-1", kind="reasoning")
        assert claimed is not None and claimed.traceparent == LATER
    finally:
        await store.close()
    await store.open()  # opening again finds the column there
    await store.close()


async def test_a_call_cut_short_counts_the_cost_its_key_was_charged(secure: AIBattleServer) -> None:
    # scripted-priced: $0.001 per output token, nothing for input. Cut short after its first chunk
    # (usage unknown), a call is charged its reservation: max_tokens=6 → $0.006. The cost series must
    # say what the key was charged, not nothing.
    async with grpc.aio.insecure_channel(secure.grpc_target) as channel:
        key, secret = await new_key(channel, budget_usd=1.0)
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        delta = Delta()
        call = stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(model="scripted-priced", prompt="hi", max_tokens=6),
            metadata=bearer(secret),
        )
        await call.read()
        call.cancel()
        spent = 0.0
        for _ in range(100):  # the server settles once it sees the cancellation
            row = await secure.store.get_key(key.key_id)
            spent = 0.0 if row is None else row.spent_usd
            if spent:
                break
            await asyncio.sleep(0.05)
        assert spent == pytest.approx(0.006)
        cost = delta("aibattle_cost_usd_total", model="scripted-priced", provider="scripted", deployment="")
        assert cost == pytest.approx(spent)
