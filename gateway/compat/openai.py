"""OpenAI compatibility: `/v1/models`, `/v1/models/{model}`, `/v1/chat/completions`, `/v1/completions`
(JSON or SSE) and `/v1/embeddings`.

Good enough for the official `openai` client and tools built on it: completions whole or streamed
(`stream_options.include_usage` adds the usage chunk); ids are `chatcmpl-…` and `cmpl-…` as OpenAI's.
Chat completions carry `tools` (functions), `tool_choice`, the history's `tool_calls` and `tool` results,
and `response_format` (`json_object`, `json_schema`); an answer's calls come back as `message.tool_calls`
with `finish_reason: "tool_calls"`, streamed as OpenAI streams them (`delta.tool_calls`: a call's first
fragment with its id, type and name, later ones with more of its arguments). Whether the model can call
tools or answer in JSON is the server's to say: a 400 (`capability_missing`) when it cannot. The legacy
`functions` / `function_call` stay refused (use `tools`). `parallel_tool_calls` is taken and limits
nothing: a model may call several tools in one answer either way.

Embeddings take a string or a list of strings (token arrays are refused, naming `input`), `dimensions`,
and `encoding_format` `float` or `base64` (little-endian float32, what the official client asks for
unless told otherwise).

Reasoning text a model produces before its answer (a thinking model's, or the steps of a collaboration
model, each labelled by its kind and model) is `reasoning_content` on the chat `message`, and on the
`delta` when streamed, as DeepSeek, vLLM and OpenRouter send it; the official client keeps the key
(`delta.model_extra["reasoning_content"]`). An assistant turn sent back with its `reasoning_content` is
taken, and that text is not carried to the model (as DeepSeek's own models never see their earlier
reasoning). /v1/completions has no place for it and sends the answer only.

Extensions of OpenAI's shapes: an answer from a model with several deployments names the one that
answered in the `x-aibattle-deployment` header, and an answer from a collaboration model names the
reasoning session that produced it in `x-aibattle-reasoning-id` (readable, with all its iterations, at
`/api/v1/collaborative-reasoning/{id}`); a stream's headers go out with its first chunk, so they name
the first deployment. When a stream moves to another deployment or model mid-answer
(`failover_mid_stream`) its first chunk after the move carries `"failover": {from_model,
from_deployment, to_model, to_deployment, reason}`; clients that don't know the key ignore it.

Every error is OpenAI's `{"error": {message, type, param, code}}` with the HTTP status of the gateway's
table, which the client maps to its exception types (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, 429 RateLimitError, 5xx InternalServerError…); a failure mid-stream is a
`data: {"error": …}` event, which the client raises. No parameter is dropped: one we don't serve
(logprobs, n > 1, audio…) or don't know is a 400 naming it (`param`), see `CHAT_KEYS`.
"""

from __future__ import annotations

import base64
import struct
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from aibattle.v1 import common_pb2
from common.enums import FinishReason
from common.errors import INVALID_FIELD_VALUE, UNSUPPORTED_PARAMETER, InvalidArgument
from gateway.calls import cancel_on_exit
from gateway.compat.core import (
    INT64,
    TOOL_MODES,
    ChatParams,
    Keys,
    chat_messages,
    create_completion,
    create_embeddings,
    failover_json,
    function_of,
    get_model,
    input_texts,
    json_format,
    list_models,
    optional_bool,
    optional_int,
    optional_list,
    optional_number,
    optional_object,
    optional_str,
    read_object,
    required_model,
    required_str,
    stop_list,
    stream_completion,
    tool,
    tool_choice,
)
from gateway.errors import error_reason, field_at_fault, http_status
from gateway.transcode import dumps, dumps_bytes
from gateway.web_errors import Dialect
from gateway.web_stream import SSE, SSE_KEEPALIVE, answer_headers, sse_event, stream_http

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
_DONE = b"data: [DONE]\n\n"


def error_body(status: status_pb2.Status, http: int) -> dict[str, Any]:
    """OpenAI's error object for a status."""
    return {
        "error": {
            "message": status.message,
            "type": _ERROR_TYPES.get(http, "server_error" if http >= 500 else "invalid_request_error"),
            "param": field_at_fault(status),
            "code": error_reason(status).lower() or None,
        }
    }


DIALECT = Dialect("openai", error_body, "openai")


def _model(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider}


async def models(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "list", "data": [_model(m) for m in await list_models(request)]})


async def model(request: web.Request) -> web.StreamResponse:
    return web.json_response(_model(await get_model(request, request.match_info["model"])))


_LATER = "not implemented yet"
_SAMPLING = frozenset(
    {
        "max_tokens",
        "temperature",
        "top_p",
        "stop",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        # Not OpenAI's: vLLM's and llama.cpp's server's extensions, carried to the providers that take them.
        "top_k",
        "repeat_penalty",
    }
)
#: Keys of both /v1/chat/completions and /v1/completions. `user` and `safety_identifier` name the
#: caller's end user for OpenAI's abuse monitoring: nothing to carry, and no answer changes with them.
_COMMON = Keys(
    honoured=_SAMPLING | {"model", "stream", "stream_options", "user", "safety_identifier"},
    defaults={
        "n": (1,),
        "logprobs": (False,),
        "logit_bias": ({},),
        "store": (False,),
        "metadata": ({},),
        "service_tier": ("auto", "default"),
    },
    unsupported={
        "top_logprobs": f"logprobs are {_LATER}",
        "prediction": f"predicted outputs are {_LATER}",
        "reasoning_effort": "no model here takes a reasoning effort",
        "verbosity": "no model here takes a verbosity",
    },
)
#: Tool choices that, without tools, ask for nothing (OpenAI refuses them then; clients send them).
_NOTHING_WITHOUT_TOOLS = (TOOL_MODES["auto"], TOOL_MODES["none"])
_LEGACY_FUNCTIONS = "the legacy function calling is not supported: use 'tools' and 'tool_choice'"
CHAT_KEYS = Keys(
    honoured=_COMMON.honoured
    | {"messages", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls", "response_format"},
    defaults={**_COMMON.defaults, "functions": ([],), "function_call": ("none",), "modalities": (["text"],)},
    unsupported={
        **_COMMON.unsupported,
        "functions": _LEGACY_FUNCTIONS,
        "function_call": _LEGACY_FUNCTIONS,
        "audio": "audio output is not supported",
        "web_search_options": "web search is not supported",
    },
)
MESSAGE_KEYS = Keys(
    # reasoning_content: an earlier answer's reasoning, sent back with it; checked, not carried.
    honoured=frozenset({"role", "content", "tool_calls", "tool_call_id", "reasoning_content"}),
    unsupported={
        "name": "participant names are not carried to the models",
        "function_call": _LEGACY_FUNCTIONS,
        "audio": "audio is not supported",
    },
)
#: `{"type": "function", "function": {…}}`, in `tools` and in a message's `tool_calls` alike.
TOOL_KEYS = Keys(honoured=frozenset({"type", "function"}))
FUNCTION_KEYS = Keys(honoured=frozenset({"name", "description", "parameters", "strict"}))
TOOL_CALL_KEYS = Keys(honoured=frozenset({"id", "type", "function"}))
CALL_FUNCTION_KEYS = Keys(honoured=frozenset({"name", "arguments"}))
TOOL_CHOICE_KEYS = Keys(honoured=frozenset({"type", "function"}))
CHOSEN_FUNCTION_KEYS = Keys(honoured=frozenset({"name"}))
RESPONSE_FORMAT_KEYS = Keys(honoured=frozenset({"type", "json_schema"}))
JSON_SCHEMA_KEYS = Keys(
    honoured=frozenset({"name", "schema", "strict"}),
    unsupported={"description": "a schema's description is not carried to the models"},
)
EMBEDDING_KEYS = Keys(honoured=frozenset({"model", "input", "dimensions", "encoding_format", "user"}))
ENCODING_FORMATS = ("float", "base64")
COMPLETION_KEYS = Keys(
    honoured=_COMMON.honoured | {"prompt"},
    # logprobs is a count here, not a flag: any value asks for them.
    defaults={
        **{k: v for k, v in _COMMON.defaults.items() if k != "logprobs"},
        "echo": (False,),
        "best_of": (1,),
    },
    unsupported={
        **_COMMON.unsupported,
        "logprobs": f"logprobs are {_LATER}",
        "echo": "echoing the prompt is not supported",
        "best_of": "only best_of=1 is supported",
        "suffix": "fill-in-the-middle is not supported",
    },
)
#: OpenAI's default for /v1/completions (chat completions default to the model's own).
COMPLETION_MAX_TOKENS = 16
STREAM_OPTION_KEYS = Keys(honoured=frozenset({"include_usage"}))
#: OpenAI's newer name for the system role; the models here know it as system.
_ROLES = {"developer": "system"}


def chat_params(body: dict[str, Any]) -> ChatParams:
    CHAT_KEYS.check(body)
    model_id = required_model(body)
    max_tokens = optional_int(body, "max_completion_tokens")
    optional_bool(body, "parallel_tool_calls")  # taken, limits nothing (see the module docstring)
    tools, choice = _tools(body), _tool_choice(body)
    if not tools and choice is not None and choice.mode in _NOTHING_WITHOUT_TOOLS:
        choice = None
    return ChatParams(
        model=model_id,
        messages=chat_messages(body, MESSAGE_KEYS, roles=_ROLES, tools=_message_tools),
        max_tokens=max_tokens if max_tokens is not None else optional_int(body, "max_tokens"),
        tools=tools,
        tool_choice=choice,
        response_format=_response_format(body),
        **sampling(body),
    )


def _tools(body: dict[str, Any]) -> list[common_pb2.Tool]:
    specs = []
    for i, item in enumerate(optional_list(body, "tools")):
        where = f"tools[{i}]"
        function = function_of(item, where, TOOL_KEYS, FUNCTION_KEYS)
        name = required_str(function, "name", where=f"{where}.function.")
        description = optional_str(function, "description", where=f"{where}.function.")
        spec = tool(name, description, function.get("parameters"), where=f"{where}.function")
        spec.strict = bool(optional_bool(function, "strict", where=f"{where}.function."))
        specs.append(spec)
    return specs


def _tool_choice(body: dict[str, Any]) -> common_pb2.ToolChoice | None:
    raw = body.get("tool_choice")
    if raw is None:
        return None
    if isinstance(raw, str) and raw in TOOL_MODES:
        return tool_choice(raw)
    if isinstance(raw, dict):
        function = function_of(raw, "tool_choice", TOOL_CHOICE_KEYS, CHOSEN_FUNCTION_KEYS)
        return tool_choice("", name=required_str(function, "name", where="tool_choice.function."))
    raise InvalidArgument(
        "tool_choice",
        '\'tool_choice\' must be "auto", "none", "required" or {"type": "function", "function": {"name": …}}',
        reason=INVALID_FIELD_VALUE,
        prefix=False,
    )


def _response_format(body: dict[str, Any]) -> common_pb2.ResponseFormat | None:
    raw = body.get("response_format")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidArgument(
            "response_format", "'response_format' must be an object", reason=INVALID_FIELD_VALUE, prefix=False
        )
    RESPONSE_FORMAT_KEYS.check(raw, where="response_format.")
    kind = raw.get("type")
    if kind == "text" and raw.get("json_schema") is None:
        return None
    if kind == "json_object" and raw.get("json_schema") is None:
        return json_format()
    if kind == "json_schema":
        spec = optional_object(raw, "json_schema", where="response_format.")
        JSON_SCHEMA_KEYS.check(spec, where="response_format.json_schema.")
        where = "response_format.json_schema."
        return json_format(
            spec.get("schema") or {},  # OpenAI's may be left out; no model here follows no schema
            where=where + "schema",
            name=optional_str(spec, "name", where=where) or "",
            strict=bool(optional_bool(spec, "strict", where=where)),
        )
    raise InvalidArgument(
        "response_format.type",
        '\'response_format.type\' must be "text", "json_object" or "json_schema" '
        "(with 'json_schema' only for the last)",
        reason=INVALID_FIELD_VALUE,
        prefix=False,
    )


def _message_tools(item: Mapping[str, Any], where: str, message: common_pb2.Message) -> None:
    """An assistant turn's `tool_calls` and a `tool` turn's `tool_call_id` (and a type check of an
    assistant turn's `reasoning_content`, which is not carried)."""
    optional_str(item, "reasoning_content", where=f"{where}.")
    if item.get("tool_calls") is None and item.get("tool_call_id") is None:
        return  # most turns: nothing to read (and this runs for every turn of every request)
    for j, call in enumerate(optional_list(item, "tool_calls", where=f"{where}.")):
        at = f"{where}.tool_calls[{j}]"
        function = function_of(call, at, TOOL_CALL_KEYS, CALL_FUNCTION_KEYS)
        arguments = optional_str(function, "arguments", where=f"{at}.function.")
        message.tool_calls.add(
            id=required_str(call, "id", where=f"{at}."),
            name=required_str(function, "name", where=f"{at}.function."),
            arguments=arguments or "",
        )
    message.tool_call_id = optional_str(item, "tool_call_id", where=f"{where}.") or ""


def sampling(body: dict[str, Any]) -> dict[str, Any]:
    """The sampling parameters both OpenAI endpoints take, as ChatParams fields."""
    return {
        "temperature": optional_number(body, "temperature"),
        "top_p": optional_number(body, "top_p"),
        "stop": stop_list(body, "stop"),
        "seed": optional_int(body, "seed", bounds=INT64),
        "top_k": optional_int(body, "top_k"),
        "repeat_penalty": optional_number(body, "repeat_penalty"),
        "frequency_penalty": optional_number(body, "frequency_penalty"),
        "presence_penalty": optional_number(body, "presence_penalty"),
    }


def chat_id(completion_id: str) -> str:
    """OpenAI's `chatcmpl-…` id for our `cmpl-…` one (the same suffix, so logs still match)."""
    return "chatcmpl-" + completion_id.removeprefix("cmpl-")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    return await _answer(request, body, chat_params(body), chat=True)


def completion_params(body: dict[str, Any]) -> ChatParams:
    """/v1/completions: the prompt goes to the model as one user turn (every model here is a chat model)."""
    COMPLETION_KEYS.check(body)
    model_id = required_model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]  # a batch of one
    if not isinstance(prompt, str) or not prompt:
        raise InvalidArgument(
            "prompt",
            "'prompt' must be a non-empty string (one prompt per request; token arrays are not supported)",
            reason=INVALID_FIELD_VALUE,
            prefix=False,
        )
    max_tokens = optional_int(body, "max_tokens")
    return ChatParams(
        model=model_id,
        prompt=prompt,
        max_tokens=COMPLETION_MAX_TOKENS if max_tokens is None else max_tokens,
        **sampling(body),
    )


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    return await _answer(request, body, completion_params(body), chat=False)


async def _answer(
    request: web.Request, body: dict[str, Any], params: ChatParams, *, chat: bool
) -> web.StreamResponse:
    """The completion whole, or streamed as SSE chunks: chat.completion(.chunk) or text_completion."""
    options = optional_object(body, "stream_options")
    STREAM_OPTION_KEYS.check(options, where="stream_options.")
    if optional_bool(body, "stream"):
        include_usage = bool(optional_bool(options, "include_usage", where="stream_options."))
        call = stream_completion(request, params)
        with cancel_on_exit(call):
            return await stream_http(request, call, ChunkFraming(include_usage, chat=chat), dialect=DIALECT)
    if options:
        # As OpenAI: options of a stream that is not asked for would do nothing.
        raise InvalidArgument(
            "stream_options",
            "'stream_options' is only allowed with \"stream\": true",
            reason=UNSUPPORTED_PARAMETER,
            prefix=False,
        )
    response = await create_completion(request, params)
    finish = FinishReason.from_proto(response.finish_reason).value
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": response.content}
        if response.thinking:
            message["reasoning_content"] = response.thinking
        if response.tool_calls:
            # As OpenAI: no text beside the calls is null, not "".
            message["content"] = response.content or None
            message["tool_calls"] = [_tool_call(call) for call in response.tool_calls]
        choice: dict[str, Any] = {"index": 0, "message": message}
    else:
        choice = {"index": 0, "text": response.content}
    return web.json_response(
        {
            "id": chat_id(response.id) if chat else response.id,
            "object": "chat.completion" if chat else "text_completion",
            "created": response.created_at.seconds or int(time.time()),
            "model": response.model,
            "choices": [{**choice, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(response.usage),
        },
        headers=answer_headers(response),
    )


def _tool_call(call: common_pb2.ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _tool_call_delta(piece: common_pb2.ToolCallDelta) -> dict[str, Any]:
    """OpenAI's fragment of a streamed call: the first with id, type and name, the rest arguments only."""
    if piece.id or piece.name:
        return {
            "index": piece.index,
            "id": piece.id,
            "type": "function",
            "function": {"name": piece.name, "arguments": piece.arguments},
        }
    return {"index": piece.index, "function": {"arguments": piece.arguments}}


def _usage(usage: Any) -> dict[str, int]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
    }


class ChunkFraming:
    """`chat.completion.chunk` events (the role in the first delta) or `text_completion` ones; the usage
    chunk when asked."""

    content_type = SSE

    def __init__(self, include_usage: bool, *, chat: bool = True) -> None:
        self._include_usage = include_usage
        self._chat = chat
        self._role_sent = False
        self._created = int(time.time())

    def message(self, message: Message) -> bytes:
        chunk: Any = message
        finish = FinishReason.from_proto(chunk.finish_reason).value if chunk.is_final else None
        if self._chat:
            delta: dict[str, Any] = {} if self._role_sent else {"role": "assistant"}
            self._role_sent = True
            if chunk.thinking:
                delta["reasoning_content"] = chunk.thinking
            if chunk.content:
                delta["content"] = chunk.content
            if chunk.tool_calls:
                delta["tool_calls"] = [_tool_call_delta(piece) for piece in chunk.tool_calls]
            choice: dict[str, Any] = {"index": 0, "delta": delta}
        else:
            choice = {"index": 0, "text": chunk.content}
        frame: dict[str, Any] = {
            "id": chat_id(chunk.id) if self._chat else chunk.id,
            "object": "chat.completion.chunk" if self._chat else "text_completion",
            "created": self._created,
            "model": chunk.model,
            "choices": [{**choice, "logprobs": None, "finish_reason": finish}],
        }
        if chunk.HasField("failover"):
            frame["failover"] = failover_json(chunk.failover)
        if not self._include_usage:
            return sse_event(dumps_bytes(frame))
        frame["usage"] = None
        data = sse_event(dumps_bytes(frame))
        if chunk.is_final:
            # stream_options.include_usage: one more chunk, no choices, the usage.
            data += sse_event(dumps_bytes({**frame, "choices": [], "usage": _usage(chunk.usage)}))
        return data

    def error(self, status: status_pb2.Status) -> bytes:
        # The status line is gone: the error is an event, which the client raises as APIError.
        return sse_event(dumps(error_body(status, http_status(status.code))).encode()) + _DONE

    def end(self) -> bytes:
        return _DONE

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE  # openai's SSE decoder skips comment lines

    empty_status = 200


async def embeddings(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    EMBEDDING_KEYS.check(body)
    model_id = required_model(body)
    texts = input_texts(body)
    encoding = optional_str(body, "encoding_format") or "float"
    if encoding not in ENCODING_FORMATS:
        raise InvalidArgument(
            "encoding_format",
            '\'encoding_format\' must be "float" or "base64"',
            reason=INVALID_FIELD_VALUE,
            prefix=False,
        )
    response = await create_embeddings(request, model_id, texts, dimensions=optional_int(body, "dimensions"))
    data = [
        {
            "object": "embedding",
            "index": embedding.index,
            "embedding": _base64(embedding.values) if encoding == "base64" else list(embedding.values),
        }
        for embedding in response.embeddings
    ]
    usage = {"prompt_tokens": response.usage.prompt_tokens, "total_tokens": response.usage.prompt_tokens}
    return web.json_response(
        {"object": "list", "data": data, "model": response.model, "usage": usage},
        headers=answer_headers(response),
    )


def _base64(values: Any) -> str:
    """A vector as OpenAI's base64: its float32s, little-endian."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


ROUTES = (
    ("GET", "/v1/models", models),
    ("GET", "/v1/models/{model}", model),
    ("POST", "/v1/chat/completions", chat_completions),
    ("POST", "/v1/completions", completions),
    ("POST", "/v1/embeddings", embeddings),
)
