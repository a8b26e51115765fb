"""OpenAI compatibility: `/v1/models`, `/v1/models/{model}`, `/v1/chat/completions` and `/v1/completions`
(JSON or SSE).

Good enough for the official `openai` client and tools built on it: completions whole or streamed
(`stream_options.include_usage` adds the usage chunk); ids are `chatcmpl-…` and `cmpl-…` as OpenAI's.
Every error is OpenAI's `{"error": {message, type, param, code}}` with the HTTP status of the gateway's
table, which the client maps to its exception types (400 BadRequestError, 401 AuthenticationError, 404
NotFoundError, 429 RateLimitError, 5xx InternalServerError…); a failure mid-stream is a
`data: {"error": …}` event, which the client raises. No parameter is dropped: one we don't serve (tools,
response_format, logprobs, n > 1…) or don't know is a 400 naming it (`param`), see `CHAT_KEYS`.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from common.enums import FinishReason
from common.errors import INVALID_FIELD_VALUE, UNSUPPORTED_PARAMETER, InvalidArgument
from gateway.calls import cancel_on_exit
from gateway.compat.core import (
    INT64,
    ChatParams,
    Keys,
    chat_messages,
    create_completion,
    get_model,
    list_models,
    optional_bool,
    optional_int,
    optional_number,
    optional_object,
    read_object,
    required_model,
    stop_list,
    stream_completion,
)
from gateway.errors import error_reason, field_at_fault, http_status
from gateway.transcode import dumps, dumps_bytes
from gateway.web_errors import Dialect
from gateway.web_stream import SSE, SSE_KEEPALIVE, sse_event, stream_http

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
CHAT_KEYS = Keys(
    honoured=_COMMON.honoured | {"messages", "max_completion_tokens"},
    defaults={
        **_COMMON.defaults,
        "tools": ([],),
        "tool_choice": ("none",),
        "functions": ([],),
        "function_call": ("none",),
        # Only about tools, which are refused: with none it changes nothing, as at OpenAI.
        "parallel_tool_calls": (True, False),
        "response_format": ({"type": "text"},),
        "modalities": (["text"],),
    },
    unsupported={
        **_COMMON.unsupported,
        "tools": f"tool calling is {_LATER}",
        "tool_choice": f"tool calling is {_LATER}",
        "functions": f"function calling is {_LATER}",
        "function_call": f"function calling is {_LATER}",
        "response_format": f"structured output (JSON mode, JSON schema) is {_LATER}",
        "audio": "audio output is not supported",
        "web_search_options": "web search is not supported",
    },
)
MESSAGE_KEYS = Keys(
    honoured=frozenset({"role", "content"}),
    defaults={"tool_calls": ([],)},
    unsupported={
        "name": "participant names are not carried to the models",
        "tool_calls": f"tool calling is {_LATER}",
        "tool_call_id": f"tool calling is {_LATER}",
        "function_call": f"function calling is {_LATER}",
        "audio": "audio is not supported",
    },
)
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
    return ChatParams(
        model=model_id,
        messages=chat_messages(body, MESSAGE_KEYS, roles=_ROLES),
        max_tokens=max_tokens if max_tokens is not None else optional_int(body, "max_tokens"),
        **sampling(body),
    )


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
        choice = {"index": 0, "message": {"role": "assistant", "content": response.content}}
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
        }
    )


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
            if chunk.content:
                delta["content"] = chunk.content
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


ROUTES = (
    ("GET", "/v1/models", models),
    ("GET", "/v1/models/{model}", model),
    ("POST", "/v1/chat/completions", chat_completions),
    ("POST", "/v1/completions", completions),
)
