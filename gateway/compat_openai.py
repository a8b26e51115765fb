"""OpenAI compatibility: `/v1/models`, `/v1/models/{model}`, `/v1/chat/completions` (JSON or SSE).

Good enough for the official `openai` client and tools built on it: chat completions whole or streamed
(`stream_options.include_usage` adds the usage chunk), errors as `{"error": {message, type, param, code}}`
with the HTTP status of the gateway's table. Parameters we don't serve (tools, logprobs…) are ignored;
`n` other than 1 is refused.
"""

from __future__ import annotations

import json
import time
from typing import Any

import grpc
from aiohttp import web
from google.rpc import status_pb2

from gateway.calls import cancel_on_exit
from gateway.compat_core import (
    FINISH_REASONS,
    ChatParams,
    chat_messages,
    create_completion,
    error_reason,
    field_of,
    get_model,
    list_models,
    read_object,
    stop_list,
    stream_completion,
    typed,
    with_errors,
)
from gateway.errors import error_headers, http_status, invalid_argument, status_from_rpc_error

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_body(status: status_pb2.Status, http: int) -> dict[str, Any]:
    """OpenAI's error object for a status."""
    return {
        "error": {
            "message": status.message,
            "type": _ERROR_TYPES.get(http, "server_error" if http >= 500 else "invalid_request_error"),
            "param": field_of(status),
            "code": error_reason(status) or None,
        }
    }


def openai_error(status: status_pb2.Status, http: int) -> web.Response:
    return web.json_response(error_body(status, http), status=http, headers=error_headers(status))


def _model(model: Any) -> dict[str, Any]:
    return {"id": model.id, "object": "model", "created": 0, "owned_by": model.provider}


@with_errors(openai_error)
async def models(request: web.Request) -> web.StreamResponse:
    return web.json_response({"object": "list", "data": [_model(m) for m in await list_models(request)]})


@with_errors(openai_error)
async def model(request: web.Request) -> web.StreamResponse:
    return web.json_response(_model(await get_model(request, request.match_info["model"])))


def chat_params(body: dict[str, Any]) -> ChatParams:
    model_id = typed(body, "model", str)
    if not model_id:
        raise invalid_argument("'model' is required", reason="INVALID_FIELD_VALUE", field="model")
    if typed(body, "n", int, 1) != 1:
        raise invalid_argument("only n=1 is supported", reason="INVALID_FIELD_VALUE", field="n")
    max_tokens = typed(body, "max_completion_tokens", int, typed(body, "max_tokens", int))
    return ChatParams(
        model=model_id,
        messages=chat_messages(body.get("messages")),
        max_tokens=max_tokens,
        temperature=typed(body, "temperature", (int, float)),
        top_p=typed(body, "top_p", (int, float)),
        stop=stop_list(body.get("stop"), "stop"),
        seed=typed(body, "seed", int),
    )


@with_errors(openai_error)
async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    params = chat_params(body)
    if typed(body, "stream", bool, False):
        options = typed(body, "stream_options", dict, {})
        return await _stream(request, params, include_usage=typed(options, "include_usage", bool, False))
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
                    "finish_reason": FINISH_REASONS.get(response.finish_reason, "stop"),
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


def _sse(payload: Any) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'), ensure_ascii=False)}\n\n".encode()


async def _stream(request: web.Request, params: ChatParams, *, include_usage: bool) -> web.StreamResponse:
    call = stream_completion(request, params)
    with cancel_on_exit(call):
        first = await call.read()  # a failure before the first chunk is a plain HTTP error
        response = web.StreamResponse(headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        response.content_type = "text/event-stream"
        await response.prepare(request)
        created = int(time.time())
        chunk = first
        role_sent = False
        try:
            while chunk is not grpc.aio.EOF:
                delta: dict[str, Any] = {} if role_sent else {"role": "assistant"}
                role_sent = True
                if chunk.content:
                    delta["content"] = chunk.content
                frame: dict[str, Any] = {
                    "id": chunk.id,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": chunk.model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": delta,
                            "logprobs": None,
                            "finish_reason": FINISH_REASONS.get(chunk.finish_reason, "stop")
                            if chunk.is_final
                            else None,
                        }
                    ],
                }
                if include_usage:
                    frame["usage"] = None
                await response.write(_sse(frame))
                if chunk.is_final and include_usage:
                    # stream_options.include_usage: one more chunk, no choices, the usage.
                    frame.update(choices=[], usage=_usage(chunk.usage))
                    await response.write(_sse(frame))
                chunk = await call.read()
        except grpc.aio.AioRpcError as exc:
            # After the first chunk the status line is gone: the error is an event (the client raises it).
            status = status_from_rpc_error(exc)
            await response.write(_sse(error_body(status, http_status(status.code))))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def add_openai_routes(app: web.Application) -> None:
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model}", model)
    app.router.add_post("/v1/chat/completions", chat_completions)
