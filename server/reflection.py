"""Server reflection in both grpc.reflection.v1 and v1alpha.

grpcio-reflection ships only v1alpha, while current clients (grpcurl among them) ask
for v1 first. The two protocols differ only in their package name: same messages,
same field numbers, so the same bytes. We therefore derive the v1 file descriptor
from the v1alpha one (registered so `describe` works on it too) and serve v1 with
the v1alpha servicer and its (wire-identical) serializers.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, text_format
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

V1ALPHA = "grpc.reflection.v1alpha"
V1 = "grpc.reflection.v1"
V1_SERVICE = f"{V1}.ServerReflection"


def _register_v1_descriptor() -> None:
    pool = descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE)
        return
    except KeyError:
        pass
    source = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(source)
    # Text form, so that renaming the package keeps every length prefix right.
    renamed = text_format.MessageToString(source).replace(V1ALPHA, V1)
    derived = text_format.Parse(renamed, descriptor_pb2.FileDescriptorProto())
    derived.name = "grpc/reflection/v1/reflection.proto"
    pool.Add(derived)


def _v1_handler(servicer: reflection.aio.ReflectionServicer) -> grpc.GenericRpcHandler:
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(V1_SERVICE, {"ServerReflectionInfo": method})


def enable(server: grpc.aio.Server, service_names: Iterable[str]) -> None:
    """Serve reflection for service_names (plus both reflection services) in v1 and v1alpha."""
    _register_v1_descriptor()
    names = (*service_names, reflection.SERVICE_NAME, V1_SERVICE)
    servicer = reflection.aio.ReflectionServicer(names)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(servicer, server)
    server.add_generic_rpc_handlers((_v1_handler(servicer),))
