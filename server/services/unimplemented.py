"""Handlers for services the schema declares ahead of their implementation.

Built from the service descriptor, so every method answers UNIMPLEMENTED with a
message naming it, in the right call shape, and reflection lists the service.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import descriptor, message_factory

from common.errors import Unimplemented


def unimplemented_service(service: descriptor.ServiceDescriptor) -> grpc.GenericRpcHandler:
    handlers = {}
    for method in service.methods:
        name = f"{service.full_name}/{method.name}"
        request_class = message_factory.GetMessageClass(method.input_type)
        response_class = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = _handler(
            name, method.client_streaming, method.server_streaming, request_class, response_class
        )
    return grpc.method_handlers_generic_handler(service.full_name, handlers)


def _handler(
    name: str, client_streaming: bool, server_streaming: bool, request_class: Any, response_class: Any
) -> grpc.RpcMethodHandler:
    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented(name)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        raise Unimplemented(name)
        yield  # makes this an async generator, as grpc expects of streaming handlers

    factory = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(client_streaming, server_streaming)]
    return factory(
        streaming if server_streaming else unary,
        request_deserializer=request_class.FromString,
        response_serializer=response_class.SerializeToString,
    )
