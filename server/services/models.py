"""ModelService: the configured models."""

from __future__ import annotations

import grpc

from aibattle.v1 import models_pb2, models_pb2_grpc
from common.errors import InvalidArgument
from server.pagination import paginate
from server.providers.capabilities import capabilities
from server.providers.registry import ModelRegistry, may_use
from server.security import context as caller_context
from server.security.context import Caller
from server.settings import ModelConfig


def model_proto(model: ModelConfig, caller: Caller | None) -> models_pb2.Model:
    return models_pb2.Model(
        id=model.id,
        provider=model.provider,
        capabilities=capabilities(model),
        max_tokens=model.context_length,
        pricing=models_pb2.Pricing(input=model.pricing_input, output=model.pricing_output),
        upstream_model=model.upstream_model or model.id,
        display_name=model.display_name or model.id,
        # A restricted key learns nothing of the models it may not use, fallbacks included.
        fallbacks=[f for f in model.fallbacks if may_use(caller, f)],
        aliases=model.aliases,
        deployments=[d.name for d in model.deployments],
    )


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        caller = caller_context.current()
        matching = [
            m
            for m in self._registry.models(caller)
            if (not request.provider or m.provider == request.provider)
            and (not request.capability or request.capability in capabilities(m))
        ]
        page, next_token = paginate(
            matching,
            key=lambda m: m.id,
            size=request.page_size,
            token=request.page_token,
            filters=("ListModels", request.provider, request.capability),
            default=50,
            maximum=1000,
        )
        return models_pb2.ListModelsResponse(
            models=[model_proto(m, caller) for m in page],
            next_page_token=next_token,
            total_size=len(matching),
        )

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetModelResponse:
        if not request.model_id:
            raise InvalidArgument("model_id", "is required")
        caller = caller_context.current()
        model, _ = self._registry.get(request.model_id, caller)
        return models_pb2.GetModelResponse(model=model_proto(model, caller))
