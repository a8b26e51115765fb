"""ConversationService against a real grpc.aio server with scripted models (and one test with the real
local model): modes, perspective, status progression, events, cancellation, durability."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, conversations_pb2, conversations_pb2_grpc
from server.app import AIBattleServer
from server.config import Config
from server.orchestration.conversation import KIND
from server.providers.base import ChatRequest, Role
from server.storage import Lease, open_store
from tests.conftest import error_info, make_config, rich_status

pb = conversations_pb2
S = common_pb2.RunStatus
E = pb.ConversationEventType
HANG = 30.0  # only detects a hang

MODELS: list[dict[str, Any]] = [
    {"id": "alice", "provider": "scripted", "script": ["Alice one.", "Alice two.", "Alice three."]},
    {"id": "bob", "provider": "scripted", "script": ["Bob one.", "Bob two.", "Bob three."]},
    {
        "id": "carol",
        "provider": "scripted",
        "script": ["Carol says hi."],
        "pricing": {"input": 1, "output": 2},
    },
    {
        "id": "slow",
        "provider": "scripted",
        "script": [" ".join(f"w{i}" for i in range(150))],
        "chunk_delay_ms": 20,
    },
    {"id": "fail", "provider": "scripted", "script": ["one two three four"], "error_after_chunks": 2},
    {"id": "pausing", "provider": "scripted", "script": ["p0 p1 p2"], "chunk_delay_ms": 300},
    {"id": "fast", "provider": "scripted", "script": [" ".join(f"f{i}" for i in range(200))]},
    {"id": "blind", "provider": "scripted", "capabilities": ["text"], "script": ["ok"]},
]


async def started(config: Config) -> AIBattleServer:
    server = AIBattleServer(config)
    await server.start()
    return server


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    srv = await started(make_config(MODELS))
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def stub(server: AIBattleServer) -> AsyncIterator[conversations_pb2_grpc.ConversationServiceStub]:
    async with grpc.aio.insecure_channel(server.grpc_target) as chan:
        yield conversations_pb2_grpc.ConversationServiceStub(chan)


def seat(model: str, role: str, name: str = "") -> pb.Participant:
    return pb.Participant(id=model, role=role, name=name)


async def create(stub: Any, **fields: Any) -> pb.Conversation:
    reply = await stub.CreateConversation(pb.CreateConversationRequest(**fields), timeout=HANG)
    return reply.conversation


async def events(stub: Any, cid: str, after: int = 0, limit: int | None = None) -> list[pb.ConversationEvent]:
    """Events from `after` until the stream ends by itself (or `limit` of them, then disconnect)."""
    got: list[pb.ConversationEvent] = []
    call = stub.StreamConversationEvents(
        pb.StreamConversationEventsRequest(conversation_id=cid, after_sequence=after), timeout=HANG
    )
    async for reply in call:
        got.append(reply.event)
        if limit is not None and len(got) == limit:
            call.cancel()
            break
    return got


async def wait_for(stub: Any, cid: str) -> pb.Conversation:
    """The conversation once its current run ended (RunConversation with wait on a running one)."""
    reply = await stub.RunConversation(
        pb.RunConversationRequest(conversation_id=cid, wait=True), timeout=HANG
    )
    return reply.conversation


async def read_all(call: Any) -> list[pb.ConverseResponse]:
    """The rest of a Converse call, until the server ends it."""
    got = []
    while (reply := await call.read()) is not grpc.aio.EOF:
        got.append(reply)
    return got


def field_of(error: grpc.aio.AioRpcError) -> str:
    for detail in rich_status(error).details:
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            return bad.field_violations[0].field
    raise AssertionError("no BadRequest")


def said(requests: list[ChatRequest]) -> list[list[tuple[str, str]]]:
    return [[(str(m.role), m.content) for m in r.messages] for r in requests]


# ---- modes, perspective, status


async def test_seed_human_ai_progression(stub: Any) -> None:
    conv = await create(
        stub,
        models=[seat("bob", "human"), seat("alice", "assistant")],
        initial_prompt="Let's discuss cryptography",
        mode="human-ai",
        rounds=2,
        system_instruction="Experts talking.",
    )
    # Answers at once, running, with the seed's shape.
    assert conv.conversation_id.startswith("conv-")
    assert conv.status == S.RUN_STATUS_IN_PROGRESS
    assert [(m.role, m.model, m.content) for m in conv.messages] == [
        ("system", "", "Experts talking."),
        ("human", "bob", "Let's discuss cryptography"),
    ]
    assert (conv.next_model, conv.next_role) == ("alice", "assistant")

    conv = await wait_for(stub, conv.conversation_id)
    assert conv.status == S.RUN_STATUS_WAITING_FOR_INPUT
    assert (conv.next_model, conv.next_role, conv.completed_rounds) == ("bob", "human", 1)
    assert conv.messages[-1].content == "Alice one." and conv.messages[-1].model == "alice"

    reply = await stub.AddMessage(
        pb.AddMessageRequest(
            conversation_id=conv.conversation_id, content="And Shor?", role="human", model="bob"
        )
    )
    assert reply.message.message_id.startswith("msg-") and reply.message.role == "human"
    assert reply.message.created_at.seconds > 0
    conv = await wait_for(stub, conv.conversation_id)
    assert conv.status == S.RUN_STATUS_COMPLETED
    assert (conv.next_model, conv.next_role, conv.completed_rounds) == ("", "", 2)
    assert [m.content for m in conv.messages[1:]] == [
        "Let's discuss cryptography",
        "Alice one.",
        "And Shor?",
        "Alice two.",
    ]
    assert [u.model for u in conv.usage] == ["alice"] and conv.usage[0].usage.completion_tokens == 4

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AddMessage(pb.AddMessageRequest(conversation_id=conv.conversation_id, content="more?"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "CONVERSATION_COMPLETED"


async def test_ai_ai_each_model_sees_its_own_side(stub: Any, scripted_requests: list[ChatRequest]) -> None:
    conv = await create(
        stub,
        models=[seat("alice", "human"), seat("bob", "assistant")],
        initial_prompt="Start.",
        mode="ai-ai",
        rounds=2,
        system_instruction="Be brief.",
        wait=True,
    )
    assert conv.status == S.RUN_STATUS_COMPLETED and conv.completed_rounds == 2
    assert [(m.model, m.content) for m in conv.messages[1:]] == [
        ("alice", "Start."),
        ("bob", "Bob one."),
        ("alice", "Alice one."),
        ("bob", "Bob two."),
    ]
    assert said(scripted_requests) == [
        [("system", "Be brief."), ("user", "human: Start.")],
        [("system", "Be brief."), ("assistant", "Start."), ("user", "assistant: Bob one.")],
        [
            ("system", "Be brief."),
            ("user", "human: Start."),
            ("assistant", "Bob one."),
            ("user", "human: Alice one."),
        ],
    ]


async def test_round_robin_names_kept_and_users_joined(
    stub: Any, scripted_requests: list[ChatRequest]
) -> None:
    conv = await create(
        stub,
        models=[seat("alice", "assistant", "Ann"), seat("bob", "assistant", "Ben"), seat("carol", "critic")],
        initial_prompt="Topic.",
        mode="round-robin",
        rounds=2,
        wait=True,
    )
    assert conv.status == S.RUN_STATUS_COMPLETED
    assert [m.model for m in conv.messages] == ["alice", "bob", "carol", "alice", "bob", "carol"]
    # carol's first turn: two other speakers in a row become one user message, each named.
    assert said(scripted_requests)[1] == [("user", "Ann: Topic.\n\nBen: Bob one.")]
    # alice's second turn: her own prompt is hers.
    assert said(scripted_requests)[2] == [
        ("assistant", "Topic."),
        ("user", "Ben: Bob one.\n\ncritic: Carol says hi."),
    ]
    carol = next(u for u in conv.usage if u.model == "carol")
    assert carol.usage.cost_usd > 0  # priced model: cost accounted per model


async def test_auto_run_false_then_run_and_additional_rounds(stub: Any) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("bob", "b")], initial_prompt="Go", mode="ai-ai", auto_run=False
    )
    assert conv.status == S.RUN_STATUS_PENDING and (conv.next_model, conv.next_role) == ("bob", "b")
    cid = conv.conversation_id
    reply = await stub.RunConversation(pb.RunConversationRequest(conversation_id=cid, wait=True))
    assert reply.conversation.status == S.RUN_STATUS_COMPLETED and len(reply.conversation.messages) == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RunConversation(pb.RunConversationRequest(conversation_id=cid))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reply = await stub.RunConversation(
        pb.RunConversationRequest(conversation_id=cid, additional_rounds=1, wait=True)
    )
    conv = reply.conversation
    assert (conv.status, conv.rounds, conv.completed_rounds) == (S.RUN_STATUS_COMPLETED, 2, 2)
    assert [m.model for m in conv.messages] == ["alice", "bob", "alice", "bob"]


async def test_human_first_without_prompt_waits_and_add_message_runs(stub: Any) -> None:
    conv = await create(stub, models=[seat("bob", "human"), seat("alice", "assistant")])
    assert conv.status == S.RUN_STATUS_WAITING_FOR_INPUT and conv.rounds == 1
    assert (conv.next_model, conv.next_role) == ("bob", "human") and not conv.messages
    cid = conv.conversation_id
    await stub.AddMessage(
        pb.AddMessageRequest(conversation_id=cid, content="Hi")
    )  # role/model default to the seat
    conv = await wait_for(stub, cid)
    assert conv.status == S.RUN_STATUS_COMPLETED and [m.content for m in conv.messages] == [
        "Hi",
        "Alice one.",
    ]


async def test_add_message_out_of_turn_and_unknown_seat(stub: Any) -> None:
    conv = await create(
        stub, models=[seat("bob", "human"), seat("alice", "assistant")], initial_prompt="Q", auto_run=False
    )
    cid = conv.conversation_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:  # the model's turn is next
        await stub.AddMessage(pb.AddMessageRequest(conversation_id=cid, content="again", role="human"))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "NOT_YOUR_TURN"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.AddMessage(pb.AddMessageRequest(conversation_id=cid, content="x", role="pirate"))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and field_of(caught.value) == "role"
    # A person may speak for the model seat whose turn it is, naming it.
    reply = await stub.AddMessage(
        pb.AddMessageRequest(conversation_id=cid, content="I answer myself", role="assistant", auto_run=False)
    )
    assert reply.message.model == "alice"
    conv = (await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid))).conversation
    assert conv.status == S.RUN_STATUS_COMPLETED


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"models": [seat("alice", "human"), seat("bob", "assistant")], "mode": "chaos"}, "mode"),
        ({"models": [seat("alice", "human")]}, "models"),
        ({"models": [seat("alice", "human"), seat("bob", "bad role")]}, "models[1].role"),
        ({"models": [seat("alice", "human"), seat("bob", "system")]}, "models[1].role"),
        ({"models": [seat("", "human"), seat("bob", "a")]}, "models[0].id"),
        ({"models": [seat("alice", "human"), seat("bob", "a")], "rounds": 51}, "rounds"),
        ({"models": [seat("alice", "human"), seat("bob", "a")], "rounds": -1}, "rounds"),
        (
            {"models": [seat("alice", "a"), seat("bob", "b")], "mode": "human-ai", "initial_prompt": "x"},
            "models",
        ),
        (
            {
                "models": [seat("alice", "a"), seat("bob", "b"), seat("carol", "c")],
                "mode": "ai-ai",
                "initial_prompt": "x",
            },
            "models",
        ),
        ({"models": [seat("alice", "a"), seat("bob", "b")], "mode": "round-robin"}, "initial_prompt"),
        (
            {
                "models": [seat("alice", "human"), seat("blind", "assistant")],
                "file_data": common_pb2.FileData(type="image", mime_type="image/png", content=b"\x89PNG"),
            },
            "file_data",
        ),
    ],
)
async def test_bad_requests_name_the_field(stub: Any, fields: dict[str, Any], field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_of(caught.value) == field


async def test_unknown_model_is_not_found_naming_it(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(stub, models=[seat("alice", "human"), seat("gpt-nope", "assistant")])
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt-nope" in caught.value.details()
    assert error_info(caught.value).metadata["model"] == "gpt-nope"


async def test_text_attachment_reaches_the_other_seat(
    stub: Any, scripted_requests: list[ChatRequest]
) -> None:
    note = common_pb2.FileData(type="text", mime_type="text/plain", content=b"secret notes", path="n.txt")
    await create(
        stub,
        models=[seat("bob", "human"), seat("alice", "assistant")],
        initial_prompt="Read this.",
        file_data=note,
        wait=True,
    )
    (request,) = scripted_requests
    assert request.messages[0].role == Role.USER
    assert "secret notes" in request.messages[0].content and "Read this." in request.messages[0].content


# ---- events


async def test_event_log_of_a_conversation(stub: Any) -> None:
    conv = await create(
        stub,
        models=[seat("bob", "human"), seat("alice", "assistant")],
        initial_prompt="Q1",
        system_instruction="Sys",
        rounds=2,
    )
    cid = conv.conversation_id
    watcher = asyncio.create_task(events(stub, cid))  # follows through WAITING_FOR_INPUT to the end
    conv = await wait_for(stub, cid)
    assert not watcher.done()
    await stub.AddMessage(pb.AddMessageRequest(conversation_id=cid, content="Q2"))
    got = await asyncio.wait_for(watcher, HANG)
    assert [e.sequence for e in got] == list(range(1, len(got) + 1))
    kinds = [(e.type, e.status) for e in got if e.type != E.CONVERSATION_EVENT_TYPE_TOKEN]
    T, M, SC = (
        E.CONVERSATION_EVENT_TYPE_TURN_STARTED,
        E.CONVERSATION_EVENT_TYPE_MESSAGE,
        E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED,
    )
    assert kinds == [
        (M, 0),
        (M, 0),
        (SC, S.RUN_STATUS_IN_PROGRESS),
        (T, 0),
        (M, 0),
        (SC, S.RUN_STATUS_WAITING_FOR_INPUT),
        (M, 0),
        (SC, S.RUN_STATUS_IN_PROGRESS),
        (T, 0),
        (M, 0),
        (SC, S.RUN_STATUS_COMPLETED),
        (E.CONVERSATION_EVENT_TYPE_COMPLETION, S.RUN_STATUS_COMPLETED),
    ]
    # The deltas of each turn, in order, spell its message.
    turn_starts = [i for i, e in enumerate(got) if e.type == T]
    for start in turn_starts:
        rest = got[start + 1 :]
        message = next(e for e in rest if e.type == M).message
        deltas = "".join(e.delta for e in rest[: rest.index(next(e for e in rest if e.type == M))])
        assert deltas == message.content and message.usage.total_tokens > 0
    assert got[3].model == "alice" and got[3].role == "assistant"
    # A finished conversation's stream replays and ends; after its last event it ends at once.
    assert [e.sequence for e in await events(stub, cid)] == [e.sequence for e in got]
    assert await events(stub, cid, after=got[-1].sequence) == []


async def test_watcher_reconnects_with_after_sequence_on_a_running_conversation(stub: Any) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("slow", "b")], initial_prompt="Go", mode="ai-ai"
    )
    cid = conv.conversation_id
    first = await events(stub, cid, limit=8)  # mid-turn: the slow model streams for seconds
    assert first[-1].type == E.CONVERSATION_EVENT_TYPE_TOKEN
    conv = (await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid))).conversation
    assert conv.status == S.RUN_STATUS_IN_PROGRESS  # still running when the watcher comes back
    rest = await events(stub, cid, after=first[-1].sequence)
    everything = await events(stub, cid)
    assert [e.sequence for e in first + rest] == list(range(1, len(everything) + 1))
    assert [e.SerializeToString() for e in first + rest] == [e.SerializeToString() for e in everything]
    assert rest[-1].type == E.CONVERSATION_EVENT_TYPE_COMPLETION


async def test_many_watchers_see_the_same_events(stub: Any) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("slow", "b")], initial_prompt="Go", mode="ai-ai"
    )
    seen = await asyncio.gather(*(events(stub, conv.conversation_id) for _ in range(6)))
    assert all(s == seen[0] for s in seen) and seen[0][-1].type == E.CONVERSATION_EVENT_TYPE_COMPLETION
    turn = "".join(e.delta for e in seen[0] if e.type == E.CONVERSATION_EVENT_TYPE_TOKEN)
    assert turn == " ".join(f"w{i}" for i in range(150))


async def test_deltas_of_a_fast_model_are_batched_and_none_lost(stub: Any) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("fast", "b")], initial_prompt="Go", mode="ai-ai"
    )
    got = await events(stub, conv.conversation_id)
    tokens = [e.delta for e in got if e.type == E.CONVERSATION_EVENT_TYPE_TOKEN]
    assert "".join(tokens) == " ".join(f"f{i}" for i in range(200))
    assert len(tokens) < 100  # batched (by TokenBatch.SIZE, 16, unless the loop is starved)


async def test_a_delta_goes_out_while_the_model_pauses(stub: Any) -> None:
    # Each word comes 300 ms after the previous: a batch flushed only when the next delta arrives
    # would join them; the batch's own deadline sends each one alone.
    conv = await create(
        stub, models=[seat("alice", "a"), seat("pausing", "b")], initial_prompt="Go", mode="ai-ai"
    )
    got = await events(stub, conv.conversation_id)
    assert [e.delta for e in got if e.type == E.CONVERSATION_EVENT_TYPE_TOKEN] == ["p0 ", "p1 ", "p2"]


# ---- cancel, failure, delete


async def test_cancel_stops_the_provider_and_run_resumes(stub: Any, server: AIBattleServer) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("slow", "b")], initial_prompt="Go", mode="ai-ai"
    )
    cid = conv.conversation_id
    watcher = asyncio.create_task(events(stub, cid))
    await events(stub, cid, limit=6)  # tokens are flowing
    reply = await asyncio.wait_for(
        stub.CancelConversation(pb.CancelConversationRequest(conversation_id=cid)), 1.0
    )  # a bound on stopping, generous against the 3 s the turn would take
    assert reply.conversation.status == S.RUN_STATUS_CANCELLED
    assert not server.runs.running(cid)
    got = await asyncio.wait_for(watcher, HANG)
    assert (
        got[-1].type == E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED and got[-1].status == S.RUN_STATUS_CANCELLED
    )
    last = got[-1].sequence
    await asyncio.sleep(0.2)  # a provider still running would commit more tokens by now
    conv = (await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid))).conversation
    assert conv.last_sequence == last and len(conv.messages) == 1  # the cut turn is not a message
    # Runnable again: the slow seat's turn is redone whole.
    conv = (
        await stub.RunConversation(pb.RunConversationRequest(conversation_id=cid, wait=True))
    ).conversation
    assert conv.status == S.RUN_STATUS_COMPLETED and conv.messages[-1].content.endswith("w149")


async def test_provider_failure_marks_failed_with_the_status(stub: Any) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("fail", "b")], initial_prompt="Go", mode="ai-ai", wait=True
    )
    assert conv.status == S.RUN_STATUS_FAILED
    assert conv.error.code == grpc.StatusCode.UNAVAILABLE.value[0] and "fail" in conv.error.message
    got = await events(stub, conv.conversation_id)
    assert got[-1].type == E.CONVERSATION_EVENT_TYPE_ERROR and got[-1].error.code == conv.error.code
    assert got[-2].status == S.RUN_STATUS_FAILED


async def test_get_list_delete(stub: Any) -> None:
    ids = []
    for _ in range(3):
        conv = await create(stub, models=[seat("bob", "human"), seat("alice", "assistant")])
        ids.append(conv.conversation_id)
    done = await create(
        stub, models=[seat("alice", "a"), seat("bob", "b")], initial_prompt="x", mode="ai-ai", wait=True
    )
    page = await stub.ListConversations(pb.ListConversationsRequest(page_size=2))
    assert len(page.conversations) == 2 and page.next_page_token
    assert all(not c.messages for c in page.conversations)  # transcripts only from Get
    rest = await stub.ListConversations(
        pb.ListConversationsRequest(page_size=2, page_token=page.next_page_token)
    )
    listed = [c.conversation_id for c in [*page.conversations, *rest.conversations]]
    assert sorted(listed) == sorted([*ids, done.conversation_id]) and not rest.next_page_token
    waiting = await stub.ListConversations(pb.ListConversationsRequest(status=S.RUN_STATUS_WAITING_FOR_INPUT))
    assert sorted(c.conversation_id for c in waiting.conversations) == sorted(ids)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListConversations(
            pb.ListConversationsRequest(page_token=page.next_page_token, status=S.RUN_STATUS_COMPLETED)
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    await stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=ids[0]))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetConversation(pb.GetConversationRequest(conversation_id=ids[0]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=ids[0]))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_running_cancels_it_and_ends_its_watchers(stub: Any, server: AIBattleServer) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("slow", "b")], initial_prompt="Go", mode="ai-ai"
    )
    cid = conv.conversation_id
    watcher = asyncio.create_task(events(stub, cid))
    await events(stub, cid, limit=5)
    await asyncio.wait_for(stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=cid)), 2.0)
    assert not server.runs.running(cid)
    got = await asyncio.wait_for(watcher, HANG)  # ends: the run's cancellation is terminal
    assert got[-1].status == S.RUN_STATUS_CANCELLED
    # A watcher of a waiting conversation that is then deleted ends with NOT_FOUND.
    conv = await create(stub, models=[seat("bob", "human"), seat("alice", "assistant")])
    call = stub.StreamConversationEvents(
        pb.StreamConversationEventsRequest(conversation_id=conv.conversation_id)
    )
    first = [(await call.read()).event.type for _ in range(1)]
    assert first == [E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED]
    await stub.DeleteConversation(pb.DeleteConversationRequest(conversation_id=conv.conversation_id))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# ---- Converse


async def test_converse_human_turns_and_events(stub: Any) -> None:
    conv = await create(stub, models=[seat("bob", "human"), seat("alice", "assistant")], rounds=2)
    cid = conv.conversation_id
    call = stub.Converse(timeout=HANG)
    await call.write(pb.ConverseRequest(conversation_id=cid, message=pb.ConverseMessage(content="Hello")))
    got: list[pb.ConverseResponse] = []

    async def until(status: int) -> None:
        while True:
            reply = await call.read()
            got.append(reply)
            if reply.event.type == E.CONVERSATION_EVENT_TYPE_STATUS_CHANGED and reply.event.status == status:
                return

    await until(S.RUN_STATUS_IN_PROGRESS)
    await until(S.RUN_STATUS_WAITING_FOR_INPUT)
    assert [r.event.message.content for r in got if r.event.type == E.CONVERSATION_EVENT_TYPE_MESSAGE] == [
        "Hello",
        "Alice one.",
    ]
    # Out of turn: refused on the call, which goes on.
    await call.write(pb.ConverseRequest(message=pb.ConverseMessage(content="x", role="assistant")))
    reply = await call.read()
    assert reply.rejected.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    await call.write(pb.ConverseRequest(message=pb.ConverseMessage(content="Again")))
    await call.done_writing()
    rest = await read_all(call)  # ends by itself once the run it started is over
    assert rest[-1].event.type == E.CONVERSATION_EVENT_TYPE_COMPLETION
    sequences = [r.event.sequence for r in got + rest if r.HasField("event")]
    assert sequences == list(range(1, len(sequences) + 1))


async def test_converse_cancel_and_resume_from_sequence(stub: Any) -> None:
    conv = await create(
        stub, models=[seat("alice", "a"), seat("slow", "b")], initial_prompt="Go", mode="ai-ai"
    )
    cid = conv.conversation_id
    call = stub.Converse(timeout=HANG)
    await call.write(pb.ConverseRequest(conversation_id=cid, after_sequence=2))
    first = await call.read()
    assert first.event.sequence == 3
    await call.write(pb.ConverseRequest(cancel=pb.CancelConversationRequest()))
    await call.done_writing()
    rest = await read_all(call)
    assert rest[-1].event.status == S.RUN_STATUS_CANCELLED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        call = stub.Converse(iter([pb.ConverseRequest(conversation_id="conv-none")]))
        await call.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# ---- durability


async def crashed_conversation(db: str) -> None:
    """What a crash leaves in the database `db` (a SQLite path or a postgresql:// URL): a conversation
    IN_PROGRESS under a lease nobody renews (expired)."""
    store = open_store(db)
    await store.open()
    crashed = pb.Conversation(
        conversation_id="conv-crashed",
        status=S.RUN_STATUS_IN_PROGRESS,
        models=[seat("alice", "a"), seat("bob", "b")],
        mode="ai-ai",
        rounds=1,
        messages=[common_pb2.Message(message_id="msg-1", role="a", model="alice", content="hi")],
        next_model="bob",
        next_role="b",
    )
    await store.create(
        KIND,
        "conv-crashed",
        owner="",
        status=crashed.status,
        body=crashed.SerializeToString(),
        events=[],
        lease=Lease("dead-runner", time.time() - 1),
    )
    await store.close()


async def test_restart_keeps_conversations_and_interrupts_orphans_when_told(tmp_path: Path) -> None:
    db = str(tmp_path / "aibattle.db")
    config = make_config(MODELS, database=db, resume_orphans=False)
    first = await started(config)
    async with grpc.aio.insecure_channel(first.grpc_target) as chan:
        stub = conversations_pb2_grpc.ConversationServiceStub(chan)
        done = await create(
            stub, models=[seat("alice", "a"), seat("bob", "b")], initial_prompt="x", mode="ai-ai", wait=True
        )
        done_events = await events(stub, done.conversation_id)
        running = await create(
            stub, models=[seat("alice", "a"), seat("slow", "b")], initial_prompt="y", mode="ai-ai"
        )
        await events(stub, running.conversation_id, limit=5)
    await first.stop(grace=0.1)  # an orderly stop interrupts its runs (a client did not cancel them)

    await crashed_conversation(db)

    second = await started(config)
    try:
        async with grpc.aio.insecure_channel(second.grpc_target) as chan:
            stub = conversations_pb2_grpc.ConversationServiceStub(chan)
            get = stub.GetConversation
            again = (await get(pb.GetConversationRequest(conversation_id=done.conversation_id))).conversation
            assert again.messages == done.messages and again.status == S.RUN_STATUS_COMPLETED
            assert await events(stub, done.conversation_id) == done_events
            stopped = (
                await get(pb.GetConversationRequest(conversation_id=running.conversation_id))
            ).conversation
            assert stopped.status == S.RUN_STATUS_INTERRUPTED
            orphan = (await get(pb.GetConversationRequest(conversation_id="conv-crashed"))).conversation
            assert orphan.status == S.RUN_STATUS_INTERRUPTED
            (event,) = await events(stub, "conv-crashed", limit=1)
            assert (event.sequence, event.status) == (1, S.RUN_STATUS_INTERRUPTED)
            # Runnable again.
            resumed = (
                await stub.RunConversation(
                    pb.RunConversationRequest(conversation_id="conv-crashed", wait=True)
                )
            ).conversation
            assert resumed.status == S.RUN_STATUS_COMPLETED and resumed.messages[-1].content == "Bob one."
    finally:
        await second.stop(grace=0.1)


async def test_restart_adopts_an_orphan_and_finishes_it(tmp_path: Path) -> None:
    """With resume_orphans (the default), a conversation whose runner died continues by itself."""
    db = str(tmp_path / "aibattle.db")
    await crashed_conversation(db)
    app = await started(make_config(MODELS, database=db))
    try:
        async with grpc.aio.insecure_channel(app.grpc_target) as chan:
            stub = conversations_pb2_grpc.ConversationServiceStub(chan)
            log = await events(stub, "conv-crashed")  # ends by itself: the adopted run completes
            done = (
                await stub.GetConversation(pb.GetConversationRequest(conversation_id="conv-crashed"))
            ).conversation
    finally:
        await app.stop(grace=0.1)
    assert done.status == S.RUN_STATUS_COMPLETED
    assert [m.content for m in done.messages] == ["hi", "Bob one."]
    assert log[-1].type == E.CONVERSATION_EVENT_TYPE_COMPLETION
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))


# ---- the real local model


@pytest.mark.slow
async def test_two_round_ai_ai_with_the_local_model() -> None:
    srv = await started(
        Config.from_dict({"server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"}})
    )
    try:
        async with grpc.aio.insecure_channel(srv.grpc_target) as chan:
            stub = conversations_pb2_grpc.ConversationServiceStub(chan)
            conv = await create(
                stub,
                models=[seat("smollm2-135m", "human", "Sam"), seat("smollm2-135m", "assistant", "Max")],
                initial_prompt="What is your favourite colour? Answer in one sentence.",
                mode="ai-ai",
                rounds=2,
                system_instruction="Answer in one short sentence.",
            )
            got = await events(stub, conv.conversation_id)
            conv = (
                await stub.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))
            ).conversation
    finally:
        await srv.stop(grace=0.5)
    assert conv.status == S.RUN_STATUS_COMPLETED and conv.completed_rounds == 2
    replies = [m for m in conv.messages if m.role != "system"][1:]
    assert len(replies) == 3 and all(m.content.strip() and m.usage.completion_tokens > 0 for m in replies)
    assert got[-1].type == E.CONVERSATION_EVENT_TYPE_COMPLETION


# ---- input checked on arrival


async def test_what_a_conversation_could_never_use_is_refused_on_arrival() -> None:
    """A prompt past max_prompt_chars, a text attachment that is not UTF-8, a message past the
    conversation's size bound: each refused when it arrives, and the conversation stays usable."""
    srv = await started(make_config(MODELS, max_prompt_chars=2000))
    try:
        async with grpc.aio.insecure_channel(srv.grpc_target) as chan:
            stub = conversations_pb2_grpc.ConversationServiceStub(chan)
            people = [seat("alice", "human"), seat("bob", "assistant")]

            async def refused(call: Any) -> grpc.aio.AioRpcError:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                return caught.value

            too_long = await refused(
                stub.CreateConversation(
                    pb.CreateConversationRequest(models=people, initial_prompt="x" * 2001)
                )
            )
            assert too_long.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert error_info(too_long).reason == "PROMPT_TOO_LONG"
            latin1 = common_pb2.FileData(
                type="text", mime_type="text/plain", content="café".encode("latin-1")
            )
            undecodable = await refused(
                stub.CreateConversation(
                    pb.CreateConversationRequest(models=people, initial_prompt="Read it", file_data=latin1)
                )
            )
            assert undecodable.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "file_data" in field_of(undecodable)

            conv = await create(stub, models=people, rounds=50)  # waiting for alice
            cid = conv.conversation_id
            for request in (
                pb.AddMessageRequest(conversation_id=cid, content="y" * 2001),
                pb.AddMessageRequest(conversation_id=cid, content="Read it", file_data=latin1),
            ):
                error = await refused(stub.AddMessage(request))
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            # The conversation grows to what its models can be sent, then refuses clearly.
            reasons = []
            for _ in range(40):
                try:
                    await stub.AddMessage(
                        pb.AddMessageRequest(conversation_id=cid, content="z" * 190), timeout=HANG
                    )
                except grpc.aio.AioRpcError as exc:
                    reasons.append((exc.code(), error_info(exc).reason))
                    if error_info(exc).reason == "CONVERSATION_TOO_LONG":
                        break
                await wait_for(stub, cid)
            assert reasons[-1] == (grpc.StatusCode.FAILED_PRECONDITION, "CONVERSATION_TOO_LONG")
            # Nothing was half-written, and it can still be read whole.
            after = (await stub.GetConversation(pb.GetConversationRequest(conversation_id=cid))).conversation
            assert after.status == S.RUN_STATUS_WAITING_FOR_INPUT and not after.HasField("error")
            assert 1000 < sum(len(m.content) for m in after.messages) <= 2000
    finally:
        await srv.stop(grace=0.1)
