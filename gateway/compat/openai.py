"""OpenAI compatibility: `/v1/models`, `/v1/models/{model}`, `/v1/chat/completions` (JSON or SSE).

Good enough for the official `openai` client and tools built on it: chat completions whole or streamed
(`stream_options.include_usage` adds the usage chunk). Every error is OpenAI's
`{"error": {message, type, param, code}}` with the HTTP status of the gateway's table, which the client
maps to its exception types (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError, 429
RateLimitError, 5xx InternalServerError…); a failure mid-stream is a `data: {"error": …}` event, which
the client raises. Parameters we don't serve (tools, logprobs…) are ignored; `n` other than 1 is refused.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from common.enums import FinishReason
from gateway.calls import cancel_on_exit
from gateway.compat.core import (
    INT64,
    ChatParams,
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
from gateway.errors import error_reason, field_at_fault, http_status, invalid_argument
from gateway.transcode import dumps
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


DIALECT = Dialect("openai", error_body)


def _model(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider}


async def models(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "list", "data": [_model(m) for m in await list_models(request)]})


async def model(request: web.Request) -> web.StreamResponse:
    return web.json_response(_model(await get_model(request, request.match_info["model"])))


def chat_params(body: dict[str, Any]) -> ChatParams:
    model_id = required_model(body)
    if optional_int(body, "n") not in (None, 1):
        raise invalid_argument("only n=1 is supported", reason="INVALID_FIELD_VALUE", field="n")
    max_tokens = optional_int(body, "max_completion_tokens")
    return ChatParams(
        model=model_id,
        messages=chat_messages(body),
        max_tokens=max_tokens if max_tokens is not None else optional_int(body, "max_tokens"),
        temperature=optional_number(body, "temperature"),
        top_p=optional_number(body, "top_p"),
        stop=stop_list(body, "stop"),
        seed=optional_int(body, "seed", bounds=INT64),
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    params = chat_params(body)
    if optional_bool(body, "stream"):
        options = optional_object(body, "stream_options")
        include_usage = bool(optional_bool(options, "include_usage", where="stream_options."))
        call = stream_completion(request, params)
        with cancel_on_exit(call):
            return await stream_http(request, call, ChunkFraming(include_usage), dialect=DIALECT)
    response = await create_completion(request, params)
    return web.json_response(
        {
            "id": response.id,
            "object": "chat.completion",
            "created": response.created_at.seconds or int(time.time()),
            "model": response.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": response.content},
                    "logprobs": None,
                    "finish_reason": FinishReason.from_proto(response.finish_reason).value,
                }
            ],
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
    """`chat.completion.chunk` events; the role in the first delta, the usage chunk when asked."""

    content_type = SSE

    def __init__(self, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._role_sent = False
        self._created = int(time.time())

    def message(self, message: Message) -> bytes:
        chunk: Any = message
        delta: dict[str, Any] = {} if self._role_sent else {"role": "assistant"}
        self._role_sent = True
        if chunk.content:
            delta["content"] = chunk.content
        finish = FinishReason.from_proto(chunk.finish_reason).value if chunk.is_final else None
        frame: dict[str, Any] = {
            "id": chunk.id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": chunk.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if not self._include_usage:
            return sse_event(dumps(frame))
        frame["usage"] = None
        data = sse_event(dumps(frame))
        if chunk.is_final:
            # stream_options.include_usage: one more chunk, no choices, the usage.
            data += sse_event(dumps({**frame, "choices": [], "usage": _usage(chunk.usage)}))
        return data

    def error(self, status: status_pb2.Status) -> bytes:
        # The status line is gone: the error is an event, which the client raises as APIError.
        return sse_event(dumps(error_body(status, http_status(status.code)))) + _DONE

    def end(self) -> bytes:
        return _DONE

    def keepalive(self) -> bytes:
        return SSE_KEEPALIVE  # openai's SSE decoder skips comment lines

    empty_status = 200


ROUTES = (
    ("GET", "/v1/models", models),
    ("GET", "/v1/models/{model}", model),
    ("POST", "/v1/chat/completions", chat_completions),
)
