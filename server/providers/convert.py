"""Between the API's protobuf messages and the providers' types: what services and orchestration
both need (a completion request as a ChatRequest, an attachment, usage with its cost).

Tools and structured output are checked here, against the model's capabilities in effect
(`server.providers.capabilities`): a model that cannot call tools refuses `tools` (and a history
holding tool calls or results), one that cannot give JSON refuses `response_format`, both with
INVALID_ARGUMENT (CAPABILITY_MISSING) naming the field, so no provider sees what it cannot honour."""

from __future__ import annotations

import math
import time
from dataclasses import replace

from aibattle.v1 import common_pb2, completions_pb2
from common.errors import CAPABILITY_MISSING, InvalidArgument
from server.providers.attachments import chat_message, is_text
from server.providers.base import (
    Attachment,
    ChatMessage,
    ChatRequest,
    FormatType,
    ResponseFormat,
    Role,
    ToolCall,
    ToolChoice,
    ToolMode,
    ToolSpec,
    Usage,
)
from server.providers.capabilities import JSON, TOOLS, require
from server.providers.tools import check_name, plain, tool_specs
from server.settings import ModelConfig

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64
ROLES = {
    "system": Role.SYSTEM,
    "user": Role.USER,
    "human": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
TOOL_MODES = {
    common_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: ToolMode.AUTO,
    common_pb2.TOOL_CHOICE_MODE_AUTO: ToolMode.AUTO,
    common_pb2.TOOL_CHOICE_MODE_NONE: ToolMode.NONE,
    common_pb2.TOOL_CHOICE_MODE_REQUIRED: ToolMode.REQUIRED,
    common_pb2.TOOL_CHOICE_MODE_TOOL: ToolMode.TOOL,
}
FORMATS = {
    common_pb2.RESPONSE_FORMAT_TYPE_UNSPECIFIED: None,
    common_pb2.RESPONSE_FORMAT_TYPE_TEXT: None,
    common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT: FormatType.JSON_OBJECT,
    common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA: FormatType.JSON_SCHEMA,
}
# FileData.type → the model capability it needs (text attachments need "text": see attachments.is_text).
ATTACHMENT_CAPABILITIES = {"image": "image", "audio": "audio", "video": "video", "document": "document"}


# The two request messages have the same fields (buf wants one request type per RPC).
CompletionRequest = completions_pb2.CreateCompletionRequest | completions_pb2.StreamCompletionRequest


def attachment_for(data: common_pb2.FileData, field: str, model: ModelConfig) -> tuple[str, Attachment]:
    """A request's FileData as the model will read it; errors name `field` (bad type, or a capability
    the model lacks)."""
    if is_text(data.type, data.mime_type):
        needed = "text"
    elif data.type in ATTACHMENT_CAPABILITIES:
        needed = ATTACHMENT_CAPABILITIES[data.type]
    else:
        raise InvalidArgument(
            f"{field}.type", f"{data.type!r} is not one of image, audio, video, document, text"
        )
    if needed not in model.capabilities:
        raise InvalidArgument(
            field,
            f"model {model.id!r} lacks the {needed!r} capability this attachment needs",
            reason=CAPABILITY_MISSING,
        )
    return field, Attachment(type=data.type, mime_type=data.mime_type, content=data.content, path=data.path)


def chat_request(
    request: CompletionRequest, model: ModelConfig, *, time_remaining: float | None
) -> ChatRequest:
    """Validate a completion request against its model; errors name the field at fault.

    `time_remaining`: seconds left of the caller's deadline (None: no deadline)."""
    if not request.prompt and not request.messages:
        raise InvalidArgument("prompt", "either prompt or messages is required")
    messages: list[ChatMessage] = []
    if request.system_instruction:
        messages.append(ChatMessage(Role.SYSTEM, request.system_instruction))
    calls: dict[str, ToolCall] = {}  # the history's tool calls by id, for the results that answer them
    for i, message in enumerate(request.messages):
        role = ROLES.get(message.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role", f"{message.role!r} is not one of {', '.join(ROLES)}")
        files = [
            attachment_for(f, f"messages[{i}].file_data[{j}]", model) for j, f in enumerate(message.file_data)
        ]
        spoken = chat_message(role, message.content, files)
        if message.tool_calls or role == Role.TOOL:
            spoken = _with_tools(spoken, message, f"messages[{i}]", model, calls)
        elif message.tool_call_id:
            raise InvalidArgument(f"messages[{i}].tool_call_id", "only on a 'tool' message")
        messages.append(spoken)
    if request.prompt or request.HasField("file_data"):
        files = (
            [attachment_for(request.file_data, "file_data", model)] if request.HasField("file_data") else []
        )
        messages.append(chat_message(Role.USER, request.prompt, files))

    max_tokens = model.default_max_tokens
    if request.HasField("max_tokens"):  # at least 1: the schema's bound
        max_tokens = request.max_tokens
    temperature = top_p = None
    if request.HasField("temperature"):
        if not (math.isfinite(request.temperature) and 0 <= request.temperature <= 2):
            raise InvalidArgument("temperature", f"must be between 0 and 2, got {request.temperature}")
        temperature = request.temperature
    if request.HasField("top_p"):
        if not (math.isfinite(request.top_p) and 0 < request.top_p <= 1):
            raise InvalidArgument("top_p", f"must be in (0, 1], got {request.top_p}")
        top_p = request.top_p
    # The schema bounds it to [0, 2]; 0 is refused here (bounds are inclusive): llama.cpp divides by it.
    if request.HasField("repeat_penalty") and request.repeat_penalty <= 0:
        raise InvalidArgument("repeat_penalty", f"must be in (0, 2], got {request.repeat_penalty}")
    if len(request.stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument("stop", f"at most {MAX_STOP_SEQUENCES} sequences, got {len(request.stop)}")
    for i, stop in enumerate(request.stop):
        if not stop or len(stop) > MAX_STOP_LENGTH:
            raise InvalidArgument(f"stop[{i}]", f"must be 1 to {MAX_STOP_LENGTH} characters")
    tools = tool_specs(request.tools)
    if tools:
        require(model, TOOLS, "tools")
    tool_choice = _tool_choice(request, tools)
    response_format = _response_format(request)
    if response_format is not None:
        require(model, JSON, "response_format")
    # A monotonic instant, not seconds: it stays true however long the request waits before a
    # provider reads it.
    return ChatRequest(
        messages=tuple(messages),
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        stop=tuple(request.stop),
        seed=request.seed & 0xFFFFFFFF if request.HasField("seed") else None,
        # In range already: the BoundsInterceptor checked the schema's bounds before this handler ran.
        top_k=request.top_k if request.HasField("top_k") else None,
        repeat_penalty=request.repeat_penalty if request.HasField("repeat_penalty") else None,
        frequency_penalty=request.frequency_penalty if request.HasField("frequency_penalty") else None,
        presence_penalty=request.presence_penalty if request.HasField("presence_penalty") else None,
        tools=tools,
        tool_choice=tool_choice,
        response_format=response_format,
        deadline=time.monotonic() + time_remaining if time_remaining is not None else None,
    )


def _with_tools(
    spoken: ChatMessage,
    message: common_pb2.Message,
    field: str,
    model: ModelConfig,
    calls: dict[str, ToolCall],
) -> ChatMessage:
    """An assistant message's tool calls, or a tool's result, checked; `calls` collects the calls."""
    require(model, TOOLS, f"{field}.tool_calls" if message.tool_calls else f"{field}.role")
    if spoken.role == Role.TOOL:
        if message.tool_calls:
            raise InvalidArgument(f"{field}.tool_calls", "only on an assistant message")
        call = calls.get(message.tool_call_id)
        if call is None:
            raise InvalidArgument(
                f"{field}.tool_call_id",
                f"{message.tool_call_id!r} answers no tool call of an earlier assistant message"
                if message.tool_call_id
                else "is required on a 'tool' message (the id of the call it answers)",
            )
        return replace(spoken, tool_call_id=call.id, tool_name=call.name)
    if spoken.role != Role.ASSISTANT:
        raise InvalidArgument(f"{field}.tool_calls", "only on an assistant message")
    if message.tool_call_id:
        raise InvalidArgument(f"{field}.tool_call_id", "only on a 'tool' message")
    own: list[ToolCall] = []
    for j, proto in enumerate(message.tool_calls):
        if not proto.id:
            raise InvalidArgument(f"{field}.tool_calls[{j}].id", "is required")
        if proto.id in calls:
            raise InvalidArgument(f"{field}.tool_calls[{j}].id", f"{proto.id!r} is used by an earlier call")
        check_name(proto.name, f"{field}.tool_calls[{j}].name")
        call = ToolCall(id=proto.id, name=proto.name, arguments=proto.arguments)
        calls[call.id] = call
        own.append(call)
    return replace(spoken, tool_calls=tuple(own))


def _tool_choice(request: CompletionRequest, tools: tuple[ToolSpec, ...]) -> ToolChoice:
    if not request.HasField("tool_choice"):
        return ToolChoice()
    choice = request.tool_choice
    mode = TOOL_MODES.get(choice.mode)
    if mode is None:
        raise InvalidArgument("tool_choice.mode", f"{choice.mode} is not a ToolChoiceMode")
    if not tools:
        raise InvalidArgument("tool_choice", "is only for a request with tools")
    if mode != ToolMode.TOOL:
        if choice.name:
            raise InvalidArgument("tool_choice.name", "only with TOOL_CHOICE_MODE_TOOL")
        return ToolChoice(mode)
    if not choice.name:
        raise InvalidArgument("tool_choice.name", "is required with TOOL_CHOICE_MODE_TOOL")
    if choice.name not in {t.name for t in tools}:
        raise InvalidArgument("tool_choice.name", f"{choice.name!r} is none of the request's tools")
    return ToolChoice(mode, choice.name)


def _response_format(request: CompletionRequest) -> ResponseFormat | None:
    if not request.HasField("response_format"):
        return None
    given = request.response_format
    if given.type not in FORMATS:
        raise InvalidArgument("response_format.type", f"{given.type} is not a ResponseFormatType")
    kind = FORMATS[given.type]
    schema = plain(given.schema) if given.HasField("schema") else {}
    if kind != FormatType.JSON_SCHEMA:
        for name, value in (("schema", schema), ("name", given.name)):
            if value:
                raise InvalidArgument(f"response_format.{name}", "only with RESPONSE_FORMAT_TYPE_JSON_SCHEMA")
        return None if kind is None else ResponseFormat(kind, strict=given.strict)
    if not schema:
        raise InvalidArgument("response_format.schema", "is required with RESPONSE_FORMAT_TYPE_JSON_SCHEMA")
    if given.name:
        check_name(given.name, "response_format.name", "a schema name")
    return ResponseFormat(kind, schema=schema, name=given.name or "response", strict=given.strict)


def usage_proto(model: ModelConfig, usage: Usage) -> common_pb2.Usage:
    cost = model.cost_usd(usage.prompt_tokens, usage.completion_tokens)
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost_usd=cost,
    )
