"""Input checked on arrival, errors sized to fit: long values, garbage protobuf, statuses within gRPC's
metadata limit. Against the real server (and its in-process gateway for REST)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from aibattle.v1 import (
    completions_pb2,
    completions_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from common.errors import MAX_MESSAGE_BYTES, MAX_STATUS_BYTES, ApiError, InvalidArgument, NotFound, shown
from gateway import start_gateway
from server.app import SERVICES, AIBattleServer
from tests.conftest import RECORDER, error_info, make_config, rich_status
from tests.security_testlib import ADMIN, secure_config

LONG = "x" * 10_000
# In a URL path: long enough that the old NOT_FOUND (the id in its message and its ErrorInfo) outgrew
# gRPC's 16 KiB metadata limit, short enough for an HTTP request line (8 KiB).
LONG_IN_PATH = "x" * 7_000


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    srv = AIBattleServer(make_config())
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


def new_log_lines(start: int) -> list[str]:
    return RECORDER.lines[start:]


# --- long values --------------------------------------------------------------------------------


def test_echoed_value_is_cut_and_a_status_stays_within_the_limit() -> None:
    assert shown("abc") == "'abc'"
    assert shown(LONG) == f"{'x' * 64!r}… (10000 characters)"
    # A message, description and metadata of any size: the status still fits, code and reason kept.
    huge = ApiError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_FIELD",
        "é" * 20_000,
        metadata={f"k{i}": LONG for i in range(40)},
        field=LONG,
        field_description=LONG,
    )
    status = huge.to_status()
    assert status.ByteSize() <= MAX_STATUS_BYTES
    assert len(status.message.encode()) <= MAX_MESSAGE_BYTES and status.message.startswith("éé")
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    # A status that fits is left as it was.
    small = InvalidArgument("mode", "'x' is not one of human-ai")
    assert small.to_status().message == "mode: 'x' is not one of human-ai"


def _grpc_cases(value: str) -> list[tuple[str, Any, grpc.StatusCode]]:
    participants = [
        conversations_pb2.Participant(id="scripted-echo", role="human"),
        conversations_pb2.Participant(id="scripted-echo", role="assistant"),
    ]
    return [
        ("GetModel", models_pb2.GetModelRequest(model_id=value), grpc.StatusCode.NOT_FOUND),
        (
            "CreateCompletion",
            completions_pb2.CreateCompletionRequest(model=value, prompt="hi"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "StreamCompletion",
            completions_pb2.StreamCompletionRequest(model=value, prompt="hi"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "CreateConversation",
            conversations_pb2.CreateConversationRequest(models=participants, mode=value, auto_run=False),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "CreateConversation",
            conversations_pb2.CreateConversationRequest(
                models=[conversations_pb2.Participant(id=value, role="human"), participants[1]],
                auto_run=False,
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "GetConversation",
            conversations_pb2.GetConversationRequest(conversation_id=value),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "CreateReasoning",
            reasoning_pb2.CreateReasoningRequest(primary_model=value, prompt="why?"),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            "CreateReasoning",
            reasoning_pb2.CreateReasoningRequest(
                primary_model="scripted-echo", prompt="why?", collaboration_strategy=value
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            "GetReasoning",
            reasoning_pb2.GetReasoningRequest(reasoning_id=value),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]


async def test_long_values_over_grpc_are_refused_not_rate_limited(server: AIBattleServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        stubs = {
            "GetModel": models_pb2_grpc.ModelServiceStub(channel).GetModel,
            "CreateCompletion": completions_pb2_grpc.CompletionServiceStub(channel).CreateCompletion,
            "StreamCompletion": completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion,
            "CreateConversation": conversations_pb2_grpc.ConversationServiceStub(channel).CreateConversation,
            "GetConversation": conversations_pb2_grpc.ConversationServiceStub(channel).GetConversation,
            "CreateReasoning": reasoning_pb2_grpc.ReasoningServiceStub(channel).CreateReasoning,
            "GetReasoning": reasoning_pb2_grpc.ReasoningServiceStub(channel).GetReasoning,
        }
        for name, request, code in _grpc_cases(LONG):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                call = stubs[name](request, timeout=10)
                if name == "StreamCompletion":
                    async for _ in call:
                        pass
                else:
                    await call
            error = caught.value
            assert error.code() == code, (name, error.code(), error.details())
            assert error_info(error).reason  # the rich status arrived whole
            assert len(rich_status(error).SerializeToString()) <= MAX_STATUS_BYTES
            assert len((error.details() or "").encode()) <= MAX_MESSAGE_BYTES


async def test_long_values_over_rest_are_400_or_404_never_429(server: AIBattleServer) -> None:
    gateway = await start_gateway(grpc_target=server.grpc_target, host="127.0.0.1", port=0)
    participants = [{"id": "scripted-echo", "role": "human"}, {"id": "scripted-echo", "role": "assistant"}]
    cases: list[tuple[str, str, dict[str, Any] | None, int]] = [
        ("GET", f"/api/v1/models/{LONG_IN_PATH}", None, 404),
        ("POST", "/api/v1/completions", {"model": LONG, "prompt": "hi"}, 404),
        ("POST", "/api/v1/completions:stream", {"model": LONG, "prompt": "hi"}, 404),
        ("POST", "/api/v1/conversations", {"models": participants, "mode": LONG, "auto_run": False}, 400),
        ("GET", f"/api/v1/conversations/{LONG_IN_PATH}", None, 404),
        ("POST", "/api/v1/collaborative-reasoning", {"primary_model": LONG, "prompt": "why?"}, 404),
        (
            "POST",
            "/api/v1/collaborative-reasoning",
            {"primary_model": "scripted-echo", "prompt": "why?", "collaboration_strategy": LONG},
            400,
        ),
        ("GET", f"/api/v1/collaborative-reasoning/{LONG_IN_PATH}", None, 404),
    ]
    try:
        async with aiohttp.ClientSession(gateway.url) as http:
            for method, path, body, expected in cases:
                async with http.request(method, path, json=body) as response:
                    answer = await response.json()
                    assert response.status == expected, (path[:60], response.status, answer)
                    assert len(answer["message"].encode()) <= MAX_MESSAGE_BYTES
    finally:
        await gateway.close()


# --- garbage protobuf ------------------------------------------------------------------------------


def _methods() -> list[MethodDescriptor]:
    services = (
        *SERVICES,
        health_pb2.DESCRIPTOR.services_by_name["Health"],
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
    )
    return [m for s in services for m in s.methods]


def _garbage(method: MethodDescriptor, rnd: random.Random, count: int) -> list[bytes]:
    """Random bytes that do not parse as the method's request (checked, not assumed)."""
    cls = message_factory.GetMessageClass(method.input_type)
    found: list[bytes] = []
    while len(found) < count:
        data = bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 200)))
        try:
            cls.FromString(data)
        except Exception:
            found.append(data)
    return found


async def _call_raw(
    channel: grpc.aio.Channel, method: MethodDescriptor, data: bytes, metadata: Any
) -> grpc.aio.AioRpcError:
    path = f"/{method.containing_service.full_name}/{method.name}"
    try:
        if method.client_streaming and method.server_streaming:
            async for _ in channel.stream_stream(path)(iter([data]), metadata=metadata, timeout=10):
                pass
        elif method.client_streaming:
            await channel.stream_unary(path)(iter([data]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path)(data, metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(data, metadata=metadata, timeout=10)
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"{path} accepted garbage")


async def test_garbage_protobuf_is_invalid_argument_for_every_method(server: AIBattleServer) -> None:
    start = len(RECORDER.lines)
    rnd = random.Random(20261123)
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        for method in _methods():
            for data in _garbage(method, rnd, 3):
                error = await _call_raw(channel, method, data, None)
                if method.containing_service.name == "KeyService":
                    # Open server: nobody may manage keys, and that is said before any parsing.
                    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
                    continue
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.full_name, error.details())
                assert error_info(error).reason == "MALFORMED_REQUEST"
                assert method.input_type.full_name in (error.details() or "")
    logged = new_log_lines(start)
    assert not [line for line in logged if "Traceback" in line or '"level": "error"' in line], logged[-3:]


async def test_garbage_protobuf_with_keys_answers_after_authentication() -> None:
    srv = AIBattleServer(secure_config())
    await srv.start()
    start = len(RECORDER.lines)
    rnd = random.Random(7)
    try:
        async with grpc.aio.insecure_channel(srv.grpc_target) as channel:
            for method in _methods():
                data = _garbage(method, rnd, 1)[0]
                with_key = await _call_raw(channel, method, data, ADMIN)
                assert with_key.code() == grpc.StatusCode.INVALID_ARGUMENT, method.full_name
                # A stranger learns nothing of the request's shape: no key, no parsing verdict.
                stranger = await _call_raw(channel, method, data, None)
                # Health and (by default) reflection are open to all.
                open_service = method.containing_service.name in ("Health", "ServerReflection")
                expected = (
                    grpc.StatusCode.INVALID_ARGUMENT if open_service else grpc.StatusCode.UNAUTHENTICATED
                )
                assert stranger.code() == expected, method.full_name
    finally:
        await srv.stop(grace=0.5)
    logged = new_log_lines(start)
    assert not [line for line in logged if "Traceback" in line or '"level": "error"' in line], logged[-3:]


def test_not_found_cuts_the_name_in_message_and_metadata() -> None:
    error = NotFound("conversation", LONG)
    assert len(error.message) < 200 and "(10000 characters)" in error.message
    assert all(len(v) <= 64 for v in error.metadata.values())
