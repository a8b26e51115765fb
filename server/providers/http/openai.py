"""OpenAI-compatible chat completions: OpenAI, vLLM, llama.cpp's server, LiteLLM, OpenRouter, Ollama's /v1.

One adapter for every server that speaks `POST {base_url}/chat/completions` with Server-Sent Events.
They agree on the shape and differ in details, all tolerated here:

| dialect detail | who | here |
|---|---|---|
| usage in a last chunk with `choices: []` / `null` | OpenAI, vLLM | the Finish's usage |
| no usage at all | llama-cpp-python, older servers | approximate count (`text.estimate_tokens`) |
| `{"error": {...}}` / `{"object": "error"}` frame | OpenAI, vLLM, LiteLLM | UPSTREAM_ERROR |
| `reasoning_content` / `reasoning` in deltas | vLLM, DeepSeek, OpenRouter, Ollama | thinking deltas |
| `: keep-alive` comments; `data: [DONE]` | OpenRouter; all | skipped; end of stream |
| `delta.tool_calls`: `{index, id?, function: {name?, arguments?}}` | all | pieces; id, name once |
| `delta.tool_calls` without `index` | Gemini's OpenAI layer | a new id is the next call |
| finish_reason tool_calls; stop with tool calls (a forced `tool_choice`) | OpenAI | TOOL_CALLS |
| finish_reason function_call, unknown words | older servers | STOP |

Tools go as `tools: [{type: "function", function: {name, description, parameters}}]` with `tool_choice`
("none", "required", or one function; "auto" is every server's default when tools are given, so it is
left out); history calls as an assistant message's `tool_calls` (content null when it has no text),
their results as `{role: "tool", tool_call_id, content}`. Structured output is `response_format`
(`json_object`, or `json_schema` with name, schema and strict).

Non-2xx bodies: OpenAI's `{"error": {"message", "type", "param", "code"}}`, vLLM's older
`{"object": "error", "message": ...}` and FastAPI's `{"detail": ...}` (llama-cpp-python's 401) all
give the upstream's own message.

Embeddings (`embed`): `POST {base_url}/embeddings` with float encoding; `data[i].embedding` in `index`
order and `usage.prompt_tokens`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from common.enums import FinishReason
from server.providers.attachments import cannot_take
from server.providers.base import (
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
from server.providers.http.base import UNREPORTED, HttpProvider, HttpRequest, sampling
from server.providers.http.errors import stream_error
from server.providers.http.unary import embedding_tokens, post_json, vectors
from server.providers.http.wire import FrameError, SseParser, arguments_text, function_tool
from server.settings import ModelConfig

_FINISH = {
    "length": FinishReason.LENGTH,
    "content_filter": FinishReason.CONTENT_FILTER,
    "tool_calls": FinishReason.TOOL_CALLS,
}
_DONE = "[DONE]"
_PENALTIES = {"frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}


def finish_reason(word: str | None, *, called: bool = False) -> FinishReason:
    """OpenAI's finish_reason words on ours; function_call and unknown words are STOP. A STOP of an
    answer that `called` tools is TOOL_CALLS: OpenAI says "stop" when tool_choice forced the call."""
    reason = _FINISH.get(word or "", FinishReason.STOP)
    return FinishReason.TOOL_CALLS if called and reason == FinishReason.STOP else reason


def _message(model: ModelConfig, message: ChatMessage) -> dict[str, Any]:
    if message.role == Role.TOOL:
        if message.attachments:  # a tool message's content is text parts only
            raise cannot_take(model, message.attachments[0], "text only", where="in a tool result")
        return {"role": "tool", "tool_call_id": message.tool_call_id, "content": message.content}
    out: dict[str, Any] = {"role": str(message.role), "content": _content(model, message)}
    if message.tool_calls:
        out["content"] = out["content"] or None
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments or "{}"},
            }
            for call in message.tool_calls
        ]
    return out


def _tools(request: ChatRequest) -> dict[str, Any]:
    """`tools`, `tool_choice` and `response_format`, as far as the request sets them."""
    out: dict[str, Any] = {}
    if request.tools:
        out["tools"] = [function_tool(tool, strict=True) for tool in request.tools]
        choice = request.tool_choice
        if choice.mode == ToolMode.TOOL:
            out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice.mode != ToolMode.AUTO:
            out["tool_choice"] = str(choice.mode)
    fmt = request.response_format
    if fmt is not None and fmt.type == FormatType.JSON_OBJECT:
        out["response_format"] = {"type": "json_object"}
    elif fmt is not None:
        schema: dict[str, Any] = {"name": fmt.name or "response", "strict": fmt.strict}  # name: required
        if fmt.schema is not None:
            schema["schema"] = dict(fmt.schema)
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    return out


def _content(model: ModelConfig, message: ChatMessage) -> str | list[dict[str, Any]]:
    if not message.attachments:
        return message.content
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    for attachment in message.attachments:
        if attachment.type != "image":
            raise cannot_take(model, attachment, "images only")
        data = base64.b64encode(attachment.content).decode("ascii")
        url = f"data:{attachment.mime_type or 'application/octet-stream'};base64,{data}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _error_text(obj: Any) -> str | None:
    """The message of an error object in any dialect, or None if `obj` is not one."""
    if not isinstance(obj, dict):
        return None
    error = obj.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error.get("type") or json.dumps(error))
    if isinstance(error, str):
        return error
    if obj.get("object") == "error":
        return str(obj.get("message") or "unspecified error")
    return None


def _usage(obj: Any) -> Usage | None:
    if not isinstance(obj, dict):
        return None
    try:
        return Usage(int(obj.get("prompt_tokens") or 0), int(obj.get("completion_tokens") or 0))
    except (TypeError, ValueError):
        raise FrameError(f"usage is not a pair of token counts: {obj!r}") from None


def _first_choice(frame: dict[str, Any]) -> dict[str, Any] | None:
    choices = frame.get("choices")
    if not choices:  # vLLM's usage chunk: null; OpenAI's: []
        return None
    if not isinstance(choices, list) or not isinstance(choices[0], dict):
        raise FrameError(f"choices is not a list of objects: {choices!r}")
    choice: dict[str, Any] = choices[0]
    return choice


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _function(call: Any) -> dict[str, Any]:
    if not isinstance(call, dict):
        raise FrameError(f"a tool call is not an object: {str(call)[:200]!r}")
    function = call.get("function") or {}
    if not isinstance(function, dict):
        raise FrameError(f"a tool call's function is not an object: {str(function)[:200]!r}")
    return function


def _whole_calls(calls: Any) -> tuple[ToolCallPiece, ...]:
    """A whole answer's `message.tool_calls`, one piece per call."""
    if not calls:
        return ()
    if not isinstance(calls, list):
        raise FrameError(f"tool_calls is not a list: {str(calls)[:200]!r}")
    pieces = []
    for index, call in enumerate(calls):
        function = _function(call)
        pieces.append(
            ToolCallPiece(
                index,
                _text(call.get("id")),
                _text(function.get("name")),
                arguments_text(function.get("arguments")),
            )
        )
    return tuple(pieces)


class OpenAIProvider(HttpProvider):
    """`provider = "openai"`: any server with OpenAI's /chat/completions."""

    name = "openai"

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        body: dict[str, Any] = {
            "model": model.upstream_model or model.id,
            "messages": [_message(model, m) for m in request.messages],
            # max_tokens, not max_completion_tokens: vLLM, llama.cpp, Ollama and LiteLLM read only this one.
            "max_tokens": request.max_tokens,
            "stream": request.stream,
        }
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        body.update(sampling(request))
        # top_k and repeat_penalty are not OpenAI's (vLLM and llama.cpp's server read them, OpenAI refuses
        # them): refused rather than sent to an API that may reject or ignore them.
        body.update(request.penalties(model, _PENALTIES))
        body.update(_tools(request))
        headers = {"Accept": "text/event-stream" if request.stream else "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return HttpRequest(f"{model.upstream.base_url}/chat/completions", body, headers)

    async def embed(
        self, model: ModelConfig, texts: list[str], *, dimensions: int | None, deadline: float | None
    ) -> Embeddings:
        if not texts:
            return Embeddings([], 0)
        key = self.api_key(model)
        body: dict[str, Any] = {
            "model": model.upstream_model or model.id,
            "input": texts,
            "encoding_format": "float",
        }
        if dimensions is not None:
            body["dimensions"] = dimensions
        headers = {"Accept": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"

        url = f"{model.upstream.base_url}/embeddings"
        return await post_json(
            self,
            model,
            url,
            body,
            headers=headers,
            key=key,
            deadline=deadline,
            parse=lambda answer: _embeddings(model, answer, texts, dimensions),
        )

    async def parse_stream(
        self, model: ModelConfig, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[StreamItem]:
        # Without usage from the server the prompt is estimated in `stream()`, which has the request.
        parser = SseParser()
        state = _StreamState()
        async for chunk in chunks:
            for event in parser.feed(chunk):
                for item in state.event(model, event.event, event.data):
                    yield item
                if state.done:
                    break
            if state.done:
                break
        else:
            for event in parser.close():
                for item in state.event(model, event.event, event.data):
                    yield item
        if not state.done and state.reason is None:
            raise FrameError("the stream ended without a finish_reason or [DONE]")
        yield Finish(state.usage or Usage(UNREPORTED, UNREPORTED), state.reason or FinishReason.STOP)

    def parse_whole(self, model: ModelConfig, body: Any) -> list[StreamItem]:
        if (message := _error_text(body)) is not None:
            raise stream_error(str(model.provider), model.id, message)
        if not isinstance(body, dict):
            raise FrameError(f"the answer is not a JSON object: {str(body)[:200]!r}")
        choice = _first_choice(body)
        if choice is None:
            raise FrameError("the answer has no choices")
        reply = choice.get("message")
        if not isinstance(reply, dict):
            raise FrameError(f"choices[0].message is not an object: {reply!r}")
        content = _text(reply.get("content"))
        thinking = _text(reply.get("reasoning_content")) or _text(reply.get("reasoning"))
        calls = _whole_calls(reply.get("tool_calls"))
        usage = _usage(body.get("usage")) or Usage(UNREPORTED, UNREPORTED)
        items: list[StreamItem] = [Delta(content, thinking, calls)] if content or thinking or calls else []
        items.append(Finish(usage, finish_reason(choice.get("finish_reason"), called=bool(calls))))
        return items

    def error_text(self, parsed: Any) -> str | None:
        if (message := _error_text(parsed)) is not None:
            return message
        if isinstance(parsed, dict) and isinstance(parsed.get("detail"), str):
            return str(parsed["detail"])  # FastAPI's HTTPException (llama-cpp-python's 401)
        return None


def _embeddings(model: ModelConfig, answer: Any, texts: list[str], dimensions: int | None) -> Embeddings:
    if (message := _error_text(answer)) is not None:
        raise stream_error(str(model.provider), model.id, message)
    data = answer["data"]
    if not isinstance(data, list):
        raise FrameError(f"data is not a list: {str(data)[:200]!r}")
    # In `index` order, as OpenAI documents it; a server that leaves index out keeps list order.
    ordered = sorted(data, key=lambda item: int(item.get("index", 0))) if len(data) > 1 else data
    found = vectors(model, [item["embedding"] for item in ordered], len(texts), dimensions)
    return Embeddings(found, embedding_tokens((answer.get("usage") or {}).get("prompt_tokens"), texts))


class _StreamState:
    """What a stream has said so far: text (for estimates), finish reason, usage, [DONE]."""

    def __init__(self) -> None:
        self.reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.done = False
        self.calls: set[int] = set()
        """Indexes of the tool calls begun."""
        self._said: set[tuple[int, str]] = set()
        """(index, "id" or "name") already passed on: each once per call."""
        self._ids: dict[str, int] = {}
        """Each call's id → its index, for fragments that come without an index."""

    def event(self, model: ModelConfig, name: str, data: str) -> list[StreamItem]:
        if data.strip() == _DONE:
            self.done = True
            return []
        try:
            frame = json.loads(data)
        except ValueError:
            raise FrameError(f"event data is not JSON: {data[:200]!r}") from None
        message = _error_text(frame)
        if message is None and name == "error":
            message = data
        if message is not None:
            raise stream_error(str(model.provider), model.id, message)
        if not isinstance(frame, dict):
            raise FrameError(f"a frame is not a JSON object: {data[:200]!r}")
        if (usage := _usage(frame.get("usage"))) is not None:
            self.usage = usage
        choice = _first_choice(frame)
        if choice is None:
            return []
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict):
            raise FrameError(f"choices[0].delta is not an object: {delta!r}")
        pieces = self._pieces(delta.get("tool_calls"))
        if (word := choice.get("finish_reason")) is not None:
            self.reason = finish_reason(word, called=bool(self.calls))
        content = _text(delta.get("content"))
        thinking = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
        if not content and not thinking and not pieces:
            return []
        return [Delta(content, thinking, pieces)]

    def _pieces(self, fragments: Any) -> tuple[ToolCallPiece, ...]:
        """`delta.tool_calls` fragments as pieces. Some servers repeat a call's id and name in every
        fragment; a client that joins the pieces' strings (as OpenAI's SDKs do) must see them once."""
        if not fragments:
            return ()
        if not isinstance(fragments, list):
            raise FrameError(f"delta.tool_calls is not a list: {str(fragments)[:200]!r}")
        pieces = []
        for fragment in fragments:
            function = _function(fragment)
            index = fragment.get("index")
            if index is None:
                index = self._unindexed(fragment.get("id"))
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise FrameError(f"a tool call's index is not a count: {index!r}")
            if isinstance(call_id := fragment.get("id"), str) and call_id:
                self._ids.setdefault(call_id, index)
            self.calls.add(index)
            arguments = function.get("arguments")
            pieces.append(
                ToolCallPiece(
                    index,
                    self._once(index, "id", fragment.get("id")),
                    self._once(index, "name", function.get("name")),
                    "" if arguments is None else arguments_text(arguments),
                )
            )
        return tuple(pieces)

    def _unindexed(self, call_id: Any) -> int:
        """The index of a fragment without one (Gemini's OpenAI layer sends each call whole, unindexed):
        a new id begins the next call; a known id, or none, continues that call or the latest."""
        if isinstance(call_id, str) and call_id:
            if call_id not in self._ids:
                return max(self.calls) + 1 if self.calls else 0
            return self._ids[call_id]
        return max(self.calls) if self.calls else 0

    def _once(self, index: int, what: str, value: Any) -> str:
        text = _text(value)
        if not text or (index, what) in self._said:
            return ""
        self._said.add((index, what))
        return text
