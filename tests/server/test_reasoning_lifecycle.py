"""Reasoning sessions over their life: watchers that reconnect, cancellation, stopping, crashing and
restarting on the same database."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from pathlib import Path

import grpc
import pytest

from aibattle.v1 import reasoning_pb2, reasoning_pb2_grpc
from server.app import AIBattleServer
from server.providers.base import ChatRequest
from tests.conftest import make_config
from tests.e2e.process import server_process
from tests.server.reasoning_testlib import (
    CANCELLED,
    COMPLETED,
    IN_PROGRESS,
    INTERRUPTED,
    T,
    create,
    events,
    scripted,
    serving,
)

WORDS = " ".join(f"step{i}" for i in range(60)) + "."
APPROVE = "Fine.\nVERDICT: APPROVE"


async def read_until(call, stop) -> list[reasoning_pb2.ReasoningEvent]:
    """Events of an open stream until `stop(event)` holds (that event included)."""
    seen = []
    async for response in call:
        seen.append(response.event)
        if stop(response.event):
            return seen
    raise AssertionError(f"the stream ended before the expected event: {seen[-3:]}")


async def get(stub, reasoning_id: str) -> reasoning_pb2.Reasoning:
    response = await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=reasoning_id))
    return response.reasoning


async def test_a_watcher_that_reconnects_gets_exactly_the_missing_events() -> None:
    async with serving(
        scripted("drafter", WORDS, WORDS.replace("step", "phase"), delay_ms=5),
        scripted("critic", "Needs more.\nVERDICT: REVISE\nFOCUS: depth", APPROVE, delay_ms=5),
    ) as (_, stub):
        reasoning = await create(stub, primary_model="drafter", secondary_model="critic")
        call = stub.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning.reasoning_id)
        )
        # Disconnect mid-session: after the first iteration and a few deltas of the next step.
        first = await read_until(call, lambda e: e.type == T.REASONING_EVENT_TYPE_NEW_ITERATION)
        first += await read_until(call, lambda e: e.type == T.REASONING_EVENT_TYPE_TOKEN)
        call.cancel()
        assert (await get(stub, reasoning.reasoning_id)).status == IN_PROGRESS  # still running
        rest = await events(stub, reasoning.reasoning_id, after=first[-1].sequence)
        whole = await events(stub, reasoning.reasoning_id)
    assert first + rest == whole
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
    assert whole[-1].type == T.REASONING_EVENT_TYPE_COMPLETION
    assert len(rest) > 1  # the session went on while the watcher was away


async def test_many_watchers_see_the_same_log() -> None:
    async with serving(scripted("drafter", WORDS, delay_ms=2), scripted("critic", APPROVE, delay_ms=2)) as (
        _,
        stub,
    ):
        reasoning = await create(stub, primary_model="drafter", secondary_model="critic")
        logs = await asyncio.gather(*(events(stub, reasoning.reasoning_id) for _ in range(4)))
    assert all(log == logs[0] for log in logs)
    assert logs[0][-1].type == T.REASONING_EVENT_TYPE_COMPLETION


async def test_cancel_stops_the_session_and_keeps_its_iterations() -> None:
    long_reply = " ".join(f"token{i}" for i in range(400))
    async with serving(
        scripted("drafter", "A first draft of reasonable length for the critic.", long_reply, delay_ms=10),
        scripted("critic", "Go deeper.\nVERDICT: REVISE"),
    ) as (app, stub):
        reasoning = await create(stub, primary_model="drafter", secondary_model="critic")
        call = stub.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning.reasoning_id)
        )
        # Into the long revision: two iterations recorded, then its first deltas.
        await read_until(call, lambda e: e.iteration.kind == "critique")
        await read_until(call, lambda e: e.type == T.REASONING_EVENT_TYPE_TOKEN)
        cancelled = (
            await stub.CancelReasoning(
                reasoning_pb2.CancelReasoningRequest(reasoning_id=reasoning.reasoning_id)
            )
        ).reasoning
        tail = [response.event async for response in call]  # the watcher's stream ends by itself
        assert not app.runs.running(reasoning.reasoning_id)
        await asyncio.sleep(0.1)  # had the model kept generating, deltas would keep arriving
        after = await get(stub, reasoning.reasoning_id)
        again = await stub.CancelReasoning(
            reasoning_pb2.CancelReasoningRequest(reasoning_id=reasoning.reasoning_id)
        )
    assert cancelled.status == CANCELLED
    assert [it.kind for it in cancelled.iterations] == ["draft", "critique"]
    assert tail[-1].type == T.REASONING_EVENT_TYPE_STATUS_CHANGED and tail[-1].status == CANCELLED
    assert after.last_sequence == cancelled.last_sequence == tail[-1].sequence
    # The revision was stopped long before its 400 tokens.
    streamed = "".join(e.delta for e in tail if e.type == T.REASONING_EVENT_TYPE_TOKEN)
    assert len(streamed.split()) < 200
    assert again.reasoning.status == CANCELLED and again.reasoning.last_sequence == after.last_sequence


async def test_cancelling_a_finished_session_changes_nothing() -> None:
    async with serving(scripted("a", WORDS, APPROVE)) as (_, stub):
        done = await create(stub, primary_model="a", wait=True)
        cancelled = await stub.CancelReasoning(
            reasoning_pb2.CancelReasoningRequest(reasoning_id=done.reasoning_id)
        )
    assert done.status == COMPLETED
    assert cancelled.reasoning == done


async def test_stopping_the_server_interrupts_a_running_session(tmp_path: Path) -> None:
    database = str(tmp_path / "aibattle.db")
    models = [scripted("drafter", WORDS, delay_ms=10), scripted("critic", "Again.\nVERDICT: REVISE")]
    app = AIBattleServer(make_config(models, database=database))
    await app.start()
    try:
        async with grpc.aio.insecure_channel(app.grpc_target) as channel:
            stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
            reasoning = await create(stub, primary_model="drafter", secondary_model="critic")
            call = stub.StreamReasoningEvents(
                reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning.reasoning_id)
            )
            await read_until(call, lambda e: e.iteration.kind == "critique")
            call.cancel()
    finally:
        await app.stop(grace=0.5)
    async with serving(*models, database=database) as (_, stub):
        after = await get(stub, reasoning.reasoning_id)
        log = await events(stub, reasoning.reasoning_id)
    assert after.status == INTERRUPTED
    assert [it.kind for it in after.iterations][:2] == ["draft", "critique"]
    assert log[-1].type == T.REASONING_EVENT_TYPE_STATUS_CHANGED and log[-1].status == INTERRUPTED


CRASH_CONFIG = """
[[models]]
id = "drafter"
provider = "scripted"
script = ["{words}"]
chunk_delay_ms = 20

[[models]]
id = "critic"
provider = "scripted"
script = ["Go on.\\nVERDICT: REVISE"]
"""


def expire_leases(database: Path) -> None:
    """What 30 seconds of nobody renewing does to a lease: it lies in the past."""
    with sqlite3.connect(database) as db:
        db.execute("UPDATE resources SET lease_until = lease_until - 3600 WHERE lease_until IS NOT NULL")


async def test_a_killed_server_leaves_no_session_running_and_resume_finishes_it(
    tmp_path: Path, scripted_requests: list[ChatRequest]
) -> None:
    words = " ".join(f"part{i}" for i in range(40))
    database = tmp_path / "aibattle.db"
    with server_process(CRASH_CONFIG.format(words=words), tmp_path) as running:
        async with grpc.aio.insecure_channel(running.grpc_target) as channel:
            stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
            reasoning = await create(stub, primary_model="drafter", secondary_model="critic")
            call = stub.StreamReasoningEvents(
                reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning.reasoning_id)
            )
            seen = await read_until(call, lambda e: e.iteration.kind == "critique")
            seen += await read_until(call, lambda e: e.type == T.REASONING_EVENT_TYPE_TOKEN)  # mid-step
            running.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(running.proc.wait, 10)
    committed = [e.iteration for e in seen if e.type == T.REASONING_EVENT_TYPE_NEW_ITERATION]

    models = [scripted("drafter", words), scripted("critic", "Go on.\nVERDICT: REVISE")]
    async with serving(*models, database=str(database), resume_orphans=False) as (app, stub):
        # The dead runner's lease has not expired yet: someone might still run it, so it is left alone.
        restarted = await get(stub, reasoning.reasoning_id)
        assert restarted.status == IN_PROGRESS
        assert list(restarted.iterations)[: len(committed)] == committed
        expire_leases(database)
        assert await app.lifecycle.recover() == 1  # what the periodic sweep does once it expired
        after = await get(stub, reasoning.reasoning_id)
        log = await events(stub, reasoning.reasoning_id)  # ends by itself: the session is over
        assert not scripted_requests  # nothing runs it here until asked

        # Runnable again: from its last committed step, the committed ones neither redone nor repaid.
        resumed = (
            await stub.ResumeReasoning(
                reasoning_pb2.ResumeReasoningRequest(reasoning_id=reasoning.reasoning_id, wait=True)
            )
        ).reasoning
        whole = await events(stub, reasoning.reasoning_id)
    assert after.status == INTERRUPTED
    assert list(after.iterations)[: len(committed)] == committed
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert log[: len(seen)] == seen
    assert log[-1].type == T.REASONING_EVENT_TYPE_STATUS_CHANGED and log[-1].status == INTERRUPTED

    assert resumed.status == COMPLETED and resumed.final_result
    assert list(resumed.iterations)[: len(after.iterations)] == list(after.iterations)  # byte for byte
    assert len(scripted_requests) == len(resumed.iterations) - len(after.iterations)  # only new steps
    assert resumed.usage.total_tokens == sum(it.usage.total_tokens for it in resumed.iterations)
    assert [e.sequence for e in whole] == list(range(1, len(whole) + 1))
    assert whole[: len(log)] == log  # the log only grew
    assert (whole[len(log)].type, whole[len(log)].status) == (
        T.REASONING_EVENT_TYPE_STATUS_CHANGED,
        IN_PROGRESS,
    )
    assert whole[-1].type == T.REASONING_EVENT_TYPE_COMPLETION
    new_steps = [
        e.iteration.index for e in whole[len(log) :] if e.type == T.REASONING_EVENT_TYPE_NEW_ITERATION
    ]
    assert new_steps == list(range(len(after.iterations) + 1, len(resumed.iterations) + 1))


async def test_start_up_marks_expired_sessions_interrupted(tmp_path: Path) -> None:
    database = tmp_path / "aibattle.db"
    models = [scripted("drafter", WORDS, delay_ms=10), scripted("critic", "Again.\nVERDICT: REVISE")]
    app = AIBattleServer(make_config(models, database=str(database)))
    await app.start()
    async with grpc.aio.insecure_channel(app.grpc_target) as channel:
        stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        reasoning = await create(stub, primary_model="drafter", secondary_model="critic")
        call = stub.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning.reasoning_id)
        )
        await read_until(call, lambda e: e.type == T.REASONING_EVENT_TYPE_NEW_ITERATION)
        call.cancel()
    # A crash, as far as the database can tell: the file is copied mid-run, lease and all.
    crashed = tmp_path / "crashed.db"
    with sqlite3.connect(database) as source, sqlite3.connect(crashed) as target:
        source.backup(target)
    await app.stop(grace=0.5)
    expire_leases(crashed)
    async with serving(*models, database=str(crashed), resume_orphans=False) as (_, stub):
        after = await get(stub, reasoning.reasoning_id)
    assert after.status == INTERRUPTED
    assert after.iterations[0].kind == "draft"


async def test_cancel_right_after_create_is_recorded() -> None:
    async with serving(scripted("a", WORDS, delay_ms=10)) as (app, stub):
        created = [await create(stub, primary_model="a") for _ in range(3)]
        cancelled = [
            (
                await stub.CancelReasoning(reasoning_pb2.CancelReasoningRequest(reasoning_id=r.reasoning_id))
            ).reasoning
            for r in created
        ]
        logs = [await events(stub, r.reasoning_id) for r in created]
        assert not any(app.runs.running(r.reasoning_id) for r in created)
    assert [r.status for r in cancelled] == [CANCELLED] * 3
    for log in logs:
        assert log[-1].type == T.REASONING_EVENT_TYPE_STATUS_CHANGED and log[-1].status == CANCELLED


async def test_resume_a_cancelled_session_and_refuse_what_cannot_be_resumed(
    scripted_requests: list[ChatRequest],
) -> None:
    async with serving(
        # Call 1, the revision, is cancelled mid-way; call 2 redoes it (scripts go by call count).
        scripted(
            "drafter", WORDS, WORDS.replace("step", "phase"), WORDS.replace("step", "phase"), delay_ms=5
        ),
        scripted("critic", "Needs more.\nVERDICT: REVISE\nFOCUS: depth", APPROVE),
    ) as (_, stub):
        reasoning = await create(stub, primary_model="drafter", secondary_model="critic")
        call = stub.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning.reasoning_id)
        )
        await read_until(call, lambda e: e.iteration.kind == "critique")
        await read_until(call, lambda e: e.type == T.REASONING_EVENT_TYPE_TOKEN)  # into the revision
        cancelled = (
            await stub.CancelReasoning(
                reasoning_pb2.CancelReasoningRequest(reasoning_id=reasoning.reasoning_id)
            )
        ).reasoning
        calls_before = len(scripted_requests)
        resume = reasoning_pb2.ResumeReasoningRequest(reasoning_id=reasoning.reasoning_id)
        running = (await stub.ResumeReasoning(resume)).reasoning
        assert running.status == IN_PROGRESS  # answered at once, running again
        with pytest.raises(grpc.aio.AioRpcError) as busy:
            await stub.ResumeReasoning(resume)
        await events(stub, reasoning.reasoning_id)  # until it ends
        done = await get(stub, reasoning.reasoning_id)
        with pytest.raises(grpc.aio.AioRpcError) as finished:
            await stub.ResumeReasoning(resume)
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.ResumeReasoning(reasoning_pb2.ResumeReasoningRequest(reasoning_id="reas-nope"))
    assert cancelled.status == CANCELLED and [it.kind for it in cancelled.iterations] == ["draft", "critique"]
    assert done.status == COMPLETED
    assert [it.kind for it in done.iterations] == ["draft", "critique", "revision", "critique"]
    assert list(done.iterations)[:2] == list(cancelled.iterations)
    assert len(scripted_requests) - calls_before == 2  # the lost revision and the last critique
    assert done.final_result == WORDS.replace("step", "phase")
    assert busy.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "running" in busy.value.details()
    assert (
        finished.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        and "completed" in finished.value.details()
    )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
