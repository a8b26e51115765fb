"""Keyset pagination: pages that rows created meanwhile cannot shift, and page tokens checked on arrival.

Listing conversations with `page_size = 4` while new ones were created returned rows twice: an offset
counts rows, and each row created in front of it pushed the next page back. Every List now resumes
strictly after the (created_at, id) of the last row it returned.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from aibattle.v1 import (
    conversations_pb2,
    conversations_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from common.errors import InvalidArgument
from server import pagination
from server.app import AIBattleServer
from server.storage import SqliteStore
from tests.conftest import error_info
from tests.security_testlib import ADMIN, new_key, secure_config

HANG = 30.0  # only detects a hang
PAGE = 4
EXISTING = 15  # rows made before listing begins


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AIBattleServer]:
    srv = AIBattleServer(secure_config(database=str(tmp_path / "state.db")))
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def channel(server: AIBattleServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target) as chan:
        yield chan


# One (create a row, list a page) pair per List RPC; a page is (ids, next_page_token).
Create = Callable[[grpc.aio.Channel], Awaitable[str]]
ListPage = Callable[[grpc.aio.Channel, str], Awaitable[tuple[list[str], str]]]


async def create_conversation(channel: grpc.aio.Channel) -> str:
    reply = await conversations_pb2_grpc.ConversationServiceStub(channel).CreateConversation(
        conversations_pb2.CreateConversationRequest(
            models=[
                conversations_pb2.Participant(id="scripted-echo", role="human"),
                conversations_pb2.Participant(id="scripted-echo", role="assistant"),
            ]
        ),
        metadata=ADMIN,
        timeout=HANG,
    )
    return reply.conversation.conversation_id


async def list_conversations(channel: grpc.aio.Channel, token: str) -> tuple[list[str], str]:
    reply = await conversations_pb2_grpc.ConversationServiceStub(channel).ListConversations(
        conversations_pb2.ListConversationsRequest(page_size=PAGE, page_token=token),
        metadata=ADMIN,
        timeout=HANG,
    )
    return [c.conversation_id for c in reply.conversations], reply.next_page_token


async def create_reasoning(channel: grpc.aio.Channel) -> str:
    reply = await reasoning_pb2_grpc.ReasoningServiceStub(channel).CreateReasoning(
        reasoning_pb2.CreateReasoningRequest(prompt="Why?", primary_model="scripted-echo", max_iterations=1),
        metadata=ADMIN,
        timeout=HANG,
    )
    return reply.reasoning.reasoning_id


async def list_reasonings(channel: grpc.aio.Channel, token: str) -> tuple[list[str], str]:
    reply = await reasoning_pb2_grpc.ReasoningServiceStub(channel).ListReasonings(
        reasoning_pb2.ListReasoningsRequest(page_size=PAGE, page_token=token), metadata=ADMIN, timeout=HANG
    )
    return [r.reasoning_id for r in reply.reasonings], reply.next_page_token


async def create_key(channel: grpc.aio.Channel) -> str:
    key, _ = await new_key(channel, name="paged")
    return key.key_id


async def list_keys(channel: grpc.aio.Channel, token: str) -> tuple[list[str], str]:
    reply = await keys_pb2_grpc.KeyServiceStub(channel).ListKeys(
        keys_pb2.ListKeysRequest(page_size=PAGE, page_token=token), metadata=ADMIN, timeout=HANG
    )
    return [k.key_id for k in reply.keys], reply.next_page_token


RESOURCES = pytest.mark.parametrize(
    ("create", "list_page"),
    [
        (create_conversation, list_conversations),
        (create_reasoning, list_reasonings),
        (create_key, list_keys),
    ],
    ids=["conversations", "reasonings", "keys"],
)


@RESOURCES
async def test_pages_under_concurrent_inserts_repeat_and_miss_nothing(
    channel: grpc.aio.Channel, create: Create, list_page: ListPage
) -> None:
    existing = [await create(channel) for _ in range(EXISTING)]
    made_meanwhile: list[str] = []
    made = asyncio.Event()

    async def keep_creating() -> None:
        while True:
            made_meanwhile.append(await create(channel))
            made.set()

    creator = asyncio.create_task(keep_creating())
    seen: list[str] = []
    try:
        token = ""
        for _ in range(3 * EXISTING):  # bounds a token that never ends
            # New rows land in front of the first page, between every two pages: an offset then slides
            # back over rows already returned.
            made.clear()
            await made.wait()
            ids, token = await list_page(channel, token)
            assert len(ids) <= PAGE
            seen += ids
            if not token:
                break
        assert not token
    finally:
        creator.cancel()
        await asyncio.gather(creator, return_exceptions=True)
    assert made_meanwhile  # the inserts did run while listing
    assert len(seen) == len(set(seen)), (
        f"rows returned twice: {sorted({i for i in seen if seen.count(i) > 1})}"
    )
    assert set(existing) <= set(seen)
    # Newest first: the rows that existed appear in the reverse of their creation order.
    assert [i for i in seen if i in set(existing)] == existing[::-1]


@RESOURCES
async def test_a_token_from_another_list_or_filter_or_nobody_is_invalid(
    channel: grpc.aio.Channel, create: Create, list_page: ListPage
) -> None:
    # Conversations and reasoning sessions have the same filter (a status): only the list tells their
    # tokens apart.
    other_create, other_list = (
        (create_reasoning, list_reasonings)
        if list_page is list_conversations
        else (create_conversation, list_conversations)
    )
    for _ in range(PAGE + 1):
        await create(channel)
        await other_create(channel)
    _, token = await list_page(channel, "")
    _, other_lists_token = await other_list(channel, "")
    assert token and other_lists_token
    forged = [
        other_lists_token,  # valid, but for another List
        "garbage!",
        base64.urlsafe_b64encode(json.dumps({"o": 4, "f": "x"}).encode()).decode(),  # the old offset form
        token[:-3],  # cut short
        token + "A" * 9000,  # oversized
    ]
    for bad in forged:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await list_page(channel, bad)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert caught.value.details().startswith("page_token"), caught.value.details()
        assert error_info(caught.value).reason
        assert "AAAAAAAAA" not in caught.value.details()  # the value is not echoed


async def test_a_token_is_tied_to_its_filters(channel: grpc.aio.Channel) -> None:
    for _ in range(3):
        await create_key(channel)
    keys = keys_pb2_grpc.KeyServiceStub(channel)
    first = await keys.ListKeys(keys_pb2.ListKeysRequest(page_size=1), metadata=ADMIN)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.ListKeys(
            keys_pb2.ListKeysRequest(page_size=1, page_token=first.next_page_token, show_revoked=True),
            metadata=ADMIN,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "different filters" in caught.value.details()


async def test_models_page_by_id(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListModels(
            models_pb2.ListModelsRequest(page_size=2, page_token=token), metadata=ADMIN
        )
        seen += [m.id for m in page.models]
        token = page.next_page_token
        if not token:
            break
    everything = await stub.ListModels(models_pb2.ListModelsRequest(), metadata=ADMIN)
    assert seen == sorted(m.id for m in everything.models) and len(seen) > 2


# ---- the token codec and the store, below the RPCs


def _token(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


FILTERS = ["ListThings", 0]


def test_a_token_round_trips_its_key_exactly() -> None:
    key = (1763900000.1234567, "conv-0123456789abcdef")
    assert pagination.decode_key(pagination.encode_key(key, FILTERS), FILTERS) == key
    assert pagination.decode_key("", FILTERS) is None


@pytest.mark.parametrize(
    "token",
    [
        _token({"v": 2, "a": [1.0, "x"], "f": "{f}"}),  # another version
        _token({"v": True, "a": [1.0, "x"], "f": "{f}"}),
        _token({"v": 1, "a": [1.0, "x"], "f": "{f}", "extra": 1}),
        _token({"v": 1, "a": [1.0], "f": "{f}"}),
        _token({"v": 1, "a": [1.0, "x", 3], "f": "{f}"}),
        _token({"v": 1, "a": ["1.0", "x"], "f": "{f}"}),
        _token({"v": 1, "a": [True, "x"], "f": "{f}"}),
        _token({"v": 1, "a": [1.0, ""], "f": "{f}"}),
        _token({"v": 1, "a": [1.0, 7], "f": "{f}"}),
        _token({"v": 1, "a": {"0": 1.0}, "f": "{f}"}),
        _token([1, "x"]),
        _token("x"),
        # Non-finite numbers: json reads NaN/Infinity, and 1e999 as inf.
        base64.urlsafe_b64encode(b'{"v":1,"a":[NaN,"x"],"f":"{f}"}').decode(),
        base64.urlsafe_b64encode(b'{"v":1,"a":[1e999,"x"],"f":"{f}"}').decode(),
        base64.urlsafe_b64encode(b"[" * 5000).decode(),
        "not base64 at all",
        "ZZZ=ZZZ",
        "é",
    ],
)
def test_a_malformed_token_is_refused_naming_page_token(token: str) -> None:
    fingerprint = json.loads(base64.urlsafe_b64decode(pagination.encode_key((1.0, "x"), FILTERS) + "==="))[
        "f"
    ]
    # Payloads carry the right fingerprint, so only their shape can be what refuses them.
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)) if token.isascii() else b""
    if b"{f}" in raw:
        token = base64.urlsafe_b64encode(raw.replace(b"{f}", fingerprint.encode())).decode()
    with pytest.raises(InvalidArgument) as caught:
        pagination.decode_key(token, FILTERS)
    assert caught.value.field == "page_token"


async def test_store_pages_rows_made_in_the_same_instant_by_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import server.storage.sqlite as sqlite_module

    # Rows made in the same instant (the clock's resolution is coarse on some systems).
    monkeypatch.setattr(sqlite_module, "time", SimpleNamespace(time=lambda: 1000.0))
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    try:
        for i in range(7):
            await store.create("thing", f"t{i}", owner="a", status=1, body=b"", events=[])
        await store.create("thing", "other", owner="b", status=1, body=b"", events=[])
        pages: list[list[str]] = []
        after: tuple[float, str] | None = None
        while True:
            rows = await store.list("thing", owner="a", status=None, after=after, limit=3)
            if not rows:
                break
            pages.append([r.resource_id for r in rows])
            after = (rows[-1].created_at, rows[-1].resource_id)
    finally:
        await store.close()
    assert pages == [["t6", "t5", "t4"], ["t3", "t2", "t1"], ["t0"]]


async def test_the_list_queries_are_served_by_an_index(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    issued: list[str] = []
    try:
        await store.db.set_trace_callback(issued.append)  # the statements as run, values inlined
        for status in (None, 1):
            await store.list("thing", owner="a", status=status, after=(1000.0, "t1"), limit=3)
        for show_revoked in (False, True):
            await store.list_keys(show_revoked=show_revoked, after=(1000.0, "k1"), limit=3)
        await store.db.set_trace_callback(None)
        queries = [q for q in issued if q.lstrip().upper().startswith("SELECT")]
        assert len(queries) == 4
        for query in queries:
            async with store.db.execute(f"EXPLAIN QUERY PLAN {query}") as cursor:
                plan = " ".join([str(row[-1]) async for row in cursor])
            # The keyset bound is a search of an index in the list's order: no scan, no sort of its own.
            assert "USING INDEX" in plan and "<(?,?)" in plan.replace(" ", ""), plan
            assert "TEMP B-TREE" not in plan, plan
    finally:
        await store.close()
