"""CompletionService: one model, whole or streamed.

A collaboration model (`[[collaborations]]`) answers through its reasoning session
(`server.orchestration.collaboration`): its steps as thinking, its final result as content, the whole
run's usage on the last chunk, and the session's id on every response (`reasoning_id`) and in the
initial metadata (`x-aibattle-reasoning-id`), so it can be read after the call."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import replace

import grpc
from google.protobuf import timestamp_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from common.enums import FinishReason
from common.errors import InvalidArgument
from server.interceptors import echo_now
from server.orchestration.collaboration import Answer, Collaborations, Finished, Thinking
from server.providers.base import Delta, Finish, StreamItem, TokenCounter, Usage
from server.providers.convert import CompletionRequest, chat_request, usage_proto
from server.providers.registry import ModelRegistry
from server.providers.resilience import Answering, resilient_stream
from server.providers.text import estimate_prompt_tokens, estimate_tokens
from server.providers.tools import ToolCalls
from server.security import context as caller_context
from server.security.metering import MeteredProvider

#: The initial metadata naming a collaboration call's reasoning session (a header over HTTP).
REASONING_ID_METADATA = "x-aibattle-reasoning-id"


class CompletionServicer(completions_pb2_grpc.CompletionServiceServicer):
    def __init__(self, registry: ModelRegistry, collaborations: Collaborations | None = None) -> None:
        self._registry = registry
        self._collaborations = collaborations

    async def _collaborate(
        self, request: CompletionRequest, context: grpc.aio.ServicerContext
    ) -> tuple[str, AsyncGenerator[Thinking | Answer | Finished, None]] | None:
        """A collaboration model's run, started (its id sent as initial metadata), or None for a model."""
        collaboration = None if self._collaborations is None else self._collaborations.get(request.model)
        if collaboration is None or self._collaborations is None:
            return None
        started = await self._collaborations.start(collaboration, request, caller_context.current())
        try:
            await echo_now(REASONING_ID_METADATA, started.reasoning_id)
        except BaseException:
            self._collaborations.abandon(started)  # the client left before the answer began
            raise
        return started.reasoning_id, self._collaborations.follow(started)

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
        if (run := await self._collaborate(request, context)) is not None:
            return await _collaboration_answer(request.model, created, *run)
        content: list[str] = []
        thinking: list[str] = []
        calls = ToolCalls()
        failovers: list[common_pb2.Failover] = []
        finish = Finish(Usage())
        answering: Answering | None = None
        async with aclosing(self._answers(request, context, stream=False)) as answers:
            async for item in answers:
                if isinstance(item, Answering):
                    if item.switch is not None:
                        failovers.append(failover_proto(item))
                    answering = item
                elif isinstance(item, Delta):
                    content.append(item.content)
                    thinking.append(item.thinking)
                    calls.add(item.tool_calls)
                else:
                    finish = item
        assert answering is not None  # resilient_stream announces the model before any item
        return completions_pb2.CreateCompletionResponse(
            id=_completion_id(),
            model=answering.model.id,
            content="".join(content),
            thinking="".join(thinking),
            tool_calls=calls.protos(),
            usage=usage_proto(answering.model, finish.usage),
            finish_reason=finish.reason.proto,
            created_at=created,
            deployment=answering.deployment,
            failovers=failovers,
        )

    async def StreamCompletion(
        self, request: completions_pb2.StreamCompletionRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[completions_pb2.StreamCompletionResponse]:
        completion_id = _completion_id()
        if (run := await self._collaborate(request, context)) is not None:
            reasoning_id, items = run
            async with aclosing(items):
                index = 0
                async for step in items:
                    chunk = completions_pb2.StreamCompletionResponse(
                        id=completion_id, model=request.model, index=index, reasoning_id=reasoning_id
                    )
                    if isinstance(step, Thinking):
                        chunk.thinking = step.text
                    elif isinstance(step, Answer):
                        chunk.content = step.text
                    else:
                        chunk.is_final = True
                        chunk.usage.CopyFrom(step.usage)
                        chunk.finish_reason = FinishReason.STOP.proto
                    yield chunk
                    index += 1
            return
        index = 0
        answering: Answering | None = None
        switched: common_pb2.Failover | None = None
        # aclosing: a client that goes away closes the provider's stream now, which stops the model.
        async with aclosing(self._answers(request, context, stream=True)) as answers:
            async for item in answers:
                if isinstance(item, Answering):
                    if item.switch is not None:
                        switched = failover_proto(item)
                    answering = item
                    continue
                assert answering is not None
                chunk = completions_pb2.StreamCompletionResponse(
                    id=completion_id, model=answering.model.id, index=index, deployment=answering.deployment
                )
                if switched is not None:
                    chunk.failover.CopyFrom(switched)
                    switched = None
                if isinstance(item, Delta):
                    chunk.content, chunk.thinking = item.content, item.thinking
                    chunk.tool_calls.extend(
                        common_pb2.ToolCallDelta(index=p.index, id=p.id, name=p.name, arguments=p.arguments)
                        for p in item.tool_calls
                    )
                else:
                    chunk.is_final = True
                    chunk.usage.CopyFrom(usage_proto(answering.model, item.usage))
                    chunk.finish_reason = item.reason.proto
                yield chunk
                index += 1

    async def CountTokens(
        self, request: completions_pb2.CountTokensRequest, context: grpc.aio.ServicerContext
    ) -> completions_pb2.CountTokensResponse:
        """The prompt's tokens as the model's provider counts them (a TokenCounter: its tokenizer, or its
        upstream's counting endpoint), else estimated. Checked as a completion request is, so a prompt
        that could not be sent is refused here too."""
        if not request.model:
            raise InvalidArgument("model", "is required")
        caller = caller_context.current()
        model, _ = self._registry.get(request.model, caller)
        # The deployment routing would pick first (a model's own provider when it has none).
        deployment, provider = self._registry.chain(model, caller)[0]
        if isinstance(provider, MeteredProvider):
            provider = provider.inner  # counting spends no tokens: nothing to meter
        prompt = completions_pb2.CreateCompletionRequest(
            model=request.model,
            prompt=request.prompt,
            system_instruction=request.system_instruction,
            messages=request.messages,
            tools=request.tools,
        )
        chat = chat_request(prompt, model, time_remaining=context.time_remaining())
        if isinstance(provider, TokenCounter):
            tokens = await provider.count_tokens(deployment, chat)
            return completions_pb2.CountTokensResponse(model=model.id, input_tokens=tokens)
        # About 4 characters a token, as the metering's estimate; calls and tool definitions are text too.
        estimate = estimate_prompt_tokens(chat.messages)
        estimate += sum(estimate_tokens(c.name + c.arguments) for m in chat.messages for c in m.tool_calls)
        estimate += sum(
            estimate_tokens(json.dumps([t.name, t.description, t.parameters], ensure_ascii=False))
            for t in chat.tools
        )
        return completions_pb2.CountTokensResponse(model=model.id, input_tokens=estimate, estimated=True)


async def _collaboration_answer(
    model: str,
    created: timestamp_pb2.Timestamp,
    reasoning_id: str,
    items: AsyncGenerator[Thinking | Answer | Finished, None],
) -> completions_pb2.CreateCompletionResponse:
    """A collaboration's whole answer: every step in `thinking`, the final result, the run's usage."""
    response = completions_pb2.CreateCompletionResponse(
        id=_completion_id(),
        model=model,
        created_at=created,
        reasoning_id=reasoning_id,
        finish_reason=FinishReason.STOP.proto,
    )
    thinking: list[str] = []
    async with aclosing(items):
        async for item in items:
            if isinstance(item, Thinking):
                thinking.append(item.text)
            elif isinstance(item, Answer):
                response.content = item.text
            else:
                response.usage.CopyFrom(item.usage)
    response.thinking = "".join(thinking)
    return response


def failover_proto(answering: Answering) -> common_pb2.Failover:
    assert answering.switch is not None
    return common_pb2.Failover(
        from_model=answering.switch.from_model,
        from_deployment=answering.switch.from_deployment,
        to_model=answering.model.id,
        to_deployment=answering.deployment,
        reason=answering.switch.reason,
    )


def _completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex[:24]}"
