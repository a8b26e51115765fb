"""The `(aibattle.v1.bounds)` checker: what the schema declares is what passes, nothing else."""

from __future__ import annotations

import pytest

from aibattle.v1 import completions_pb2, conversations_pb2, keys_pb2, reasoning_pb2
from common.bounds import Bounds, bounds_of, check
from common.errors import InvalidArgument

ConvReq = conversations_pb2.CreateConversationRequest


def seats(n: int) -> list[conversations_pb2.Participant]:
    return [conversations_pb2.Participant(id=f"m{i}", role="assistant") for i in range(n)]


def refusal(message: object) -> str:
    with pytest.raises(InvalidArgument) as caught:
        check(message)  # type: ignore[arg-type]
    return caught.value.message


def test_declared_bounds_are_read_from_the_descriptors() -> None:
    fields = ConvReq.DESCRIPTOR.fields_by_name
    assert bounds_of(fields["models"]) == Bounds(2, 8)
    assert bounds_of(fields["rounds"]) == Bounds(0, 50)
    assert bounds_of(fields["initial_prompt"]) is None


@pytest.mark.parametrize(
    "message",
    [
        ConvReq(models=seats(2)),
        ConvReq(models=seats(8), rounds=50),
        completions_pb2.CreateCompletionRequest(model="m"),  # an unset optional is not a 0
        completions_pb2.CreateCompletionRequest(model="m", max_tokens=1),
        reasoning_pb2.StreamReasoningEventsRequest(reasoning_id="r", after_sequence=2**63 - 1),
        conversations_pb2.ConverseRequest(run=conversations_pb2.RunConversationRequest(additional_rounds=50)),
    ],
)
def test_values_within_bounds_pass(message: object) -> None:
    check(message)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (ConvReq(models=seats(1)), "models: must have 2 to 8 items, got 1"),
        (ConvReq(models=seats(9)), "models: must have 2 to 8 items, got 9"),
        (ConvReq(models=seats(2), rounds=51), "rounds: must be 0 to 50, got 51"),
        (ConvReq(models=seats(2), rounds=-1), "rounds: must be 0 to 50, got -1"),
        (
            completions_pb2.CreateCompletionRequest(model="m", max_tokens=0),
            "max_tokens: must be at least 1, got 0",
        ),
        (
            reasoning_pb2.CreateReasoningRequest(primary_model="m", prompt="p", additional_models=["x"] * 9),
            "additional_models: must have at most 8 items, got 9",
        ),
        (
            conversations_pb2.ConverseRequest(
                run=conversations_pb2.RunConversationRequest(additional_rounds=51)
            ),
            "run.additional_rounds: must be 0 to 50, got 51",  # nested: the path names the field
        ),
        (
            reasoning_pb2.StreamReasoningEventsRequest(reasoning_id="r", after_sequence=-1),
            "after_sequence: must be at least 0, got -1",
        ),
    ],
)
def test_values_outside_bounds_are_refused_naming_the_field(message: object, expected: str) -> None:
    assert refusal(message) == expected


def test_a_timestamp_anywhere_in_a_request_must_be_a_valid_one() -> None:
    request = keys_pb2.CreateKeyRequest(name="k")
    request.expire_time.nanos = -1
    assert refusal(request).startswith("expire_time: is not a valid timestamp")
    request.expire_time.nanos, request.expire_time.seconds = 0, 253_402_300_800  # year 10000
    assert refusal(request).startswith("expire_time: is not a valid timestamp")
    request.expire_time.seconds = 253_402_300_799
    check(request)
