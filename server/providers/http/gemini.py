"""Google's Gemini API (Generative Language API, `generateContent`), streamed over SSE.

| ours | Gemini |
|---|---|
| streaming | `POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse`; every `data:` a response |
| not streaming | `POST {base}/v1beta/models/{model}:generateContent`; one response |
| key | the `x-goog-api-key` header (never `?key=`: URLs end up in logs) |
| system messages | `systemInstruction.parts` (text only) |
| user / assistant | `contents[]` with role `user` / `model`; consecutive turns of one role merged |
| image, audio, video, PDF attachments | `inlineData {mimeType, data}` (base64) before the turn's text |
| max_tokens, temperature, top_p, stop, seed | `generationConfig`: maxOutputTokens, temperature, topP, … |
| Delta.content / Delta.thinking | `candidates[0].content.parts[].text`, split by `"thought": true` |
| Finish.reason | `finishReason`: MAX_TOKENS → LENGTH, SAFETY and kin → CONTENT_FILTER, else STOP |
| a refused prompt | `promptFeedback.blockReason` and no candidates → CONTENT_FILTER, no text |
| Finish.usage | the last `usageMetadata`: promptTokenCount; candidatesTokenCount + thoughtsTokenCount |
| errors | `{"error": {"code", "message", "status"}}`, as an HTTP error body or an SSE frame |

Gemini has no end-of-stream sentinel: the chunk that carries `finishReason` is the last one, so a
body that ends before any `finishReason` was cut off and is a protocol error, never a short answer.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from common.enums import FinishReason
from server.providers.attachments import cannot_take
from server.providers.base import (
    Attachment,
    ChatMessage,
    ChatRequest,
    Delta,
    Finish,
    Role,
    StreamItem,
    Usage,
)
from server.providers.http.base import UNREPORTED, HttpProvider, HttpRequest, sampling
from server.providers.http.errors import stream_error
from server.providers.http.wire import FrameError, SseParser
from server.settings import ModelConfig

API_VERSION = "v1beta"
_CONTENT_FILTER = frozenset(
    {"SAFETY", "RECITATION", "PROHIBITED_CONTENT", "BLOCKLIST", "SPII", "IMAGE_SAFETY"}
)
# Non-text attachments Gemini reads inline; of "document"s only PDF (text ones arrive inlined).
_INLINE_TYPES = frozenset({"image", "audio", "video"})
_INLINE_DOCUMENTS = frozenset({"application/pdf"})
_INT32 = 2**31
_PENALTIES = {"top_k": "topK", "frequency_penalty": "frequencyPenalty", "presence_penalty": "presencePenalty"}


def finish_reason(value: str) -> FinishReason:
    """Our reason for a Gemini `finishReason` (or a `promptFeedback.blockReason`)."""
    if value == "MAX_TOKENS":
        return FinishReason.LENGTH
    if value in _CONTENT_FILTER:
        return FinishReason.CONTENT_FILTER
    return FinishReason.STOP


def model_path(model: ModelConfig) -> str:
    """`models/<name>` for a plain name; a name with a collection (`tunedModels/x`) as given."""
    name = model.upstream_model or model.id
    return quote(name if "/" in name else f"models/{name}", safe="/")


def api_root(base_url: str) -> str:
    """The versioned root: a base_url that already names an API version keeps it."""
    base = base_url.rstrip("/")
    return base if base.rsplit("/", 1)[-1] in ("v1", "v1beta", "v1alpha") else f"{base}/{API_VERSION}"


def _part(model: ModelConfig, attachment: Attachment) -> dict[str, Any]:
    if attachment.type not in _INLINE_TYPES and not (
        attachment.type == "document" and attachment.mime_type.lower() in _INLINE_DOCUMENTS
    ):
        raise cannot_take(model, attachment, "image, audio, video and PDF files, inline")
    data = base64.b64encode(attachment.content).decode("ascii")
    return {"inlineData": {"mimeType": attachment.mime_type, "data": data}}


def _parts(model: ModelConfig, message: ChatMessage) -> list[dict[str, Any]]:
    # Files first, then the question about them: the order Gemini's prompting guide recommends.
    parts = [_part(model, a) for a in message.attachments]
    if message.content or not parts:
        parts.append({"text": message.content})
    return parts


def request_body(model: ModelConfig, request: ChatRequest) -> dict[str, Any]:
    """The GenerateContentRequest for a chat request."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for message in request.messages:
        if message.role is Role.SYSTEM:
            if message.attachments:
                first = message.attachments[0]
                raise cannot_take(model, first, "text only", where="in a system instruction")
            system.append({"text": message.content})
            continue
        role = "model" if message.role is Role.ASSISTANT else "user"
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(_parts(model, message))  # one turn: same meaning, strict alternation
        else:
            contents.append({"role": role, "parts": _parts(model, message)})
    config: dict[str, Any] = {
        "maxOutputTokens": request.max_tokens,
        **sampling(request, top_p="topP", stop="stopSequences", seed=None),
        **request.penalties(model, _PENALTIES),
    }
    if request.seed is not None:
        # Our seed is unsigned 32-bit, Gemini's a signed int32: same bits, so the same runs repeat.
        config["seed"] = request.seed - 2 * _INT32 if request.seed >= _INT32 else request.seed
    body: dict[str, Any] = {"contents": contents, "generationConfig": config}
    if system:
        body["systemInstruction"] = {"parts": system}
    return body


def error_text(error: Any) -> str:
    """`STATUS: message` from an `error` object (either part may be missing)."""
    if not isinstance(error, dict):
        return str(error)
    status, message = error.get("status"), error.get("message")
    words = [str(w) for w in (status, message) if w]
    return ": ".join(words) if words else json.dumps(error)[:200]


def _dict(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FrameError(f"{what} is not an object: {json.dumps(value)[:200]}")
    return value


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise FrameError(f"{what} is not an array: {json.dumps(value)[:200]}")
    return value


def _count(usage: dict[str, Any], name: str) -> int:
    value = usage.get(name, 0)  # proto3 JSON leaves zero counts out
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FrameError(f"usageMetadata.{name} is not a count: {value!r}")
    return value


class Answer:
    """One answer assembled from GenerateContentResponse objects (one, or one per SSE frame)."""

    def __init__(self, provider: str, model: str) -> None:
        self._provider = provider
        self._model = model
        self._usage: dict[str, Any] | None = None
        self._reason: FinishReason | None = None

    def feed(self, response: Any) -> Delta | None:
        """The text of one response (None if it has none); raises on an error object."""
        response = _dict(response, "a response")
        if "error" in response:
            raise stream_error(self._provider, self._model, error_text(response["error"]))
        if "usageMetadata" in response:
            self._usage = _dict(response["usageMetadata"], "usageMetadata")
        candidates = _list(response.get("candidates"), "candidates")
        if not candidates:
            block = _dict(response.get("promptFeedback"), "promptFeedback").get("blockReason")
            if block:
                self._reason = FinishReason.CONTENT_FILTER  # the prompt was refused: no candidate at all
            return None
        candidate = _dict(candidates[0], "candidates[0]")
        content: list[str] = []
        thinking: list[str] = []
        for part in _list(_dict(candidate.get("content"), "content").get("parts"), "parts"):
            text = _dict(part, "a part").get("text")
            if isinstance(text, str) and text:
                (thinking if part.get("thought") is True else content).append(text)
        if (reason := candidate.get("finishReason")) is not None:
            self._reason = finish_reason(str(reason))
        if not content and not thinking:
            return None
        delta = Delta(content="".join(content), thinking="".join(thinking))
        return delta

    def finish(self) -> Finish:
        """The Finish once the body ended; a body without a finishReason was cut off."""
        if self._reason is None:
            raise FrameError("the answer ended without a finishReason (cut off)")
        if self._usage is None:
            # No usageMetadata (Gemini always sends it; a proxy may not): the base estimates.
            return Finish(Usage(UNREPORTED, UNREPORTED), self._reason)
        completion = _count(self._usage, "candidatesTokenCount") + _count(self._usage, "thoughtsTokenCount")
        return Finish(Usage(_count(self._usage, "promptTokenCount"), completion), self._reason)


class GeminiProvider(HttpProvider):
    """Models served by Google's Gemini API (or anything speaking its generateContent)."""

    name = "gemini"

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        verb = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        url = f"{api_root(model.upstream.base_url)}/{model_path(model)}:{verb}"
        headers = {"x-goog-api-key": key} if key else {}
        return HttpRequest(url, request_body(model, request), headers)

    async def parse_stream(
        self, model: ModelConfig, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[StreamItem]:
        answer = Answer(str(model.provider), model.id)
        parser = SseParser()
        async for chunk in chunks:
            for event in parser.feed(chunk):
                if (delta := answer.feed(event.json())) is not None:
                    yield delta
        for event in parser.close():
            if (delta := answer.feed(event.json())) is not None:
                yield delta
        yield answer.finish()

    def parse_whole(self, model: ModelConfig, body: Any) -> list[StreamItem]:
        answer = Answer(str(model.provider), model.id)
        delta = answer.feed(body)
        return [*([delta] if delta is not None else []), answer.finish()]

    def error_text(self, parsed: Any) -> str | None:
        if isinstance(parsed, list) and parsed:  # the JSON-array form of a streaming error
            parsed = parsed[0]
        if isinstance(parsed, dict) and "error" in parsed:
            return error_text(parsed["error"])
        return None

    def retry_after(self, body: bytes, header: str | None) -> float | None:
        """Gemini's 429 says when to retry in its body: `error.details[]` holds a google.rpc.RetryInfo
        whose `retryDelay` is a Duration string ("37s")."""
        if (seconds := super().retry_after(body, header)) is not None:
            return seconds
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        if isinstance(parsed, list) and parsed:
            parsed = parsed[0]
        details = parsed.get("error", {}).get("details") if isinstance(parsed, dict) else None
        for detail in details if isinstance(details, list) else ():
            if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                delay = str(detail.get("retryDelay", ""))
                if delay.endswith("s"):
                    try:
                        value = float(delay[:-1])
                    except ValueError:
                        return None
                    return value if 0 <= value < 3600 else None
        return None
