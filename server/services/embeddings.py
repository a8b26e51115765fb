"""EmbeddingService: texts to vectors, with a model that has the "embedding" capability.

The model's chain (`ModelRegistry.chain`: its deployments, then its fallbacks) is tried in order, each
call metered like a completion (server.security.metering.MeteredEmbedder: hard limits, the key's token
rate and budget); members that cannot embed (a chat fallback) are skipped. A member that fails with a
provider failure (an error whose reason allows fallback) passes to the next; a fault of the request
(bad dimensions, a text too long) ends the call. An embedding call is all or nothing, so nothing is
spliced; retries and cooldown are the providers' own (no circuit of `resilience` is consulted here).
"""

from __future__ import annotations

import time

import grpc

from aibattle.v1 import embeddings_pb2, embeddings_pb2_grpc
from common.errors import CAPABILITY_MISSING, ApiError, InvalidArgument
from server.providers.base import Embedder, Usage
from server.providers.convert import usage_proto
from server.providers.registry import ModelRegistry
from server.security import context as caller_context

EMBEDDING = "embedding"


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
        if EMBEDDING not in model.capabilities:
            raise InvalidArgument(
                "model", f"model {model.id!r} lacks the 'embedding' capability", reason=CAPABILITY_MISSING
            )
        if not request.input:
            raise InvalidArgument("input", "is required: at least one text")
        for i, text in enumerate(request.input):
            if not text:
                raise InvalidArgument(f"input[{i}]", "must not be empty")
        chain = [
            (member, provider)
            for member, provider in self._registry.chain(model, caller)
            if EMBEDDING in member.capabilities and isinstance(provider, Embedder)
        ]
        if not chain:
            raise InvalidArgument(
                "model", f"provider {model.provider} cannot embed", reason=CAPABILITY_MISSING
            )
        left = context.time_remaining()
        deadline = time.monotonic() + left if left is not None else None
        texts = list(request.input)
        dimensions = request.dimensions if request.HasField("dimensions") else None
        for position, (member, provider) in enumerate(chain):
            assert isinstance(provider, Embedder)  # narrowed above
            try:
                result = await provider.embed(member, texts, dimensions=dimensions, deadline=deadline)
            except ApiError as exc:
                if not exc.fallback or position == len(chain) - 1:
                    raise
                continue
            return embeddings_pb2.CreateEmbeddingsResponse(
                model=member.id,
                embeddings=[
                    embeddings_pb2.Embedding(index=i, values=v) for i, v in enumerate(result.vectors)
                ],
                usage=usage_proto(member, Usage(prompt_tokens=result.prompt_tokens)),
                deployment=member.deployment,
            )
        raise AssertionError("unreachable: the last member returns or raises")
