"""PostgreSQL as the store: choosing it by URL, its versioned schema and migration lock, conditional
writes across connections, and a server serving on it. (The Store's behaviour itself is tested on both
backends in test_storage.py and test_store_concurrency.py.)"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from aibattle.v1 import common_pb2, conversations_pb2, conversations_pb2_grpc
from server.app import AIBattleServer
from server.config import ConfigError, load_config
from server.storage import Lease, SqliteStore, open_store
from server.storage.postgres import _MIGRATION_LOCK, SCHEMA_VERSION, PostgresStore, SchemaTooNew, migrate
from tests.conftest import make_config
from tests.postgres_testlib import postgres_server, postgres_url
from tests.server.test_conversations import crashed_conversation

__all__ = ["postgres_server", "postgres_url"]  # fixtures

pb = conversations_pb2
S = common_pb2.RunStatus
HANG = 30.0


# ---- choosing the store: `[server] database`


@pytest.mark.parametrize(
    ("database", "kind"),
    [
        ("postgresql://u:p@db.example:5432/aibattle", PostgresStore),
        ("postgres://db.example/aibattle", PostgresStore),
        ("PostgreSQL://db.example/aibattle", PostgresStore),
        ("aibattle.db", SqliteStore),
        ("/var/lib/aibattle/state.db", SqliteStore),
        (":memory:", SqliteStore),
    ],
)
def test_a_url_means_postgresql_and_a_path_sqlite(database: str, kind: type) -> None:
    config = load_config(env={"AIBATTLE_DB": database})
    assert config.server.database == database
    assert isinstance(open_store(config.server.database), kind)


def test_another_scheme_is_a_configuration_error_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text("[server]\ndatabase = 'mysql://root:secret@db/aibattle'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    (line,) = str(caught.value).splitlines()
    assert "server.database: mysql:// is not a database this server knows" in line
    assert "postgresql://" in line and "secret" not in line  # the scheme is named, not the credentials
    with pytest.raises(ConfigError) as caught:
        load_config(env={"AIBATTLE_DB": "sqlite:///x.db"})
    assert (
        str(caught.value)
        .splitlines()[0]
        .startswith("AIBATTLE_DB: sqlite:// is not a database this server knows")
    )
    assert not (Path.cwd() / "mysql:").exists() and not (Path.cwd() / "sqlite:").exists()


# ---- the versioned schema


async def test_two_stores_opening_at_once_migrate_once(postgres_url: str) -> None:
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        await asyncio.gather(first.open(), second.open())
        conn = await asyncpg.connect(postgres_url)
        try:
            versions = [r[0] for r in await conn.fetch("SELECT version FROM schema_version ORDER BY 1")]
        finally:
            await conn.close()
        assert versions == list(range(1, SCHEMA_VERSION + 1))  # each migration ran once
        await first.create("thing", "t1", owner="", status=1, body=b"", events=[b"a"])
        assert (await second.events("t1", after=0)) == [(1, b"a")]
    finally:
        await first.close()
        await second.close()


async def test_migration_waits_for_the_advisory_lock_and_finds_the_work_done(postgres_url: str) -> None:
    holder = await asyncpg.connect(postgres_url)
    others = [await asyncpg.connect(postgres_url) for _ in range(2)]
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
        waiting = [asyncio.create_task(migrate(conn)) for conn in others]
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in waiting)  # both wait for the lock another holds
        await holder.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        found = sorted(await asyncio.gather(*waiting))
        assert found == [0, SCHEMA_VERSION]  # one migrated from nothing; the other found it done
    finally:
        for conn in [holder, *others]:
            await conn.close()


async def test_a_schema_newer_than_this_server_knows_is_refused(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    await store.open()
    await store.create("thing", "t1", owner="", status=1, body=b"v", events=[])
    await store.close()
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    newer = PostgresStore(postgres_url)
    with pytest.raises(SchemaTooNew, match=rf"version {SCHEMA_VERSION + 1}, newer than this server knows"):
        await newer.open()
    with pytest.raises(RuntimeError, match="not open"):  # and it did not open
        await newer.get("t1", kind="thing")
    # Nor does a server start on it.
    app = AIBattleServer(make_config(database=postgres_url))
    with pytest.raises(SchemaTooNew):
        await app.start()
    await app.registry.close()


# ---- conditional writes across connections


async def test_a_claim_across_connections_has_exactly_one_winner(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(2)]  # two pools: two replicas, say
    for store in stores:
        await store.open()
    blocker = await asyncpg.connect(postgres_url)
    try:
        now = time.time()
        await stores[0].create(
            "thing", "t1", owner="", status=5, body=b"v1", events=[b"e1"], lease=Lease("dead", now - 1)
        )
        # Hold the row so that both claims are surely in flight at once, then let them race.
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT 1 FROM resources WHERE resource_id = 't1' FOR UPDATE")
        claims = [
            asyncio.create_task(
                store.claim(
                    "t1",
                    Lease(f"r{i}", now + 60),
                    expected_sequence=1,
                    status=2,
                    body=f"v2-{i}".encode(),
                    events=[f"e2-{i}".encode()],
                    now=now,
                )
            )
            for i, store in enumerate(stores)
        ]
        await asyncio.sleep(0.3)
        assert not any(task.done() for task in claims)
        await tx.rollback()
        results = await asyncio.gather(*claims)
        assert sorted(results, key=lambda r: r or 0) == [None, 2]
        winner = results.index(2)
        stored = await stores[1].get("t1", kind="thing")
        assert (
            stored is not None and stored.runner_id == f"r{winner}" and stored.body == f"v2-{winner}".encode()
        )
        assert await stores[0].events("t1", after=0) == [(1, b"e1"), (2, f"e2-{winner}".encode())]
    finally:
        await blocker.close()
        for store in stores:
            await store.close()


async def test_commits_from_two_connections_keep_sequences_dense(postgres_url: str) -> None:
    stores = [PostgresStore(postgres_url) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        await stores[0].create("thing", "t1", owner="", status=1, body=b"", events=[b"start"])
        await asyncio.gather(
            *(stores[i % 2].commit("t1", status=2, body=None, events=[b"a", b"b"]) for i in range(40))
        )
        sequences = [s for s, _ in await stores[1].events("t1", after=0, limit=1000)]
        assert sequences == list(range(1, 82))
        stored = await stores[0].get("t1", kind="thing")
        assert stored is not None and stored.last_sequence == 81
    finally:
        for store in stores:
            await store.close()


# ---- a server on PostgreSQL

MODELS: list[dict[str, Any]] = [
    {"id": "alice", "provider": "scripted", "script": ["Alice one.", "Alice two."]},
    {"id": "bob", "provider": "scripted", "script": ["Bob one.", "Bob two."]},
]


async def _events(stub: Any, cid: str) -> list[pb.ConversationEvent]:
    call = stub.StreamConversationEvents(
        pb.StreamConversationEventsRequest(conversation_id=cid), timeout=HANG
    )
    return [reply.event async for reply in call]


async def test_a_server_on_postgresql_serves_a_conversation_to_completion_and_adopts_an_orphan(
    postgres_url: str,
) -> None:
    app = AIBattleServer(make_config(MODELS, database=postgres_url))
    await app.start()
    assert isinstance(app.store, PostgresStore)
    try:
        async with grpc.aio.insecure_channel(app.grpc_target) as chan:
            stub = conversations_pb2_grpc.ConversationServiceStub(chan)
            created = await stub.CreateConversation(
                pb.CreateConversationRequest(
                    models=[
                        pb.Participant(id="alice", role="human"),
                        pb.Participant(id="bob", role="assistant"),
                    ],
                    initial_prompt="Start.",
                    mode="ai-ai",
                    rounds=2,
                    wait=True,
                ),
                timeout=HANG,
            )
            conv = created.conversation
            log = await _events(stub, conv.conversation_id)
    finally:
        await app.stop(grace=0.5)
    assert conv.status == S.RUN_STATUS_COMPLETED and conv.completed_rounds == 2
    assert [m.content for m in conv.messages] == ["Start.", "Bob one.", "Alice one.", "Bob two."]
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert log[-1].type == pb.ConversationEventType.CONVERSATION_EVENT_TYPE_COMPLETION

    # A run whose server died (its lease expired) is adopted by the next server on the database.
    await crashed_conversation(postgres_url)
    again = AIBattleServer(make_config(MODELS, database=postgres_url))
    await again.start()
    try:
        async with grpc.aio.insecure_channel(again.grpc_target) as chan:
            stub = conversations_pb2_grpc.ConversationServiceStub(chan)
            log = await _events(stub, "conv-crashed")
            done = (
                await stub.GetConversation(pb.GetConversationRequest(conversation_id="conv-crashed"))
            ).conversation
            first = (
                await stub.GetConversation(pb.GetConversationRequest(conversation_id=conv.conversation_id))
            ).conversation
    finally:
        await again.stop(grace=0.5)
    assert done.status == S.RUN_STATUS_COMPLETED
    assert [m.content for m in done.messages] == ["hi", "Bob one."]
    assert [e.sequence for e in log] == list(range(1, len(log) + 1))
    assert first.status == S.RUN_STATUS_COMPLETED and len(first.messages) == 4  # kept across servers
