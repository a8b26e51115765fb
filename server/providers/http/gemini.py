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
| a broken call | `finishReason` MALFORMED_FUNCTION_CALL or UNEXPECTED_TOOL_CALL → UPSTREAM_ERROR |
| a refused prompt | `promptFeedback.blockReason` and no candidates → CONTENT_FILTER, no text |
| Finish.usage | the last `usageMetadata`: promptTokenCount; candidatesTokenCount + thoughtsTokenCount |
| errors | `{"error": {"code", "message", "status"}}`, as an HTTP error body or an SSE frame |
| tools | `tools: [{functionDeclarations: [{name, description, parametersJsonSchema}]}]` |
| tool_choice | `toolConfig.functionCallingConfig`: AUTO, ANY (+ `allowedFunctionNames` for one tool), NONE |
| an assistant's tool calls | `functionCall {name, args, id?}` parts (with their `thoughtSignature`) |
| a tool's result | a user turn's `functionResponse {name, response, id?}` part |
| Delta.tool_calls | each `functionCall` part, whole, as one piece; STOP after calls is TOOL_CALLS |
| response_format | `generationConfig`: responseMimeType `application/json` (+ `responseJsonSchema`) |
| embeddings | `:batchEmbedContents` → `embeddings[].values`; `:countTokens` counts a prompt |

Gemini has no end-of-stream sentinel: the chunk that carries `finishReason` is the last one, so a
body that ends before any `finishReason` was cut off and is a protocol error, never a short answer.

Schemas go as JSON Schema (`parametersJsonSchema`, `responseJsonSchema`), which is what our tools and
response formats carry; the older `parameters` / `responseSchema` take an OpenAPI subset that refuses
common JSON Schema words (`additionalProperties`, `$ref`).

Tool calls: a `functionCall` usually has no `id`, so one is made (`call_<hex>`); Gemini's own is kept
when it gives one and sent back with the call and its response. Gemini 3 models sign their calls
(`thoughtSignature`) and refuse a history that drops a signature, so a signature rides in the call's
id after `SIGNATURE_MARK` (base64url, as ids are plain text everywhere) and goes back where it came
from. A result's content is the `response` object when it is a JSON object, else `{"result": text}`;
Gemini names the function answered, so a tool message needs the tool's name (`ChatMessage.tool_name`,
else the name of the history's call with its id).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from common.enums import FinishReason
from common.errors import InvalidArgument
from server.providers.attachments import cannot_take
from server.providers.base import (
    Attachment,
    ChatMessage,
    ChatRequest,
    Delta,
    Embeddings,
    Finish,
    FormatType,
    Role,
    StreamItem,
    ToolCall,
    ToolCallPiece,
    ToolMode,
    Usage,
)
from server.providers.http.base import UNREPORTED, HttpProvider, HttpRequest, sampling
from server.providers.http.errors import stream_error
from server.providers.http.unary import embedding_tokens, post_json, token_count, vectors
from server.providers.http.wire import (
    CALL_ID_HEX_DIGITS,
    CALL_ID_PREFIX,
    FrameError,
    SseParser,
    arguments_text,
    call_arguments,
    new_call_id,
)
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
_MODES = {ToolMode.AUTO: "AUTO", ToolMode.REQUIRED: "ANY", ToolMode.TOOL: "ANY", ToolMode.NONE: "NONE"}
_BAD_CALLS = {
    "MALFORMED_FUNCTION_CALL": "the model's function call could not be read",
    "UNEXPECTED_TOOL_CALL": "the model called a tool it was not offered",
}
SIGNATURE_MARK = "__sig_"
"""Between a tool call's id and its thought signature (see the module docstring)."""
_MADE_ID = re.compile(  # wire.new_call_id's: ours, never sent to Gemini
    rf"{re.escape(CALL_ID_PREFIX)}[0-9a-f]{{{CALL_ID_HEX_DIGITS}}}"
)


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


def _parts(model: ModelConfig, message: ChatMessage, names: dict[str, str]) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        return [_function_response(message, names)]
    # Files first, then the question about them: the order Gemini's prompting guide recommends.
    parts = [_part(model, a) for a in message.attachments]
    if message.content or not (parts or message.tool_calls):
        parts.append({"text": message.content})
    parts.extend(_function_call(call) for call in message.tool_calls)
    return parts


def signed_id(call_id: str, signature: str) -> str:
    """A call id carrying Gemini's thought signature (base64 → base64url, unpadded)."""
    if not signature:
        return call_id
    token = signature.replace("+", "-").replace("/", "_").rstrip("=")
    return f"{call_id}{SIGNATURE_MARK}{token}"


def split_id(call_id: str) -> tuple[str, str]:
    """(Gemini's id or ours, the thought signature or "") of a call id made by `signed_id`."""
    base, mark, token = call_id.partition(SIGNATURE_MARK)
    if not mark:
        return call_id, ""
    signature = token.replace("-", "+").replace("_", "/")
    signature += "=" * (-len(signature) % 4)
    try:
        base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return call_id, ""  # not one of ours: an id that merely contains the mark
    return base, signature


def _function_call(call: ToolCall) -> dict[str, Any]:
    call_id, signature = split_id(call.id)
    function: dict[str, Any] = {"name": call.name, "args": call_arguments(call)}
    if call_id and not _MADE_ID.fullmatch(call_id):
        function["id"] = call_id
    part: dict[str, Any] = {"functionCall": function}
    if signature:
        part["thoughtSignature"] = signature
    return part


def _function_response(message: ChatMessage, names: dict[str, str]) -> dict[str, Any]:
    name = message.tool_name or names.get(message.tool_call_id, "")
    if not name:
        raise InvalidArgument(
            "tool_call_id",
            f"Gemini needs the name of the tool whose result this is: no tool name, and no call with id"
            f" {message.tool_call_id!r} in the history",
        )
    try:
        value = json.loads(message.content)
    except ValueError:
        value = None
    function: dict[str, Any] = {
        "name": name,
        "response": value if isinstance(value, dict) else {"result": message.content},
    }
    call_id, _ = split_id(message.tool_call_id)
    if call_id and not _MADE_ID.fullmatch(call_id):
        function["id"] = call_id
    return {"functionResponse": function}


def _tools(request: ChatRequest) -> dict[str, Any]:
    if not request.tools:
        return {}
    declarations = []
    for tool in request.tools:
        declaration: dict[str, Any] = {"name": tool.name}
        if tool.description:
            declaration["description"] = tool.description
        if tool.parameters is not None:
            declaration["parametersJsonSchema"] = dict(tool.parameters)
        declarations.append(declaration)
    config: dict[str, Any] = {"mode": _MODES[request.tool_choice.mode]}
    if request.tool_choice.mode is ToolMode.TOOL:
        config["allowedFunctionNames"] = [request.tool_choice.name]
    return {
        "tools": [{"functionDeclarations": declarations}],
        "toolConfig": {"functionCallingConfig": config},
    }


def request_body(model: ModelConfig, request: ChatRequest) -> dict[str, Any]:
    """The GenerateContentRequest for a chat request."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names = {call.id: call.name for message in request.messages for call in message.tool_calls}
    for message in request.messages:
        if message.role is Role.SYSTEM:
            if message.attachments:
                first = message.attachments[0]
                raise cannot_take(model, first, "text only", where="in a system instruction")
            system.append({"text": message.content})
            continue
        role = "model" if message.role is Role.ASSISTANT else "user"
        if contents and contents[-1]["role"] == role:
            # One turn: same meaning, strict alternation (and a call's results answer it together).
            contents[-1]["parts"].extend(_parts(model, message, names))
        else:
            contents.append({"role": role, "parts": _parts(model, message, names)})
    config: dict[str, Any] = {
        "maxOutputTokens": request.max_tokens,
        **sampling(request, top_p="topP", stop="stopSequences", seed=None),
        **request.penalties(model, _PENALTIES),
    }
    if request.seed is not None:
        # Our seed is unsigned 32-bit, Gemini's a signed int32: same bits, so the same runs repeat.
        config["seed"] = request.seed - 2 * _INT32 if request.seed >= _INT32 else request.seed
    if (fmt := request.response_format) is not None:
        config["responseMimeType"] = "application/json"
        if fmt.type is FormatType.JSON_SCHEMA and fmt.schema is not None:
            config["responseJsonSchema"] = dict(fmt.schema)
    body: dict[str, Any] = {"contents": contents, "generationConfig": config, **_tools(request)}
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
        self._calls = 0

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
        calls: list[ToolCallPiece] = []
        for part in _list(_dict(candidate.get("content"), "content").get("parts"), "parts"):
            text = _dict(part, "a part").get("text")
            if isinstance(text, str) and text:
                (thinking if part.get("thought") is True else content).append(text)
            if "functionCall" in part:
                calls.append(self._call(part))
        if (reason := candidate.get("finishReason")) is not None:
            if reason in _BAD_CALLS:
                # No answer and no usable call: an error, which a fresh sample may not repeat.
                error = stream_error(
                    self._provider, self._model, f"finishReason {reason}: {_BAD_CALLS[reason]}"
                )
                error.retryable = True
                raise error
            self._reason = finish_reason(str(reason))
            if self._calls and self._reason is FinishReason.STOP:
                self._reason = FinishReason.TOOL_CALLS  # Gemini says STOP after calls too
        if not content and not thinking and not calls:
            return None
        return Delta(content="".join(content), thinking="".join(thinking), tool_calls=tuple(calls))

    def _call(self, part: dict[str, Any]) -> ToolCallPiece:
        """A functionCall part as one whole piece (Gemini sends calls whole, never in fragments)."""
        function = _dict(part["functionCall"], "functionCall")
        name, given = function.get("name"), function.get("id")
        if not isinstance(name, str) or not name:
            raise FrameError(f"a functionCall without a name: {json.dumps(function)[:200]}")
        signature = part.get("thoughtSignature")
        call_id = given if isinstance(given, str) and given else new_call_id()
        call_id = signed_id(call_id, signature if isinstance(signature, str) else "")
        self._calls += 1
        return ToolCallPiece(self._calls - 1, call_id, name, arguments_text(function.get("args")))

    def finish(self) -> Finish:
        """The Finish once the body ended; a body without a finishReason was cut off."""
        if self._reason is None:
            raise FrameError("the answer ended without a finishReason (cut off)")
        if self._usage is None:
            # No usageMetadata (Gemini always sends it; a proxy may not): the base estimates.
            return Finish(Usage(UNREPORTED, UNREPORTED), self._reason)
        completion = _count(self._usage, "candidatesTokenCount") + _count(self._usage, "thoughtsTokenCount")
        return Finish(Usage(_count(self._usage, "promptTokenCount"), completion), self._reason)


def _headers(key: str | None) -> dict[str, str]:
    return {"x-goog-api-key": key} if key else {}


class GeminiProvider(HttpProvider):
    """Models served by Google's Gemini API (or anything speaking its generateContent)."""

    name = "gemini"

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        verb = "streamGenerateContent?alt=sse" if request.stream else "generateContent"
        url = f"{api_root(model.upstream.base_url)}/{model_path(model)}:{verb}"
        return HttpRequest(url, request_body(model, request), _headers(key))

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

    async def embed(
        self, model: ModelConfig, texts: list[str], *, dimensions: int | None, deadline: float | None
    ) -> Embeddings:
        """`:batchEmbedContents`, one request per text; `dimensions` as `outputDimensionality`."""
        if not texts:
            return Embeddings([], 0)
        key = self.api_key(model)
        name = model_path(model)
        requests: list[dict[str, Any]] = []
        for text in texts:
            one: dict[str, Any] = {"model": name, "content": {"parts": [{"text": text}]}}
            if dimensions is not None:
                one["outputDimensionality"] = dimensions
            requests.append(one)

        def parse(answer: Any) -> Embeddings:
            if isinstance(answer, dict) and "error" in answer:
                raise stream_error(str(model.provider), model.id, error_text(answer["error"]))
            found = [
                _dict(e, "an embedding").get("values") for e in _list(answer.get("embeddings"), "embeddings")
            ]
            # Gemini reports no usage for embeddings, and counting would cost a second call
            # (:countTokens) per request: the prompt tokens are estimated from the texts.
            return Embeddings(vectors(model, found, len(texts), dimensions), embedding_tokens(None, texts))

        return await post_json(
            self,
            model,
            f"{api_root(model.upstream.base_url)}/{name}:batchEmbedContents",
            {"requests": requests},
            headers=_headers(key),
            key=key,
            deadline=deadline,
            parse=parse,
        )

    async def count_tokens(self, model: ModelConfig, request: ChatRequest) -> int:
        """`:countTokens` with the whole GenerateContentRequest (tools and a response schema count too)."""
        key = self.api_key(model)
        body = {"generateContentRequest": {"model": model_path(model), **request_body(model, request)}}
        return await post_json(
            self,
            model,
            f"{api_root(model.upstream.base_url)}/{model_path(model)}:countTokens",
            body,
            headers=_headers(key),
            key=key,
            deadline=request.deadline,
            parse=token_count(model, "totalTokens"),
        )

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
