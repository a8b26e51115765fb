"""API keys over gRPC: KeyService, authentication, per-key models, ownership, limits, hard limits.

Real grpc.aio servers with scripted models and SQLite in memory; the admin key is set unless a test
says otherwise (then the server runs open, as on a developer's machine).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aibattle.v1 import (
    common_pb2,
    completions_pb2,
    completions_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from server.app import AIBattleServer
from server.config import ConfigError, load_config
from server.security import keys as key_secrets
from server.storage import KeyRow
from tests.conftest import RECORDER, error_info, make_config, rich_status
from tests.security_testlib import ADMIN, ADMIN_KEY, SECRETS, bearer, new_key, secure_config

HANG = 30.0  # only detects a hang


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    srv = AIBattleServer(secure_config())
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def channel(server: AIBattleServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.grpc_target) as chan:
        yield chan


def completion(model: str = "scripted-echo", **fields: Any) -> completions_pb2.CreateCompletionRequest:
    return completions_pb2.CreateCompletionRequest(model=model, prompt=fields.pop("prompt", "hi"), **fields)


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def retry_seconds(error: grpc.aio.AioRpcError) -> float | None:
    for detail in rich_status(error).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


# ---- KeyService


async def test_create_list_revoke_and_the_secret_is_shown_once(
    channel: grpc.aio.Channel, server: AIBattleServer
) -> None:
    stub = keys_pb2_grpc.KeyServiceStub(channel)
    key, secret = await new_key(channel, name="ci", allowed_models=["scripted-echo"], rpm=60, budget_usd=1.5)
    assert secret.startswith(f"aib_{key.key_id}_") and len(secret) > 40
    assert (key.name, list(key.allowed_models), key.rpm, key.budget_usd) == ("ci", ["scripted-echo"], 60, 1.5)
    assert key.HasField("created_at") and not key.HasField("revoked_at")

    listed = await stub.ListKeys(keys_pb2.ListKeysRequest(), metadata=ADMIN)
    assert [k.key_id for k in listed.keys] == [key.key_id]
    assert secret not in str(listed)  # never again
    row = await server.store.get_key(key.key_id)
    assert row is not None and row.secret_hash == key_secrets.hash_secret(secret)
    assert secret.encode() not in row.secret_hash and secret not in repr(row)  # stored hashed

    # The key works until it is revoked; revoking twice keeps the first time.
    models = models_pb2_grpc.ModelServiceStub(channel)
    await models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))
    revoked = await stub.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=key.key_id), metadata=ADMIN)
    again = await stub.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=key.key_id), metadata=ADMIN)
    assert revoked.key.HasField("revoked_at") and again.key.revoked_at == revoked.key.revoked_at
    error = await refused(models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret)))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")
    assert (await stub.ListKeys(keys_pb2.ListKeysRequest(), metadata=ADMIN)).keys == []
    shown = await stub.ListKeys(keys_pb2.ListKeysRequest(show_revoked=True), metadata=ADMIN)
    assert [k.key_id for k in shown.keys] == [key.key_id]
    missing = await refused(stub.RevokeKey(keys_pb2.RevokeKeyRequest(key_id="knope"), metadata=ADMIN))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"allowed_models": ["scripted-echo", "nope"]}, "allowed_models[1]"),
        ({"rpm": -1}, "rpm"),
        ({"budget_usd": float("nan")}, "budget_usd"),
        ({"expire_time": timestamp_pb2.Timestamp(seconds=1)}, "expire_time"),
    ],
)
async def test_create_key_validates(channel: grpc.aio.Channel, fields: dict[str, Any], field: str) -> None:
    stub = keys_pb2_grpc.KeyServiceStub(channel)
    request = keys_pb2.CreateKeyRequest(**{"name": "ok", **fields})
    error = await refused(stub.CreateKey(request, metadata=ADMIN))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["field"] == field


async def test_only_the_admin_key_manages_keys(channel: grpc.aio.Channel) -> None:
    _, secret = await new_key(channel)
    stub = keys_pb2_grpc.KeyServiceStub(channel)
    error = await refused(stub.ListKeys(keys_pb2.ListKeysRequest(), metadata=bearer(secret)))
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "ADMIN_KEY_REQUIRED",
    )
    error = await refused(stub.CreateKey(keys_pb2.CreateKeyRequest(name="x")))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_open_server_has_no_key_service() -> None:
    srv = AIBattleServer(make_config())
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(srv.grpc_target) as chan:
            stub = keys_pb2_grpc.KeyServiceStub(chan)
            error = await refused(stub.CreateKey(keys_pb2.CreateKeyRequest(name="x")))
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "AIBATTLE_ADMIN_KEY" in (error.details() or "")
            # Everything else answers without a key.
            models = models_pb2_grpc.ModelServiceStub(chan)
            assert (await models.ListModels(models_pb2.ListModelsRequest())).models
    finally:
        await srv.stop(grace=0.5)


# ---- configuration


def test_the_admin_key_is_never_shown_by_the_configuration(tmp_path: Path) -> None:
    config = load_config(env={"AIBATTLE_ADMIN_KEY": ADMIN_KEY})
    assert config.security.enabled and ADMIN_KEY not in repr(config) and ADMIN_KEY not in str(config.security)
    with pytest.raises(ConfigError) as caught:
        load_config(env={"AIBATTLE_ADMIN_KEY": "short-secret"})
    assert caught.value.lines == (
        "AIBATTLE_ADMIN_KEY: the admin key must be at least 16 characters (or empty)",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(env={"AIBATTLE_GRPC_ADDR": "0.0.0.0:50051"})
    assert "AIBATTLE_ADMIN_KEY" in caught.value.lines[0]
    for addr in ("127.0.0.1:0", "[::1]:0", "localhost:0"):
        assert not load_config(env={"AIBATTLE_GRPC_ADDR": addr}).security.enabled  # loopback runs open
    # A value of the wrong type is not repeated in the error either, whatever the key is.
    config_file = tmp_path / "aibattle.toml"
    config_file.write_text("[security]\nadmin_key = 12345678901234567890\n")
    with pytest.raises(ConfigError) as caught:
        load_config(env={"AIBATTLE_CONFIG": str(config_file)})
    assert "admin_key" in caught.value.lines[0] and "1234567890" not in "".join(caught.value.lines)


# ---- authentication


async def test_missing_invalid_revoked_and_expired_keys_are_unauthenticated(
    channel: grpc.aio.Channel, server: AIBattleServer
) -> None:
    _, secret = await new_key(channel)
    expired_id = key_secrets.new_key_id()
    expired = key_secrets.new_secret(expired_id)
    SECRETS.add(expired)
    await server.store.create_key(
        KeyRow(expired_id, "old", key_secrets.hash_secret(expired), (), 0, 0, 0, 0.0, time.time() - 1,
               time.time() - 60, None, 0.0)
    )  # fmt: skip
    wrong = secret[:-4] + ("AAAA" if not secret.endswith("AAAA") else "BBBB")
    SECRETS.add(wrong)
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    cases = {
        "API_KEY_MISSING": (),
        "API_KEY_INVALID": bearer(wrong),
        "API_KEY_EXPIRED": bearer(expired),
    }
    for reason, metadata in cases.items():
        error = await refused(stub.CreateCompletion(completion(), metadata=metadata))
        assert (error.code(), error_info(error).reason) == (grpc.StatusCode.UNAUTHENTICATED, reason)
        assert wrong not in (error.details() or "") and expired not in (error.details() or "")
    # Not one of our secrets at all: the same answer as a wrong one.
    error = await refused(stub.CreateCompletion(completion(), metadata=bearer("not-a-key")))
    assert error_info(error).reason == "API_KEY_INVALID"
    # x-api-key works as well as authorization; so does the admin key.
    ok = await stub.CreateCompletion(completion(), metadata=(("x-api-key", secret),))
    assert ok.content
    assert (await stub.CreateCompletion(completion(), metadata=ADMIN)).content
    # A server stream refuses before its first message.
    call = stub.StreamCompletion(completions_pb2.StreamCompletionRequest(model="scripted-echo", prompt="hi"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_health_is_open_and_reflection_is_a_switch() -> None:
    for requires in (False, True):
        config = secure_config()
        config = config.model_copy(
            update={"security": config.security.model_copy(update={"reflection_requires_key": requires})}
        )
        srv = AIBattleServer(config)
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(srv.grpc_target) as chan:
                health = health_pb2_grpc.HealthStub(chan)
                reply = await health.Check(health_pb2.HealthCheckRequest())
                assert reply.status == health_pb2.HealthCheckResponse.SERVING
                from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

                reflect = reflection_pb2_grpc.ServerReflectionStub(chan)

                async def services(metadata: Any = (), reflect: Any = reflect) -> list[str]:
                    call = reflect.ServerReflectionInfo(metadata=metadata)
                    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
                    await call.done_writing()
                    answer = await call.read()
                    return [s.name for s in answer.list_services_response.service]

                if requires:
                    with pytest.raises(grpc.aio.AioRpcError) as caught:
                        await services()
                    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
                    assert "aibattle.v1.KeyService" in await services(ADMIN)
                else:
                    assert "aibattle.v1.KeyService" in await services()
        finally:
            await srv.stop(grace=0.5)


# ---- per-key models


async def test_a_key_uses_and_sees_only_its_models(channel: grpc.aio.Channel) -> None:
    _, secret = await new_key(channel, allowed_models=["scripted-echo", "scripted-priced"])
    me = bearer(secret)
    models = models_pb2_grpc.ModelServiceStub(channel)
    listed = await models.ListModels(models_pb2.ListModelsRequest(), metadata=me)
    assert [m.id for m in listed.models] == ["scripted-echo", "scripted-priced"] and listed.total_size == 2
    everything = await models.ListModels(models_pb2.ListModelsRequest(), metadata=ADMIN)
    assert len(everything.models) == 5

    completions = completions_pb2_grpc.CompletionServiceStub(channel)
    assert (await completions.CreateCompletion(completion(), metadata=me)).content
    for call in (
        completions.CreateCompletion(completion("scripted-slow"), metadata=me),
        models.GetModel(models_pb2.GetModelRequest(model_id="scripted-slow"), metadata=me),
        conversations_pb2_grpc.ConversationServiceStub(channel).CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=[
                    conversations_pb2.Participant(id="scripted-echo", role="a"),
                    conversations_pb2.Participant(id="scripted-slow", role="b"),
                ],
                initial_prompt="hi",
            ),
            metadata=me,
        ),
        reasoning_pb2_grpc.ReasoningServiceStub(channel).CreateReasoning(
            reasoning_pb2.CreateReasoningRequest(
                prompt="hi", primary_model="scripted-echo", secondary_model="scripted-slow"
            ),
            metadata=me,
        ),
    ):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'scripted-slow'" in (error.details() or "")
        assert dict(error_info(error).metadata) == {"model": "scripted-slow"}
    # An unknown model is refused the same way: a restricted key learns nothing of other models.
    error = await refused(completions.CreateCompletion(completion("no-such-model"), metadata=me))
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


# ---- limits


async def test_requests_per_minute_with_a_2x_burst(channel: grpc.aio.Channel) -> None:
    _, secret = await new_key(channel, rpm=2)
    models = models_pb2_grpc.ModelServiceStub(channel)
    for _ in range(4):  # the burst: twice the per-minute rate
        await models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))
    error = await refused(models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret)))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert retry_seconds(error) == 30.0  # 2 per minute: the next one in half a minute
    # Another key, and the admin, are not affected.
    _, other = await new_key(channel, rpm=2)
    await models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(other))
    await models.ListModels(models_pb2.ListModelsRequest(), metadata=ADMIN)


async def test_tokens_per_minute(channel: grpc.aio.Channel) -> None:
    _, secret = await new_key(channel, tpm=4)  # a bucket of 8 tokens
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    first = await stub.CreateCompletion(completion(), metadata=bearer(secret))
    assert first.usage.total_tokens > 8  # the bucket is now in debt
    error = await refused(stub.CreateCompletion(completion(), metadata=bearer(secret)))
    assert (error.code(), error_info(error).reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOKEN_RATE_LIMITED",
    )
    assert (retry_seconds(error) or 0) >= 1


async def test_tokens_per_minute_hold_under_concurrency(channel: grpc.aio.Channel) -> None:
    """Tokens are reserved before a call (its worst case, at most the whole bucket), not counted after
    it: ten calls started together cannot all pass an empty-looking bucket."""
    _, secret = await new_key(channel, tpm=10)  # a bucket of 20; each call may use far more
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    results = await asyncio.gather(
        *(stub.CreateCompletion(completion(max_tokens=8), metadata=bearer(secret)) for _ in range(10)),
        return_exceptions=True,
    )
    done = [r for r in results if isinstance(r, completions_pb2.CreateCompletionResponse)]
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(done) == 1 and len(refusals) == 9
    assert {error_info(e).reason for e in refusals} == {"TOKEN_RATE_LIMITED"}
    assert all((retry_seconds(e) or 0) >= 1 for e in refusals)


async def test_a_revoked_key_stops_its_running_work(
    channel: grpc.aio.Channel, server: AIBattleServer
) -> None:
    """A conversation's background run and a Converse call outlive the check made when they began:
    the key is checked again before every model call and every further frame."""
    key, secret = await new_key(channel)
    stub = conversations_pb2_grpc.ConversationServiceStub(channel)
    seats = [conversations_pb2.Participant(id="scripted-slow", role=r) for r in ("a", "b")]
    conv = (
        await stub.CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=seats, mode="ai-ai", initial_prompt="Go", rounds=3
            ),
            metadata=bearer(secret),
        )
    ).conversation
    watch = stub.StreamConversationEvents(
        conversations_pb2.StreamConversationEventsRequest(conversation_id=conv.conversation_id),
        metadata=bearer(secret),
    )
    async for response in watch:  # the first turn is under way
        if response.event.type == conversations_pb2.CONVERSATION_EVENT_TYPE_TOKEN:
            break
    watch.cancel()
    keys = keys_pb2_grpc.KeyServiceStub(channel)
    await keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=key.key_id), metadata=ADMIN)
    for _ in range(300):  # bounded: the turn under way ends, the next one is refused
        if not server.runs.running(conv.conversation_id):
            break
        await asyncio.sleep(0.05)
    stored = await server.store.get(conv.conversation_id, kind="conversation")
    assert stored is not None
    ended = conversations_pb2.Conversation.FromString(stored.body)
    assert stored.status == common_pb2.RUN_STATUS_FAILED
    assert "revoked" in ended.error.message
    assert len([m for m in ended.messages if m.role in ("a", "b")]) == 2  # "Go" and the one turn

    # A Converse socket opened before the revocation: its next frame ends the call.
    key, secret = await new_key(channel)
    human = [
        conversations_pb2.Participant(id="scripted-echo", role="human"),
        conversations_pb2.Participant(id="scripted-echo", role="assistant"),
    ]
    conv = (
        await stub.CreateConversation(
            conversations_pb2.CreateConversationRequest(models=human, initial_prompt="Hi", auto_run=False),
            metadata=bearer(secret),
        )
    ).conversation
    call = stub.Converse(metadata=bearer(secret), timeout=HANG)
    await call.write(conversations_pb2.ConverseRequest(conversation_id=conv.conversation_id))
    assert (await call.read()).event.sequence == 1  # connected, replaying
    await keys.RevokeKey(keys_pb2.RevokeKeyRequest(key_id=key.key_id), metadata=ADMIN)
    await call.write(
        conversations_pb2.ConverseRequest(
            message=conversations_pb2.ConverseMessage(content="more", role="human")
        )
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        while await call.read() != grpc.aio.EOF:
            pass
    assert (caught.value.code(), error_info(caught.value).reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )


async def test_concurrent_streams(channel: grpc.aio.Channel) -> None:
    _, secret = await new_key(channel, max_concurrent_streams=1)
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    request = completions_pb2.StreamCompletionRequest(model="scripted-slow", prompt="go")
    first = stub.StreamCompletion(request, metadata=bearer(secret))
    assert (await first.read()).content
    second = stub.StreamCompletion(request, metadata=bearer(secret))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await second.read()
    assert error_info(caught.value).reason == "TOO_MANY_STREAMS"
    assert retry_seconds(caught.value) == 1.0
    first.cancel()
    # The slot comes back once the server sees the cancellation (bounded wait).
    for _ in range(100):
        third = stub.StreamCompletion(request, metadata=bearer(secret))
        try:
            assert (await third.read()).content
            third.cancel()
            return
        except grpc.aio.AioRpcError as error:
            assert error_info(error).reason == "TOO_MANY_STREAMS"
            await asyncio.sleep(0.05)
    pytest.fail("the stream slot never came back")


async def test_budget_holds_exactly_under_50_concurrent_requests(
    channel: grpc.aio.Channel, server: AIBattleServer
) -> None:
    # Each call produces exactly 4 tokens at $0.001: $0.004, which is also its reservation.
    key, secret = await new_key(channel, budget_usd=0.02)
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    request = completion("scripted-priced", max_tokens=4)
    results = await asyncio.gather(
        *(stub.CreateCompletion(request, metadata=bearer(secret), timeout=HANG) for _ in range(50)),
        return_exceptions=True,
    )
    done = [r for r in results if isinstance(r, completions_pb2.CreateCompletionResponse)]
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(done) == 5 and len(refusals) == 45
    assert sum(r.usage.cost_usd for r in done) == pytest.approx(0.02)
    assert {(e.code(), error_info(e).reason) for e in refusals} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED")
    }
    assert all(retry_seconds(e) is None for e in refusals)  # waiting does not refill a budget
    row = await server.store.get_key(key.key_id)
    assert row is not None and row.spent_usd == pytest.approx(0.02)
    listed = await keys_pb2_grpc.KeyServiceStub(channel).ListKeys(keys_pb2.ListKeysRequest(), metadata=ADMIN)
    assert listed.keys[0].spent_usd == pytest.approx(0.02)
    error = await refused(stub.CreateCompletion(request, metadata=bearer(secret)))
    assert error_info(error).reason == "BUDGET_EXCEEDED"


async def test_budget_reserves_the_worst_case_and_charges_the_real_cost(channel: grpc.aio.Channel) -> None:
    # scripted-echo: $0.001 per prompt token, $0.002 per generated one, 8 words a reply. "hi" reserves
    # (2 bytes + 8 + 128 template tokens) * 0.001 + 8 * 0.002 = $0.154 and costs 1 * 0.001 + 8 * 0.002
    # = $0.017.
    key, secret = await new_key(channel, budget_usd=0.2)
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    request = completion(max_tokens=8)
    costs = []
    for _ in range(10):
        try:
            costs.append((await stub.CreateCompletion(request, metadata=bearer(secret))).usage.cost_usd)
        except grpc.aio.AioRpcError as error:
            assert error_info(error).reason == "BUDGET_EXCEEDED"
            assert "$0.051 spent" in (error.details() or "") and "up to $0.154" in (error.details() or "")
            break
    # Three fit; a fourth could cost up to $0.154 and only $0.149 is left, so it is refused.
    assert costs == [pytest.approx(0.017)] * 3
    listed = await keys_pb2_grpc.KeyServiceStub(channel).ListKeys(keys_pb2.ListKeysRequest(), metadata=ADMIN)
    assert [k.spent_usd for k in listed.keys if k.key_id == key.key_id] == [pytest.approx(0.051)]


async def test_the_budget_covers_the_turns_of_a_conversation(
    channel: grpc.aio.Channel, server: AIBattleServer
) -> None:
    # A turn reserves default_max_tokens (256) * $0.001 = $0.256 and costs its 6 words, $0.006: the
    # first turn fits $0.26, the second ($0.006 spent + $0.256) does not, and the run fails saying so.
    key, secret = await new_key(channel, budget_usd=0.26)
    stub = conversations_pb2_grpc.ConversationServiceStub(channel)
    seats = [conversations_pb2.Participant(id="scripted-priced", role=r) for r in ("a", "b")]
    conv = (
        await stub.CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=seats, mode="ai-ai", initial_prompt="Go", rounds=2, wait=True
            ),
            metadata=bearer(secret),
            timeout=HANG,
        )
    ).conversation
    assert conv.status == common_pb2.RUN_STATUS_FAILED
    assert "budget" in conv.error.message
    assert [(m.role, m.content) for m in conv.messages] == [("a", "Go"), ("b", "one two three four five six")]
    row = await server.store.get_key(key.key_id)
    assert row is not None and row.spent_usd == pytest.approx(0.006)


# ---- hard limits


async def test_hard_limits_have_clear_errors(channel: grpc.aio.Channel, server: AIBattleServer) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    error = await refused(stub.CreateCompletion(completion(max_tokens=4096), metadata=ADMIN))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(error).metadata["field"] == "max_tokens" and "2048" in (error.details() or "")
    limit = server.config.server.max_prompt_chars
    error = await refused(stub.CreateCompletion(completion(prompt="x" * (limit + 1)), metadata=ADMIN))
    assert (error.code(), error_info(error).reason) == (grpc.StatusCode.INVALID_ARGUMENT, "PROMPT_TOO_LONG")
    conversations = conversations_pb2_grpc.ConversationServiceStub(channel)
    error = await refused(
        conversations.CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=[
                    conversations_pb2.Participant(id="scripted-echo", role="a"),
                    conversations_pb2.Participant(id="scripted-echo", role="b"),
                ],
                rounds=51,
            ),
            metadata=ADMIN,
        )
    )
    assert error_info(error).metadata["field"] == "rounds"
    reasoning = reasoning_pb2_grpc.ReasoningServiceStub(channel)
    error = await refused(
        reasoning.CreateReasoning(
            reasoning_pb2.CreateReasoningRequest(
                prompt="hi", primary_model="scripted-echo", secondary_model="scripted-echo", max_iterations=21
            ),
            metadata=ADMIN,
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    big = completion(prompt="x" * (server.config.server.max_message_bytes + 1))
    error = await refused(stub.CreateCompletion(big, metadata=ADMIN))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# ---- logs


async def test_the_log_scan_sees_debug_lines_of_the_server(channel: grpc.aio.Channel) -> None:
    """What no_secret_in_logs (tests/conftest.py) relies on: server log lines at DEBUG reach it."""
    key, secret = await new_key(channel)
    before = len(RECORDER.lines)
    await models_pb2_grpc.ModelServiceStub(channel).ListModels(models_pb2.ListModelsRequest(), metadata=ADMIN)
    await models_pb2_grpc.ModelServiceStub(channel).ListModels(
        models_pb2.ListModelsRequest(), metadata=bearer(secret)
    )
    access = [json.loads(line) for line in RECORDER.lines[before:] if '"logger": "aibattle.access"' in line]
    # Who did what: the key id, never the secret.
    assert [(e["method"], e.get("key_id")) for e in access[-2:]] == [
        ("/aibattle.v1.ModelService/ListModels", "admin"),
        ("/aibattle.v1.ModelService/ListModels", key.key_id),
    ]
    assert not any(s in line for line in RECORDER.lines[before:] for s in (ADMIN_KEY, secret))
