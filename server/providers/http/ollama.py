"""Ollama's native API: POST /api/chat, answered as NDJSON (or one JSON object with stream=false).

Each line of a streamed answer is one object: `{"message": {"content", "thinking"?}, "done": false}`
while the model writes, then one `{"done": true, "done_reason", "prompt_eval_count", "eval_count",
...durations in ns}`. An error after the headers is a line `{"error": "..."}`; before them, a
non-2xx status with the same body. Sampling options go in `options` (`num_predict` is max_tokens).
Ollama has no authentication of its own; a key, when `api_key_env` names one, is sent as a bearer
token for the proxies that put one in front of it.

Tools go as `tools: [{type: "function", function: {name, description, parameters}}]`; Ollama has no
tool_choice, so "none" sends no tools and "required" or a named tool is refused (UNSUPPORTED_PARAMETER).
History calls are an assistant message's `tool_calls: [{id?, function: {name, arguments}}]` with the
arguments as a JSON object (our JSON text parsed; anything else is refused), their results
`{role: "tool", content, tool_name, tool_call_id?}`. An answer's `message.tool_calls` come whole, each
in the line that finished it: one piece per call, with Ollama's `id` or a generated `call_<hex>`, and a
"stop" after them is TOOL_CALLS. Structured output is `format`: "json", or the JSON Schema itself.

`embed()`: POST /api/embed `{model, input: [...], dimensions?}` → `embeddings`, `prompt_eval_count`.

`discover_models()` lists what an Ollama server has pulled (GET /api/tags).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from common.enums import FinishReason
from common.errors import UNSUPPORTED_PARAMETER, InvalidArgument
from server.providers.attachments import cannot_take
from server.providers.base import (
    PENALTIES,
    ChatMessage,
    ChatRequest,
    Delta,
    Embeddings,
    Finish,
    FormatType,
    Role,
    StreamItem,
    ToolCallPiece,
    ToolMode,
    Usage,
)
from server.providers.http.base import UNREPORTED, HttpClient, HttpProvider, HttpRequest, sampling
from server.providers.http.errors import (
    from_status,
    parse_retry_after,
    protocol_error,
    redact_error,
    stream_error,
    unreachable,
)
from server.providers.http.unary import embedding_tokens, post_json, vectors
from server.providers.http.wire import (
    FrameError,
    NdjsonParser,
    arguments_text,
    call_arguments,
    function_tool,
    new_call_id,
)
from server.settings import ModelConfig

PROVIDER = "ollama"
#: done_reason → ours. "load"/"unload" answer a request without messages (which we never send);
#: anything unknown is a normal stop rather than a failure.
_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
_DISCOVERY_TIMEOUT = 10.0


class OllamaProvider(HttpProvider):
    """Models served by an Ollama server, through its native /api/chat."""

    name = PROVIDER

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        options: dict[str, Any] = {
            "num_predict": request.max_tokens,
            **sampling(request),
            **request.penalties(model, {name: name for name in PENALTIES}),
        }
        body: dict[str, Any] = {
            "model": model.upstream_model or model.id,
            "messages": [_message(model, m) for m in request.messages],
            "stream": request.stream,
            "options": options,
        }
        if tools := _tools(request):
            body["tools"] = tools
        if request.response_format is not None:
            fmt = request.response_format
            body["format"] = (
                "json" if fmt.type == FormatType.JSON_OBJECT or fmt.schema is None else dict(fmt.schema)
            )
        return HttpRequest(f"{model.upstream.base_url}/api/chat", body, _headers(key))

    async def parse_stream(
        self, model: ModelConfig, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[StreamItem]:
        parser, answer = NdjsonParser(), _Answer(model)
        async for chunk in chunks:
            for line in parser.feed(chunk):
                for item in answer.items(line):
                    yield item
                    if isinstance(item, Finish):
                        return
        for line in parser.close():
            for item in answer.items(line):
                yield item
                if isinstance(item, Finish):
                    return
        raise protocol_error(PROVIDER, model.id, 'the stream ended without its "done": true line')

    def parse_whole(self, model: ModelConfig, body: Any) -> list[StreamItem]:
        items = _Answer(model).items(body)
        if not items or not isinstance(items[-1], Finish):
            raise protocol_error(PROVIDER, model.id, f'an answer without "done": true: {str(body)[:200]}')
        return items

    async def embed(
        self, model: ModelConfig, texts: list[str], *, dimensions: int | None, deadline: float | None
    ) -> Embeddings:
        if not texts:
            return Embeddings([], 0)
        key = self.api_key(model)
        body: dict[str, Any] = {"model": model.upstream_model or model.id, "input": texts}
        if dimensions is not None:
            body["dimensions"] = dimensions

        def parse(answer: Any) -> Embeddings:
            if (message := self.error_text(answer)) is not None:
                raise stream_error(PROVIDER, model.id, message)
            found = vectors(model, answer["embeddings"], len(texts), dimensions)
            return Embeddings(found, embedding_tokens(answer.get("prompt_eval_count"), texts))

        return await post_json(
            self,
            model,
            f"{model.upstream.base_url}/api/embed",
            body,
            headers=_headers(key),
            key=key,
            deadline=deadline,
            parse=parse,
        )

    def error_text(self, parsed: Any) -> str | None:
        """Ollama's `{"error": "..."}`."""
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return str(parsed["error"])
        return None


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _tools(request: ChatRequest) -> list[dict[str, Any]]:
    """`tools`, unless tool_choice says none; Ollama cannot be told to call one."""
    mode = request.tool_choice.mode
    if mode in (ToolMode.REQUIRED, ToolMode.TOOL):
        raise InvalidArgument(
            "tool_choice",
            f"Ollama has no tool_choice: it cannot be made to call a tool ({mode}); use auto or none",
            reason=UNSUPPORTED_PARAMETER,
        )
    if mode == ToolMode.NONE:
        return []
    return [function_tool(tool) for tool in request.tools]


def _message(model: ModelConfig, message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": str(message.role), "content": message.content}
    images = []
    for attachment in message.attachments:
        if attachment.type != "image":
            raise cannot_take(model, attachment, "images only")
        images.append(base64.b64encode(attachment.content).decode("ascii"))
    if images:
        out["images"] = images
    if message.tool_calls:
        out["tool_calls"] = [
            {
                **({"id": call.id} if call.id else {}),
                "function": {"name": call.name, "arguments": call_arguments(call)},
            }
            for call in message.tool_calls
        ]
    if message.role == Role.TOOL:
        # tool_name is what Ollama's templates read; newer servers also match the call by its id.
        if message.tool_name:
            out["tool_name"] = message.tool_name
        if message.tool_call_id:
            out["tool_call_id"] = message.tool_call_id
    return out


class _Answer:
    """One answer's lines → Deltas and, on the last one, the Finish; numbers its tool calls."""

    def __init__(self, model: ModelConfig) -> None:
        self._model = model
        self._calls = 0

    def items(self, frame: Any) -> list[StreamItem]:
        if not isinstance(frame, dict):
            raise FrameError(f"a line is not a JSON object: {str(frame)[:200]!r}")
        if "error" in frame:
            raise stream_error(PROVIDER, self._model.id, str(frame["error"]))
        message = frame.get("message") or {}
        if not isinstance(message, dict):
            raise FrameError(f'"message" is not an object: {str(message)[:200]!r}')
        content, thinking = message.get("content") or "", message.get("thinking") or ""
        if not isinstance(content, str) or not isinstance(thinking, str):
            raise FrameError("message content or thinking is not a string")
        calls = self._pieces(message.get("tool_calls"))
        items: list[StreamItem] = []
        if content or thinking or calls:
            items.append(Delta(content=content, thinking=thinking, tool_calls=calls))
        if frame.get("done") is True:
            # Ollama leaves prompt_eval_count out when the whole prompt came from its cache (it was
            # still billed), and an older or proxied server may leave out both: the base estimates them.
            completion = frame.get("eval_count")
            prompt = frame.get("prompt_eval_count")
            reason = _FINISH_REASONS.get(str(frame.get("done_reason") or "stop"), FinishReason.STOP)
            if self._calls and reason == FinishReason.STOP:
                reason = FinishReason.TOOL_CALLS  # Ollama says "stop" after tool calls
            usage = Usage(
                prompt_tokens=prompt if isinstance(prompt, int) else UNREPORTED,
                completion_tokens=completion if isinstance(completion, int) else UNREPORTED,
            )
            items.append(Finish(usage, reason))
        return items

    def _pieces(self, calls: Any) -> tuple[ToolCallPiece, ...]:
        if not calls:
            return ()
        if not isinstance(calls, list):
            raise FrameError(f"tool_calls is not a list: {str(calls)[:200]!r}")
        pieces = []
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise FrameError(f"a tool call without a function name: {str(call)[:200]!r}")
            given = call.get("id")
            pieces.append(
                ToolCallPiece(
                    self._calls,
                    given if isinstance(given, str) and given else new_call_id(),
                    function["name"],
                    arguments_text(function.get("arguments")),
                )
            )
            self._calls += 1
        return tuple(pieces)


async def discover_models(client: HttpClient, base_url: str, *, key: str | None = None) -> list[str]:
    """The names of the models an Ollama server has pulled (GET {base_url}/api/tags), in its order.

    Errors are the same UpstreamErrors a chat call raises (with model "*"), so a caller can report
    an unreachable or misconfigured server the same way.
    """
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with asyncio.timeout(_DISCOVERY_TIMEOUT):
            async with client.session.get(f"{base_url.rstrip('/')}/api/tags", headers=headers) as response:
                body = await response.read()
                if response.status >= 300:
                    raise redact_error(
                        from_status(
                            PROVIDER,
                            "*",
                            response.status,
                            OllamaProvider(client).error_message(body),
                            retry_after=parse_retry_after(response.headers.get("Retry-After")),
                        ),
                        key,
                    )
    except TimeoutError:
        raise unreachable(
            PROVIDER, "*", f"no answer from /api/tags within {_DISCOVERY_TIMEOUT:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        raise unreachable(PROVIDER, "*", type(exc).__name__) from None
    try:
        listed = json.loads(body)["models"]
        return [str(entry["name"]) for entry in listed]
    except (ValueError, KeyError, TypeError):
        raise redact_error(protocol_error(PROVIDER, "*", f"/api/tags answered {body[:200]!r}"), key) from None
