"""OpenAPI operations of the OpenAI and Ollama compatibility endpoints (gateway.compat).

Which keys each request takes is read from the endpoint's own `Keys` declarations (the keys it
carries, the default values it accepts for features it does not serve, everything else refused), so
the document and the handler cannot drift apart on that; the value each key takes is stated here.
Numbers carried into a CompletionRequest publish that field's `(aibattle.v1.bounds)`. Errors are each
dialect's own body (OpenAI's `{"error": {…}}`, Ollama's `{"error": "…"}`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf.descriptor import Descriptor

from aibattle.v1 import completions_pb2
from common.bounds import json_schema_keywords
from gateway.compat import ollama, openai
from gateway.compat.core import INT32, INT64, Keys

Schema = dict[str, Any]
Operation = dict[str, Any]

_REQUEST: Descriptor = completions_pb2.CreateCompletionRequest.DESCRIPTOR
_NULL: Schema = {"type": "null"}
_STRING: Schema = {"type": "string"}
_BOOL: Schema = {"type": "boolean"}


def _int(bounds: tuple[int, int], proto_field: str | None = None) -> Schema:
    schema: Schema = {"type": "integer", "minimum": bounds[0], "maximum": bounds[1]}
    if proto_field is not None:
        schema.update(json_schema_keywords(_REQUEST.fields_by_name[proto_field]))
    return schema


def _number(proto_field: str | None = None, **range_: float) -> Schema:
    schema: Schema = {"type": "number", **range_}
    if proto_field is not None:
        schema.update(json_schema_keywords(_REQUEST.fields_by_name[proto_field]))
    return schema


_TEXT_PART: Schema = {
    "type": "object",
    "properties": {"type": {"const": "text"}, "text": _STRING},
    "required": ["type", "text"],
}
#: A message's content: text, OpenAI-style text parts, or nothing.
_CONTENT: Schema = {"anyOf": [_STRING, {"type": "array", "items": _TEXT_PART}, _NULL]}
_STOP: Schema = {"anyOf": [_STRING, {"type": "array", "items": _STRING, "maxItems": 4}]}

#: The value of every key a compat endpoint carries (keys an endpoint only accepts at a default value
#: take that value, from its Keys). Ranges the server checks in code are the CompletionRequest's docs'.
VALUES: dict[str, Schema] = {
    "model": {"type": "string", "minLength": 1},
    "stream": _BOOL,
    "user": _STRING,
    "safety_identifier": _STRING,
    "max_tokens": _int(INT32, "max_tokens"),
    "max_completion_tokens": _int(INT32, "max_tokens"),
    "num_predict": _int(INT32),  # Ollama's: -1 and -2 mean "the model's default"
    "temperature": _number(minimum=0, maximum=2),
    "top_p": _number(exclusiveMinimum=0, maximum=1),
    "seed": _int(INT64),
    "top_k": _int(INT32, "top_k"),
    "repeat_penalty": _number("repeat_penalty"),
    "frequency_penalty": _number("frequency_penalty"),
    "presence_penalty": _number("presence_penalty"),
    "stop": _STOP,
    "role": _STRING,
    "content": _CONTENT,
    "system": _STRING,
    "keep_alive": {},  # how long Ollama keeps a model loaded: taken, and means nothing here
    "prompt": _STRING,
}


def _default(values: tuple[Any, ...]) -> Schema:
    """A key accepted only at its default values."""
    if all(isinstance(v, bool) for v in values) and len(values) == 2:
        return _BOOL
    return {"enum": list(values)} if len(values) > 1 else {"const": values[0]}


def object_schema(
    keys: Keys, *, required: tuple[str, ...] = (), values: Mapping[str, Schema] | None = None
) -> Schema:
    """The JSON object a `Keys` takes: its keys with their values (null meaning absent), nothing else."""
    values = {**VALUES, **(values or {})}
    properties: dict[str, Schema] = {}
    for key in sorted(keys.honoured | set(keys.defaults)):
        value = values[key] if key in keys.honoured else _default(keys.defaults[key])
        properties[key] = value if key in required else {"anyOf": [value, _NULL]}
    schema: Schema = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


def _stream_options_need_stream(schema: Schema) -> Schema:
    """OpenAI's rule: `stream_options` (but an empty one) only with `"stream": true`."""
    return {
        **schema,
        "if": {"properties": {"stream": {"const": True}}, "required": ["stream"]},
        "else": {
            "properties": {"stream_options": {"anyOf": [_NULL, {"type": "object", "maxProperties": 0}]}}
        },
    }


def _openai_error() -> Schema:
    return {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "message": _STRING,
                    "type": _STRING,
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
                "required": ["message", "type", "param", "code"],
            }
        },
        "required": ["error"],
    }


_OLLAMA_ERROR: Schema = {"type": "object", "properties": {"error": _STRING}, "required": ["error"]}


def _responses(ok: dict[str, Any], error: Schema) -> dict[str, Any]:
    return {
        "200": ok,
        "400": {
            "description": "An invalid request, in the dialect's error body; a request line or header the "
            "HTTP server cannot read is answered in plain text, before routing.",
            "content": {"application/json": {"schema": error}, "text/plain": {"schema": _STRING}},
        },
        "default": {
            "description": "An error, in the dialect's body.",
            "content": {"application/json": {"schema": error}},
        },
    }


def _json(description: str, schema: Schema) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_OPENAI_MODEL: Schema = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "object": {"const": "model"},
        "created": {"type": "integer"},
        "owned_by": _STRING,
    },
    "required": ["id", "object", "created", "owned_by"],
}
_USAGE: Schema = {
    "type": "object",
    "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
    "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
}


def _completion(kind: str, choice: Schema) -> Schema:
    return {
        "type": "object",
        "properties": {
            "id": _STRING,
            "object": {"const": kind},
            "created": {"type": "integer"},
            "model": _STRING,
            "choices": {"type": "array", "items": choice},
            "usage": _USAGE,
        },
        "required": ["id", "object", "created", "model", "choices", "usage"],
    }


_FINISH = {"finish_reason": {"type": ["string", "null"]}, "index": {"type": "integer"}}
_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "string",
            "description": "With `stream: true`: `data:` events, each a chunk object; then `data: [DONE]`.",
        }
    }
}


def _openai_operations() -> dict[tuple[str, str], Operation]:
    error = _openai_error()
    tags = ["OpenAI"]
    chat = _stream_options_need_stream(
        object_schema(
            openai.CHAT_KEYS,
            required=("model", "messages"),
            values={
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": object_schema(openai.MESSAGE_KEYS, required=("role",)),
                },
                "stream_options": object_schema(openai.STREAM_OPTION_KEYS, values={"include_usage": _BOOL}),
            },
        )
    )
    completion = _stream_options_need_stream(
        object_schema(
            openai.COMPLETION_KEYS,
            required=("model", "prompt"),
            values={
                # One prompt per request: a string, or a batch of exactly one.
                "prompt": {
                    "anyOf": [
                        {"type": "string", "minLength": 1},
                        {
                            "type": "array",
                            "items": {"type": "string", "minLength": 1},
                            "minItems": 1,
                            "maxItems": 1,
                        },
                    ]
                },
                "stream_options": object_schema(openai.STREAM_OPTION_KEYS, values={"include_usage": _BOOL}),
            },
        )
    )
    message = {
        "type": "object",
        "properties": {"role": {"const": "assistant"}, "content": _STRING},
        "required": ["role", "content"],
    }
    return {
        ("GET", "/v1/models"): {
            "operationId": "openai_list_models",
            "tags": tags,
            "summary": "OpenAI: the models this key may use",
            "responses": _responses(
                _json(
                    "The models.",
                    {
                        "type": "object",
                        "properties": {
                            "object": {"const": "list"},
                            "data": {"type": "array", "items": _OPENAI_MODEL},
                        },
                        "required": ["object", "data"],
                    },
                ),
                error,
            ),
        },
        ("GET", "/v1/models/{model}"): {
            "operationId": "openai_get_model",
            "tags": tags,
            "summary": "OpenAI: one model",
            "parameters": [{"name": "model", "in": "path", "required": True, "schema": _STRING}],
            "responses": _responses(_json("The model.", _OPENAI_MODEL), error),
        },
        ("POST", "/v1/chat/completions"): {
            "operationId": "openai_chat_completions",
            "tags": tags,
            "summary": "OpenAI: a chat completion, whole or streamed (`stream: true`: SSE chunks)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": chat}}},
            "responses": _responses(
                {
                    "description": "The completion; with `stream: true`, `chat.completion.chunk` events.",
                    "content": {
                        "application/json": {
                            "schema": _completion(
                                "chat.completion",
                                {"type": "object", "properties": {**_FINISH, "message": message}},
                            )
                        },
                        **_SSE,
                    },
                },
                error,
            ),
        },
        ("POST", "/v1/completions"): {
            "operationId": "openai_completions",
            "tags": tags,
            "summary": "OpenAI (legacy): a text completion of one prompt, whole or streamed",
            "requestBody": {"required": True, "content": {"application/json": {"schema": completion}}},
            "responses": _responses(
                {
                    "description": "The completion; with `stream: true`, `text_completion` events.",
                    "content": {
                        "application/json": {
                            "schema": _completion(
                                "text_completion",
                                {"type": "object", "properties": {**_FINISH, "text": _STRING}},
                            )
                        },
                        **_SSE,
                    },
                },
                error,
            ),
        },
    }


def _ollama_operations() -> dict[tuple[str, str], Operation]:
    tags = ["Ollama"]
    options = {"options": object_schema(ollama.OPTION_KEYS)}
    chat = object_schema(
        ollama.CHAT_KEYS,
        required=("model", "messages"),
        values={
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": object_schema(ollama.MESSAGE_KEYS, required=("role",)),
            },
            **options,
        },
    )
    generate = object_schema(ollama.GENERATE_KEYS, required=("model",), values=options)
    answer = {
        "type": "object",
        "properties": {"model": _STRING, "created_at": _STRING, "done": _BOOL},
        "required": ["model", "created_at", "done"],
    }
    streamed = {
        "description": "The answer whole with `stream: false`; by default an NDJSON stream of partial "
        'answers, the last with `done: true` (or a last `{"error": …}` line).',
        "content": {
            "application/json": {"schema": answer},
            "application/x-ndjson": {"schema": answer},
        },
    }
    tag = {
        "type": "object",
        "properties": {
            "name": _STRING,
            "model": _STRING,
            "modified_at": _STRING,
            "size": {"type": "integer"},
        },
        "required": ["name", "model"],
    }
    return {
        ("GET", "/api/tags"): {
            "operationId": "ollama_tags",
            "tags": tags,
            "summary": "Ollama: the models this key may use",
            "responses": _responses(
                _json(
                    "The models.",
                    {
                        "type": "object",
                        "properties": {"models": {"type": "array", "items": tag}},
                        "required": ["models"],
                    },
                ),
                _OLLAMA_ERROR,
            ),
        },
        ("POST", "/api/chat"): {
            "operationId": "ollama_chat",
            "tags": tags,
            "summary": "Ollama: a chat answer",
            "requestBody": {"required": True, "content": {"application/json": {"schema": chat}}},
            "responses": _responses(streamed, _OLLAMA_ERROR),
        },
        ("POST", "/api/generate"): {
            "operationId": "ollama_generate",
            "tags": tags,
            "summary": "Ollama: an answer to one prompt (an empty one loads the model: `done_reason: load`)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": generate}}},
            "responses": _responses(streamed, _OLLAMA_ERROR),
        },
    }


def compat_operations() -> dict[tuple[str, str], Operation]:
    """(method, path template) → operation, for every compat endpoint."""
    return {**_openai_operations(), **_ollama_operations()}
