"""`AsyncClient`: the SDK, one namespace per resource.

The asyncio module is the source: `make gen` (tools/unasync.py) generates the sync one from it.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Literal, overload

import grpc
import grpc.aio

from aibattle_sdk import _requests as R
from aibattle_sdk._async_transport import (
    AsyncConverseSession,
    AsyncGrpcTransport,
    AsyncStream,
    AsyncTransport,
)
from aibattle_sdk._config import DEFAULT_TIMEOUT, ClientConfig, RetryPolicy, is_url
from aibattle_sdk._gen.aibattle import v1
from aibattle_sdk._requests import MessageLike, ResponseFormatLike, ToolChoiceLike, ToolLike

# unasync: sync-only
# from aibattle_sdk._rest_transport import RestTransport
# unasync: end

Seat = v1.Participant | dict[str, str] | tuple[str, str]


class AsyncModels:
    """`client.models`: the models the server serves."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def list(
        self,
        *,
        provider: str = "",
        capability: str = "",
        page_size: int = 0,
        page_token: str = "",
        timeout: float | None = None,
    ) -> v1.ListModelsResponse:
        """One page of models, optionally filtered by provider or capability."""
        request = v1.ListModelsRequest(
            provider=provider, capability=capability, page_size=page_size, page_token=page_token
        )
        return await self._t.unary(R.LIST_MODELS, request, timeout=timeout)

    async def get(self, model_id: str, *, timeout: float | None = None) -> v1.Model:
        """One model by id; NotFoundError if the server has no such model."""
        response = await self._t.unary(R.GET_MODEL, v1.GetModelRequest(model_id=model_id), timeout=timeout)
        return response.model


class AsyncCompletions:
    """`client.completions`: text from one model, whole or streamed."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    @overload
    async def create(
        self,
        *,
        model: str,
        prompt: str = "",
        stream: Literal[False] = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        system_instruction: str = "",
        messages: Sequence[MessageLike] = (),
        file_data: v1.FileData | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        tools: Sequence[ToolLike] = (),
        tool_choice: ToolChoiceLike | None = None,
        response_format: ResponseFormatLike | None = None,
        timeout: float | None = None,
    ) -> v1.CreateCompletionResponse: ...

    @overload
    async def create(
        self,
        *,
        model: str,
        prompt: str = "",
        stream: Literal[True],
        max_tokens: int | None = None,
        temperature: float | None = None,
        system_instruction: str = "",
        messages: Sequence[MessageLike] = (),
        file_data: v1.FileData | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        tools: Sequence[ToolLike] = (),
        tool_choice: ToolChoiceLike | None = None,
        response_format: ResponseFormatLike | None = None,
        timeout: float | None = None,
    ) -> AsyncStream[v1.StreamCompletionResponse]: ...

    async def create(
        self,
        *,
        model: str,
        prompt: str = "",
        stream: bool = False,
        max_tokens: int | None = None,
        temperature: float | None = None,
        system_instruction: str = "",
        messages: Sequence[MessageLike] = (),
        file_data: v1.FileData | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        tools: Sequence[ToolLike] = (),
        tool_choice: ToolChoiceLike | None = None,
        response_format: ResponseFormatLike | None = None,
        timeout: float | None = None,
    ) -> v1.CreateCompletionResponse | AsyncStream[v1.StreamCompletionResponse]:
        """A completion of `prompt` (and/or `messages`) by `model`.

        With `stream=True`, a `Stream` of content deltas whose last chunk (`is_final`) carries usage and
        the finish reason; it is retried on UNAVAILABLE only until its first chunk. Without, the whole
        answer. `timeout` bounds the whole call (a stream has none unless given).

        `messages` are `v1.Message`s or dicts of their fields: {"role", "content"}, "tool_calls" on an
        assistant turn, {"role": "tool", "tool_call_id", "content"} for a tool's result.
        `tools` are `v1.Tool`s or dicts {"name", "description", "parameters"} (a JSON Schema dict); the
        model answers with `tool_calls` and finish reason TOOL_CALLS when it calls them (streamed as
        `chunk.tool_calls` pieces: `join_tool_calls` puts them together). `tool_choice` is "auto" (the
        default), "none", "required" or the name of the tool to call. `response_format` is "json_object",
        or a JSON Schema dict the answer must be valid against (a `v1.ResponseFormat` for a name or
        strict). A model that cannot honour tools or a format refuses with InvalidArgumentError.
        `deployment` (and, after a mid-stream failover, `failovers`, or a chunk's `failover`) says
        which deployment answered.
        """
        rpc = R.STREAM_COMPLETION if stream else R.CREATE_COMPLETION
        request = R.completion(
            rpc,
            model,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            system_instruction=system_instruction,
            messages=messages,
            file_data=file_data,
            top_p=top_p,
            stop=stop,
            seed=seed,
            tools=tools,
            tool_choice=tool_choice,
            response_format=response_format,
        )
        if stream:
            return self._t.stream(rpc, request, timeout=timeout)
        return await self._t.unary(rpc, request, timeout=timeout)

    async def count_tokens(
        self,
        *,
        model: str,
        prompt: str = "",
        system_instruction: str = "",
        messages: Sequence[MessageLike] = (),
        tools: Sequence[ToolLike] = (),
        timeout: float | None = None,
    ) -> v1.CountTokensResponse:
        """The tokens a completion's prompt would take (`input_tokens`), without generating anything.

        Takes the prompt part of `create`'s arguments. `estimated` is True when the model's provider has no
        way to count and the figure is the server's estimate.
        """
        request = v1.CountTokensRequest(
            model=model,
            prompt=prompt,
            system_instruction=system_instruction,
            messages=R.as_messages(messages),
            tools=R.as_tools(tools),
        )
        return await self._t.unary(R.COUNT_TOKENS, request, timeout=timeout)


class AsyncEmbeddings:
    """`client.embeddings`: texts to vectors, with a model that has the "embedding" capability."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        *,
        model: str,
        input: str | Sequence[str],
        dimensions: int | None = None,
        timeout: float | None = None,
    ) -> v1.CreateEmbeddingsResponse:
        """One vector per text of `input` (a text, or up to 2048), in input order: `embeddings[i].values`.

        `dimensions` shortens the vectors, for models that can (others refuse it); `usage` counts the
        tokens read. A model without the "embedding" capability is refused (InvalidArgumentError,
        reason CAPABILITY_MISSING).
        """
        texts = [input] if isinstance(input, str) else list(input)
        request = v1.CreateEmbeddingsRequest(model=model, input=texts, dimensions=dimensions)
        return await self._t.unary(R.CREATE_EMBEDDINGS, request, timeout=timeout)


class AsyncConversations:
    """`client.conversations`: multi-model conversations, their transcripts and live events."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        *,
        models: Sequence[Seat],
        initial_prompt: str = "",
        mode: str = "",
        rounds: int = 0,
        system_instruction: str = "",
        file_data: v1.FileData | None = None,
        auto_run: bool | None = None,
        wait: bool = False,
        tools: Sequence[ToolLike] = (),
        timeout: float | None = None,
    ) -> v1.Conversation:
        """Create a conversation between `models` (Participants, {"id", "role"} dicts or (id, role) pairs).

        Its AI turns start at once unless `auto_run=False`; `wait=True` answers once they finished.
        `tools` (as `completions.create` takes them) may be called by the AI participants: the
        conversation does not run them; each call is recorded on the speaker's message (`tool_calls`) and
        announced as a TOOL_USE event (`event.tool`, `event.tool_call`), for you to act on.
        """
        request = v1.CreateConversationRequest(
            models=R.participants(models),
            initial_prompt=initial_prompt,
            mode=mode,
            rounds=rounds,
            system_instruction=system_instruction,
            file_data=file_data,
            auto_run=auto_run,
            wait=wait,
            tools=R.as_tools(tools),
        )
        response = await self._t.unary(R.CREATE_CONVERSATION, request, timeout=timeout)
        return response.conversation

    async def get(self, conversation_id: str, *, timeout: float | None = None) -> v1.Conversation:
        """A conversation with its transcript."""
        request = v1.GetConversationRequest(conversation_id=conversation_id)
        response = await self._t.unary(R.GET_CONVERSATION, request, timeout=timeout)
        return response.conversation

    async def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        status: v1.RunStatus = v1.RunStatus.UNSPECIFIED,
        timeout: float | None = None,
    ) -> v1.ListConversationsResponse:
        """One page of this key's conversations, newest first (transcripts left out)."""
        request = v1.ListConversationsRequest(page_size=page_size, page_token=page_token, status=status)
        return await self._t.unary(R.LIST_CONVERSATIONS, request, timeout=timeout)

    async def add_message(
        self,
        conversation_id: str,
        *,
        content: str,
        role: str = "human",
        model: str = "",
        file_data: v1.FileData | None = None,
        auto_run: bool | None = None,
        timeout: float | None = None,
    ) -> v1.Message:
        """Add a message (a human turn, usually); the AI turns that follow run unless `auto_run=False`."""
        request = v1.AddMessageRequest(
            conversation_id=conversation_id,
            content=content,
            role=role,
            model=model,
            file_data=file_data,
            auto_run=auto_run,
        )
        response = await self._t.unary(R.ADD_MESSAGE, request, timeout=timeout)
        return response.message

    async def run(
        self,
        conversation_id: str,
        *,
        additional_rounds: int = 0,
        wait: bool = False,
        timeout: float | None = None,
    ) -> v1.Conversation:
        """Run the pending AI turns (after adding `additional_rounds`); `wait=True` answers when done."""
        request = v1.RunConversationRequest(
            conversation_id=conversation_id, additional_rounds=additional_rounds, wait=wait
        )
        response = await self._t.unary(R.RUN_CONVERSATION, request, timeout=timeout)
        return response.conversation

    async def cancel(self, conversation_id: str, *, timeout: float | None = None) -> v1.Conversation:
        """Cancel the running turn; recorded messages stay."""
        request = v1.CancelConversationRequest(conversation_id=conversation_id)
        response = await self._t.unary(R.CANCEL_CONVERSATION, request, timeout=timeout)
        return response.conversation

    async def delete(self, conversation_id: str, *, timeout: float | None = None) -> None:
        """Delete a conversation and its transcript (cancelling it first if it runs)."""
        request = v1.DeleteConversationRequest(conversation_id=conversation_id)
        await self._t.unary(R.DELETE_CONVERSATION, request, timeout=timeout)

    def events(
        self, conversation_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> AsyncStream[v1.ConversationEvent]:
        """The conversation's events after `after_sequence`: recorded ones, then live ones.

        The stream resumes by itself after a dropped connection, without loss or repetition; it ends
        when the conversation settles. Iterating yields `ConversationEvent`s.
        """

        def request(after: int) -> v1.StreamConversationEventsRequest:
            return v1.StreamConversationEventsRequest(conversation_id=conversation_id, after_sequence=after)

        return self._t.stream(
            R.STREAM_CONVERSATION_EVENTS,
            request(after_sequence),
            timeout=timeout,
            resume=request,
            sequence=R.event_sequence,
            unwrap=R.event_of,
        )

    def converse(
        self, conversation_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> AsyncConverseSession:
        """Join a conversation both ways (the Converse RPC): `send`, `run`, `cancel_turn`, iterate events."""
        first = v1.ConverseRequest(conversation_id=conversation_id, after_sequence=after_sequence)
        return self._t.converse(R.CONVERSE, first, timeout=timeout)


class AsyncReasoning:
    """`client.reasoning`: collaborative reasoning sessions, their iterations and live events."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        *,
        primary_model: str,
        prompt: str,
        secondary_model: str = "",
        system_instruction: str = "",
        collaboration_strategy: str = "",
        max_iterations: int = 0,
        additional_models: Sequence[str] = (),
        file_data: v1.FileData | None = None,
        max_tokens: int | None = None,
        samples: int | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> v1.Reasoning:
        """Start a session (strategy "iterative_refinement" unless named); `wait=True` answers when done.
        `samples`: how many answers "self_consistency" draws (2 to 20; unset: 5)."""
        request = v1.CreateReasoningRequest(
            primary_model=primary_model,
            secondary_model=secondary_model,
            prompt=prompt,
            system_instruction=system_instruction,
            collaboration_strategy=collaboration_strategy,
            max_iterations=max_iterations,
            file_data=file_data,
            additional_models=list(additional_models),
            wait=wait,
            max_tokens=max_tokens,
            samples=samples,
        )
        response = await self._t.unary(R.CREATE_REASONING, request, timeout=timeout)
        return response.reasoning

    async def get(self, reasoning_id: str, *, timeout: float | None = None) -> v1.Reasoning:
        """A session with its iterations."""
        request = v1.GetReasoningRequest(reasoning_id=reasoning_id)
        response = await self._t.unary(R.GET_REASONING, request, timeout=timeout)
        return response.reasoning

    async def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        status: v1.RunStatus = v1.RunStatus.UNSPECIFIED,
        timeout: float | None = None,
    ) -> v1.ListReasoningsResponse:
        """One page of this key's sessions, newest first (iterations left out)."""
        request = v1.ListReasoningsRequest(page_size=page_size, page_token=page_token, status=status)
        return await self._t.unary(R.LIST_REASONINGS, request, timeout=timeout)

    async def cancel(self, reasoning_id: str, *, timeout: float | None = None) -> v1.Reasoning:
        """Cancel a running session; recorded iterations stay."""
        request = v1.CancelReasoningRequest(reasoning_id=reasoning_id)
        response = await self._t.unary(R.CANCEL_REASONING, request, timeout=timeout)
        return response.reasoning

    async def resume(
        self, reasoning_id: str, *, wait: bool = False, timeout: float | None = None
    ) -> v1.Reasoning:
        """Run an interrupted, failed or cancelled session again from its last committed step; the
        recorded iterations are kept and not paid for again. FailedPreconditionError if it is running
        or completed."""
        request = v1.ResumeReasoningRequest(reasoning_id=reasoning_id, wait=wait)
        response = await self._t.unary(R.RESUME_REASONING, request, timeout=timeout)
        return response.reasoning

    def events(
        self, reasoning_id: str, *, after_sequence: int = 0, timeout: float | None = None
    ) -> AsyncStream[v1.ReasoningEvent]:
        """The session's events after `after_sequence` (iterations, stuck detections, handoffs, tokens).

        Resumes by itself after a dropped connection, without loss or repetition; ends when the session
        settles. Iterating yields `ReasoningEvent`s.
        """

        def request(after: int) -> v1.StreamReasoningEventsRequest:
            return v1.StreamReasoningEventsRequest(reasoning_id=reasoning_id, after_sequence=after)

        return self._t.stream(
            R.STREAM_REASONING_EVENTS,
            request(after_sequence),
            timeout=timeout,
            resume=request,
            sequence=R.event_sequence,
            unwrap=R.event_of,
        )


class AsyncKeys:
    """`client.keys`: API keys (KeyService); every method needs the admin key."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._t = transport

    async def create(
        self,
        name: str,
        *,
        allowed_models: Sequence[str] = (),
        rpm: int = 0,
        tpm: int = 0,
        max_concurrent_streams: int = 0,
        budget_usd: float = 0.0,
        expire_time: datetime.datetime | None = None,
        timeout: float | None = None,
    ) -> v1.CreateKeyResponse:
        """A new key and its secret, which is shown only here. 0 means no limit."""
        request = v1.CreateKeyRequest(
            name=name,
            allowed_models=list(allowed_models),
            rpm=rpm,
            tpm=tpm,
            max_concurrent_streams=max_concurrent_streams,
            budget_usd=budget_usd,
            expire_time=expire_time,
        )
        return await self._t.unary(R.CREATE_KEY, request, timeout=timeout)

    async def list(
        self,
        *,
        page_size: int = 0,
        page_token: str = "",
        show_revoked: bool = False,
        timeout: float | None = None,
    ) -> v1.ListKeysResponse:
        """One page of keys (never their secrets), with what each has spent."""
        request = v1.ListKeysRequest(page_size=page_size, page_token=page_token, show_revoked=show_revoked)
        return await self._t.unary(R.LIST_KEYS, request, timeout=timeout)

    async def revoke(self, key_id: str, *, timeout: float | None = None) -> v1.ApiKey:
        """Revoke a key: its next call, and the next model call of work it left running, fail."""
        request = v1.RevokeKeyRequest(key_id=key_id)
        response = await self._t.unary(R.REVOKE_KEY, request, timeout=timeout)
        return response.key


class AsyncClient:
    # unasync: async-only
    """The asyncio AI Battle client; the same options and namespaces as `Client`, awaited.

    The channel opens on first use, in the running event loop. Use `async with`, or `await close()`.
    It speaks gRPC only: a gateway URL as `target` (which `Client` takes) is refused with ValueError.
    """

    # unasync: sync-only
    # """The synchronous AI Battle client.
    #
    # Args:
    #     target: host:port of the gRPC server; default `$AIBATTLE_TARGET`, else 127.0.0.1:50051. Or the
    #         http(s):// URL of its HTTP gateway (`make run`: http://127.0.0.1:8080): the same calls over
    #         REST and NDJSON streams, all but `conversations.converse` (no HTTP route: WebSocket only).
    #     api_key: sent as `authorization: Bearer <key>`; default `$AIBATTLE_API_KEY`, else none.
    #     tls: True for TLS with the system's roots, or a `grpc.ChannelCredentials`; False for plaintext.
    #     timeout: default deadline of unary calls, in seconds (None: none). Streams have none by default.
    #     retry: when to retry on UNAVAILABLE (see `RetryPolicy`); safe calls only.
    #     channel_options: extra grpc channel options.
    #     channel: use this channel instead of opening one (tests, custom interceptors); not closed by us.
    #
    # Use as a context manager, or call `close()`.
    # """
    # unasync: end

    def __init__(
        self,
        target: str | None = None,
        *,
        api_key: str | None = None,
        tls: bool | grpc.ChannelCredentials = False,
        timeout: float | None = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        channel_options: dict[str, int | str] | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self.config = ClientConfig.resolve(
            target, api_key=api_key, tls=tls, timeout=timeout, retry=retry, channel_options=channel_options
        )
        self._owns_channel = channel is None
        self._grpc: AsyncGrpcTransport | None = None
        transport: AsyncTransport
        if channel is None and is_url(self.config.target):
            # unasync: async-only
            # said at once: grpc would report the URL later as "Misformatted domain name"
            raise ValueError(
                "AsyncClient speaks gRPC: give the server's host:port (e.g. 127.0.0.1:50051); "
                "an http(s):// gateway URL works with Client"
            )
            # unasync: sync-only
            # transport = RestTransport(self.config)
            # unasync: end
        else:
            transport = self._grpc = AsyncGrpcTransport(self.config, channel)
        self.models = AsyncModels(transport)
        self.completions = AsyncCompletions(transport)
        self.embeddings = AsyncEmbeddings(transport)
        self.conversations = AsyncConversations(transport)
        self.reasoning = AsyncReasoning(transport)
        self.keys = AsyncKeys(transport)

    @property
    def target(self) -> str:
        """The server this client talks to."""
        return self.config.target

    async def close(self) -> None:
        """Close the channel (open streams end)."""
        if self._owns_channel and self._grpc is not None:
            await self._grpc.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.close()
