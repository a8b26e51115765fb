"""Conversations and reasoning sessions belong to the key that created them: to any other key, every RPC
that names one answers NOT_FOUND exactly as for an id that never existed. The RPCs are found in the
descriptors (every method of the two services whose request names the resource), not listed by hand."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from aibattle.v1 import conversations_pb2, conversations_pb2_grpc, reasoning_pb2, reasoning_pb2_grpc
from server.app import AIBattleServer
from tests.conftest import error_info
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


async def test_another_keys_resources_are_not_found_on_every_rpc(server: AIBattleServer) -> None:
    async with grpc.aio.insecure_channel(server.grpc_target) as channel:
        _, alice = await new_key(channel, name="alice")
        _, bob = await new_key(channel, name="bob")
        conversations = conversations_pb2_grpc.ConversationServiceStub(channel)
        conv = (
            await conversations.CreateConversation(
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
        owned = {"conversation_id": conv.conversation_id, "reasoning_id": reasoning.reasoning_id}
        missing = {"conversation_id": "conv-0000000000000000", "reasoning_id": "reas-0000000000000000"}

        for method, field in naming_methods():
            answers = []
            for resource_id in (owned[field], missing[field]):
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
        assert [c.conversation_id for c in mine.conversations] == [conv.conversation_id]
        assert list(theirs.conversations) == []
        stub = reasoning_pb2_grpc.ReasoningServiceStub(channel)
        listing = reasoning_pb2.ListReasoningsRequest()
        mine_r = await stub.ListReasonings(listing, metadata=bearer(alice))
        theirs_r = await stub.ListReasonings(listing, metadata=bearer(bob))
        assert [r.reasoning_id for r in mine_r.reasonings] == [reasoning.reasoning_id]
        assert list(theirs_r.reasonings) == []
        got = await conversations.GetConversation(
            conversations_pb2.GetConversationRequest(conversation_id=conv.conversation_id),
            metadata=bearer(alice),
        )
        assert got.conversation.conversation_id == conv.conversation_id
