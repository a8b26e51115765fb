"""ModelService: the configured models."""

from __future__ import annotations

import grpc

from aibattle.v1 import models_pb2, models_pb2_grpc
from common.errors import InvalidArgument
from server.orchestration.collaboration import Collaborations
from server.pagination import paginate
from server.providers.capabilities import capabilities
from server.providers.registry import ModelRegistry, may_use
from server.security import context as caller_context
from server.security.context import Caller
from server.settings import CollaborationConfig, ModelConfig

#: A collaboration model's provider and capability in listings.
COLLABORATION = "collaboration"


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


def collaboration_proto(collaboration: CollaborationConfig) -> models_pb2.Model:
    """A collaboration model as listed: provider and capability "collaboration", what it runs. Pricing
    is its members' (a run's cost is the sum of its steps'); max_tokens is its per-step bound, if any."""
    return models_pb2.Model(
        id=collaboration.id,
        provider=COLLABORATION,
        capabilities=["text", COLLABORATION],
        max_tokens=collaboration.max_tokens or 0,
        upstream_model=collaboration.id,
        display_name=collaboration.display_name or collaboration.id,
        collaboration=models_pb2.Collaboration(
            strategy=collaboration.strategy,
            primary_model=collaboration.primary,
            secondary_model=collaboration.secondary or collaboration.primary,
            additional_models=collaboration.additional_models,
            max_iterations=collaboration.max_iterations,
            samples=collaboration.samples or 0,
        ),
    )


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, registry: ModelRegistry, collaborations: Collaborations | None = None) -> None:
        self._registry = registry
        self._collaborations = collaborations

    def _listed(self, caller: Caller | None) -> list[models_pb2.Model]:
        """Every model and collaboration the caller may use, by id."""
        models = [model_proto(m, caller) for m in self._registry.models(caller)]
        if self._collaborations is not None:
            models += [collaboration_proto(c) for c in self._collaborations.listed(caller)]
        return sorted(models, key=lambda m: m.id)

    async def ListModels(
        self, request: models_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.ListModelsResponse:
        caller = caller_context.current()
        matching = [
            m
            for m in self._listed(caller)
            if (not request.provider or m.provider == request.provider)
            and (not request.capability or request.capability in m.capabilities)
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
            models=page, next_page_token=next_token, total_size=len(matching)
        )

    async def GetModel(
        self, request: models_pb2.GetModelRequest, context: grpc.aio.ServicerContext
    ) -> models_pb2.GetModelResponse:
        if not request.model_id:
            raise InvalidArgument("model_id", "is required")
        caller = caller_context.current()
        collaboration = None if self._collaborations is None else self._collaborations.get(request.model_id)
        if collaboration is not None and self._collaborations is not None:
            self._collaborations.check_access(collaboration, caller)
            return models_pb2.GetModelResponse(model=collaboration_proto(collaboration))
        model, _ = self._registry.get(request.model_id, caller)
        return models_pb2.GetModelResponse(model=model_proto(model, caller))
