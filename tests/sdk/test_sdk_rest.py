"""`Client` given the gateway's URL: the same calls over REST and NDJSON, against a real server+gateway."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import urlsplit

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
    UnimplementedError,
)
from aibattle_sdk.v1 import RunStatus
from tests.e2e.process import server_process
from tests.sdk.conftest import SCRIPTED
from tests.sdk.proxy import Proxy, resumes_across_a_drop

QUICK_RETRY = RetryPolicy(max_attempts=8, initial_backoff=0.05, max_backoff=0.2)
REPLY = "Hello there, friend. This is a scripted reply."


@pytest.fixture
def rest(gateway_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Client]:
    # No gRPC server where the SDK would look by default: every call must go through the URL.
    monkeypatch.setenv("AIBATTLE_TARGET", "127.0.0.1:1")
    with Client(gateway_url, timeout=30) as client:
        yield client


def test_models_and_completions_over_the_url(rest: Client) -> None:
    assert [m.id for m in rest.models.list().models] == ["critic", "echo", "flaky", "slow"]
    assert [m.id for m in rest.models.list(provider="nobody").models] == []
    assert rest.models.get("echo").provider == "scripted"  # a route answering the bare Model
    answer = rest.completions.create(model="echo", prompt="Hi", max_tokens=64)
    assert answer.content == REPLY and answer.usage is not None and answer.usage.completion_tokens == 8
    chunks = list(rest.completions.create(model="echo", prompt="Hi", stream=True))
    assert "".join(c.content for c in chunks) == REPLY
    assert [c.is_final for c in chunks] == [False] * (len(chunks) - 1) + [True]


def test_errors_are_the_same_typed_errors_as_over_grpc(rest: Client) -> None:
    with pytest.raises(NotFoundError) as missing:
        rest.models.get("no-such-model")
    assert missing.value.code == grpc.StatusCode.NOT_FOUND
    assert (missing.value.reason, missing.value.domain) == ("MODEL_NOT_FOUND", "aibattle.dev")
    assert missing.value.metadata == {"model": "no-such-model"}
    with pytest.raises(InvalidArgumentError) as invalid:
        rest.conversations.create(models=[("echo", "human")])
    assert [field for field, _ in invalid.value.field_violations] == ["models"]
    done = rest.conversations.create(
        models=[("echo", "human"), ("echo", "assistant")], initial_prompt="Hi", rounds=1, wait=True
    )
    with pytest.raises(FailedPreconditionError) as completed:
        rest.conversations.run(done.conversation_id)
    assert completed.value.reason == "CONVERSATION_COMPLETED"


def test_a_deadline_ends_a_slow_call(rest: Client) -> None:
    with pytest.raises(DeadlineExceededError):
        rest.completions.create(model="slow", prompt="Hi", timeout=0.3)


def test_conversation_lifecycle_and_its_events(rest: Client) -> None:
    conversation = rest.conversations.create(
        models=[{"id": "echo", "role": "human"}, {"id": "echo", "role": "assistant"}],
        initial_prompt="Hi",
        rounds=2,
        auto_run=False,
    )
    assert conversation.status == RunStatus.PENDING
    cid = conversation.conversation_id
    assert rest.conversations.run(cid, wait=True).completed_rounds == 1
    message = rest.conversations.add_message(cid, content="And then?", auto_run=False)
    assert (message.role, message.content) == ("human", "And then?") and message.message_id
    assert any(c.conversation_id == cid for c in rest.conversations.list().conversations)
    assert rest.conversations.get(cid).messages[-1].content == "And then?"
    rest.conversations.run(cid, wait=True)
    events = list(rest.conversations.events(cid, after_sequence=2))
    assert [e.sequence for e in events] == list(range(3, events[-1].sequence + 1))
    assert events[-1].status == RunStatus.COMPLETED
    rest.conversations.delete(cid)
    with pytest.raises(NotFoundError):
        rest.conversations.get(cid)


def test_converse_has_no_rest_route_and_says_so(rest: Client) -> None:
    with pytest.raises(UnimplementedError) as caught:
        rest.conversations.converse("conv-any")
    assert "WebSocket" in caught.value.message


def test_an_event_stream_resumes_across_a_dropped_connection(gateway_url: str, target: str) -> None:
    resumes_across_a_drop(
        Proxy(urlsplit(gateway_url).netloc),
        lambda proxy: Client(f"http://{proxy.target}", retry=QUICK_RETRY),
        Client(target),
    )


def test_cancelling_a_stream_from_another_thread(rest: Client) -> None:
    stream = rest.completions.create(model="slow", prompt="Hi", stream=True)
    first = next(stream)
    threading.Thread(target=stream.cancel).start()
    rest_of_it = list(stream)  # ends quietly, long before word79
    assert first.content == "word0 "
    assert len(rest_of_it) < 79 and not any(c.is_final for c in rest_of_it)
    assert rest.models.get("echo").id == "echo"


def test_unreachable_url_is_unavailable_and_safe_calls_retry(gateway_url: str) -> None:
    with Client("http://127.0.0.1:1", retry=RetryPolicy(max_attempts=2, initial_backoff=0.01)) as client:
        with pytest.raises(UnavailableError) as caught:
            client.models.list()
    assert "127.0.0.1:1" in caught.value.message
    proxy = Proxy(urlsplit(gateway_url).netloc, refuse=2)
    try:
        with Client(f"http://{proxy.target}", retry=QUICK_RETRY) as client:
            assert client.models.get("echo").id == "echo"
        assert proxy.accepted >= 3  # two connections refused, then relayed
    finally:
        proxy.close()


ADMIN_KEY = "sdk-rest-admin-key-0123456789abcdef"


def test_keys_and_their_errors_over_the_url(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The key goes out as a bearer token; UNAUTHENTICATED, PERMISSION_DENIED and a rate limit with its
    RetryInfo come back typed, as over gRPC."""
    from tests.security_testlib import SECRETS

    SECRETS.add(ADMIN_KEY)
    with server_process(
        SCRIPTED,
        tmp_path_factory.mktemp("sdk-rest-keys"),
        AIBATTLE_ADMIN_KEY=ADMIN_KEY,
        AIBATTLE_HTTP_ADDR="127.0.0.1:0",
    ) as running:
        with Client(running.http_url, timeout=30) as anonymous, pytest.raises(AuthenticationError):
            anonymous.models.list()
        with Client(running.http_url, api_key=ADMIN_KEY, timeout=30) as admin:
            made = admin.keys.create("sdk", allowed_models=["echo"], rpm=1)
            SECRETS.add(made.secret)
            assert [k.key_id for k in admin.keys.list().keys] == [made.key.key_id]
            with Client(running.http_url, api_key=made.secret, timeout=30) as user:
                with pytest.raises(PermissionDeniedError) as denied:
                    user.models.get("slow")
                assert denied.value.reason == "MODEL_NOT_ALLOWED"
                user.models.list()  # the burst (twice the per-minute rate) is now spent: 2 calls
                with pytest.raises(RateLimitError) as limited:
                    user.models.list()
                assert limited.value.reason == "RATE_LIMITED" and limited.value.retry_after == 60.0
            assert admin.keys.revoke(made.key.key_id).revoked_at is not None


def test_async_client_refuses_a_url_at_once() -> None:
    with pytest.raises(ValueError, match="host:port"):
        AsyncClient("http://127.0.0.1:8080")
