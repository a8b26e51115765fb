"""CompletionService: one model, whole or streamed."""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import replace

import grpc
from google.protobuf import timestamp_pb2

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from common.errors import InvalidArgument
from server.providers.base import Delta, Finish, StreamItem, Usage
from server.providers.convert import CompletionRequest, chat_request, usage_proto
from server.providers.registry import ModelRegistry
from server.providers.resilience import Answering, resilient_stream
from server.security import context as caller_context


class CompletionServicer(completions_pb2_grpc.CompletionServiceServicer):
    def __init__(self, registry: ModelRegistry) -> None:
        self._registry = registry

    def _answers(
        self, request: CompletionRequest, context: grpc.aio.ServicerContext, *, stream: bool
    ) -> AsyncGenerator[Answering | StreamItem, None]:
        """The model's answer, or a fallback's when it fails before its first token (see resilience)."""
        if not request.model:
            raise InvalidArgument("model", "is required")
        caller = caller_context.current()
        model, _ = self._registry.get(request.model, caller)
        chat = replace(chat_request(request, model, time_remaining=context.time_remaining()), stream=stream)
        return resilient_stream(self._registry.chain(model, caller), chat, self._registry.circuits)

    async def CreateCompletion(
        self, request: completions_pb2.CreateCompletionRequest, context: grpc.aio.ServicerContext
    ) -> completions_pb2.CreateCompletionResponse:
        created = timestamp_pb2.Timestamp()
        created.GetCurrentTime()
        content: list[str] = []
        thinking: list[str] = []
        finish = Finish(Usage())
        model = None
        async with aclosing(self._answers(request, context, stream=False)) as answers:
            async for item in answers:
                if isinstance(item, Answering):
                    model = item.model
                elif isinstance(item, Delta):
                    content.append(item.content)
                    thinking.append(item.thinking)
                else:
                    finish = item
        assert model is not None  # resilient_stream announces the model before any item
        return completions_pb2.CreateCompletionResponse(
            id=_completion_id(),
            model=model.id,
            content="".join(content),
            thinking="".join(thinking),
            usage=usage_proto(model, finish.usage),
            finish_reason=finish.reason.proto,
            created_at=created,
        )

    async def StreamCompletion(
        self, request: completions_pb2.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[completions_pb2.StreamCompletionResponse]:
        completion_id = _completion_id()
        index = 0
        model = None
        # aclosing: a client that goes away closes the provider's stream now, which stops the model.
        async with aclosing(self._answers(request, context, stream=True)) as answers:
            async for item in answers:
                if isinstance(item, Answering):
                    model = item.model
                    continue
                assert model is not None
                chunk = completions_pb2.StreamCompletionResponse(
                    id=completion_id, model=model.id, index=index
                )
                if isinstance(item, Delta):
                    chunk.content, chunk.thinking = item.content, item.thinking
                else:
                    chunk.is_final = True
                    chunk.usage.CopyFrom(usage_proto(model, item.usage))
                    chunk.finish_reason = item.reason.proto
                yield chunk
                index += 1


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"
