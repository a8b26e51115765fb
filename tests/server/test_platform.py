"""What every gRPC client relies on besides our services: health, reflection (v1 and v1alpha),
and UNIMPLEMENTED answers for the services of later versions."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from server.app import AIBattleServer

OUR_SERVICES = {
    "aibattle.v1.ModelService",
    "aibattle.v1.CompletionService",
    "aibattle.v1.EmbeddingService",
    "aibattle.v1.ConversationService",
    "aibattle.v1.ReasoningService",
}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
async def test_reflection_lists_and_describes_services(channel: grpc.aio.Channel, version: str) -> None:
    info = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="aibattle.v1.CompletionService"),
    ]
    replies = [r async for r in info(iter(requests))]
    names = {s.name for s in replies[0].list_services_response.service}
    assert OUR_SERVICES | {"grpc.health.v1.Health", f"grpc.reflection.{version}.ServerReflection"} <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(raw)
        for raw in replies[1].file_descriptor_response.file_descriptor_proto
    ]
    completions = next(f for f in files if f.name == "aibattle/v1/completions.proto")
    assert [m.name for m in completions.service[0].method] == [
        "CreateCompletion",
        "StreamCompletion",
        "CountTokens",
    ]


async def test_health_serving_then_not_serving_on_drain(scripted_server: AIBattleServer) -> None:
    async with grpc.aio.insecure_channel(scripted_server.grpc_target) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        for service in ("", "aibattle.v1.CompletionService"):
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        await scripted_server.drain()
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
