"""OpenAPI operations of the Anthropic compatibility endpoints (gateway.compat.anthropic).

As for the other dialects (gateway.openapi.compat), which keys each object takes is read from the
endpoint's own `Keys`; the values are stated here. Rules across fields that a JSON Schema cannot state
are in the descriptions, each a 400 naming the field: a model must have the capability its request
needs (images, documents, tools, JSON output), a tool_choice names an offered tool, tool names are
unique.
"""

from __future__ import annotations

from gateway.compat import anthropic
from gateway.compat.core import INT32, Keys
from gateway.openapi.compat import Operation, Schema, _int, _json, _responses, object_schema

_STRING: Schema = {"type": "string"}
_OBJECT: Schema = {"type": "object"}
_BASE64: Schema = {
    "type": "string",
    "contentEncoding": "base64",
    "pattern": r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
}
_TEXT = object_schema(
    anthropic.TEXT_KEYS,
    required=("type", "text"),
    values={"type": {"const": "text"}, "text": _STRING, "cache_control": _OBJECT},
)
_TEXTS: Schema = {"anyOf": [_STRING, {"type": "array", "items": _TEXT}]}


def _source(kind: str, media_types: list[str], data: Schema) -> Schema:
    return object_schema(
        anthropic.SOURCE_KEYS,
        required=("type", "media_type", "data"),
        values={"type": {"const": kind}, "media_type": {"enum": media_types}, "data": data},
    )


def _file(keys: Keys, kind: str, sources: list[Schema]) -> Schema:
    values: dict[str, Schema] = {
        "type": {"const": kind},
        "source": {"anyOf": sources},
        "cache_control": _OBJECT,
    }
    values.update({"title": _STRING, "context": _STRING})
    return object_schema(keys, required=("type", "source"), values=values)


_IMAGE = _file(anthropic.IMAGE_KEYS, "image", [_source("base64", list(anthropic.IMAGE_TYPES), _BASE64)])
_DOCUMENT = _file(
    anthropic.DOCUMENT_KEYS,
    "document",
    [_source("base64", ["application/pdf"], _BASE64), _source("text", ["text/plain"], _STRING)],
)
_TOOL_USE = object_schema(
    anthropic.TOOL_USE_KEYS,
    required=("type", "id", "name", "input"),
    values={
        "type": {"const": "tool_use"},
        "id": {"type": "string", "minLength": 1},
        "name": {"type": "string", "minLength": 1},
        "input": _OBJECT,
        "cache_control": _OBJECT,
    },
)
_TOOL_RESULT = object_schema(
    anthropic.TOOL_RESULT_KEYS,
    required=("type", "tool_use_id"),
    values={
        "type": {"const": "tool_result"},
        "tool_use_id": {"type": "string", "minLength": 1},
        "content": _TEXTS,
        "is_error": {"type": "boolean"},
        "cache_control": _OBJECT,
    },
)


_THINKING_BLOCK = object_schema(
    anthropic.THINKING_BLOCK_KEYS,
    required=("type", "thinking", "signature"),
    values={
        "type": {"const": "thinking"},
        "thinking": _STRING,
        "signature": _STRING,
        "cache_control": _OBJECT,
    },
)
_REDACTED_THINKING = object_schema(
    anthropic.REDACTED_THINKING_KEYS,
    required=("type", "data"),
    values={"type": {"const": "redacted_thinking"}, "data": _STRING, "cache_control": _OBJECT},
)
#: `thinking`: enabled (a budget of at least 1024, below max_tokens: a 400 naming it otherwise), adaptive,
#: or disabled.
_THINKING: Schema = {
    "anyOf": [
        object_schema(
            anthropic.THINKING_KEYS,
            required=("type", "budget_tokens"),
            values={
                "type": {"const": "enabled"},
                "budget_tokens": {"type": "integer", "minimum": anthropic.MIN_THINKING_BUDGET},
                "display": {"const": "summarized"},
            },
        ),
        object_schema(
            anthropic.THINKING_KEYS,
            required=("type",),
            values={
                "type": {"enum": ["adaptive", "disabled"]},
                "budget_tokens": {"type": "null"},
                "display": {"const": "summarized"},
            },
        ),
    ]
}


def _turn(role: str, blocks: list[Schema]) -> Schema:
    content = {"anyOf": [_STRING, {"type": "array", "items": {"anyOf": blocks}}]}
    return object_schema(
        anthropic.MESSAGE_KEYS,
        required=("role", "content"),
        values={"role": {"const": role}, "content": content},
    )


_MESSAGES: Schema = {
    "type": "array",
    "minItems": 1,
    "items": {
        "anyOf": [
            _turn("user", [_TEXT, _IMAGE, _DOCUMENT, _TOOL_RESULT]),
            _turn("assistant", [_TEXT, _TOOL_USE, _THINKING_BLOCK, _REDACTED_THINKING]),
        ]
    },
}
_TOOL = object_schema(
    anthropic.TOOL_KEYS,
    required=("name", "input_schema"),
    values={
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"},
        "description": _STRING,
        # An object schema, or {} for a tool that takes nothing.
        "input_schema": {
            "type": "object",
            "anyOf": [
                {"maxProperties": 0},
                {
                    "properties": {"type": {"const": "object"}, "properties": {"type": "object"}},
                    "required": ["type"],
                },
            ],
        },
        "cache_control": _OBJECT,
    },
)
_TOOL_CHOICE: Schema = {
    "anyOf": [
        object_schema(
            anthropic.TOOL_CHOICE_KEYS,
            required=("type",),
            values={"type": {"enum": ["auto", "any", "none"]}, "name": {"type": "null"}},
        ),
        object_schema(
            anthropic.TOOL_CHOICE_KEYS,
            required=("type", "name"),
            values={"type": {"const": "tool"}, "name": {"type": "string", "minLength": 1}},
        ),
    ]
}
_OUTPUT_CONFIG = object_schema(
    anthropic.OUTPUT_CONFIG_KEYS,
    values={
        "format": object_schema(
            anthropic.FORMAT_KEYS,
            required=("type", "schema"),
            values={"type": {"const": "json_schema"}, "schema": _OBJECT},
        )
    },
)
_PROMPT: dict[str, Schema] = {
    "messages": _MESSAGES,
    "system": _TEXTS,
    "tools": {"type": "array", "items": _TOOL, "maxItems": 128},
    "tool_choice": _TOOL_CHOICE,
    "output_config": _OUTPUT_CONFIG,
    "cache_control": _OBJECT,
    "thinking": _THINKING,
}
_ERROR: Schema = {
    "type": "object",
    "properties": {
        "type": {"const": "error"},
        "error": {
            "type": "object",
            "properties": {"type": _STRING, "message": _STRING},
            "required": ["type", "message"],
        },
    },
    "required": ["type", "error"],
}
_BLOCK: Schema = {
    "anyOf": [
        {
            "type": "object",
            "properties": {"type": {"const": "text"}, "text": _STRING},
            "required": ["type", "text"],
        },
        {
            "type": "object",
            "properties": {"type": {"const": "tool_use"}, "id": _STRING, "name": _STRING, "input": _OBJECT},
            "required": ["type", "id", "name", "input"],
        },
        {
            "type": "object",
            "description": "Reasoning before the text (a collaboration model's steps), when thinking is on.",
            "properties": {"type": {"const": "thinking"}, "thinking": _STRING, "signature": _STRING},
            "required": ["type", "thinking", "signature"],
        },
    ]
}
_MESSAGE: Schema = {
    "type": "object",
    "properties": {
        "id": _STRING,
        "type": {"const": "message"},
        "role": {"const": "assistant"},
        "model": _STRING,
        "content": {"type": "array", "items": _BLOCK},
        "stop_reason": {"enum": ["end_turn", "max_tokens", "tool_use", "refusal"]},
        "stop_sequence": {"type": "null"},
        "usage": {
            "type": "object",
            "properties": {"input_tokens": {"type": "integer"}, "output_tokens": {"type": "integer"}},
            "required": ["input_tokens", "output_tokens"],
        },
    },
    "required": ["id", "type", "role", "model", "content", "stop_reason", "stop_sequence", "usage"],
}
_CROSS_FIELD = (
    " Rules across fields, each a 400 naming the field: a model must have the capability its request needs"
    " (images, documents, tools, JSON output); `tool_choice` goes with `tools`, and one of type `tool` names"
    " one of them; tool names are unique, tool_use ids too, and a tool_result answers an earlier tool_use;"
    " `max_tokens` is at most the model's context."
)


def anthropic_operations() -> dict[tuple[str, str], Operation]:
    tags = ["Anthropic"]
    create = object_schema(
        anthropic.MESSAGES_KEYS,
        required=("model", "max_tokens", "messages"),
        values={
            **_PROMPT,
            "max_tokens": _int(INT32, "max_tokens"),
            "temperature": {"type": "number", "minimum": 0, "maximum": 1},
            "stop_sequences": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": 64},
                "maxItems": 4,
            },
            "metadata": object_schema(anthropic.METADATA_KEYS, values={"user_id": _STRING}),
        },
    )
    count = object_schema(anthropic.COUNT_KEYS, required=("model", "messages"), values=_PROMPT)
    return {
        ("POST", "/v1/messages"): {
            "operationId": "anthropic_messages",
            "tags": tags,
            "summary": "Anthropic: a message, whole or streamed (`stream: true`: Anthropic's SSE events)",
            "description": "Any configured model, through Anthropic's Messages API." + _CROSS_FIELD,
            "requestBody": {"required": True, "content": {"application/json": {"schema": create}}},
            "responses": _responses(
                {
                    "description": "The message; with `stream: true`, its events"
                    " (`message_start` to `message_stop`).",
                    "content": {
                        "application/json": {"schema": _MESSAGE},
                        "text/event-stream": {
                            "schema": {
                                "type": "string",
                                "description": "Named events (`event: <type>`), each with its JSON `data`.",
                            }
                        },
                    },
                },
                _ERROR,
            ),
        },
        ("POST", "/v1/messages/count_tokens"): {
            "operationId": "anthropic_count_tokens",
            "tags": tags,
            "summary": "Anthropic: the tokens a message request's prompt takes",
            "description": "Counted by the model's provider when it can (`x-aibattle-tokens-estimated: true`"
            " otherwise: about 4 characters a token)." + _CROSS_FIELD,
            "requestBody": {"required": True, "content": {"application/json": {"schema": count}}},
            "responses": _responses(
                _json(
                    "The count.",
                    {
                        "type": "object",
                        "properties": {"input_tokens": {"type": "integer", "minimum": 0}},
                        "required": ["input_tokens"],
                    },
                ),
                _ERROR,
            ),
        },
    }
