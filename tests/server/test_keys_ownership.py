"""Conversations and reasoning sessions belong to the key that created them: to any other key, every RPC
that names one answers NOT_FOUND exactly as for an id that never existed. The RPCs are found in the
descriptors (every method of the two services whose request names the resource), not listed by hand, and
asked over gRPC, and over Connect and gRPC-Web through a gateway on the same server (the REST and
WebSocket routes: tests/gateway/test_gateway_auth.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aibattle.v1 import conversations_pb2, conversations_pb2_grpc, reasoning_pb2, reasoning_pb2_grpc
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from tests.conftest import error_info
from tests.gateway.web_rpc_testlib import call, decode
from tests.security_testlib import bearer, new_key, secure_config

HANG = 30.0
RESOURCES = {
    "aibattle.v1.ConversationService": "conversation_id",
    "aibattle.v1.ReasoningService": "reasoning_id",
}


def naming_methods() -> list[tuple[MethodDescriptor, str]]:
    """Every method of the owned services whose request (or first stream frame) names the resource."""
    found = []
    for module in (conversations_pb2, reasoning_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            field = RESOURCES[service.full_name]
            for method in service.methods:
                if field in method.input_type.fields_by_name:
                    found.append((method, field))
    return found


def test_the_method_list_covers_every_resource_rpc() -> None:
    names = {m.name for m, _ in naming_methods()}
    assert {"GetConversation", "DeleteConversation", "AddMessage", "RunConversation", "CancelConversation",
            "StreamConversationEvents", "Converse", "GetReasoning", "CancelReasoning",
            "StreamReasoningEvents"} <= names  # fmt: skip


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    srv = AIBattleServer(secure_config())
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


def request_for(method: MethodDescriptor, field: str, resource_id: str) -> Message:
    request = GetMessageClass(method.input_type)(**{field: resource_id})
    if "content" in method.input_type.fields_by_name:
        request.content = "hello"
    return request


async def invoke(
    channel: grpc.aio.Channel, method: MethodDescriptor, request: Message, metadata: Any
) -> None:
    """Call any method of the schema; consume a stream to its end."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    response_cls = GetMessageClass(method.output_type)
    kwargs = {
        "request_serializer": type(request).SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    if method.client_streaming:
        call = channel.stream_stream(path, **kwargs)(iter([request]), metadata=metadata, timeout=HANG)
        async for _ in call:
            pass
    elif method.server_streaming:
        async for _ in channel.unary_stream(path, **kwargs)(request, metadata=metadata, timeout=HANG):
            pass
    else:
        await channel.unary_unary(path, **kwargs)(request, metadata=metadata, timeout=HANG)


async def alice_and_bob(channel: grpc.aio.Channel) -> tuple[str, str, dict[str, str]]:
    """Two keys' secrets, and the ids of a conversation and a finished reasoning session of the first."""
    _, alice = await new_key(channel, name="alice")
    _, bob = await new_key(channel, name="bob")
    conv = (
        await conversations_pb2_grpc.ConversationServiceStub(channel).CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=[
                    conversations_pb2.Participant(id="scripted-echo", role="human"),
                    conversations_pb2.Participant(id="scripted-echo", role="assistant"),
                ]
            ),
            metadata=bearer(alice),
        )
    ).conversation
    reasoning = (
        await reasoning_pb2_grpc.ReasoningServiceStub(channel).CreateReasoning(
            reasoning_pb2.CreateReasoningRequest(prompt="Why?", primary_model="scripted-echo", wait=True),
            metadata=bearer(alice),
        )
    ).reasoning
    return alice, bob, {"conversation_id": conv.conversation_id, "reasoning_id": reasoning.reasoning_id}


MISSING = {"conversation_id": "conv-0000000000000000", "reasoning_id": "reas-0000000000000000"}


async def test_another_keys_resources_are_not_found_on_every_rpc(server: AIBattleServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        alice, bob, owned = await alice_and_bob(channel)
        conversations = conversations_pb2_grpc.ConversationServiceStub(channel)

        for method, field in naming_methods():
            answers = []
            for resource_id in (owned[field], MISSING[field]):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await invoke(channel, method, request_for(method, field, resource_id), bearer(bob))
                error = caught.value
                answers.append(
                    (
                        error.code(),
                        error_info(error).reason,
                        (error.details() or "").replace(resource_id, "ID"),
                    )
                )
            assert answers[0] == answers[1], method.full_name
            assert answers[0][0] == grpc.StatusCode.NOT_FOUND, method.full_name

        # Lists show each key its own; the owner still has everything (Delete above did nothing).
        mine = await conversations.ListConversations(
            conversations_pb2.ListConversationsRequest(), metadata=bearer(alice)
        )
        theirs = await conversations.ListConversations(
            conversations_pb2.ListConversationsRequest(), metadata=bearer(bob)
        )
        assert [c.conversation_id for c in mine.conversations] == [owned["conversation_id"]]
        assert list(theirs.conversations) == []
        stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        listing = reasoning_pb2.ListReasoningsRequest()
        mine_r = await stub.ListReasonings(listing, metadata=bearer(alice))
        theirs_r = await stub.ListReasonings(listing, metadata=bearer(bob))
        assert [r.reasoning_id for r in mine_r.reasonings] == [owned["reasoning_id"]]
        assert list(theirs_r.reasonings) == []
        got = await conversations.GetConversation(
            conversations_pb2.GetConversationRequest(conversation_id=owned["conversation_id"]),
            metadata=bearer(alice),
        )
        assert got.conversation.conversation_id == owned["conversation_id"]


# ---- the same over Connect and gRPC-Web, through a gateway on the same server


def _method(service: str, name: str) -> MethodDescriptor:
    module = conversations_pb2 if service == "ConversationService" else reasoning_pb2
    return module.DESCRIPTOR.services_by_name[service].methods_by_name[name]


@pytest.mark.parametrize("dispatch", ["network", "in-process"])
@pytest.mark.parametrize("protocol", ["connect", "grpc-web"])
async def test_another_keys_resources_are_not_found_over_connect_and_grpc_web(
    server: AIBattleServer, aiohttp_client: Any, protocol: str, dispatch: str
) -> None:
    """Connect (JSON unary, connect+json streams) and gRPC-Web (binary) answer another key's resources
    exactly as ids that never existed, on every RPC naming one; the lists show each key only its own."""
    dispatcher = server.dispatcher() if dispatch == "in-process" else None
    gw = await aiohttp_client(create_app(server.grpc_target, GatewayOptions(), dispatcher=dispatcher))
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        alice, bob, owned = await alice_and_bob(channel)
    as_alice = {"Authorization": f"Bearer {alice}"}
    as_bob = {"Authorization": f"Bearer {bob}"}

    for method, field in naming_methods():
        answers = []
        for resource_id in (owned[field], MISSING[field]):
            outcome = await call(gw, protocol, method, request_for(method, field, resource_id), as_bob)
            answers.append(outcome.comparable(resource_id))
        assert answers[0] == answers[1], method.full_name
        if method.client_streaming:
            # Converse needs a request stream, which neither protocol carries over HTTP/1.1: it answers
            # UNIMPLEMENTED (naming its WebSocket route) before any lookup, for any id alike.
            assert answers[0][1] == grpc.StatusCode.UNIMPLEMENTED.value[0], method.full_name
        else:
            assert answers[0][1] == grpc.StatusCode.NOT_FOUND.value[0], (method.full_name, answers[0])

    # Lists show each key its own (by POST, and by GET where Connect allows it); the owner still has
    # everything, over the same protocol.
    lists = (
        ("ConversationService", "ListConversations", "conversations", "conversation_id"),
        ("ReasoningService", "ListReasonings", "reasonings", "reasoning_id"),
    )
    for service, name, items, field in lists:
        method = _method(service, name)
        cls = GetMessageClass(method.output_type)
        for way in (protocol, "connect-get") if protocol == "connect" else (protocol,):
            for who, expected in ((as_alice, [owned[field]]), (as_bob, [])):
                outcome = await call(gw, way, method, GetMessageClass(method.input_type)(), who)
                assert outcome.code == 0, (way, name, outcome)
                [listing] = decode(outcome, way, cls)
                assert [getattr(item, field) for item in getattr(listing, items)] == expected, (way, name)
    get = _method("ConversationService", "GetConversation")
    mine = await call(
        gw, protocol, get, request_for(get, "conversation_id", owned["conversation_id"]), as_alice
    )
    [got] = decode(mine, protocol, conversations_pb2.GetConversationResponse)
    assert isinstance(got, conversations_pb2.GetConversationResponse)
    assert got.conversation.conversation_id == owned["conversation_id"]
