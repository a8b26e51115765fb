"""Ollama compatibility: `/api/tags`, `/api/chat` and `/api/generate` (NDJSON streams by default).

Good enough for the official `ollama` client: `options` maps to our sampling fields (`num_predict` →
max_tokens, `temperature`, `top_p`, `seed`, `stop`); errors are `{"error": "message"}` with the HTTP
status of the gateway's table, and a failure mid-stream is a last `{"error": …}` line, as Ollama does.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

import grpc
from aiohttp import web
from google.rpc import status_pb2

from gateway.calls import cancel_on_exit
from gateway.compat_core import (
    FINISH_REASONS,
    ChatParams,
    chat_messages,
    list_models,
    read_object,
    stop_list,
    stream_completion,
    typed,
    with_errors,
)
from gateway.errors import error_headers, invalid_argument, status_from_rpc_error

_EPOCH = "1970-01-01T00:00:00Z"


def ollama_error(status: status_pb2.Status, http: int) -> web.Response:
    return web.json_response({"error": status.message}, status=http, headers=error_headers(status))


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


@with_errors(ollama_error)
async def tags(request: web.Request) -> web.StreamResponse:
    models = [
        {
            "name": m.id,
            "model": m.id,
            "modified_at": _EPOCH,
            "size": 0,
            "digest": "",
            "details": {
                "format": "",
                "family": m.provider,
                "families": None,
                "parameter_size": "",
                "quantization_level": "",
            },
        }
        for m in await list_models(request)
    ]
    return web.json_response({"models": models})


def _params(body: dict[str, Any], **fields: Any) -> ChatParams:
    model = typed(body, "model", str)
    if not model:
        raise invalid_argument("model is required", reason="INVALID_FIELD_VALUE", field="model")
    options = typed(body, "options", dict, {})
    num_predict = typed(options, "num_predict", int)
    return ChatParams(
        model=model,
        system=typed(body, "system", str, ""),
        # Ollama's -1 (infinite) and -2 (fill the context) mean "the model's default" here.
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        temperature=typed(options, "temperature", (int, float)),
        top_p=typed(options, "top_p", (int, float)),
        seed=typed(options, "seed", int),
        stop=stop_list(options.get("stop"), "options.stop"),
        **fields,
    )


@with_errors(ollama_error)
async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    params = _params(body, messages=chat_messages(body.get("messages")))
    return await _relay(request, params, stream=typed(body, "stream", bool, True), chat=True)


@with_errors(ollama_error)
async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    params = _params(body, prompt=typed(body, "prompt", str, ""))
    if not params.prompt:
        # Ollama's "load the model" call: nothing to generate.
        return web.json_response(
            {"model": params.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        )
    return await _relay(request, params, stream=typed(body, "stream", bool, True), chat=False)


def _piece(model: str, text: str, *, chat: bool) -> dict[str, Any]:
    key = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
    return {"model": model, "created_at": _now(), **key, "done": False}


async def _relay(request: web.Request, params: ChatParams, *, stream: bool, chat: bool) -> web.StreamResponse:
    started = time.monotonic_ns()
    call = stream_completion(request, params)
    with cancel_on_exit(call):
        first = await call.read()  # a failure before the first chunk is a plain HTTP error
        response: web.StreamResponse | None = None
        if stream:
            response = web.StreamResponse(headers={"Cache-Control": "no-cache"})
            response.content_type = "application/x-ndjson"
            await response.prepare(request)
        text: list[str] = []
        chunk, last = first, None
        try:
            while chunk is not grpc.aio.EOF:
                last = chunk
                text.append(chunk.content)
                if response is not None and chunk.content:
                    await response.write(_line(_piece(params.model, chunk.content, chat=chat)))
                chunk = await call.read()
        except grpc.aio.AioRpcError as exc:
            status = status_from_rpc_error(exc)
            if response is None:
                raise
            await response.write(_line({"error": status.message}))
            await response.write_eof()
            return response
        final = _piece(params.model, "" if stream else "".join(text), chat=chat)
        final.update(_summary(last, started))
        if response is None:
            return web.json_response(final)
        await response.write(_line(final))
        await response.write_eof()
        return response


def _summary(last: Any, started: int) -> dict[str, Any]:
    """Ollama's closing fields, from our last chunk (usage, finish reason)."""
    elapsed = time.monotonic_ns() - started
    usage = last.usage if last is not None else None
    return {
        "done": True,
        "done_reason": FINISH_REASONS.get(last.finish_reason, "stop") if last is not None else "stop",
        "total_duration": elapsed,
        "load_duration": 0,
        "prompt_eval_count": usage.prompt_tokens if usage is not None else 0,
        "prompt_eval_duration": 0,
        "eval_count": usage.completion_tokens if usage is not None else 0,
        "eval_duration": elapsed,
    }


def _line(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def add_ollama_routes(app: web.Application) -> None:
    app.router.add_get("/api/tags", tags)
    app.router.add_post("/api/chat", chat)
    app.router.add_post("/api/generate", generate)
