"""Between the API's protobuf messages and the providers' types: what services and orchestration
both need (a completion request as a ChatRequest, an attachment, usage with its cost)."""

from __future__ import annotations

import math
import time

from aibattle.v1 import common_pb2, completions_pb2
from common.errors import CAPABILITY_MISSING, InvalidArgument
from server.providers.attachments import chat_message, is_text
from server.providers.base import Attachment, ChatMessage, ChatRequest, Role, Usage
from server.settings import ModelConfig

MAX_STOP_SEQUENCES = 4
MAX_STOP_LENGTH = 64
ROLES = {"system": Role.SYSTEM, "user": Role.USER, "human": Role.USER, "assistant": Role.ASSISTANT}
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
    for i, message in enumerate(request.messages):
        role = ROLES.get(message.role)
        if role is None:
            raise InvalidArgument(f"messages[{i}].role", f"{message.role!r} is not one of {', '.join(ROLES)}")
        files = [
            attachment_for(f, f"messages[{i}].file_data[{j}]", model) for j, f in enumerate(message.file_data)
        ]
        messages.append(chat_message(role, message.content, files))
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
        deadline=time.monotonic() + time_remaining if time_remaining is not None else None,
    )


def usage_proto(model: ModelConfig, usage: Usage) -> common_pb2.Usage:
    cost = model.cost_usd(usage.prompt_tokens, usage.completion_tokens)
    return common_pb2.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost_usd=cost,
    )
