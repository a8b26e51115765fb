"""EmbeddingService: texts to vectors, with a model that has the "embedding" capability."""

from __future__ import annotations

import time

import grpc

from aibattle.v1 import embeddings_pb2, embeddings_pb2_grpc
from common.errors import CAPABILITY_MISSING, InvalidArgument
from server.providers.base import Embedder, Usage
from server.providers.convert import usage_proto
from server.providers.registry import ModelRegistry
from server.security import context as caller_context


class EmbeddingServicer(embeddings_pb2_grpc.EmbeddingServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    async def CreateEmbeddings(
        self, request: embeddings_pb2.CreateEmbeddingsRequest, context: grpc.aio.ServicerContext
    ) -> embeddings_pb2.CreateEmbeddingsResponse:
        if not request.model:
            raise InvalidArgument("model", "is required")
        caller = caller_context.current()
        model, _ = self._registry.get(request.model, caller)
        if "embedding" not in model.capabilities:
            raise InvalidArgument(
                "model", f"model {model.id!r} lacks the 'embedding' capability", reason=CAPABILITY_MISSING
            )
        for i, text in enumerate(request.input):
            if not text:
                raise InvalidArgument(f"input[{i}]", "must not be empty")
        model, provider = self._registry.chain(model, caller)[0]
        if not isinstance(provider, Embedder):
            raise InvalidArgument(
                "model", f"provider {model.provider} cannot embed", reason=CAPABILITY_MISSING
            )
        left = context.time_remaining()
        result = await provider.embed(
            model,
            list(request.input),
            dimensions=request.dimensions if request.HasField("dimensions") else None,
            deadline=time.monotonic() + left if left is not None else None,
        )
        return embeddings_pb2.CreateEmbeddingsResponse(
            model=model.id,
            embeddings=[
                embeddings_pb2.Embedding(index=i, values=vector) for i, vector in enumerate(result.vectors)
            ],
            usage=usage_proto(model, Usage(prompt_tokens=result.prompt_tokens)),
        )
