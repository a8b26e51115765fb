"""The one run lifecycle (server/orchestration/lifecycle.py), tried as a hostile tester would.

Real grpc.aio servers, scripted models, SQLite; the crash test kills a real server process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aibattle.v1 import (
    common_pb2,
    conversations_pb2,
    conversations_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from server.app import AIBattleServer
from server.config import Config
from tests.conftest import error_info, make_config
from tests.e2e.process import server_process
from tests.security_testlib import ADMIN, bearer, new_key, secure_config

S = common_pb2.RunStatus
T = reasoning_pb2.ReasoningEventType
CE = conversations_pb2.ConversationEventType
HANG = 60.0  # only detects a hang

DRAFTER = {
    "id": "drafter",
    "provider": "scripted",
    "capabilities": ["text", "conversation"],
    "script": [" ".join(f"w{i}" for i in range(12))],
    "chunk_delay_ms": 15,
    "pricing": {"input": 0.001, "output": 0.002},
}
CRITIC = {
    "id": "critic",
    "provider": "scripted",
    "capabilities": ["text", "conversation"],
    "script": ["Go deeper.\nVERDICT: REVISE\nFOCUS: depth"],
    "chunk_delay_ms": 5,
    "pricing": {"input": 0.001, "output": 0.002},
}


@contextlib.asynccontextmanager
async def serving(config: Config) -> AsyncIterator[tuple[AIBattleServer, grpc.aio.Channel]]:
    """A server on this config and a channel to it; stopped at once afterwards."""
    server = AIBattleServer(config)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            yield server, channel
    finally:
        await server.stop(grace=0.1)


def human_ai(human: str, assistant: str, **fields: Any) -> conversations_pb2.CreateConversationRequest:
    seats = [
        conversations_pb2.Participant(id=human, role="human"),
        conversations_pb2.Participant(id=assistant, role="assistant"),
    ]
    return conversations_pb2.CreateConversationRequest(models=seats, **fields)


async def reasoning_log(stub: Any, reasoning_id: str, metadata: Any = ()) -> list[Any]:
    """The whole event log of a session, waiting for its end."""
    call = stub.StreamReasoningEvents(
        reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=reasoning_id), metadata=metadata, timeout=HANG
    )
    return [r.event async for r in call]


async def spent(channel: grpc.aio.Channel, key_id: str) -> float:
    keys = keys_pb2_grpc.KeyServiceStub(channel)
    listed = await keys.ListKeys(keys_pb2.ListKeysRequest(), metadata=ADMIN)
    (key,) = [k for k in listed.keys if k.key_id == key_id]
    return key.spent_usd


async def test_parallel_resumes_run_a_session_once_and_bill_it_once() -> None:
    config = secure_config()
    config = config.model_copy(update={"models": [*config.models, *make_config([DRAFTER, CRITIC]).models]})
    async with serving(config) as (_, channel):
        key, secret = await new_key(channel, budget_usd=100.0)
        auth = bearer(secret)
        stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        created = (
            await stub.CreateReasoning(
                reasoning_pb2.CreateReasoningRequest(
                    primary_model="drafter", secondary_model="critic", prompt="Why?", max_iterations=4
                ),
                metadata=auth,
            )
        ).reasoning
        rid = created.reasoning_id
        call = stub.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=rid), metadata=auth, timeout=HANG
        )
        async for response in call:
            if response.event.type == T.REASONING_EVENT_TYPE_NEW_ITERATION:
                break
        call.cancel()
        await stub.CancelReasoning(reasoning_pb2.CancelReasoningRequest(reasoning_id=rid), metadata=auth)
        before = (
            await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=rid), metadata=auth)
        ).reasoning
        assert before.status == S.RUN_STATUS_CANCELLED
        spent_before = await spent(channel, key.key_id)

        resumes = await asyncio.gather(
            *(
                stub.ResumeReasoning(reasoning_pb2.ResumeReasoningRequest(reasoning_id=rid), metadata=auth)
                for _ in range(6)
            ),
            return_exceptions=True,
        )
        won = [r for r in resumes if not isinstance(r, BaseException)]
        lost = [r for r in resumes if isinstance(r, grpc.aio.AioRpcError)]
        assert len(won) == 1 and len(lost) == 5
        assert {e.code() for e in lost} == {grpc.StatusCode.FAILED_PRECONDITION}
        assert all(error_info(e).reason in ("RUNNING_ELSEWHERE", "NOT_RESUMABLE") for e in lost)

        log = await reasoning_log(stub, rid, auth)
        done = (
            await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=rid), metadata=auth)
        ).reasoning
        spent_after = await spent(channel, key.key_id)
    assert done.status == S.RUN_STATUS_COMPLETED
    indexes = [e.iteration.index for e in log if e.type == T.REASONING_EVENT_TYPE_NEW_ITERATION]
    assert indexes == list(range(1, len(done.iterations) + 1))  # each iteration once, in order
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    # What the resumed run spent is what its new iterations cost: billed once, not six times.
    new_cost = sum(it.usage.cost_usd for it in done.iterations[len(before.iterations) :])
    assert new_cost > 0
    assert spent_after - spent_before == pytest.approx(new_cost, rel=1e-6)


async def test_sessions_created_without_pause_survive_the_sweep() -> None:
    quick = {**DRAFTER, "chunk_delay_ms": 0}
    # resume_orphans off: a session the sweep mistook for an orphan would show as INTERRUPTED.
    config = make_config([quick, CRITIC], orphan_sweep_seconds=0.01, resume_orphans=False)
    async with serving(config) as (_, channel):
        stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        request = reasoning_pb2.CreateReasoningRequest(
            primary_model="drafter", prompt="Why?", max_iterations=1
        )
        ids: list[str] = []
        deadline = time.monotonic() + 1.5  # a hundred sweeps or more
        while time.monotonic() < deadline:
            batch = await asyncio.gather(*(stub.CreateReasoning(request) for _ in range(10)))
            ids += [r.reasoning.reasoning_id for r in batch]
        await asyncio.sleep(0.1)
        statuses = [
            (await stub.GetReasoning(reasoning_pb2.GetReasoningRequest(reasoning_id=i))).reasoning.status
            for i in ids
        ]
    assert len(ids) >= 100
    assert S.RUN_STATUS_INTERRUPTED not in statuses
    assert set(statuses) <= {S.RUN_STATUS_IN_PROGRESS, S.RUN_STATUS_COMPLETED}


CRASH_CONFIG = """
[server]
lease_seconds = 1
orphan_sweep_seconds = 0.2

[[models]]
id = "alice"
provider = "scripted"
script = ["{words}"]
chunk_delay_ms = 40

[[models]]
id = "bob"
provider = "scripted"
script = ["Bob agrees."]
chunk_delay_ms = 40
"""


async def test_after_sigkill_running_conversations_are_adopted_and_finish(tmp_path: Path) -> None:
    words = " ".join(f"part{i}" for i in range(30))
    toml = CRASH_CONFIG.format(words=words)
    seats = [
        conversations_pb2.Participant(id="alice", role="a"),
        conversations_pb2.Participant(id="bob", role="b"),
    ]
    with server_process(toml, tmp_path) as running:
        async with grpc.aio.insecure_channel(running.grpc_target) as channel:
            stub = conversations_pb2_grpc.ConversationServiceStub(channel)
            request = conversations_pb2.CreateConversationRequest(
                models=seats, mode="ai-ai", rounds=2, initial_prompt="Go"
            )
            made = await asyncio.gather(*(stub.CreateConversation(request) for _ in range(50)))
            ids = [m.conversation.conversation_id for m in made]
            await asyncio.sleep(0.5)  # mid-turn
            running.proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(running.proc.wait, 10)
    with server_process(toml, tmp_path) as restarted:
        async with grpc.aio.insecure_channel(restarted.grpc_target) as channel:
            stub = conversations_pb2_grpc.ConversationServiceStub(channel)
            # A follower of each: it must end (with the conversation's completion), never hang.
            logs = await asyncio.wait_for(
                asyncio.gather(*(_conversation_log(stub, cid) for cid in ids)),
                HANG,
            )
            final = [
                (
                    await stub.GetConversation(conversations_pb2.GetConversationRequest(conversation_id=c))
                ).conversation
                for c in ids
            ]
    assert [c.status for c in final] == [S.RUN_STATUS_COMPLETED] * 50
    for conv, log in zip(final, logs, strict=True):
        assert [m.model for m in conv.messages] == ["alice", "bob", "alice", "bob"]
        assert [e.sequence for e in log] == list(range(1, len(log) + 1))
        assert log[-1].type == CE.CONVERSATION_EVENT_TYPE_COMPLETION
        spoken = [e.message.message_id for e in log if e.type == CE.CONVERSATION_EVENT_TYPE_MESSAGE]
        assert spoken == [m.message_id for m in conv.messages]  # each turn recorded once


async def _conversation_log(stub: Any, cid: str) -> list[Any]:
    call = stub.StreamConversationEvents(
        conversations_pb2.StreamConversationEventsRequest(conversation_id=cid)
    )
    return [r.event async for r in call]


async def test_a_stream_with_nothing_left_to_send_ends_at_once() -> None:
    async with serving(make_config([DRAFTER, CRITIC])) as (_, channel):
        stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        done = (
            await stub.CreateReasoning(
                reasoning_pb2.CreateReasoningRequest(
                    primary_model="drafter", prompt="Why?", max_iterations=1, wait=True
                )
            )
        ).reasoning
        assert done.status == S.RUN_STATUS_COMPLETED
        for after in (done.last_sequence, done.last_sequence + 1, 10**12):
            call = stub.StreamReasoningEvents(
                reasoning_pb2.StreamReasoningEventsRequest(
                    reasoning_id=done.reasoning_id, after_sequence=after
                ),
                timeout=5,
            )
            assert [r async for r in call] == []
        # A conversation waiting for a person, followed from beyond its log: ends at once too.
        conversations = conversations_pb2_grpc.ConversationServiceStub(channel)
        waiting = (await conversations.CreateConversation(human_ai("drafter", "critic"))).conversation
        assert waiting.status == S.RUN_STATUS_WAITING_FOR_INPUT
        call = conversations.StreamConversationEvents(
            conversations_pb2.StreamConversationEventsRequest(
                conversation_id=waiting.conversation_id, after_sequence=10**12
            ),
            timeout=5,
        )
        assert [r async for r in call] == []


SLOW = {**DRAFTER, "id": "slow", "script": [" ".join(f"s{i}" for i in range(60))], "chunk_delay_ms": 20}


async def test_another_keys_cancel_stops_nothing() -> None:
    config = secure_config()
    config = config.model_copy(update={"models": [*config.models, *make_config([SLOW, CRITIC]).models]})
    async with serving(config) as (server, channel):
        _, alice = await new_key(channel, name="alice")
        _, bob = await new_key(channel, name="bob")
        conversations = conversations_pb2_grpc.ConversationServiceStub(channel)
        sessions = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        conv = (
            await conversations.CreateConversation(
                human_ai("critic", "slow", initial_prompt="Go"),
                metadata=bearer(alice),
            )
        ).conversation
        session = (
            await sessions.CreateReasoning(
                reasoning_pb2.CreateReasoningRequest(primary_model="slow", prompt="Why?", max_iterations=1),
                metadata=bearer(alice),
            )
        ).reasoning
        for call in (
            conversations.CancelConversation(
                conversations_pb2.CancelConversationRequest(conversation_id=conv.conversation_id),
                metadata=bearer(bob),
            ),
            sessions.CancelReasoning(
                reasoning_pb2.CancelReasoningRequest(reasoning_id=session.reasoning_id),
                metadata=bearer(bob),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        # Still running for alice, and they finish as if bob had never asked.
        assert server.runs.running(conv.conversation_id) and server.runs.running(session.reasoning_id)
        log = await reasoning_log(sessions, session.reasoning_id, bearer(alice))
        ran = await asyncio.wait_for(_rested(conversations, conv.conversation_id, bearer(alice)), HANG)
    assert log[-1].type == T.REASONING_EVENT_TYPE_COMPLETION
    assert ran.status == S.RUN_STATUS_COMPLETED and ran.messages[-1].model == "slow"


async def test_concurrent_cancels_of_a_running_session_all_answer_cancelled() -> None:
    async with serving(make_config([SLOW, CRITIC])) as (_, channel):
        stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        session = (
            await stub.CreateReasoning(
                reasoning_pb2.CreateReasoningRequest(primary_model="slow", prompt="Why?", max_iterations=2)
            )
        ).reasoning
        await asyncio.sleep(0.2)  # mid-step
        cancels = await asyncio.gather(
            *(
                stub.CancelReasoning(reasoning_pb2.CancelReasoningRequest(reasoning_id=session.reasoning_id))
                for _ in range(4)
            )
        )
        log = await reasoning_log(stub, session.reasoning_id)
    assert [c.reasoning.status for c in cancels] == [S.RUN_STATUS_CANCELLED] * 4
    ends = [
        e
        for e in log
        if e.type == T.REASONING_EVENT_TYPE_STATUS_CHANGED and e.status == S.RUN_STATUS_CANCELLED
    ]
    assert len(ends) == 1 and log[-1] == ends[0]


async def test_messages_posted_while_models_speak_are_spoken_in_order() -> None:
    """A person posting one message after another while the model answers: each accepted message is
    spoken, in the order posted, and none is left waiting in the queue once the run rests."""
    quick = {**CRITIC, "id": "quick", "script": ["Noted."], "chunk_delay_ms": 1}
    async with serving(make_config([quick, CRITIC])) as (_, channel):
        stub = conversations_pb2_grpc.ConversationServiceStub(channel)
        for attempt in range(6):
            conv = (
                await stub.CreateConversation(
                    human_ai("critic", "quick", initial_prompt="m-start", rounds=50)
                )
            ).conversation
            cid = conv.conversation_id
            posted = []
            for k in range(30):
                try:
                    await stub.AddMessage(
                        conversations_pb2.AddMessageRequest(conversation_id=cid, content=f"m{attempt}-{k}")
                    )
                    posted.append(f"m{attempt}-{k}")
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.FAILED_PRECONDITION, exc
                await asyncio.sleep(0.003 * (k % 4))
            final = await asyncio.wait_for(_rested(stub, cid), HANG)
            spoken = [m.content for m in final.messages if m.role == "human"][1:]
            assert not final.queued_messages, attempt
            assert spoken == posted, attempt


async def _rested(stub: Any, cid: str, metadata: Any = ()) -> Any:
    """The conversation once no run takes its turns."""
    while True:
        request = conversations_pb2.GetConversationRequest(conversation_id=cid)
        conv = (await stub.GetConversation(request, metadata=metadata)).conversation
        if conv.status != S.RUN_STATUS_IN_PROGRESS:
            return conv
        await asyncio.sleep(0.02)
