"""The SDK against a real server process: calls, typed errors, deadlines, retries, cancel, resume."""

from __future__ import annotations

import threading

import grpc
import pytest

from aibattle_sdk import (
    AsyncClient,
    AuthenticationError,
    Client,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RetryPolicy,
    UnavailableError,
)
from aibattle_sdk.v1 import ConversationEventType, ReasoningEventType, RunStatus
from tests.e2e.process import server_process
from tests.sdk.proxy import Proxy, resumes_across_a_drop

FAST_RECONNECT = {"grpc.initial_reconnect_backoff_ms": 50, "grpc.max_reconnect_backoff_ms": 100}
QUICK_RETRY = RetryPolicy(max_attempts=8, initial_backoff=0.05, max_backoff=0.2)


def test_models_and_a_whole_completion(client: Client) -> None:
    assert {m.id for m in client.models.list().models} >= {"echo", "slow", "critic", "flaky"}
    assert client.models.get("echo").provider == "scripted"
    answer = client.completions.create(model="echo", prompt="Hi")
    assert answer.content == "Hello there, friend. This is a scripted reply."
    assert answer.usage is not None and answer.usage.completion_tokens == 8


def test_a_stream_yields_the_words_in_order_then_a_final_chunk(client: Client) -> None:
    chunks = list(client.completions.create(model="echo", prompt="Hi", stream=True))
    assert "".join(c.content for c in chunks) == "Hello there, friend. This is a scripted reply."
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]


def test_not_found_carries_code_message_and_reason(client: Client) -> None:
    with pytest.raises(NotFoundError) as caught:
        client.models.get("no-such-model")
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert caught.value.reason == "MODEL_NOT_FOUND"
    assert caught.value.domain == "aibattle.dev"
    assert caught.value.metadata == {"model": "no-such-model"}
    assert "no-such-model" in caught.value.message


def test_invalid_argument_names_the_field(client: Client) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.conversations.create(models=[("echo", "human")])
    assert caught.value.reason == "INVALID_FIELD"
    assert [field for field, _ in caught.value.field_violations] == ["models"]


def test_failed_precondition_for_a_completed_conversation(client: Client) -> None:
    conversation = client.conversations.create(
        models=[("echo", "human"), ("echo", "assistant")], initial_prompt="Hi", rounds=1, wait=True
    )
    assert conversation.status == RunStatus.COMPLETED
    with pytest.raises(FailedPreconditionError) as caught:
        client.conversations.run(conversation.conversation_id)
    assert caught.value.reason == "CONVERSATION_COMPLETED"


def test_an_oversized_request_is_a_rate_limit_error(client: Client) -> None:
    with pytest.raises(RateLimitError) as caught:
        client.completions.create(model="echo", prompt="x" * 9_000_000)
    assert caught.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_deadline_ends_a_slow_call(client: Client) -> None:
    with pytest.raises(DeadlineExceededError):
        client.completions.create(model="slow", prompt="Hi", timeout=0.3)
    stream = client.completions.create(model="slow", prompt="Hi", stream=True, timeout=0.3)
    seen = []
    with pytest.raises(DeadlineExceededError):
        for chunk in stream:
            seen.append(chunk.content)
    assert 0 < len(seen) < 80  # some words arrived, then the deadline cut the stream


def test_an_upstream_failure_mid_stream_is_unavailable_and_not_retried(target: str) -> None:
    with Client(target, retry=QUICK_RETRY) as client:
        stream = client.completions.create(model="flaky", prompt="Hi", stream=True)
        seen = []
        with pytest.raises(UnavailableError):
            for chunk in stream:
                seen.append(chunk.content)
        assert "".join(seen) == "one two "  # a chunk had arrived: repeating would duplicate output
        assert stream.reconnects == 0


def test_a_safe_call_is_retried_until_the_server_is_reachable(target: str) -> None:
    proxy = Proxy(target, refuse=2)
    try:
        with Client(proxy.target, retry=QUICK_RETRY, channel_options=FAST_RECONNECT) as client:
            assert client.models.get("echo").id == "echo"
        assert proxy.accepted >= 3  # two connections refused, then one relayed
    finally:
        proxy.close()


def test_an_unsafe_call_is_not_retried(target: str) -> None:
    proxy = Proxy(target, refuse=1)
    try:
        with Client(proxy.target, retry=QUICK_RETRY, channel_options=FAST_RECONNECT) as client:
            with pytest.raises(UnavailableError):
                client.conversations.create(models=[("echo", "human"), ("echo", "assistant")])
        assert proxy.accepted == 1
    finally:
        proxy.close()


def test_unreachable_server_gives_up_after_the_policy(target: str) -> None:
    policy = RetryPolicy(max_attempts=2, initial_backoff=0.01)
    with Client("127.0.0.1:1", retry=policy, timeout=5) as client, pytest.raises(UnavailableError):
        client.models.list()


def test_cancelling_a_stream_ends_it_quietly(client: Client) -> None:
    stream = client.completions.create(model="slow", prompt="Hi", stream=True)
    seen = []
    for chunk in stream:
        seen.append(chunk.content)
        if len(seen) == 3:
            stream.cancel()
    assert seen == ["word0 ", "word1 ", "word2 "]
    # The channel is fine afterwards.
    assert client.models.get("echo").id == "echo"


def test_cancelling_from_another_thread(client: Client) -> None:
    stream = client.completions.create(model="slow", prompt="Hi", stream=True)
    first = next(stream)
    threading.Thread(target=stream.cancel).start()
    rest = list(stream)
    assert first.content == "word0 "
    assert len(rest) < 79 and not any(c.is_final for c in rest)


def test_an_event_stream_resumes_across_a_dropped_connection(target: str) -> None:
    resumes_across_a_drop(
        Proxy(target),
        lambda proxy: Client(proxy.target, retry=QUICK_RETRY, channel_options=FAST_RECONNECT),
        Client(target),
    )


def test_conversation_lifecycle(client: Client) -> None:
    conversation = client.conversations.create(
        models=[{"id": "echo", "role": "human"}, {"id": "echo", "role": "assistant"}],
        initial_prompt="Hi",
        rounds=2,
        auto_run=False,
    )
    assert conversation.status == RunStatus.PENDING
    cid = conversation.conversation_id
    run = client.conversations.run(cid, wait=True)
    assert run.completed_rounds >= 1
    message = client.conversations.add_message(cid, content="And then?", auto_run=False)
    assert message.role == "human" and message.message_id
    assert any(c.conversation_id == cid for c in client.conversations.list().conversations)
    last = client.conversations.get(cid).last_sequence
    events = []
    with client.conversations.events(cid, after_sequence=1) as stream:  # live: the turn awaits a run
        for event in stream:
            events.append(event)
            if event.sequence == last:
                break
    assert [e.sequence for e in events] == list(range(2, last + 1))
    said = [e.message.content for e in events if e.message is not None and e.message.role == "human"]
    assert said[-1] == "And then?"
    assert client.conversations.cancel(cid).conversation_id == cid
    client.conversations.delete(cid)
    with pytest.raises(NotFoundError):
        client.conversations.get(cid)


def test_converse_runs_a_conversation_both_ways(client: Client) -> None:
    conversation = client.conversations.create(
        models=[("echo", "human"), ("echo", "assistant")], initial_prompt="Hi", rounds=1, auto_run=False
    )
    with client.conversations.converse(conversation.conversation_id) as session:
        session.run()
        session.close()
        responses = list(session)
    events = [r.event for r in responses if r.event is not None]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == ConversationEventType.COMPLETION
    text = "".join(e.delta for e in events if e.type == ConversationEventType.TOKEN)
    assert text == "Hello there, friend. This is a scripted reply."


def test_converse_reports_a_refused_action_and_goes_on(client: Client) -> None:
    conversation = client.conversations.create(
        models=[("echo", "human"), ("echo", "assistant")], initial_prompt="Hi", rounds=1, wait=True
    )
    with client.conversations.converse(conversation.conversation_id) as session:
        session.run()
        session.close()
        rejected = [r.rejected for r in session if r.rejected is not None]
    assert len(rejected) == 1 and rejected[0].code == grpc.StatusCode.FAILED_PRECONDITION.value[0]


def test_reasoning_lifecycle(client: Client) -> None:
    done = client.reasoning.create(
        primary_model="echo", secondary_model="critic", prompt="2+2?", max_iterations=1, wait=True
    )
    assert done.status == RunStatus.COMPLETED
    assert done.final_result == "Hello there, friend. This is a scripted reply."
    assert client.reasoning.get(done.reasoning_id).iterations == done.iterations
    assert any(r.reasoning_id == done.reasoning_id for r in client.reasoning.list().reasonings)
    running = client.reasoning.create(primary_model="slow", secondary_model="critic", prompt="Count.")
    assert client.reasoning.cancel(running.reasoning_id).reasoning_id == running.reasoning_id
    events = list(client.reasoning.events(running.reasoning_id))
    assert events[-1].status == RunStatus.CANCELLED


def test_self_consistency_draws_the_samples_asked_for(client: Client) -> None:
    done = client.reasoning.create(
        primary_model="echo", prompt="2+2?", collaboration_strategy="self_consistency", samples=3, wait=True
    )
    assert done.status == RunStatus.COMPLETED and done.samples == 3
    assert [i.kind for i in done.iterations] == ["sample"] * 3
    assert done.stop_reason == "majority" and done.vote.tallies[0].votes == 3


async def test_the_async_client(target: str) -> None:
    async with AsyncClient(target) as client:
        assert (await client.models.get("echo")).id == "echo"
        stream = await client.completions.create(model="echo", prompt="Hi", stream=True)
        text = "".join([chunk.content async for chunk in stream])
        assert text == "Hello there, friend. This is a scripted reply."
        with pytest.raises(NotFoundError):
            await client.models.get("nope")
        with pytest.raises(DeadlineExceededError):
            await client.completions.create(model="slow", prompt="Hi", timeout=0.3)
        slow = await client.completions.create(model="slow", prompt="Hi", stream=True)
        seen = []
        async for chunk in slow:
            seen.append(chunk.content)
            if len(seen) == 2:
                slow.cancel()
        assert seen == ["word0 ", "word1 "]
        conversation = await client.conversations.create(
            models=[("echo", "human"), ("echo", "assistant")], initial_prompt="Hi", rounds=1, auto_run=False
        )
        async with client.conversations.converse(conversation.conversation_id) as session:
            await session.run()
            await session.close()
            events = [r.event async for r in session if r.event is not None]
        assert events[-1].type == ConversationEventType.COMPLETION
        reasoning = await client.reasoning.create(primary_model="echo", secondary_model="critic", prompt="x")
        kinds = [e.type async for e in client.reasoning.events(reasoning.reasoning_id)]
        assert kinds[-1] == ReasoningEventType.COMPLETION


async def test_the_async_event_stream_resumes_too(target: str) -> None:
    proxy = Proxy(target)
    try:
        async with AsyncClient(proxy.target, retry=QUICK_RETRY, channel_options=FAST_RECONNECT) as client:
            reasoning = await client.reasoning.create(
                primary_model="slow", secondary_model="critic", prompt="Count.", max_iterations=1
            )
            events = client.reasoning.events(reasoning.reasoning_id)
            seen = []
            async for event in events:
                seen.append(event.sequence)
                if len(seen) == 5:
                    proxy.drop()
            assert events.reconnects >= 1
    finally:
        proxy.close()
    assert seen == list(range(1, len(seen) + 1))


ADMIN_KEY = "sdk-test-admin-key-0123456789abcdef"


def test_keys_and_the_errors_of_a_server_with_keys(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Against a real server with an admin key: keys through `client.keys`, then the typed errors only
    such a server gives: UNAUTHENTICATED, PERMISSION_DENIED and a rate limit with its retry_after."""
    from tests.sdk.conftest import SCRIPTED
    from tests.security_testlib import SECRETS

    SECRETS.add(ADMIN_KEY)
    with (
        server_process(
            SCRIPTED, tmp_path_factory.mktemp("sdk-keys"), AIBATTLE_ADMIN_KEY=ADMIN_KEY
        ) as running,
        Client(running.grpc_target, api_key=ADMIN_KEY, timeout=30) as admin,
    ):
        model = admin.models.list().models[0].id
        made = admin.keys.create("sdk", allowed_models=[model], rpm=1)
        SECRETS.add(made.secret)
        assert [k.key_id for k in admin.keys.list().keys] == [made.key.key_id]
        with Client(running.grpc_target, api_key=made.secret, timeout=30) as user:
            with pytest.raises(PermissionDeniedError) as denied:
                user.models.get("some-other-model")
            assert denied.value.reason == "MODEL_NOT_ALLOWED"
            user.models.list()  # the burst (twice the per-minute rate) is now spent: 2 calls
            with pytest.raises(RateLimitError) as limited:
                user.models.list()
            assert limited.value.reason == "RATE_LIMITED" and limited.value.retry_after == 60.0
        assert admin.keys.revoke(made.key.key_id).revoked_at is not None
        with Client(running.grpc_target, api_key=made.secret, timeout=30) as revoked:
            with pytest.raises(AuthenticationError) as unauthenticated:
                revoked.models.list()
            assert unauthenticated.value.reason == "API_KEY_REVOKED"
