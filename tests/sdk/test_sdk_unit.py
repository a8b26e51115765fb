"""The sync client against grpcio-testing's fake channel: the test plays the server and scripts
failures, so retries, deadlines passed down, metadata and typed errors are checked deterministically."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import grpc_testing
import pytest

from aibattle.v1 import conversations_pb2, models_pb2
from aibattle_sdk import Client, RetryPolicy, errors
from aibattle_sdk.v1 import Conversation, CreateConversationResponse, GetModelResponse, Model
from common.errors import ApiError

MODELS = models_pb2.DESCRIPTOR.services_by_name["ModelService"]
CONVERSATIONS = conversations_pb2.DESCRIPTOR.services_by_name["ConversationService"]
GET_MODEL = MODELS.methods_by_name["GetModel"]
CREATE_CONVERSATION = CONVERSATIONS.methods_by_name["CreateConversation"]
QUICK = RetryPolicy(max_attempts=3, initial_backoff=0.001, max_backoff=0.002)


@pytest.fixture
def fake() -> Iterator[grpc_testing.Channel]:
    yield grpc_testing.channel([MODELS, CONVERSATIONS], grpc_testing.strict_real_time())


class Caller:
    """Runs the client's blocking call on a daemon thread while the test plays the server (a daemon,
    so a failing test cannot hang the run on a call nobody answers)."""

    def submit(self, call: Callable[[], Any]) -> Future[Any]:
        future: Future[Any] = Future()

        def run() -> None:
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, daemon=True).start()
        return future


@pytest.fixture
def pool() -> Caller:
    return Caller()


def unavailable() -> tuple[Any, Any, grpc.StatusCode, str]:
    return None, (), grpc.StatusCode.UNAVAILABLE, "connection reset"


def details(error: ApiError) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata as the real server's error interceptor sends it (common.errors renders it)."""
    return (("grpc-status-details-bin", error.to_status().SerializeToString()),)


def play(
    fake: grpc_testing.Channel, method: Any, answers: list[tuple[Any, Any, grpc.StatusCode, str]]
) -> list[Any]:
    """Answer the next len(answers) calls of method; returns (metadata, request) per call."""
    seen = []
    for response, trailing, code, message in answers:
        metadata, request, rpc = fake.take_unary_unary(method)
        seen.append((dict(metadata), request))
        rpc.terminate(response, trailing, code, message)
    return seen


def start(pool: Caller, call: Callable[[], Any]) -> Future[Any]:
    return pool.submit(call)


def test_unavailable_is_retried_for_a_safe_call(fake: grpc_testing.Channel, pool: Caller) -> None:
    client = Client(channel=fake, retry=QUICK, api_key="sk-test", timeout=10)
    result = start(pool, lambda: client.models.get("m1"))
    ok = GetModelResponse(model=Model(id="m1", provider="scripted"))
    seen = play(fake, GET_MODEL, [unavailable(), unavailable(), (ok, (), grpc.StatusCode.OK, "")])
    assert result.result(timeout=5) == Model(id="m1", provider="scripted")
    assert [request.model_id for _, request in seen] == ["m1", "m1", "m1"]
    assert all(metadata["authorization"] == "Bearer sk-test" for metadata, _ in seen)


def test_retries_stop_at_the_policy_and_raise_the_last_error(
    fake: grpc_testing.Channel, pool: Caller
) -> None:
    client = Client(channel=fake, retry=QUICK)
    result = start(pool, lambda: client.models.get("m1"))
    play(fake, GET_MODEL, [unavailable()] * 3)
    with pytest.raises(errors.UnavailableError) as caught:
        result.result(timeout=5)
    assert caught.value.message == "connection reset"


def test_a_create_is_never_retried(fake: grpc_testing.Channel, pool: Caller) -> None:
    client = Client(channel=fake, retry=QUICK)
    result = start(pool, lambda: client.conversations.create(models=[("a", "human"), ("b", "assistant")]))
    seen = play(fake, CREATE_CONVERSATION, [unavailable()])
    with pytest.raises(errors.UnavailableError):
        result.result(timeout=5)
    assert len(seen) == 1
    # The next call is a new one, answered normally: nothing was retried behind our back.
    again = start(pool, lambda: client.conversations.create(models=[("a", "human"), ("b", "assistant")]))
    answer = CreateConversationResponse(conversation=Conversation(conversation_id="conv-1"))
    play(fake, CREATE_CONVERSATION, [(answer, (), grpc.StatusCode.OK, "")])
    assert again.result(timeout=5).conversation_id == "conv-1"


def test_other_codes_are_not_retried(fake: grpc_testing.Channel, pool: Caller) -> None:
    client = Client(channel=fake, retry=QUICK)
    result = start(pool, lambda: client.models.get("m1"))
    play(fake, GET_MODEL, [(None, (), grpc.StatusCode.INTERNAL, "internal error")])
    with pytest.raises(errors.InternalError):
        result.result(timeout=5)


CASES = [
    (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
    (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgumentError),
    (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError),
    (grpc.StatusCode.UNAUTHENTICATED, errors.AuthenticationError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.RateLimitError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceededError),
    (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPreconditionError),
    (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExistsError),
    (grpc.StatusCode.ABORTED, errors.AbortedError),
    (grpc.StatusCode.OUT_OF_RANGE, errors.OutOfRangeError),
    (grpc.StatusCode.UNIMPLEMENTED, errors.UnimplementedError),
    (grpc.StatusCode.INTERNAL, errors.InternalError),
    (grpc.StatusCode.DATA_LOSS, errors.DataLossError),
    (grpc.StatusCode.UNKNOWN, errors.UnknownError),
    (grpc.StatusCode.CANCELLED, errors.CancelledError),
]


@pytest.mark.parametrize(("code", "cls"), CASES, ids=[c.name for c, _ in CASES])
def test_each_code_is_its_typed_error_with_the_server_details(
    fake: grpc_testing.Channel, pool: Caller, code: grpc.StatusCode, cls: type[errors.APIError]
) -> None:
    client = Client(channel=fake, retry=QUICK)
    error = ApiError(code, "SOME_REASON", "what went wrong", metadata={"model": "m1"}, field="model_id")
    result = start(pool, lambda: client.models.get("m1"))
    play(fake, GET_MODEL, [(None, details(error), code, "what went wrong")])
    with pytest.raises(cls) as caught:
        result.result(timeout=5)
    assert type(caught.value) is cls
    assert (caught.value.code, caught.value.message, caught.value.reason) == (
        code,
        "what went wrong",
        "SOME_REASON",
    )
    assert caught.value.domain == "aibattle.dev"
    assert caught.value.metadata == {"model": "m1"}
    assert caught.value.field_violations == [("model_id", "what went wrong")]
    assert caught.value.retry_after is None


def test_a_rate_limit_carries_retry_after(fake: grpc_testing.Channel, pool: Caller) -> None:
    client = Client(channel=fake, retry=QUICK)
    error = ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED", "slow down", retry_after=2.5)
    result = start(pool, lambda: client.models.get("m1"))
    play(fake, GET_MODEL, [(None, details(error), grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down")])
    with pytest.raises(errors.RateLimitError) as caught:
        result.result(timeout=5)
    assert caught.value.retry_after == 2.5
    assert caught.value.reason == "RATE_LIMITED"
    assert "sk-" not in str(caught.value)


def test_a_status_without_details_still_has_code_and_message(
    fake: grpc_testing.Channel, pool: Caller
) -> None:
    client = Client(channel=fake, retry=QUICK)
    result = start(pool, lambda: client.models.get("m1"))
    play(fake, GET_MODEL, [(None, (), grpc.StatusCode.PERMISSION_DENIED, "no")])
    with pytest.raises(errors.PermissionDeniedError) as caught:
        result.result(timeout=5)
    assert (caught.value.message, caught.value.reason) == ("no", "")
