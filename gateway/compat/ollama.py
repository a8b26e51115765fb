"""Ollama compatibility: `/api/tags`, `/api/chat` and `/api/generate` (NDJSON streams by default).

Good enough for the official `ollama` client: `options` maps to our sampling fields (`num_predict` →
max_tokens, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `repeat_penalty`, `frequency_penalty`,
`presence_penalty`). No key is dropped: one we don't serve (`format`, `tools`, `think`, runtime options
such as `num_ctx`…) or don't know is a 400 naming it, see `CHAT_KEYS`; the values the official client
sends unasked (`tools: []`) are taken. Unknown `/api/*` paths (not the native `/api/v1/*`) answer
Ollama's 404. Every error is Ollama's `{"error": "message"}` with the HTTP status of the gateway's table;
a failure mid-stream is a last `{"error": …}` line, as Ollama does (its client raises ResponseError on it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from common.enums import FinishReason
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
    optional_str,
    read_object,
    required_model,
    stop_list,
    stream_completion,
)
from gateway.transcode import dumps_bytes
from gateway.web_errors import Dialect
from gateway.web_stream import NDJSON, stream_http

_EPOCH = "1970-01-01T00:00:00Z"

DIALECT = Dialect("ollama", lambda status, _http: {"error": status.message}, "ollama")


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


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


_LATER = "not implemented yet"
#: Keys of /api/chat and /api/generate. `keep_alive` says how long Ollama keeps a model in memory: ours
#: stay loaded, and no answer changes with it.
_COMMON = Keys(
    honoured=frozenset({"model", "stream", "options", "keep_alive"}),
    # The official client sends `tools: []` and, for generate, empty strings and `raw: false` unasked.
    defaults={"format": ("",), "think": (False,), "logprobs": (False,)},
    unsupported={
        "format": f"structured output (JSON mode, JSON schema) is {_LATER}",
        "think": "thinking output is not relayed by this endpoint",
        "logprobs": f"logprobs are {_LATER}",
        "top_logprobs": f"logprobs are {_LATER}",
    },
)
CHAT_KEYS = Keys(
    honoured=_COMMON.honoured | {"messages"},
    defaults={**_COMMON.defaults, "tools": ([],)},
    unsupported={**_COMMON.unsupported, "tools": f"tool calling is {_LATER}"},
)
GENERATE_KEYS = Keys(
    honoured=_COMMON.honoured | {"prompt", "system"},
    defaults={
        **_COMMON.defaults,
        "suffix": ("",),
        "template": ("",),
        "raw": (False,),
        "context": ([],),
        "images": ([],),
    },
    unsupported={
        **_COMMON.unsupported,
        "suffix": "fill-in-the-middle is not supported",
        "template": "prompt templates are the model's own here",
        "raw": "prompt templates are the model's own here",
        "context": "use /api/chat with the history as messages",
        "images": "images are not supported on this endpoint yet",
    },
)
MESSAGE_KEYS = Keys(
    honoured=frozenset({"role", "content"}),
    defaults={"images": ([],), "tool_calls": ([],), "thinking": ("",)},
    unsupported={
        "images": "images are not supported on this endpoint yet",
        "tool_calls": f"tool calling is {_LATER}",
        "tool_name": f"tool calling is {_LATER}",
        "thinking": "earlier thinking is not carried to the models",
    },
)
#: Ollama's runtime options (num_ctx, num_gpu, min_p, mirostat…) are refused by name, as unknown keys.
OPTION_KEYS = Keys(
    honoured=frozenset(
        {
            "num_predict",
            "temperature",
            "top_p",
            "seed",
            "stop",
            "top_k",
            "repeat_penalty",
            "frequency_penalty",
            "presence_penalty",
        }
    )
)


def _params(body: dict[str, Any], **fields: Any) -> ChatParams:
    options = optional_object(body, "options")
    OPTION_KEYS.check(options, where="options.")
    num_predict = optional_int(options, "num_predict", where="options.")

    def number(key: str) -> float | None:
        return optional_number(options, key, where="options.")

    return ChatParams(
        model=required_model(body),
        system=optional_str(body, "system") or "",
        # Ollama's -1 (infinite) and -2 (fill the context) mean "the model's default" here.
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        temperature=number("temperature"),
        top_p=number("top_p"),
        seed=optional_int(options, "seed", bounds=INT64, where="options."),
        stop=stop_list(options, "stop", where="options."),
        top_k=optional_int(options, "top_k", where="options."),
        repeat_penalty=number("repeat_penalty"),
        frequency_penalty=number("frequency_penalty"),
        presence_penalty=number("presence_penalty"),
        **fields,
    )


async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    CHAT_KEYS.check(body)
    params = _params(body, messages=chat_messages(body, MESSAGE_KEYS))
    return await _answer(request, params, stream=optional_bool(body, "stream") is not False, chat=True)


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    GENERATE_KEYS.check(body)
    params = _params(body, prompt=optional_str(body, "prompt") or "")
    if not params.prompt:
        # Ollama's "load the model" call: nothing to generate, but the model must exist for this
        # caller (GetModel checks the key and its models, as a generation would).
        await get_model(request, params.model)
        return web.json_response(
            {"model": params.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        )
    return await _answer(request, params, stream=optional_bool(body, "stream") is not False, chat=False)


def _piece(model: str, text: str, *, chat: bool) -> dict[str, Any]:
    key = {"message": {"role": "assistant", "content": text}} if chat else {"response": text}
    return {"model": model, "created_at": _now(), **key, "done": False}


async def _answer(
    request: web.Request, params: ChatParams, *, stream: bool, chat: bool
) -> web.StreamResponse:
    started = time.monotonic_ns()
    if not stream:
        response = await create_completion(request, params)
        final = _piece(params.model, response.content, chat=chat)
        return web.json_response({**final, **_summary(response, started)})
    call = stream_completion(request, params)
    with cancel_on_exit(call):
        return await stream_http(request, call, LineFraming(params.model, chat, started), dialect=DIALECT)


class LineFraming:
    """Ollama's NDJSON: a line per piece of text, then the closing line with the counts."""

    content_type = NDJSON

    def __init__(self, model: str, chat: bool, started: int) -> None:
        self._model = model
        self._chat = chat
        self._started = started

    def message(self, message: Message) -> bytes:
        chunk: Any = message
        data = b""
        if chunk.content:
            data += _line(_piece(self._model, chunk.content, chat=self._chat))
        if chunk.is_final:
            data += _line({**_piece(self._model, "", chat=self._chat), **_summary(chunk, self._started)})
        return data

    def error(self, status: status_pb2.Status) -> bytes:
        return _line({"error": status.message})

    def end(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return b""  # NDJSON has no comment line to send

    empty_status = 200


def _summary(last: Any, started: int) -> dict[str, Any]:
    """Ollama's closing fields, from our final chunk or whole response (usage, finish reason)."""
    elapsed = time.monotonic_ns() - started
    return {
        "done": True,
        "done_reason": FinishReason.from_proto(last.finish_reason).value,
        "total_duration": elapsed,
        "load_duration": 0,
        "prompt_eval_count": last.usage.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": last.usage.completion_tokens,
        "eval_duration": elapsed,
    }


def _line(payload: dict[str, Any]) -> bytes:
    return dumps_bytes(payload) + b"\n"


ROUTES = (
    ("GET", "/api/tags", tags),
    ("POST", "/api/chat", chat),
    ("POST", "/api/generate", generate),
)
