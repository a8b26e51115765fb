"""OpenAPI operations of the OpenAI and Ollama compatibility endpoints (gateway.compat): chat and text
completions (tools and structured output included), embeddings, and Ollama's model descriptions.

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
from gateway.compat.core import INT32, INT64, TOOL_MODES, Keys

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
    "parallel_tool_calls": _BOOL,
    "tool_call_id": _STRING,
    "id": _STRING,
    "tool_name": _STRING,
    # An earlier answer's reasoning, sent back with it (OpenAI's and Ollama's names): taken, not carried.
    "reasoning_content": _STRING,
    "thinking": _STRING,
    # Ollama's: false suppresses the reasoning text, which is relayed otherwise (levels are refused).
    "think": _BOOL,
    # Embeddings: one text or a batch (the server's bounds: 1 to 2048 texts, none empty).
    "input": {"anyOf": [_STRING, {"type": "array", "items": _STRING, "minItems": 1}]},
    "dimensions": _int(INT32),
    "encoding_format": {"enum": list(openai.ENCODING_FORMATS)},
    "name": _STRING,
    "verbose": _BOOL,
}
_OBJECT: Schema = {"type": "object"}
#: A JSON Schema to answer in (none, or an empty one, is refused: no model here can follow it).
_JSON_SCHEMA: Schema = {"type": "object", "minProperties": 1}


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


def _function_item(keys: Keys, function: Schema) -> Schema:
    """`{"type": "function", "function": {…}}`: a tool, a call, a forced choice."""
    return object_schema(
        keys, required=("function",), values={"type": {"const": "function"}, "function": function}
    )


def _tools(tool: Keys, function: Keys) -> Schema:
    """`tools`: functions with a name, what they do and a JSON schema of their arguments."""
    values = {"description": _STRING, "parameters": _OBJECT, "strict": _BOOL}
    spec = object_schema(function, required=("name",), values=values)
    return {"type": "array", "items": _function_item(tool, spec)}


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
    call = object_schema(openai.CALL_FUNCTION_KEYS, required=("name",), values={"arguments": _STRING})
    tool_call = _function_item(openai.TOOL_CALL_KEYS, call)
    tool_call["required"] = ["id", "function"]
    message_values = {"tool_calls": {"type": "array", "items": tool_call}}
    choice = _function_item(
        openai.TOOL_CHOICE_KEYS, object_schema(openai.CHOSEN_FUNCTION_KEYS, required=("name",))
    )
    json_schema = object_schema(
        openai.JSON_SCHEMA_KEYS, required=("schema",), values={"schema": _JSON_SCHEMA, "strict": _BOOL}
    )
    response_format = {
        "anyOf": [
            {
                "type": "object",
                "properties": {"type": {"enum": ["text", "json_object"]}},
                "required": ["type"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"type": {"const": "json_schema"}, "json_schema": json_schema},
                "required": ["type", "json_schema"],
                "additionalProperties": False,
            },
        ]
    }
    chat = _stream_options_need_stream(
        object_schema(
            openai.CHAT_KEYS,
            required=("model", "messages"),
            values={
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "items": object_schema(openai.MESSAGE_KEYS, required=("role",), values=message_values),
                },
                "stream_options": object_schema(openai.STREAM_OPTION_KEYS, values={"include_usage": _BOOL}),
                "tools": _tools(openai.TOOL_KEYS, openai.FUNCTION_KEYS),
                "tool_choice": {"anyOf": [{"enum": list(TOOL_MODES)}, choice]},
                "response_format": response_format,
            },
        )
    )
    embedding = object_schema(openai.EMBEDDING_KEYS, required=("model", "input"))
    vector: Schema = {
        "anyOf": [
            {"type": "array", "items": {"type": "number"}},
            {"type": "string", "description": "base64 of little-endian float32s"},
        ]
    }
    embeddings = {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "object": {"const": "embedding"},
                        "index": {"type": "integer"},
                        "embedding": vector,
                    },
                    "required": ["object", "index", "embedding"],
                },
            },
            "model": _STRING,
            "usage": {
                "type": "object",
                "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "total_tokens")},
                "required": ["prompt_tokens", "total_tokens"],
            },
        },
        "required": ["object", "data", "model", "usage"],
    }
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
        "properties": {
            "role": {"const": "assistant"},
            "content": {"type": ["string", "null"]},
            "reasoning_content": {
                "type": "string",
                "description": "Reasoning before the answer (e.g. a collaboration model's steps).",
            },
            "tool_calls": {"type": "array", "items": {"type": "object"}},
        },
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
        ("POST", "/v1/embeddings"): {
            "operationId": "openai_embeddings",
            "tags": tags,
            "summary": "OpenAI: a vector per input text, with a model that has the `embedding` capability",
            "requestBody": {"required": True, "content": {"application/json": {"schema": embedding}}},
            "responses": _responses(_json("The vectors, in input order.", embeddings), error),
        },
    }


def _ollama_operations() -> dict[tuple[str, str], Operation]:
    tags = ["Ollama"]
    options = {"options": object_schema(ollama.OPTION_KEYS)}
    call = object_schema(
        ollama.CALL_FUNCTION_KEYS,
        required=("name",),
        values={"arguments": _OBJECT, "index": {"type": "integer"}},
    )
    format_ = {"format": {"anyOf": [{"enum": ["", "json"]}, _JSON_SCHEMA]}}
    chat = object_schema(
        ollama.CHAT_KEYS,
        required=("model", "messages"),
        values={
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": object_schema(
                    ollama.MESSAGE_KEYS,
                    required=("role",),
                    values={
                        "tool_calls": {
                            "type": "array",
                            "items": _function_item(ollama.TOOL_CALL_KEYS, call),
                        }
                    },
                ),
            },
            "tools": _tools(ollama.TOOL_KEYS, ollama.FUNCTION_KEYS),
            **options,
            **format_,
        },
    )
    generate = object_schema(ollama.GENERATE_KEYS, required=("model",), values={**options, **format_})
    no_options = {"options": object_schema(ollama.EMBED_OPTION_KEYS)}
    # No input (or an empty one) is Ollama's "load the model": nothing is embedded.
    texts = {"anyOf": [_STRING, {"type": "array", "items": _STRING}]}
    embed = object_schema(ollama.EMBED_KEYS, required=("model",), values={**no_options, "input": texts})
    legacy_embed = object_schema(ollama.EMBEDDINGS_KEYS, required=("model",), values=no_options)
    show = object_schema(ollama.SHOW_KEYS)
    vector = {"type": "array", "items": {"type": "number"}}
    details = {"type": "object", "properties": {k: _STRING for k in ("format", "family", "parameter_size")}}
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
    tag: Schema = {
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
        ("POST", "/api/embed"): {
            "operationId": "ollama_embed",
            "tags": tags,
            "summary": "Ollama: a vector per input text (no input: none, once the model is known)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": embed}}},
            "responses": _responses(
                _json(
                    "The vectors, in input order.",
                    {
                        "type": "object",
                        "properties": {
                            "model": _STRING,
                            "embeddings": {"type": "array", "items": vector},
                            "prompt_eval_count": {"type": "integer"},
                        },
                        "required": ["model", "embeddings"],
                    },
                ),
                _OLLAMA_ERROR,
            ),
        },
        ("POST", "/api/embeddings"): {
            "operationId": "ollama_embeddings",
            "tags": tags,
            "summary": "Ollama (legacy): the vector of one prompt (an empty prompt: an empty vector)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": legacy_embed}}},
            "responses": _responses(
                _json(
                    "The vector.",
                    {"type": "object", "properties": {"embedding": vector}, "required": ["embedding"]},
                ),
                _OLLAMA_ERROR,
            ),
        },
        ("POST", "/api/show"): {
            "operationId": "ollama_show",
            "tags": tags,
            "summary": "Ollama: one model, as Ollama describes one (an unknown one: 404)",
            "requestBody": {"required": True, "content": {"application/json": {"schema": show}}},
            "responses": _responses(
                _json(
                    "The model: what serves it, its context window and its capabilities in Ollama's words.",
                    {
                        "type": "object",
                        "properties": {
                            "modelfile": _STRING,
                            "parameters": _STRING,
                            "template": _STRING,
                            "details": details,
                            "model_info": _OBJECT,
                            "capabilities": {"type": "array", "items": _STRING},
                        },
                        "required": ["modelfile", "details", "model_info", "capabilities"],
                    },
                ),
                _OLLAMA_ERROR,
            ),
        },
        ("GET", "/api/ps"): {
            "operationId": "ollama_ps",
            "tags": tags,
            "summary": "Ollama: the models loaded; here every model this key may use, none ever unloaded",
            "responses": _responses(
                _json(
                    "The models.",
                    {
                        "type": "object",
                        "properties": {
                            "models": {
                                "type": "array",
                                "items": {
                                    **tag,
                                    "properties": {
                                        **tag["properties"],
                                        "expires_at": _STRING,
                                        "size_vram": {"type": "integer"},
                                        "details": details,
                                    },
                                },
                            }
                        },
                        "required": ["models"],
                    },
                ),
                _OLLAMA_ERROR,
            ),
        },
        ("GET", "/api/version"): {
            "operationId": "ollama_version",
            "tags": tags,
            "summary": f"Ollama: the Ollama version whose API this follows ({ollama.VERSION})",
            "responses": _responses(
                _json(
                    "The version.",
                    {"type": "object", "properties": {"version": _STRING}, "required": ["version"]},
                ),
                _OLLAMA_ERROR,
            ),
        },
    }


def compat_operations() -> dict[tuple[str, str], Operation]:
    """(method, path template) → operation, for every compat endpoint."""
    return {**_openai_operations(), **_ollama_operations()}
