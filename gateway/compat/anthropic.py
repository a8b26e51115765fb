"""Anthropic compatibility: `POST /v1/messages` (JSON or SSE) and `POST /v1/messages/count_tokens`.

Good enough for the official `anthropic` client and tools built on it, for any configured model:
`system` as a string or text blocks; `messages` whose content is a string or blocks (`text`; base64
`image` and `document` blocks, which the model must have the capability for; `tool_use` in assistant
turns; `tool_result` in user turns, which become "tool" messages); `tools`, `tool_choice`,
`output_config.format` (JSON valid against a schema: our response_format), `stop_sequences`,
`temperature` (Anthropic's 0 to 1), `top_p`, `top_k`, `metadata`, `thinking`. The answer is a `message`
object with `text` and `tool_use` blocks; `stream: true` gives Anthropic's event sequence
(`message_start`, `content_block_start`, `ping`, `content_block_delta` with `text_delta` or
`input_json_delta`, `content_block_stop`, `message_delta`, `message_stop`). `count_tokens` asks
CountTokens.

Thinking: with `thinking: {"type": "enabled", "budget_tokens": n}` (n at least 1024 and below
`max_tokens`, as Anthropic checks it) or `{"type": "adaptive"}`, the reasoning text a model produces
before its answer (a thinking model's, or the steps of a collaboration model, each labelled by its kind
and model) comes as `thinking` blocks before the text, streamed as Anthropic streams them (a
`thinking` block's start, `thinking_delta`s, a `signature_delta`, its stop). Without it (or with
`{"type": "disabled"}`) no thinking block is sent, so code reading `content[0].text` keeps working;
a collaboration model still runs, and its session stays readable (`x-aibattle-reasoning-id`, below).
The budget does not cap the thinking here: a model's is its own, a collaboration's is its steps. A
block's `signature` is empty (nothing here signs thinking), and `thinking` / `redacted_thinking` blocks
sent back in assistant turns are taken and not carried to the model (Anthropic drops earlier turns'
thinking too).

What differs from Anthropic's own server, and why:
* `message_start` reports `input_tokens: 0`: the prompt's count is known when the model finishes, and
  `message_delta`'s usage carries it (cumulative, as Anthropic's is; the client's accumulator reads it
  there).
* `stop_reason` is never `stop_sequence`: the models' finish reasons don't tell a stop sequence from a
  natural end, so both are `end_turn` (`stop_sequence` stays null).
* `cache_control` (top-level or on a block) is accepted and does nothing: prompt caching changes cost
  and latency, never the answer. `speed` only "standard"; `service_tier` either of its values (one tier
  here); `thinking.display` only "summarized", and not `{"type": "between_tools"}`.
* `is_error: true` on a tool result is carried as the words "Error: " before its content (our tool
  messages have no flag for it).
* Mid-stream failover (opt-in per model): the first `content_block_delta` (or `message_delta`) after
  the answer moved to another deployment or model carries a non-standard `failover` object (`from_model`,
  `from_deployment`, `to_model`, `to_deployment`, `reason`); clients ignore fields they don't know.
* The deployment that answered, when the model has several, is the `x-aibattle-deployment` header;
  the reasoning session of a collaboration model's answer is the `x-aibattle-reasoning-id` header
  (readable, with all its iterations, at `/api/v1/collaborative-reasoning/{id}`);
  `count_tokens` answers `x-aibattle-tokens-estimated: true` when the model's provider cannot count
  and the server estimated (about 4 characters a token).

Every error is Anthropic's `{"type": "error", "error": {"type", "message"}}`, its `type` from the HTTP
status (400 invalid_request_error, 401 authentication_error, 402 billing_error, 403 permission_error,
404 not_found_error, 413 request_too_large, 429 rate_limit_error, 503 and 529 overloaded_error, 504
timeout_error, other 5xx api_error), which the client maps to its exception types; mid-stream, an
`event: error` with the same object. Unknown keys are refused by name, as on the other dialects.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from google.rpc import status_pb2

from aibattle.v1 import common_pb2, completions_pb2
from common.enums import FinishReason
from common.errors import UNSUPPORTED_CONTENT, UNSUPPORTED_PARAMETER
from gateway.calls import cancel_on_exit
from gateway.compat.core import (
    ChatParams,
    Keys,
    arguments_object,
    call_unary,
    create_completion,
    failover_json,
    invalid,
    json_format,
    optional_bool,
    optional_int,
    optional_list,
    optional_number,
    optional_object,
    optional_str,
    read_object,
    required_model,
    required_str,
    stream_completion,
    tool,
    tool_choice,
    wrong_type,
)
from gateway.descriptors import Rpc
from gateway.errors import http_status
from gateway.transcode import dumps_bytes
from gateway.web_errors import Dialect
from gateway.web_state import call_context
from gateway.web_stream import ESTIMATED_HEADER, SSE, answer_headers, sse_event, stream_http

COUNT_TOKENS = Rpc.of(
    completions_pb2.DESCRIPTOR.services_by_name["CompletionService"].methods_by_name["CountTokens"]
)

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}


def error_body(status: status_pb2.Status, http: int) -> dict[str, Any]:
    """Anthropic's error object for a status."""
    kind = _ERROR_TYPES.get(http, "api_error" if http >= 500 else "invalid_request_error")
    return {"type": "error", "error": {"type": kind, "message": status.message}}


DIALECT = Dialect("anthropic", error_body, "anthropic")


def owns_path(raw_path: str) -> bool:
    """/v1/messages and everything under it: Anthropic's path space (the rest of /v1/ is OpenAI's)."""
    return raw_path == "/v1/messages" or raw_path.startswith("/v1/messages/")


_CACHE = "prompt caching changes cost and latency, never the answer"
#: Keys of both /v1/messages and /v1/messages/count_tokens.
_PROMPT = Keys(
    honoured=frozenset(
        {"model", "messages", "system", "tools", "tool_choice", "output_config", "cache_control", "thinking"}
    ),
    unsupported={
        "mcp_servers": "MCP connectors are not supported",
        "container": "code execution containers are not supported",
        "context_management": "context management is not supported",
    },
)
MESSAGES_KEYS = Keys(
    honoured=_PROMPT.honoured
    | {"max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "stream", "metadata"},
    # One tier and one speed of service here: Anthropic's defaults ask for nothing else.
    defaults={**_PROMPT.defaults, "service_tier": ("auto", "standard_only"), "speed": ("standard",)},
    unsupported={**_PROMPT.unsupported, "speed": "only the standard speed is served"},
)
COUNT_KEYS = _PROMPT
MESSAGE_KEYS = Keys(honoured=frozenset({"role", "content"}))
METADATA_KEYS = Keys(honoured=frozenset({"user_id"}))
TEXT_KEYS = Keys(honoured=frozenset({"type", "text", "cache_control"}), defaults={"citations": ([],)})
SOURCE_KEYS = Keys(honoured=frozenset({"type", "media_type", "data"}))
IMAGE_KEYS = Keys(honoured=frozenset({"type", "source", "cache_control"}))
DOCUMENT_KEYS = Keys(
    honoured=frozenset({"type", "source", "cache_control", "title", "context"}),
    unsupported={"citations": "citations are not supported"},
)
TOOL_USE_KEYS = Keys(honoured=frozenset({"type", "id", "name", "input", "cache_control"}))
THINKING_BLOCK_KEYS = Keys(honoured=frozenset({"type", "thinking", "signature", "cache_control"}))
REDACTED_THINKING_KEYS = Keys(honoured=frozenset({"type", "data", "cache_control"}))
#: `thinking` (see the module docstring), and Anthropic's smallest budget.
THINKING_KEYS = Keys(honoured=frozenset({"type", "budget_tokens", "display"}))
THINKING_TYPES = ("enabled", "adaptive", "disabled")
MIN_THINKING_BUDGET = 1024
TOOL_RESULT_KEYS = Keys(honoured=frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"}))
TOOL_KEYS = Keys(
    honoured=frozenset({"name", "description", "input_schema", "cache_control"}),
    defaults={"type": ("custom",), "strict": (False,)},
    unsupported={
        "type": "Anthropic's server tools (web search, bash, text editor…) do not run here",
        "strict": "strict tool input is not enforced here",
    },
)
OUTPUT_CONFIG_KEYS = Keys(
    honoured=frozenset({"format"}), unsupported={"effort": "no model here takes an effort level"}
)
FORMAT_KEYS = Keys(honoured=frozenset({"type", "schema"}))
TOOL_CHOICE_KEYS = Keys(
    honoured=frozenset({"type", "name"}),
    defaults={"disable_parallel_tool_use": (False,)},
    unsupported={"disable_parallel_tool_use": "the models here cannot be held to one tool call"},
)
#: Anthropic's words for tool choices, in the words every dialect shares (core.TOOL_MODES).
_TOOL_MODES = {"auto": "auto", "any": "required", "none": "none"}
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")
_STOP_REASONS = {
    FinishReason.STOP: "end_turn",
    FinishReason.LENGTH: "max_tokens",
    FinishReason.TOOL_CALLS: "tool_use",
    FinishReason.CONTENT_FILTER: "refusal",
}
#: Anthropic's temperature runs from 0 to 1 (its 1 is the models' neutral, as ours): a larger value is
#: refused as Anthropic refuses it, rather than meaning something else here.
MAX_TEMPERATURE = 1.0


def _blocks(content: Any, where: str) -> list[dict[str, Any]]:
    """Content as blocks: a string is one text block."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list) and all(isinstance(b, dict) for b in content):
        return content
    raise wrong_type(where, "a string or a list of content blocks")


def _block_type(block: Mapping[str, Any], where: str) -> str:
    kind = block.get("type")
    if not isinstance(kind, str):
        raise wrong_type(f"{where}.type", "a string")
    return kind


def _text(block: Mapping[str, Any], where: str) -> str:
    TEXT_KEYS.check(block, where=f"{where}.")
    optional_object(block, "cache_control", where=f"{where}.")
    text = block.get("text")
    if not isinstance(text, str):
        raise wrong_type(f"{where}.text", "a string")
    return text


def _texts(content: Any, where: str) -> str:
    """Text blocks (or a string) as one text; separate blocks stay separate paragraphs."""
    texts = []
    for j, block in enumerate(_blocks(content, where)):
        at = f"{where}[{j}]"
        if _block_type(block, at) != "text":
            raise invalid(
                f"{at}.type", f"{at}.type: only text blocks are supported here", reason=UNSUPPORTED_CONTENT
            )
        texts.append(_text(block, at))
    return "\n\n".join(texts)


def _base64(source: Mapping[str, Any], where: str) -> bytes:
    data = source.get("data")
    if not isinstance(data, str):
        raise wrong_type(f"{where}.data", "a base64 string")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise invalid(f"{where}.data", f"{where + '.data'!r} is not valid base64") from exc


def _file(block: Mapping[str, Any], kind: str, where: str) -> common_pb2.FileData:
    """An image or document block as an attachment (the server checks the model's capability)."""
    (IMAGE_KEYS if kind == "image" else DOCUMENT_KEYS).check(block, where=f"{where}.")
    optional_object(block, "cache_control", where=f"{where}.")
    for key in ("title", "context"):
        optional_str(block, key, where=f"{where}.")
    source = optional_object(block, "source", where=f"{where}.")
    at = f"{where}.source"
    SOURCE_KEYS.check(source, where=f"{at}.")
    source_type = optional_str(source, "type", where=f"{at}.")
    media_type = optional_str(source, "media_type", where=f"{at}.") or ""
    if kind == "image" and source_type == "base64":
        if media_type not in IMAGE_TYPES:
            raise invalid(
                f"{at}.media_type", f"{at + '.media_type'!r} must be one of {', '.join(IMAGE_TYPES)}"
            )
        return common_pb2.FileData(type="image", mime_type=media_type, content=_base64(source, at))
    if kind == "document" and source_type == "base64" and media_type == "application/pdf":
        return common_pb2.FileData(type="document", mime_type=media_type, content=_base64(source, at))
    if kind == "document" and source_type == "text" and media_type == "text/plain":
        data = source.get("data")
        if not isinstance(data, str):
            raise wrong_type(f"{at}.data", "a string")
        return common_pb2.FileData(type="text", mime_type=media_type, content=data.encode())
    takes = "base64 images" if kind == "image" else "base64 PDF or plain text documents"
    raise invalid(
        f"{at}.type",
        f"{at}: only {takes} are supported (nothing is fetched from a URL)",
        reason=UNSUPPORTED_CONTENT,
    )


def _tool_call(block: Mapping[str, Any], where: str) -> common_pb2.ToolCall:
    TOOL_USE_KEYS.check(block, where=f"{where}.")
    optional_object(block, "cache_control", where=f"{where}.")
    call_id = required_str(block, "id", where=f"{where}.")
    name = required_str(block, "name", where=f"{where}.")
    tool_input = block.get("input")
    if not isinstance(tool_input, dict):
        raise wrong_type(f"{where}.input", "an object")
    return common_pb2.ToolCall(id=call_id, name=name, arguments=json.dumps(tool_input, ensure_ascii=False))


def _tool_result(block: Mapping[str, Any], where: str) -> common_pb2.Message:
    TOOL_RESULT_KEYS.check(block, where=f"{where}.")
    optional_object(block, "cache_control", where=f"{where}.")
    call_id = required_str(block, "tool_use_id", where=f"{where}.")
    content = block.get("content")
    text = "" if content is None else _texts(content, f"{where}.content")
    if optional_bool(block, "is_error", where=f"{where}."):
        text = f"Error: {text}"
    return common_pb2.Message(role="tool", content=text, tool_call_id=call_id)


def _messages(body: Mapping[str, Any]) -> list[common_pb2.Message]:
    """Anthropic's turns as ours: a user turn's tool results become "tool" messages, before its other
    blocks; an assistant turn's tool_use blocks become its tool_calls."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise wrong_type("messages", "a non-empty list")
    messages: list[common_pb2.Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise wrong_type(where, "an object")
        MESSAGE_KEYS.check(item, where=f"{where}.")
        role = item.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"{where}.role", f'{where + ".role"!r} must be "user" or "assistant"')
        turn = common_pb2.Message(role=role)
        texts: list[str] = []
        before = len(messages)
        for j, block in enumerate(_blocks(item.get("content"), f"{where}.content")):
            at = f"{where}.content[{j}]"
            kind = _block_type(block, at)
            if kind == "text":
                texts.append(_text(block, at))
            elif kind in ("image", "document") and role == "user":
                turn.file_data.append(_file(block, kind, at))
            elif kind == "tool_use" and role == "assistant":
                turn.tool_calls.append(_tool_call(block, at))
            elif kind == "tool_result" and role == "user":
                messages.append(_tool_result(block, at))
            elif kind in ("thinking", "redacted_thinking") and role == "assistant":
                _earlier_thinking(block, kind, at)
            else:
                raise invalid(
                    f"{at}.type",
                    f"{at}.type: {kind!r} blocks are not supported in {role} turns",
                    reason=UNSUPPORTED_CONTENT,
                )
        turn.content = "\n\n".join(texts)  # blocks are paragraphs of one turn for the models here
        # A user turn of tool results only has nothing more to say.
        if turn.content or turn.file_data or turn.tool_calls or len(messages) == before:
            messages.append(turn)
    return messages


def _earlier_thinking(block: Mapping[str, Any], kind: str, where: str) -> None:
    """An earlier answer's thinking block, sent back: checked, not carried (see the module docstring)."""
    if kind == "thinking":
        THINKING_BLOCK_KEYS.check(block, where=f"{where}.")
        for key in ("thinking", "signature"):
            if not isinstance(block.get(key), str):
                raise wrong_type(f"{where}.{key}", "a string")
    else:
        REDACTED_THINKING_KEYS.check(block, where=f"{where}.")
        if not isinstance(block.get("data"), str):
            raise wrong_type(f"{where}.data", "a string")
    optional_object(block, "cache_control", where=f"{where}.")


def thinking_wanted(body: Mapping[str, Any], max_tokens: int | None = None) -> bool:
    """Whether `thinking` asks for the model's reasoning as thinking blocks; checked as Anthropic checks
    it (a budget of at least 1024 tokens, below `max_tokens` when there is one)."""
    if body.get("thinking") is None:
        return False
    config = optional_object(body, "thinking")
    THINKING_KEYS.check(config, where="thinking.")
    kind = required_str(config, "type", where="thinking.")
    if kind == "between_tools":
        raise invalid(
            "thinking.type",
            "'thinking.type' \"between_tools\" is not supported: thinking comes before the answer here",
            reason=UNSUPPORTED_PARAMETER,
        )
    if kind not in THINKING_TYPES:
        raise invalid("thinking.type", "'thinking.type' must be one of enabled, adaptive, disabled")
    display = optional_str(config, "display", where="thinking.")
    if display not in (None, "summarized"):
        raise invalid(
            "thinking.display",
            f"'thinking.display' {display!r} is not supported: only \"summarized\"",
            reason=UNSUPPORTED_PARAMETER,
        )
    budget = optional_int(config, "budget_tokens", where="thinking.")
    if kind != "enabled":
        if budget is not None:
            raise invalid("thinking.budget_tokens", "'thinking.budget_tokens' goes only with \"enabled\"")
        return kind == "adaptive"
    if budget is None or budget < MIN_THINKING_BUDGET:
        raise invalid(
            "thinking.budget_tokens", f"'thinking.budget_tokens' must be at least {MIN_THINKING_BUDGET}"
        )
    if max_tokens is not None and budget >= max_tokens:
        raise invalid("thinking.budget_tokens", "'thinking.budget_tokens' must be less than 'max_tokens'")
    return True


def _tools(body: Mapping[str, Any]) -> list[common_pb2.Tool]:
    tools = []
    for i, item in enumerate(optional_list(body, "tools")):
        where = f"tools[{i}]"
        if not isinstance(item, dict):
            raise wrong_type(where, "an object")
        TOOL_KEYS.check(item, where=f"{where}.")
        optional_object(item, "cache_control", where=f"{where}.")
        name = required_str(item, "name", where=f"{where}.")
        if not isinstance(item.get("input_schema"), dict):
            raise wrong_type(f"{where}.input_schema", "an object (a JSON Schema)")
        description = optional_str(item, "description", where=f"{where}.")
        tools.append(tool(name, description, item["input_schema"], where=where))
    return tools


def _tool_choice(body: Mapping[str, Any]) -> common_pb2.ToolChoice | None:
    if body.get("tool_choice") is None:
        return None
    choice = optional_object(body, "tool_choice")
    TOOL_CHOICE_KEYS.check(choice, where="tool_choice.")
    kind = required_str(choice, "type", where="tool_choice.")
    name = optional_str(choice, "name", where="tool_choice.") or ""
    if kind == "tool":
        return tool_choice("", name=required_str(choice, "name", where="tool_choice."))
    if kind not in _TOOL_MODES:
        raise invalid("tool_choice.type", "'tool_choice.type' must be one of auto, any, tool, none")
    if name:
        raise invalid("tool_choice.name", "'tool_choice.name' goes only with type \"tool\"")
    return tool_choice(_TOOL_MODES[kind])


def _output_format(body: Mapping[str, Any]) -> common_pb2.ResponseFormat | None:
    """`output_config.format` (structured output: JSON valid against a schema) as a response format; the
    server refuses it for a model that cannot give JSON."""
    config = optional_object(body, "output_config")
    OUTPUT_CONFIG_KEYS.check(config, where="output_config.")
    if config.get("format") is None:
        return None
    form = optional_object(config, "format", where="output_config.")
    FORMAT_KEYS.check(form, where="output_config.format.")
    if form.get("type") != "json_schema":
        raise invalid("output_config.format.type", "'output_config.format.type' must be \"json_schema\"")
    if not isinstance(form.get("schema"), dict):
        raise wrong_type("output_config.format.schema", "an object (a JSON Schema)")
    return json_format(form["schema"], where="output_config.format.schema")


def _system(body: Mapping[str, Any]) -> str:
    system = body.get("system")
    return "" if system is None else _texts(system, "system")


def _stop_sequences(body: Mapping[str, Any]) -> list[str]:
    value = body.get("stop_sequences")
    if value is None:
        return []
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise wrong_type("stop_sequences", "a list of strings")


def prompt_params(body: dict[str, Any], keys: Keys) -> ChatParams:
    """What /v1/messages and /v1/messages/count_tokens share: the model, the prompt and the tools."""
    keys.check(body)
    model_id = required_model(body)
    optional_object(body, "cache_control")
    return ChatParams(
        model=model_id,
        messages=_messages(body),
        system=_system(body),
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        response_format=_output_format(body),
    )


def messages_params(body: dict[str, Any]) -> ChatParams:
    """A /v1/messages body as ChatParams; a 400 names the first key at fault."""
    params = prompt_params(body, MESSAGES_KEYS)
    params.max_tokens = optional_int(body, "max_tokens")
    if params.max_tokens is None:
        raise invalid("max_tokens", "'max_tokens' is required")
    metadata = optional_object(body, "metadata")
    METADATA_KEYS.check(metadata, where="metadata.")
    optional_str(metadata, "user_id", where="metadata.")
    params.temperature = optional_number(body, "temperature")
    if params.temperature is not None and not 0 <= params.temperature <= MAX_TEMPERATURE:
        raise invalid(
            "temperature",
            f"'temperature' must be between 0 and {MAX_TEMPERATURE:g}, got {params.temperature:g}",
        )
    params.top_p = optional_number(body, "top_p")
    params.top_k = optional_int(body, "top_k")
    params.stop = _stop_sequences(body)
    return params


def message_id(completion_id: str) -> str:
    """Anthropic's `msg_…` id for our `cmpl-…` one (the same suffix, so logs still match)."""
    return "msg_" + completion_id.removeprefix("cmpl-")


def _stop_reason(finish: int, has_tool_calls: bool) -> str:
    reason = FinishReason.from_proto(finish)
    return "tool_use" if has_tool_calls and reason is FinishReason.STOP else _STOP_REASONS[reason]


def _tool_id(call_id: str) -> str:
    """The call's id; one of Anthropic's form for a provider that gives none (clients send it back)."""
    return call_id or f"toolu_{uuid.uuid4().hex[:24]}"


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    params = messages_params(body)
    thinking = thinking_wanted(body, params.max_tokens)
    if optional_bool(body, "stream"):
        call = stream_completion(request, params)
        with cancel_on_exit(call):
            return await stream_http(request, call, MessageEvents(thinking=thinking), dialect=DIALECT)
    response = await create_completion(request, params)
    content: list[dict[str, Any]] = []
    if thinking and response.thinking:
        content.append({"type": "thinking", "thinking": response.thinking, "signature": ""})
    if response.content:
        content.append({"type": "text", "text": response.content})
    for call in response.tool_calls:
        content.append(
            {
                "type": "tool_use",
                "id": _tool_id(call.id),
                "name": call.name,
                "input": arguments_object(call),
            }
        )
    headers = answer_headers(response)
    return web.json_response(
        {
            "id": message_id(response.id),
            "type": "message",
            "role": "assistant",
            "model": response.model,
            "content": content,
            "stop_reason": _stop_reason(response.finish_reason, bool(response.tool_calls)),
            "stop_sequence": None,
            "usage": {
                "input_tokens": response.usage.prompt_tokens,
                "output_tokens": response.usage.completion_tokens,
            },
        },
        headers=headers,
    )


async def count_tokens(request: web.Request) -> web.StreamResponse:
    body = await read_object(request)
    # tool_choice, output_config and thinking are checked, as Anthropic does; none changes the count here.
    params = prompt_params(body, COUNT_KEYS)
    thinking_wanted(body)
    message = COUNT_TOKENS.request_cls(
        model=params.model, system_instruction=params.system, messages=params.messages, tools=params.tools
    )
    response = await call_unary(request, COUNT_TOKENS, message, call_context(request))
    headers = {ESTIMATED_HEADER: "true"} if response.estimated else None
    return web.json_response({"input_tokens": response.input_tokens}, headers=headers)


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return sse_event(dumps_bytes({"type": kind, **payload}), event=kind)


_PING = _event("ping", {})


class MessageEvents:
    """StreamCompletion chunks as Anthropic's events: `message_start` before the first, a content block
    per run of thinking (when `thinking`), of text and per tool call, `message_delta` and
    `message_stop` with the last."""

    content_type = SSE

    def __init__(self, *, thinking: bool = False) -> None:
        self._thinking = thinking
        self._started = False
        self._index = -1  # of the last block opened
        self._open: str | None = None  # its kind while it is open: "thinking", "text" or "tool"
        self._tools: dict[int, int] = {}  # tool call index → its block's index

    def message(self, message: Message) -> bytes:
        chunk: Any = message
        out = b"" if self._started else self._start(chunk)
        failover = failover_json(chunk.failover) if chunk.HasField("failover") else None
        if chunk.thinking and self._thinking:
            if self._open != "thinking":
                out += self._open_block("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out += self._delta(self._index, {"type": "thinking_delta", "thinking": chunk.thinking}, failover)
            failover = None
        if chunk.content:
            if self._open != "text":
                out += self._open_block("text", {"type": "text", "text": ""})
            out += self._delta(self._index, {"type": "text_delta", "text": chunk.content}, failover)
            failover = None
        for piece in chunk.tool_calls:
            if piece.index not in self._tools:
                block = {"type": "tool_use", "id": _tool_id(piece.id), "name": piece.name, "input": {}}
                out += self._open_block("tool", block)
                self._tools[piece.index] = self._index
            if piece.arguments:
                partial = {"type": "input_json_delta", "partial_json": piece.arguments}
                out += self._delta(self._tools[piece.index], partial, failover)
                failover = None
        if chunk.is_final:
            out += self._close()
            stop = _stop_reason(chunk.finish_reason, bool(self._tools))
            delta: dict[str, Any] = {
                "delta": {"stop_reason": stop, "stop_sequence": None},
                # Cumulative, as Anthropic's: the prompt's count too (message_start could not know it).
                "usage": {
                    "input_tokens": chunk.usage.prompt_tokens,
                    "output_tokens": chunk.usage.completion_tokens,
                },
            }
            if failover is not None:
                delta["failover"] = failover
            out += _event("message_delta", delta) + _event("message_stop", {})
        return out

    def _start(self, chunk: Any) -> bytes:
        self._started = True
        message = {
            "id": message_id(chunk.id),
            "type": "message",
            "role": "assistant",
            "model": chunk.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        return _event("message_start", {"message": message})

    def _open_block(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self._index += 1
        self._open = kind
        out += _event("content_block_start", {"index": self._index, "content_block": block})
        if self._index == 0:
            out += _PING  # where Anthropic sends its first
        return out

    def _delta(self, index: int, delta: dict[str, Any], failover: dict[str, str] | None) -> bytes:
        event: dict[str, Any] = {"index": index, "delta": delta}
        if failover is not None:
            event["failover"] = failover
        return _event("content_block_delta", event)

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        out = b""
        if self._open == "thinking":
            # Anthropic ends each thinking block with its signature; nothing here signs thinking.
            out = self._delta(self._index, {"type": "signature_delta", "signature": ""}, None)
        self._open = None
        return out + _event("content_block_stop", {"index": self._index})

    def error(self, status: status_pb2.Status) -> bytes:
        # The status line is gone: the error is an event, which the client raises as its status error.
        return _event("error", {"error": error_body(status, http_status(status.code))["error"]})

    def end(self) -> bytes:
        return b""

    def keepalive(self) -> bytes:
        return _PING  # Anthropic's own keep-alive; the client skips it

    empty_status = 200


ROUTES = (
    ("POST", "/v1/messages", messages),
    ("POST", "/v1/messages/count_tokens", count_tokens),
)
