"""The request each SDK method sends, shared by `Client` and `AsyncClient` so they cannot drift."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aibattle_sdk._gen.aibattle import v1
from aibattle_sdk._gen.google.protobuf import Struct
from aibattle_sdk._rpcs import Rpc, rpc

LIST_MODELS = rpc("ModelService", "ListModels")
GET_MODEL = rpc("ModelService", "GetModel")
CREATE_COMPLETION = rpc("CompletionService", "CreateCompletion")
STREAM_COMPLETION = rpc("CompletionService", "StreamCompletion")
COUNT_TOKENS = rpc("CompletionService", "CountTokens")
CREATE_EMBEDDINGS = rpc("EmbeddingService", "CreateEmbeddings")
CREATE_CONVERSATION = rpc("ConversationService", "CreateConversation")
GET_CONVERSATION = rpc("ConversationService", "GetConversation")
LIST_CONVERSATIONS = rpc("ConversationService", "ListConversations")
DELETE_CONVERSATION = rpc("ConversationService", "DeleteConversation")
ADD_MESSAGE = rpc("ConversationService", "AddMessage")
RUN_CONVERSATION = rpc("ConversationService", "RunConversation")
CANCEL_CONVERSATION = rpc("ConversationService", "CancelConversation")
STREAM_CONVERSATION_EVENTS = rpc("ConversationService", "StreamConversationEvents")
CONVERSE = rpc("ConversationService", "Converse")
CREATE_REASONING = rpc("ReasoningService", "CreateReasoning")
GET_REASONING = rpc("ReasoningService", "GetReasoning")
LIST_REASONINGS = rpc("ReasoningService", "ListReasonings")
CANCEL_REASONING = rpc("ReasoningService", "CancelReasoning")
STREAM_REASONING_EVENTS = rpc("ReasoningService", "StreamReasoningEvents")
RESUME_REASONING = rpc("ReasoningService", "ResumeReasoning")
CREATE_KEY = rpc("KeyService", "CreateKey")
LIST_KEYS = rpc("KeyService", "ListKeys")
REVOKE_KEY = rpc("KeyService", "RevokeKey")

ToolLike = v1.Tool | Mapping[str, Any]
"""A tool: `v1.Tool`, or a dict of its fields {"name", "description", "parameters" (a JSON Schema dict),
"strict"}."""
ToolChoiceLike = v1.ToolChoice | str
"""`v1.ToolChoice`, or "auto", "none", "required", or the name of the one tool the model must call."""
ResponseFormatLike = v1.ResponseFormat | str | Mapping[str, Any]
"""`v1.ResponseFormat`, or "text", "json_object", or a JSON Schema dict the answer must be valid against."""
MessageLike = v1.Message | Mapping[str, Any]
"""`v1.Message`, or a dict of its fields: {"role", "content"}, plus "tool_calls" (ToolCalls or dicts
{"id", "name", "arguments"}) on an assistant turn, "tool_call_id" on a "tool" result, "model"."""

_MODES = {
    "auto": v1.ToolChoiceMode.AUTO,
    "none": v1.ToolChoiceMode.NONE,
    "required": v1.ToolChoiceMode.REQUIRED,
}
_OPENAI_TOOL = '; OpenAI\'s {"type": "function", "function": {...}} is the inner dict here'
_FORMATS = {"text": v1.ResponseFormatType.TEXT, "json_object": v1.ResponseFormatType.JSON_OBJECT}


def _fields(what: str, given: Mapping[str, Any], allowed: Sequence[str], hint: str = "") -> None:
    """Refuse a dict with keys the message lacks: a typo would otherwise be dropped silently."""
    if not isinstance(given, Mapping):
        raise TypeError(f"{what}: expected a v1 message or a dict, got {type(given).__name__}")
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown key {unknown[0]!r} (expected {', '.join(allowed)}){hint}")


def as_struct(value: Mapping[str, Any] | Struct | None) -> Struct | None:
    """A google.protobuf.Struct from a JSON object (a dict), as the protos carry JSON Schemas."""
    if value is None or isinstance(value, Struct):
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a JSON object (dict), got {type(value).__name__}")
    return Struct.from_dict(dict(value))


def as_tool(value: ToolLike) -> v1.Tool:
    """A v1.Tool from itself or from a dict of its fields."""
    if isinstance(value, v1.Tool):
        return value
    _fields("tool", value, ("name", "description", "parameters", "strict"), hint=_OPENAI_TOOL)
    return v1.Tool(
        name=value.get("name", ""),
        description=value.get("description", ""),
        parameters=as_struct(value.get("parameters")),
        strict=bool(value.get("strict", False)),
    )


def as_tools(values: Iterable[ToolLike]) -> list[v1.Tool]:
    return [as_tool(value) for value in values]


def as_tool_choice(value: ToolChoiceLike | None) -> v1.ToolChoice | None:
    """A v1.ToolChoice from "auto", "none", "required" or a tool's name (None: unset, which means auto)."""
    if value is None or isinstance(value, v1.ToolChoice):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError(
            'tool_choice: expected "auto", "none", "required", a tool\'s name or a v1.ToolChoice'
        )
    mode = _MODES.get(value)
    if mode is not None:
        return v1.ToolChoice(mode=mode)
    return v1.ToolChoice(mode=v1.ToolChoiceMode.TOOL, name=value)


def as_response_format(value: ResponseFormatLike | None) -> v1.ResponseFormat | None:
    """A v1.ResponseFormat from "text", "json_object" or a JSON Schema dict (None: unset, free text)."""
    if value is None or isinstance(value, v1.ResponseFormat):
        return value
    if isinstance(value, str):
        if value not in _FORMATS:
            raise ValueError(
                'response_format: expected "text", "json_object", a JSON Schema dict or a v1.ResponseFormat, '
                f"got {value!r}"
            )
        return v1.ResponseFormat(type=_FORMATS[value])
    if value.get("type") in ("text", "json_object", "json_schema"):
        # OpenAI's wrapper, not a schema: no JSON Schema type is spelled so
        raise ValueError(
            'response_format: that is OpenAI\'s wrapper; give "json_object", the JSON Schema dict itself, '
            "or a v1.ResponseFormat (for a name or strict)"
        )
    return v1.ResponseFormat(type=v1.ResponseFormatType.JSON_SCHEMA, schema=as_struct(value))


def as_tool_call(value: v1.ToolCall | Mapping[str, Any]) -> v1.ToolCall:
    """A v1.ToolCall from itself or {"id", "name", "arguments"} (arguments as JSON text, or a dict)."""
    if isinstance(value, v1.ToolCall):
        return value
    _fields("tool call", value, ("id", "name", "arguments"))
    arguments = value.get("arguments", "")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments)
    return v1.ToolCall(id=value.get("id", ""), name=value.get("name", ""), arguments=arguments)


def as_message(value: MessageLike) -> v1.Message:
    """A v1.Message from itself or from a dict of its request fields."""
    if isinstance(value, v1.Message):
        return value
    _fields("message", value, ("role", "content", "model", "file_data", "tool_calls", "tool_call_id"))
    return v1.Message(
        role=value.get("role", ""),
        content=value.get("content", ""),
        model=value.get("model", ""),
        file_data=[files] if isinstance(files := value.get("file_data", []), v1.FileData) else list(files),
        tool_calls=[as_tool_call(call) for call in value.get("tool_calls", ())],
        tool_call_id=value.get("tool_call_id", ""),
    )


def as_messages(values: Iterable[MessageLike]) -> list[v1.Message]:
    return [as_message(value) for value in values]


def completion(
    rpc_: Rpc,
    model: str,
    prompt: str,
    *,
    max_tokens: int | None,
    temperature: float | None,
    system_instruction: str,
    messages: Iterable[MessageLike],
    file_data: v1.FileData | None,
    top_p: float | None,
    stop: Sequence[str],
    seed: int | None,
    tools: Iterable[ToolLike] = (),
    tool_choice: ToolChoiceLike | None = None,
    response_format: ResponseFormatLike | None = None,
) -> Any:
    """CreateCompletionRequest or StreamCompletionRequest (the same fields)."""
    make: Any = rpc_.request_type
    return make(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        system_instruction=system_instruction,
        messages=as_messages(messages),
        file_data=file_data,
        top_p=top_p,
        stop=list(stop),
        seed=seed,
        tools=as_tools(tools),
        tool_choice=as_tool_choice(tool_choice),
        response_format=as_response_format(response_format),
    )


def participants(models: Sequence[v1.Participant | dict[str, str] | tuple[str, str]]) -> list[v1.Participant]:
    """Participants from messages, seed-style dicts ({"id", "role"}) or (id, role) pairs."""
    out = []
    for seat in models:
        if isinstance(seat, v1.Participant):
            out.append(seat)
        elif isinstance(seat, dict):
            out.append(v1.Participant(id=seat["id"], role=seat["role"], name=seat.get("name", "")))
        else:
            out.append(v1.Participant(id=seat[0], role=seat[1]))
    return out


def event_sequence(response: Any) -> int:
    """The sequence of a Stream*EventsResponse's event."""
    return int(response.event.sequence) if response.event is not None else 0


def event_of(response: Any) -> Any:
    """The event a Stream*EventsResponse carries."""
    return response.event
