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
| finish_reason tool_calls, function_call, others | all | STOP |

Non-2xx bodies: OpenAI's `{"error": {"message", "type", "param", "code"}}`, vLLM's older
`{"object": "error", "message": ...}` and FastAPI's `{"detail": ...}` (llama-cpp-python's 401) all
give the upstream's own message.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from common.enums import FinishReason
from server.providers.attachments import cannot_take
from server.providers.base import ChatMessage, ChatRequest, Delta, Finish, StreamItem, Usage
from server.providers.http.base import UNREPORTED, HttpProvider, HttpRequest, sampling
from server.providers.http.errors import stream_error
from server.providers.http.wire import FrameError, SseParser
from server.settings import ModelConfig

_FINISH = {"length": FinishReason.LENGTH, "content_filter": FinishReason.CONTENT_FILTER}
_DONE = "[DONE]"
_PENALTIES = {"frequency_penalty": "frequency_penalty", "presence_penalty": "presence_penalty"}
#: OpenAI's rule of thumb for English text; only used when the server reports no usage.


def finish_reason(word: str | None) -> FinishReason:
    """OpenAI's finish_reason words on ours; tool_calls, function_call and unknown words are STOP."""
    return _FINISH.get(word or "", FinishReason.STOP)


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


class OpenAIProvider(HttpProvider):
    """`provider = "openai"`: any server with OpenAI's /chat/completions."""

    name = "openai"

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        body: dict[str, Any] = {
            "model": model.upstream_model or model.id,
            "messages": [{"role": str(m.role), "content": _content(model, m)} for m in request.messages],
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
        headers = {"Accept": "text/event-stream" if request.stream else "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return HttpRequest(f"{model.upstream.base_url}/chat/completions", body, headers)

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
        usage = _usage(body.get("usage")) or Usage(UNREPORTED, UNREPORTED)
        items: list[StreamItem] = [Delta(content, thinking)] if content or thinking else []
        items.append(Finish(usage, finish_reason(choice.get("finish_reason"))))
        return items

    def error_text(self, parsed: Any) -> str | None:
        if (message := _error_text(parsed)) is not None:
            return message
        if isinstance(parsed, dict) and isinstance(parsed.get("detail"), str):
            return str(parsed["detail"])  # FastAPI's HTTPException (llama-cpp-python's 401)
        return None


class _StreamState:
    """What a stream has said so far: text (for estimates), finish reason, usage, [DONE]."""

    def __init__(self) -> None:
        self.reason: FinishReason | None = None
        self.usage: Usage | None = None
        self.done = False

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
        if (word := choice.get("finish_reason")) is not None:
            self.reason = finish_reason(word)
        content = _text(delta.get("content"))
        thinking = _text(delta.get("reasoning_content")) or _text(delta.get("reasoning"))
        if not content and not thinking:
            return []
        return [Delta(content, thinking)]
