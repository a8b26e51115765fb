"""Ollama compatibility: `/api/tags`, `/api/chat` and `/api/generate` (NDJSON streams by default),
`/api/embed` and the legacy `/api/embeddings`, `/api/show`, `/api/ps` and `/api/version`.

Good enough for the official `ollama` client and Open WebUI: `options` maps to our sampling fields
(`num_predict` → max_tokens, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `repeat_penalty`,
`frequency_penalty`, `presence_penalty`). `/api/chat` carries `tools`, the history's assistant
`tool_calls` (arguments as an object; ids optional, made up when absent) and `tool` results (matched to
the call they answer by `tool_name`: the earliest unanswered call of that name in the latest turn that
called tools, else the latest call of that name; without a `tool_name`, the earliest unanswered call of
that turn); an answer's calls come back whole in
`message.tool_calls`, arguments as an object, on a line of their own before the closing one when
streamed (as Ollama sends them). `format` is `"json"` or a JSON schema, on both endpoints. Whether the
model can call tools or answer in JSON is the server's to say (a 400 when it cannot).

Reasoning text a model produces before its answer (a thinking model's, or the steps of a collaboration
model, each labelled by its kind and model) is `message.thinking` on /api/chat and `thinking` on
/api/generate, as Ollama (0.9 and later) sends it: on lines of their own before the answer's when
streamed. It is relayed whenever the model produces some; `think: false` suppresses it, and `think:
true` asks for nothing more (a model without reasoning still answers, with none). Ollama's levels
("low", "medium", "high") are refused by name: no model here takes one. A history's `thinking` (an
earlier answer's, sent back with it) is taken and not carried to the model, as Ollama's own templates
drop it. An answer from a collaboration model names the reasoning session that produced it in the
`x-aibattle-reasoning-id` header (readable, with all its iterations, at
`/api/v1/collaborative-reasoning/{id}`).

No key is dropped: one we don't serve (runtime options such as `num_ctx`, `truncate: true`…) or don't
know is a 400 naming it, see `CHAT_KEYS`; the values the official client sends unasked (`tools: []`)
are taken. Unknown `/api/*` paths (not the native `/api/v1/*`) answer Ollama's 404. Every
error is Ollama's `{"error": "message"}` with the HTTP status of the gateway's table; a failure
mid-stream is a last `{"error": …}` line, as Ollama does (its client raises ResponseError on it). A line
after a mid-answer move to another deployment or model (`failover_mid_stream`) carries `"failover":
{from_model, from_deployment, to_model, to_deployment, reason}`; an answer from a model with several
deployments names the one that answered in the `x-aibattle-deployment` header.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
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
    ChatParams,
    Keys,
    ToolCallPieces,
    arguments_object,
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
)
from gateway.transcode import dumps, dumps_bytes
from gateway.web_errors import Dialect
from gateway.web_stream import NDJSON, answer_headers, stream_http

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
    honoured=frozenset({"model", "stream", "options", "keep_alive", "format", "think"}),
    defaults={"logprobs": (False,)},
    unsupported={
        "logprobs": f"logprobs are {_LATER}",
        "top_logprobs": f"logprobs are {_LATER}",
    },
)
CHAT_KEYS = Keys(
    honoured=_COMMON.honoured | {"messages", "tools"},
    defaults=_COMMON.defaults,
    unsupported=_COMMON.unsupported,
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
    # thinking: an earlier answer's reasoning, sent back with it; checked, not carried.
    honoured=frozenset({"role", "content", "tool_calls", "tool_name", "thinking"}),
    defaults={"images": ([],)},
    unsupported={"images": "images are not supported on this endpoint yet"},
)
#: `{"type": "function", "function": {name, description, parameters}}` in `tools`.
TOOL_KEYS = Keys(honoured=frozenset({"type", "function"}))
FUNCTION_KEYS = Keys(honoured=frozenset({"name", "description", "parameters"}))
#: `{"function": {name, arguments}}` in an assistant message's `tool_calls` (newer Ollamas add ids and
#: the call's index).
TOOL_CALL_KEYS = Keys(honoured=frozenset({"id", "type", "function"}))
CALL_FUNCTION_KEYS = Keys(honoured=frozenset({"name", "arguments", "index"}))
#: /api/embed (no `input`, or an empty one, is Ollama's "load the model": no vector, once the model is
#: known to exist for the caller). `truncate` is Ollama's default (cut each input to the context): not
#: done here, where an input longer than the model's context is refused; `options` (Ollama's runtime
#: options) take none.
EMBED_KEYS = Keys(
    honoured=frozenset({"model", "input", "dimensions", "keep_alive", "options"}),
    defaults={"truncate": (False,)},
    unsupported={"truncate": "inputs are not truncated here: one longer than the model's context is refused"},
)
EMBEDDINGS_KEYS = Keys(honoured=frozenset({"model", "prompt", "keep_alive", "options"}))
EMBED_OPTION_KEYS = Keys(honoured=frozenset())
#: /api/show: `name` is the model's older key; `verbose` asks for more of model_info, of which there is
#: no more here.
SHOW_KEYS = Keys(honoured=frozenset({"model", "name", "verbose"}))
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
        response_format=_format(body),
        **fields,
    )


def _format(body: dict[str, Any]) -> common_pb2.ResponseFormat | None:
    """`format`: "" (free text), "json", or a JSON schema object."""
    value = body.get("format")
    if value is None or value == "":
        return None
    if value == "json":
        return json_format()
    if isinstance(value, dict):
        return json_format(value, where="format")
    raise InvalidArgument(
        "format",
        "'format' must be \"json\" or a JSON schema object",
        reason=INVALID_FIELD_VALUE,
        prefix=False,
    )


def _tools(body: dict[str, Any]) -> list[common_pb2.Tool]:
    specs = []
    for i, item in enumerate(optional_list(body, "tools")):
        where = f"tools[{i}]"
        function = function_of(item, where, TOOL_KEYS, FUNCTION_KEYS)
        specs.append(
            tool(
                required_str(function, "name", where=f"{where}.function."),
                optional_str(function, "description", where=f"{where}.function."),
                function.get("parameters"),
                where=f"{where}.function",
            )
        )
    return specs


class _History:
    """Ollama's history in our terms: ids for the assistant's calls (Ollama's may have none), and each
    `tool` result matched to the call it answers by `tool_name`."""

    def __init__(self) -> None:
        self._calls: list[common_pb2.ToolCall] = []
        self._pending: list[common_pb2.ToolCall] = []
        self._turn = 0

    def __call__(self, item: Mapping[str, Any], where: str, message: common_pb2.Message) -> None:
        self._turn += 1
        optional_str(item, "thinking", where=f"{where}.")  # not carried (see the module docstring)
        for j, call in enumerate(optional_list(item, "tool_calls", where=f"{where}.")):
            at = f"{where}.tool_calls[{j}]"
            function = function_of(call, at, TOOL_CALL_KEYS, CALL_FUNCTION_KEYS)
            message.tool_calls.add(
                id=optional_str(call, "id", where=f"{at}.") or f"call_{self._turn}_{j}",
                name=required_str(function, "name", where=f"{at}.function."),
                arguments=dumps(optional_object(function, "arguments", where=f"{at}.function.")),
            )
        if message.tool_calls:
            self._calls.extend(message.tool_calls)
            self._pending = list(message.tool_calls)
        name = optional_str(item, "tool_name", where=f"{where}.")
        if item["role"] == "tool":
            message.tool_call_id = self._answered(name, where)
        elif name is not None:
            raise InvalidArgument(
                f"{where}.tool_name",
                f"'{where}.tool_name' is only for a 'tool' message",
                reason=INVALID_FIELD_VALUE,
                prefix=False,
            )

    def _answered(self, name: str | None, where: str) -> str:
        for call in self._pending:
            if name is None or call.name == name:
                self._pending.remove(call)
                return call.id
        for call in reversed(self._calls):
            if call.name == name:
                return call.id
        said = f"no earlier call of tool {name!r}" if name else "no earlier tool call left unanswered"
        raise InvalidArgument(
            f"{where}.tool_name",
            f"'{where}.tool_name': a tool result answers a call of the assistant, and there is {said}",
            reason=INVALID_FIELD_VALUE,
            prefix=False,
        )


def _think(body: dict[str, Any]) -> bool:
    """Whether to relay the model's reasoning: unless `think` is false (see the module docstring)."""
    value = body.get("think")
    if value is None or isinstance(value, bool):
        return value is not False
    if value in ("low", "medium", "high"):
        raise InvalidArgument(
            "think",
            f"'think' {value!r} is not supported: no model here takes a thinking level (use true or false)",
            reason=UNSUPPORTED_PARAMETER,
            prefix=False,
        )
    raise InvalidArgument("think", "'think' must be a boolean", reason=INVALID_FIELD_VALUE, prefix=False)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    CHAT_KEYS.check(body)
    think = _think(body)
    params = _params(body, messages=chat_messages(body, MESSAGE_KEYS, tools=_History()), tools=_tools(body))
    stream = optional_bool(body, "stream") is not False
    return await _answer(request, params, stream=stream, chat=True, think=think)


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    GENERATE_KEYS.check(body)
    think = _think(body)
    params = _params(body, prompt=optional_str(body, "prompt") or "")
    if not params.prompt:
        # Ollama's "load the model" call: nothing to generate, but the model must exist for this
        # caller (GetModel checks the key and its models, as a generation would).
        await get_model(request, params.model)
        return web.json_response(
            {"model": params.model, "created_at": _now(), "response": "", "done": True, "done_reason": "load"}
        )
    stream = optional_bool(body, "stream") is not False
    return await _answer(request, params, stream=stream, chat=False, think=think)


def _piece(model: str, text: str, *, chat: bool, thinking: str = "") -> dict[str, Any]:
    if chat:
        message = {"role": "assistant", "content": text}
        if thinking:
            message["thinking"] = thinking
        key: dict[str, Any] = {"message": message}
    else:
        key = {"response": text, "thinking": thinking} if thinking else {"response": text}
    return {"model": model, "created_at": _now(), **key, "done": False}


def _with_calls(piece: dict[str, Any], calls: list[common_pb2.ToolCall]) -> dict[str, Any]:
    piece["message"]["tool_calls"] = [
        {"id": call.id, "function": {"index": i, "name": call.name, "arguments": arguments_object(call)}}
        for i, call in enumerate(calls)
    ]
    return piece


async def _answer(
    request: web.Request, params: ChatParams, *, stream: bool, chat: bool, think: bool
) -> web.StreamResponse:
    started = time.monotonic_ns()
    if not stream:
        response = await create_completion(request, params)
        final = _piece(params.model, response.content, chat=chat, thinking=response.thinking if think else "")
        if chat and response.tool_calls:
            _with_calls(final, list(response.tool_calls))
        return web.json_response({**final, **_summary(response, started)}, headers=answer_headers(response))
    call = stream_completion(request, params)
    with cancel_on_exit(call):
        framing = LineFraming(params.model, chat, started, think=think)
        return await stream_http(request, call, framing, dialect=DIALECT)


class LineFraming:
    """Ollama's NDJSON: a line per piece of text (and of thinking, unless `think` is off), the tool calls
    whole on a line of their own, then the closing line with the counts."""

    content_type = NDJSON

    def __init__(self, model: str, chat: bool, started: int, *, think: bool = True) -> None:
        self._model = model
        self._chat = chat
        self._started = started
        self._think = think
        self._calls: ToolCallPieces | None = None

    def message(self, message: Message) -> bytes:
        chunk: Any = message
        data = b""
        failover = chunk.HasField("failover")
        thinking = chunk.thinking if self._think else ""
        if chunk.content or thinking or failover:
            piece = _piece(self._model, chunk.content, chat=self._chat, thinking=thinking)
            if failover:
                piece["failover"] = failover_json(chunk.failover)
            data += _line(piece)
        if chunk.tool_calls:
            if self._calls is None:
                self._calls = ToolCallPieces()
            self._calls.add(chunk.tool_calls)
        if chunk.is_final:
            if self._calls is not None:
                data += _line(_with_calls(_piece(self._model, "", chat=True), self._calls.take()))
            data += _line({**_piece(self._model, "", chat=self._chat), **_summary(chunk, self._started)})
        return data

    def error(self, status: status_pb2.Status) -> bytes:
        return _line({"error": status.message})

    def end(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return b""  # NDJSON has no comment line to send

    empty_status = 200


def _done_reason(finish_reason: int) -> str:
    """Ollama's word for why an answer ended: its server says "stop" after tool calls too (the calls
    themselves say it), so a client that knows only Ollama's words never meets ours."""
    reason = FinishReason.from_proto(finish_reason)
    return FinishReason.STOP.value if reason == FinishReason.TOOL_CALLS else reason.value


def _summary(last: Any, started: int) -> dict[str, Any]:
    """Ollama's closing fields, from our final chunk or whole response (usage, finish reason)."""
    elapsed = time.monotonic_ns() - started
    return {
        "done": True,
        "done_reason": _done_reason(last.finish_reason),
        "total_duration": elapsed,
        "load_duration": 0,
        "prompt_eval_count": last.usage.prompt_tokens,
        "prompt_eval_duration": 0,
        "eval_count": last.usage.completion_tokens,
        "eval_duration": elapsed,
    }


def _line(payload: dict[str, Any]) -> bytes:
    return dumps_bytes(payload) + b"\n"


# --- embeddings -----------------------------------------------------------------------------------------


def _embed_options(body: dict[str, Any]) -> None:
    EMBED_OPTION_KEYS.check(optional_object(body, "options"), where="options.")


async def embed(request: web.Request) -> web.StreamResponse:
    started = time.monotonic_ns()
    body = await read_object(request)
    EMBED_KEYS.check(body)
    _embed_options(body)
    model_id = required_model(body)
    dimensions = optional_int(body, "dimensions")
    if body.get("input") in (None, "", []):
        # Ollama's "load the model" call: nothing to embed, but the model must exist for this caller.
        await get_model(request, model_id)
        return web.json_response({"model": model_id, "embeddings": []})
    response = await create_embeddings(request, model_id, input_texts(body), dimensions=dimensions)
    return web.json_response(
        {
            "model": response.model,
            "embeddings": [list(e.values) for e in response.embeddings],
            "total_duration": time.monotonic_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": response.usage.prompt_tokens,
        },
        headers=answer_headers(response),
    )


async def embeddings(request: web.Request) -> web.StreamResponse:
    """The legacy endpoint: one `prompt`, one `embedding` (an empty prompt, as Ollama's, an empty one)."""
    body = await read_object(request)
    EMBEDDINGS_KEYS.check(body)
    _embed_options(body)
    model_id = required_model(body)
    prompt = optional_str(body, "prompt") or ""
    if not prompt:
        await get_model(request, model_id)  # the model must still exist for this caller
        return web.json_response({"embedding": []})
    response = await create_embeddings(request, model_id, [prompt])
    return web.json_response(
        {"embedding": list(response.embeddings[0].values)}, headers=answer_headers(response)
    )


# --- what Ollama says about its models ------------------------------------------------------------------

VERSION = "0.12.11"
"""What /api/version answers: the Ollama release whose API these endpoints follow. It is the first with
every key they read (`dimensions` on /api/embed came in 0.12.0, `logprobs` in 0.12.11; `tool_name` and
`think` before), so a client that checks the version for a feature finds what is here (or its refusal
by name). Open WebUI asks for it when it connects."""

#: Our capabilities in Ollama's words (/api/show); ours without a counterpart there are left out.
_CAPABILITIES = {
    "text": "completion",
    "tools": "tools",
    "embedding": "embedding",
    "image": "vision",
    "thinking": "thinking",
    # A collaboration model's steps come as thinking: clients that offer a thinking toggle show it.
    "collaboration": "thinking",
}
#: /api/ps's expiry for models that never unload (Ollama's own for keep_alive -1 is as far off).
_NEVER = "2318-01-01T00:00:00Z"


def _details(model: Any) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf" if model.provider == "local" else "",
        "family": model.provider,
        "families": [model.provider],
        "parameter_size": "",
        "quantization_level": "",
    }


async def show(request: web.Request) -> web.StreamResponse:
    """A model as Ollama describes one. Ours have no Modelfile: `modelfile` says what serves the model,
    `parameters` its context window, `model_info` the same in Ollama's keys (`general.architecture` is
    the provider, `<provider>.context_length` the window); unknown models are Ollama's 404."""
    body = await read_object(request)
    SHOW_KEYS.check(body)
    optional_bool(body, "verbose")
    model_id = optional_str(body, "model") or optional_str(body, "name")
    if not model_id:
        raise InvalidArgument("model", "'model' is required", reason=INVALID_FIELD_VALUE, prefix=False)
    model = await get_model(request, model_id)
    upstream = model.upstream_model or model.id
    info: dict[str, Any] = {"general.architecture": model.provider, "general.basename": model.id}
    parameters = ""
    if model.max_tokens:
        info[f"{model.provider}.context_length"] = model.max_tokens
        parameters = f"num_ctx {model.max_tokens}"
    capabilities = list(dict.fromkeys(_CAPABILITIES[c] for c in model.capabilities if c in _CAPABILITIES))
    return web.json_response(
        {
            "license": "",
            "modelfile": f"# Served by AI Battle's {model.provider} provider\nFROM {upstream}\n",
            "parameters": parameters,
            "template": "",
            "details": _details(model),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": _EPOCH,
        }
    )


async def ps(request: web.Request) -> web.StreamResponse:
    """The models "loaded": here, every model this key may use. The gateway loads and unloads nothing:
    remote models are always there, and the embedded one is loaded once when the server starts; so each
    is listed with no expiry, and sizes of 0 (its memory is not the gateway's to count)."""
    models = [
        {
            "name": m.id,
            "model": m.id,
            "size": 0,
            "digest": "",
            "details": _details(m),
            "expires_at": _NEVER,
            "size_vram": 0,
            "context_length": m.max_tokens,
        }
        for m in await list_models(request)
    ]
    return web.json_response({"models": models})


async def version(request: web.Request) -> web.StreamResponse:
    return web.json_response({"version": VERSION})


ROUTES = (
    ("GET", "/api/tags", tags),
    ("POST", "/api/chat", chat),
    ("POST", "/api/generate", generate),
    ("POST", "/api/embed", embed),
    ("POST", "/api/embeddings", embeddings),
    ("POST", "/api/show", show),
    ("GET", "/api/ps", ps),
    ("GET", "/api/version", version),
)
