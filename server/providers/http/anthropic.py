"""Anthropic's Messages API: POST {base_url}/v1/messages, answered whole or as named SSE events.

Request: the conversation as alternating user/assistant `messages` (consecutive messages of one role
merged into one turn), system messages hoisted into the top-level `system` string, `max_tokens`
always (Anthropic requires it), and `temperature`, `top_p`, `stop_sequences` when set. Images and
PDFs go inline as base64 content blocks.

Tools: `tools: [{name, description, input_schema}]` and `tool_choice` (auto, any, tool + name, none).
In the history an assistant's calls are `tool_use` blocks (our JSON text arguments parsed into the
`input` object), and tool results are `tool_result` blocks in a user turn: consecutive results share
one turn, since the API wants user and assistant to alternate. Anthropic refuses such blocks in a
request without tools, so a history with calls but a request without tools names the called tools
(without schemas) under `tool_choice` none: the model reads its history and cannot call anything.

Structured output: the Messages API has no JSON mode that every model and every server speaking the
API takes, so `response_format` is honoured with the API's own means: one tool whose input schema is
the requested schema (`{"type": "object"}` for json_object), forced by `tool_choice`, and that tool's
input is the answer: relayed as content (its `input_json_delta`s as they stream), finishing STOP. It
is a tool call on the wire, so it cannot be combined with the request's own tools (refused, naming
response_format), and the schema must describe an object (a tool's input always is one).

Stream: `message_start` (input usage), then per content block `content_block_start`,
`content_block_delta`s (`text_delta` → content, `thinking_delta` → thinking, a `tool_use` block's
start and its `input_json_delta`s → tool-call pieces, numbered from 0 among the tool blocks;
signatures are not ours to relay) and `content_block_stop`, then `message_delta` (stop reason,
cumulative output usage) and `message_stop`. `ping` keeps the connection alive; `error` ends the
stream with the upstream's words. Event types we do not know are skipped, as Anthropic's versioning
policy asks.

Token counting: `POST {base_url}/v1/messages/count_tokens` with the request's system, messages and
tools → `input_tokens`.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any

from common.enums import FinishReason
from common.errors import UNSUPPORTED_PARAMETER, InvalidArgument
from server.providers.attachments import cannot_take
from server.providers.base import (
    Attachment,
    ChatMessage,
    ChatRequest,
    Delta,
    Finish,
    FormatType,
    ResponseFormat,
    Role,
    StreamItem,
    ToolCall,
    ToolCallPiece,
    ToolMode,
    Usage,
)
from server.providers.http.base import UNREPORTED, HttpProvider, HttpRequest, sampling
from server.providers.http.errors import UpstreamError, stream_error
from server.providers.http.unary import post_json, token_count
from server.providers.http.wire import (
    FrameError,
    SseEvent,
    SseParser,
    arguments_text,
    call_arguments,
    tool_parameters,
)
from server.settings import ModelConfig

API_VERSION = "2023-06-01"
#: Anthropic's sampling temperature range is [0, 1]; ours (OpenAI's) is [0, 2].
MAX_TEMPERATURE = 1.0
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
DOCUMENT_TYPES = frozenset({"application/pdf"})
_MIME_ALIASES = {"image/jpg": "image/jpeg", "image/pjpeg": "image/jpeg"}
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"%PDF-", "application/pdf"),
)

STOP_REASONS = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "refusal": FinishReason.CONTENT_FILTER,
    "tool_use": FinishReason.TOOL_CALLS,
    # pause_turn (a server tool's long turn, which we never ask for) and anything new read as STOP.
}
TOOL_CHOICES = {ToolMode.AUTO: "auto", ToolMode.REQUIRED: "any", ToolMode.TOOL: "tool", ToolMode.NONE: "none"}
#: The forced tool that carries a json_object answer: any object.
ANY_OBJECT = {"type": "object"}
#: In-stream errors that a fresh attempt may not meet (their non-stream twins are 529, 500, 429).
_TRANSIENT_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error"})


class AnthropicProvider(HttpProvider):
    """Claude models over the Messages API (or anything that speaks it: proxies, gateways)."""

    name = "anthropic"

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        system, messages = conversation(model, request.messages)
        body: dict[str, Any] = {
            "model": model.upstream_model or model.id,
            "max_tokens": request.max_tokens,
            "messages": messages,
            "stream": request.stream,
        }
        if system:
            body["system"] = system
        if request.temperature is not None and request.temperature > MAX_TEMPERATURE:
            # Not clamped: 1.5 on a 0-2 scale and 1.0 on Anthropic's are different requests.
            raise InvalidArgument(
                "temperature",
                f"model {model.id!r} (anthropic) takes 0 to {MAX_TEMPERATURE:g}, got {request.temperature:g}",
            )
        # request.seed is dropped: the Messages API has no seed (sampling is not reproducible there).
        body.update(sampling(request, stop="stop_sequences", seed=None))
        body.update(request.penalties(model, {"top_k": "top_k"}))
        body.update(tooling(model, request))
        return HttpRequest(f"{model.upstream.base_url}/v1/messages", body, _headers(key))

    async def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        async with aclosing(super().stream(model, request)) as items:
            if request.response_format is None:
                async for item in items:
                    yield item
                return
            # The forced tool's input is the answer (see the module docstring); text beside it is not.
            async for item in items:
                if isinstance(item, Delta):
                    text = "".join(piece.arguments for piece in item.tool_calls)
                    if text or item.thinking:
                        yield Delta(content=text, thinking=item.thinking)
                elif item.reason is FinishReason.TOOL_CALLS:
                    yield replace(item, reason=FinishReason.STOP)
                else:
                    yield item

    async def count_tokens(self, model: ModelConfig, request: ChatRequest) -> int:
        """Anthropic's own count: the count_tokens endpoint takes the prompt half of a Messages request."""
        key = self.api_key(model)
        sent = self.build(model, replace(request, stream=False), key).json
        body: dict[str, Any] = {
            k: sent[k] for k in ("model", "system", "messages", "tools", "tool_choice") if k in sent
        }
        return await post_json(
            self,
            model,
            f"{model.upstream.base_url}/v1/messages/count_tokens",
            body,
            headers=_headers(key),
            key=key,
            deadline=request.deadline,
            parse=token_count(model, "input_tokens"),
        )

    async def parse_stream(
        self, model: ModelConfig, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[StreamItem]:
        parser = SseParser()
        state = StreamState(str(model.provider), model.id)
        async for chunk in chunks:
            for event in parser.feed(chunk):
                for item in state.on(event):
                    yield item
                if state.done:
                    return
        for event in parser.close():
            for item in state.on(event):
                yield item
            if state.done:
                return
        raise FrameError("the stream ended before message_stop")

    def parse_whole(self, model: ModelConfig, body: Any) -> list[StreamItem]:
        if not isinstance(body, dict) or not isinstance(body.get("content"), list):
            if isinstance(body, dict) and body.get("type") == "error":
                raise _stream_error(str(model.provider), model.id, body)
            raise FrameError(f"not a Message: {str(body)[:200]!r}")
        text: list[str] = []
        thinking: list[str] = []
        calls: list[ToolCallPiece] = []
        for block in body["content"]:
            if not isinstance(block, dict):
                raise FrameError(f"a content block is not an object: {block!r}")
            if block.get("type") == "text":
                text.append(_string(block, "text"))
            elif block.get("type") == "thinking":
                thinking.append(_string(block, "thinking"))
            elif block.get("type") == "tool_use":
                call = _tool_use(block)
                calls.append(replace(call, index=len(calls), arguments=arguments_text(block.get("input"))))
        content, thought = "".join(text), "".join(thinking)
        usage = _usage(body.get("usage"))
        items: list[StreamItem] = []
        if content or thought or calls:
            items.append(Delta(content=content, thinking=thought, tool_calls=tuple(calls)))
        items.append(
            Finish(
                # Anthropic always reports both; a proxy that does not gets them estimated by the base.
                Usage(usage.get("prompt", UNREPORTED), usage.get("completion", UNREPORTED)),
                _finish_reason(body.get("stop_reason")),
            )
        )
        return items

    def error_text(self, parsed: Any) -> str | None:
        """`{"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}` → its words."""
        return _error_words(parsed) or None


@dataclass
class StreamState:
    """What a Messages stream has said so far; `on()` turns each event into our items."""

    provider: str
    model: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    reason: FinishReason = FinishReason.STOP
    done: bool = False
    tool_blocks: dict[int, int] = field(default_factory=dict)
    """Content block index → our tool call index (0, 1, … among the tool_use blocks)."""

    def on(self, event: SseEvent) -> list[StreamItem]:
        payload = event.json()
        if not isinstance(payload, dict):
            raise FrameError(f"event data is not an object: {event.data[:200]!r}")
        # The JSON's own type is authoritative; the SSE event name repeats it.
        kind = payload.get("type", event.event)
        if kind == "message_start":
            message = payload.get("message")
            usage = _usage(message.get("usage") if isinstance(message, dict) else None)
            self.prompt_tokens = usage.get("prompt", self.prompt_tokens)
            self.completion_tokens = usage.get("completion", self.completion_tokens)
        elif kind == "content_block_start":
            block = payload.get("content_block")
            if not isinstance(block, dict):
                raise FrameError(f"content_block_start without a block: {event.data[:200]!r}")
            # Blocks start empty in practice; any initial text is still text.
            if block.get("type") == "text":
                return self._delta(content=_string(block, "text", required=False))
            if block.get("type") == "thinking":
                return self._delta(thinking=_string(block, "thinking", required=False))
            if block.get("type") == "tool_use":
                piece = replace(_tool_use(block), index=len(self.tool_blocks))
                self.tool_blocks[_index(payload)] = piece.index
                # The input streams as input_json_deltas; a start block's own input is {} in practice.
                if block.get("input"):
                    piece = replace(piece, arguments=arguments_text(block["input"]))
                return [Delta(tool_calls=(piece,))]
        elif kind == "content_block_delta":
            delta = payload.get("delta")
            if not isinstance(delta, dict):
                raise FrameError(f"content_block_delta without a delta: {event.data[:200]!r}")
            if delta.get("type") == "text_delta":
                return self._delta(content=_string(delta, "text"))
            if delta.get("type") == "thinking_delta":
                return self._delta(thinking=_string(delta, "thinking"))
            if delta.get("type") == "input_json_delta":
                call = self.tool_blocks.get(_index(payload))
                if call is None:
                    raise FrameError(f"input_json_delta outside a tool_use block: {event.data[:200]!r}")
                partial = _string(delta, "partial_json")
                return [Delta(tool_calls=(ToolCallPiece(call, arguments=partial),))] if partial else []
            # signature_delta, citations_delta: nothing a client reads.
        elif kind == "message_delta":
            delta = payload.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self.reason = _finish_reason(delta["stop_reason"])
            # message_delta's usage is cumulative; newer API versions repeat input_tokens there too.
            usage = _usage(payload.get("usage"))
            self.prompt_tokens = usage.get("prompt", self.prompt_tokens)
            self.completion_tokens = usage.get("completion", self.completion_tokens)
        elif kind == "message_stop":
            self.done = True
            # Anthropic reports both counts; a proxy that leaves them out gets them estimated by the base.
            prompt = self.prompt_tokens if self.prompt_tokens is not None else UNREPORTED
            completion = self.completion_tokens if self.completion_tokens is not None else UNREPORTED
            return [Finish(Usage(prompt, completion), self.reason)]
        elif kind == "error":
            raise _stream_error(self.provider, self.model, payload)
        return []  # ping, content_block_stop, and event types added after this was written

    def _delta(self, *, content: str = "", thinking: str = "") -> list[StreamItem]:
        if not content and not thinking:
            return []
        return [Delta(content=content, thinking=thinking)]


def conversation(model: ModelConfig, messages: tuple[ChatMessage, ...]) -> tuple[str, list[dict[str, Any]]]:
    """The `system` string and the alternating `messages` of a Messages API request."""
    system: list[str] = []
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in messages:
        if message.role == Role.SYSTEM:
            if message.attachments:
                raise cannot_take(model, message.attachments[0], _TAKES, where="in a system message")
            if message.content:
                system.append(message.content)
            continue
        if message.role is Role.TOOL:
            blocks = [_tool_result(model, message)]
        else:
            blocks = [_attachment_block(model, a) for a in message.attachments]
            # Anthropic rejects empty text blocks; an empty message has nothing to lose.
            if message.content:
                blocks.append({"type": "text", "text": message.content})
            blocks.extend(_tool_use_block(call) for call in message.tool_calls)
        if not blocks:
            continue
        role = "user" if message.role is Role.TOOL else str(message.role)
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)  # the API wants turns to alternate
        else:
            turns.append((role, blocks))
    return "\n\n".join(system), [{"role": role, "content": _content(blocks)} for role, blocks in turns]


def tooling(model: ModelConfig, request: ChatRequest) -> dict[str, Any]:
    """`tools` and `tool_choice`: the request's tools, or the one forced tool of a response_format."""
    if request.response_format is not None:
        if request.tools:
            raise InvalidArgument(
                "response_format",
                f"model {model.id!r} (anthropic) cannot combine it with tools: the Messages API has no JSON"
                " mode, and structured output is itself a forced tool call there",
                reason=UNSUPPORTED_PARAMETER,
            )
        forced = _format_tool(model, request.response_format)
        return {"tools": [forced], "tool_choice": {"type": "tool", "name": forced["name"]}}
    if not request.tools:
        # Anthropic refuses tool_use and tool_result blocks in a request that defines no tools, so the
        # tools the history called are named (no schema: none is known) and none may be called now.
        called = dict.fromkeys(call.name for message in request.messages for call in message.tool_calls)
        if not called:
            return {}
        return {
            "tools": [{"name": name, "input_schema": dict(ANY_OBJECT)} for name in called],
            "tool_choice": {"type": "none"},
        }
    tools = []
    for spec in request.tools:
        tool: dict[str, Any] = {"name": spec.name}
        if spec.description:
            tool["description"] = spec.description
        tool["input_schema"] = tool_parameters(spec)
        tools.append(tool)
    choice: dict[str, Any] = {"type": TOOL_CHOICES[request.tool_choice.mode]}
    if request.tool_choice.mode is ToolMode.TOOL:
        choice["name"] = request.tool_choice.name
    return {"tools": tools, "tool_choice": choice}


def _format_tool(model: ModelConfig, fmt: ResponseFormat) -> dict[str, Any]:
    schema = dict(fmt.schema) if fmt.type is FormatType.JSON_SCHEMA and fmt.schema else dict(ANY_OBJECT)
    if schema.get("type") != "object":
        raise InvalidArgument(
            "response_format",
            f"model {model.id!r} (anthropic) takes only an object schema: structured output goes as a"
            " tool's input there, which is always a JSON object",
            reason=UNSUPPORTED_PARAMETER,
        )
    return {
        "name": fmt.name or "response",
        "description": "Give your whole answer as this tool's input, following its schema exactly.",
        "input_schema": schema,
    }


def _tool_use_block(call: ToolCall) -> dict[str, Any]:
    return {"type": "tool_use", "id": call.id, "name": call.name, "input": call_arguments(call)}


def _tool_result(model: ModelConfig, message: ChatMessage) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id}
    parts = [_attachment_block(model, a) for a in message.attachments]
    if parts:
        # A result with an image or a document is a list of blocks (text blocks never empty).
        block["content"] = parts + ([{"type": "text", "text": message.content}] if message.content else [])
    elif message.content:
        block["content"] = message.content
    return block


def _tool_use(block: dict[str, Any]) -> ToolCallPiece:
    """The first piece of a tool_use block's call (index set by the caller)."""
    return ToolCallPiece(0, id=_string(block, "id"), name=_string(block, "name"))


def _index(payload: dict[str, Any]) -> int:
    index = payload.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise FrameError(f"a content block event without an index: {str(payload)[:200]!r}")
    return index


def _headers(key: str | None) -> dict[str, str]:
    headers = {"anthropic-version": API_VERSION, "content-type": "application/json"}
    if key is not None:
        headers["x-api-key"] = key
    return headers


def _content(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Plain text as a string (the common form); blocks as soon as there is an image or a document."""
    if all(b["type"] == "text" for b in blocks):
        return "\n\n".join(b["text"] for b in blocks)
    return blocks


def _attachment_block(model: ModelConfig, attachment: Attachment) -> dict[str, Any]:
    mime = attachment.mime_type.lower().split(";")[0].strip()
    mime = _MIME_ALIASES.get(mime, mime) or _sniff(attachment.content)
    data = base64.b64encode(attachment.content).decode("ascii")
    if attachment.type == "image" and mime in IMAGE_TYPES:
        return {"type": "image", "source": {"type": "base64", "media_type": mime, "data": data}}
    if attachment.type == "document" and mime in DOCUMENT_TYPES:
        return {"type": "document", "source": {"type": "base64", "media_type": mime, "data": data}}
    raise cannot_take(model, attachment, _TAKES)


def _sniff(content: bytes) -> str:
    for signature, mime in _SIGNATURES:
        if content.startswith(signature):
            return mime
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    return ""


_TAKES = "images (JPEG, PNG, GIF, WebP) and PDF documents, in user or assistant messages"


def _finish_reason(value: Any) -> FinishReason:
    return STOP_REASONS.get(value, FinishReason.STOP) if isinstance(value, str) else FinishReason.STOP


def _usage(usage: Any) -> dict[str, int]:
    """Counts present in an Anthropic usage object: prompt (input, cached reads and writes included)
    and completion."""
    if not isinstance(usage, dict):
        return {}
    found: dict[str, int] = {}
    inputs = [
        usage.get(k) for k in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
    ]
    if isinstance(inputs[0], int):
        # input_tokens counts only what follows the last cache breakpoint; the prompt is all three.
        found["prompt"] = sum(n for n in inputs if isinstance(n, int))
    if isinstance(usage.get("output_tokens"), int):
        found["completion"] = usage["output_tokens"]
    return found


def _string(obj: dict[str, Any], key: str, *, required: bool = True) -> str:
    value = obj.get(key, None if required else "")
    if not isinstance(value, str):
        raise FrameError(f"{key!r} is not a string in {str(obj)[:200]!r}")
    return value


def _error_words(payload: Any) -> str:
    """ "overloaded_error: Overloaded" from an error object; "" if it is not one."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return ""
    kind, message = error.get("type"), error.get("message")
    words = [str(w) for w in (kind, message) if isinstance(w, str) and w]
    return ": ".join(words)


def _stream_error(provider: str, model: str, payload: Any) -> UpstreamError:
    error = stream_error(provider, model, _error_words(payload) or str(payload)[:200])
    # Before the first token, another attempt may meet a less busy upstream (resilience decides).
    inner = payload.get("error") if isinstance(payload, dict) else None
    error.retryable = isinstance(inner, dict) and inner.get("type") in _TRANSIENT_ERRORS
    return error
