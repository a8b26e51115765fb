"""What the compat dialects share: one chat request shape (tools, tool choice and structured output
included), the calls to CompletionService, EmbeddingService and ModelService through the gateway's
upstream channel, and strict reading of their loosely typed JSON.

Each dialect only translates its JSON to `ChatParams` (or an embedding batch) and the answers back;
metadata, deadlines, cancellation, the stream relay and the status table are the gateway's, as for
every other route. Every value is checked before it reaches a protobuf field, so bad input is a 400
naming the dialect's own key, never a 500 from a setter. Whether a model can call tools or answer in
JSON is the server's to say (CAPABILITY_MISSING), in the dialect's error shape like any other error.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf import struct_pb2

from aibattle.v1 import common_pb2, completions_pb2, embeddings_pb2, models_pb2
from common.errors import (
    INVALID_BODY,
    INVALID_FIELD_VALUE,
    UNKNOWN_PARAMETER,
    UNSUPPORTED_CONTENT,
    UNSUPPORTED_PARAMETER,
    UPSTREAM_PROTOCOL_ERROR,
    InvalidArgument,
    Reason,
    RequestTooLarge,
)
from gateway import observe
from gateway.descriptors import Rpc
from gateway.transcode import parse_json
from gateway.web_state import STATE, CallContext, call_context

_COMPLETIONS = completions_pb2.DESCRIPTOR.services_by_name["CompletionService"]
_MODELS = models_pb2.DESCRIPTOR.services_by_name["ModelService"]
_EMBEDDINGS = embeddings_pb2.DESCRIPTOR.services_by_name["EmbeddingService"]
CREATE_COMPLETION = Rpc.of(_COMPLETIONS.methods_by_name["CreateCompletion"])
STREAM_COMPLETION = Rpc.of(_COMPLETIONS.methods_by_name["StreamCompletion"])
LIST_MODELS = Rpc.of(_MODELS.methods_by_name["ListModels"])
GET_MODEL = Rpc.of(_MODELS.methods_by_name["GetModel"])
CREATE_EMBEDDINGS = Rpc.of(_EMBEDDINGS.methods_by_name["CreateEmbeddings"])

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class Keys:
    """What an endpoint does with each key of one JSON object of its dialect.

    Nothing is dropped in silence: a key is either carried (`honoured`), or asks for nothing we would
    not do anyway (`defaults`: `n: 1`, `tools: []`, the values official clients send unasked), or is
    refused with a 400 naming it: `unsupported` for the dialect's features we don't serve yet (with
    why), a key we don't know for anything else. A null value counts as absent, as in the dialects'
    own servers.
    """

    honoured: frozenset[str]
    defaults: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    unsupported: Mapping[str, str] = field(default_factory=dict)

    def check(self, body: Mapping[str, Any], *, where: str = "") -> None:
        for key, value in body.items():
            if value is None or key in self.honoured:
                continue
            # Compared with their types: `False == 0` and `True == 1` in Python, not in JSON.
            if any(type(value) is type(ok) and value == ok for ok in self.defaults.get(key, ())):
                continue
            name = where + key
            if key in self.unsupported:
                message = f"{name!r} is not supported: {self.unsupported[key]}"
            elif key in self.defaults:
                message = f"{name!r}: only {_shown(self.defaults[key])} is supported"
            else:
                raise InvalidArgument(
                    name, f"unknown parameter {name!r}", reason=UNKNOWN_PARAMETER, prefix=False
                )
            raise InvalidArgument(name, message, reason=UNSUPPORTED_PARAMETER, prefix=False)


def _shown(values: tuple[Any, ...]) -> str:
    return " or ".join(json.dumps(v) for v in values)


@dataclass
class ChatParams:
    """A chat request in the terms every dialect shares (values already checked)."""

    model: str
    messages: list[common_pb2.Message] = field(default_factory=list)
    """The history: role and content, and on assistant and tool turns tool_calls / tool_call_id."""
    prompt: str = ""
    system: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    top_k: int | None = None
    repeat_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    tools: list[common_pb2.Tool] = field(default_factory=list)
    tool_choice: common_pb2.ToolChoice | None = None
    response_format: common_pb2.ResponseFormat | None = None

    def to_request(self, cls: type[Any]) -> Any:
        """The CreateCompletionRequest / StreamCompletionRequest for these parameters."""
        request = cls(
            model=self.model,
            prompt=self.prompt,
            system_instruction=self.system,
            messages=self.messages,
            stop=self.stop,
            tools=self.tools,
            tool_choice=self.tool_choice,
            response_format=self.response_format,
        )
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                setattr(request, name, value)
        return request


_OPTIONAL = (
    "max_tokens",
    "temperature",
    "top_p",
    "seed",
    "top_k",
    "repeat_penalty",
    "frequency_penalty",
    "presence_penalty",
)


async def read_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body of a compat request (its keys are the dialect's to check: `Keys`)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestTooLarge(request.app[STATE].options.max_body_bytes) from exc
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InvalidArgument(None, "request body must be a JSON object", reason=INVALID_BODY)
    return body


def invalid(where: str, message: str, *, reason: Reason | str = INVALID_FIELD_VALUE) -> InvalidArgument:
    """A 400 naming the key at fault (`where`), in a message that names it in its own words."""
    return InvalidArgument(where, message, reason=reason, prefix=False)


def wrong_type(key: str, expected: str) -> InvalidArgument:
    """A 400 for a value of the wrong JSON type: "'key' must be <expected>"."""
    return invalid(key, f"{key!r} must be {expected}")


def optional_str(body: Mapping[str, Any], key: str, *, where: str = "") -> str | None:
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise wrong_type(where + key, "a string")


def optional_bool(body: Mapping[str, Any], key: str, *, where: str = "") -> bool | None:
    value = body.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise wrong_type(where + key, "a boolean")


def optional_object(body: Mapping[str, Any], key: str, *, where: str = "") -> dict[str, Any]:
    value = body.get(key)
    if value is None:
        return {}
    if isinstance(value, dict):
        return value
    raise wrong_type(where + key, "an object")


def optional_int(
    body: Mapping[str, Any], key: str, *, bounds: tuple[int, int] = INT32, where: str = ""
) -> int | None:
    """An integer within `bounds` (the range of the proto field it fills); floats like 5.0 are taken."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong_type(where + key, "an integer")
    low, high = bounds
    if not low <= value <= high:
        raise InvalidArgument(
            where + key,
            f"{where + key!r} must be between {low} and {high}, got {value}",
            reason=INVALID_FIELD_VALUE,
            prefix=False,
        )
    return value


def optional_number(body: Mapping[str, Any], key: str, *, where: str = "") -> float | None:
    """A finite number (the server checks the range each parameter allows)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(where + key, "a number")
    try:
        number = float(value)
    except OverflowError:
        number = float("inf")
    if number != number or number in (float("inf"), float("-inf")):
        raise wrong_type(where + key, "a finite number")
    return number


def stop_list(body: Mapping[str, Any], key: str, *, where: str = "") -> list[str]:
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise wrong_type(where + key, "a string or a list of strings")


def required_model(body: Mapping[str, Any]) -> str:
    model = optional_str(body, "model")
    if not model:
        raise InvalidArgument("model", "'model' is required", reason=INVALID_FIELD_VALUE, prefix=False)
    return model


def text_of(content: Any, where: str) -> str:
    """Message content as text: a string, or OpenAI-style text parts."""
    if isinstance(content, str):
        return content
    if content is None:
        return ""
    if isinstance(content, list):
        texts: list[str] = []
        for part in content:
            if not (
                isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
            ):
                raise InvalidArgument(
                    where,
                    f"{where}: only text content parts are supported",
                    reason=UNSUPPORTED_CONTENT,
                    prefix=False,
                )
            texts.append(part["text"])
        return "".join(texts)
    raise wrong_type(where, "a string or a list of text parts")


#: Fills a message's tool fields from the dialect's JSON message (`where` is its path, for errors).
MessageTools = Callable[[Mapping[str, Any], str, common_pb2.Message], None]


def chat_messages(
    body: Mapping[str, Any],
    keys: Keys,
    *,
    roles: Mapping[str, str] | None = None,
    tools: MessageTools | None = None,
) -> list[common_pb2.Message]:
    """`messages` as role and text; `keys` checks each message's keys, `roles` renames roles, `tools`
    reads the dialect's tool calls and results into each message (in order, so a result can find the
    call it answers among the messages before it)."""
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise wrong_type("messages", "a non-empty list")
    messages: list[common_pb2.Message] = []
    for i, item in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise wrong_type(where, "an object with a string role")
        keys.check(item, where=f"{where}.")
        role = item["role"]
        message = common_pb2.Message(
            role=(roles or {}).get(role, role), content=text_of(item.get("content"), f"{where}.content")
        )
        if tools is not None:
            tools(item, where, message)
        messages.append(message)
    return messages


# --- tools and structured output ----------------------------------------------------------------------

TOOL_MODES = {
    "auto": common_pb2.TOOL_CHOICE_MODE_AUTO,
    "none": common_pb2.TOOL_CHOICE_MODE_NONE,
    "required": common_pb2.TOOL_CHOICE_MODE_REQUIRED,
}
"""The tool choices every dialect names with a word (OpenAI's "required" is Anthropic's "any")."""


def required_str(body: Mapping[str, Any], key: str, *, where: str = "") -> str:
    value = optional_str(body, key, where=where)
    if not value:
        raise InvalidArgument(
            where + key, f"{where + key!r} is required", reason=INVALID_FIELD_VALUE, prefix=False
        )
    return value


def json_object(value: Any, where: str) -> struct_pb2.Struct:
    """A JSON object (a schema, a tool's parameters) as a protobuf Struct."""
    if not isinstance(value, dict):
        raise wrong_type(where, "an object")
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def function_of(item: Any, where: str, keys: Keys, functions: Keys) -> dict[str, Any]:
    """The `function` of a `{"type": "function", "function": {…}}` item (a tool, a call, a choice: OpenAI's
    shape, which Ollama shares), with both objects' keys checked; `where` is the item's path."""
    if not isinstance(item, dict):
        raise wrong_type(where, "an object")
    keys.check(item, where=f"{where}.")
    kind = item.get("type", "function")
    if kind != "function":
        raise InvalidArgument(
            f"{where}.type",
            f"'{where}.type' {kind!r} is not supported: only \"function\" is",
            reason=UNSUPPORTED_PARAMETER,
            prefix=False,
        )
    function = optional_object(item, "function", where=f"{where}.")
    functions.check(function, where=f"{where}.function.")
    return function


def optional_list(body: Mapping[str, Any], key: str, *, where: str = "") -> list[Any]:
    value = body.get(key)
    if value is None:
        return []
    if isinstance(value, list):
        return value
    raise wrong_type(where + key, "a list")


def tool(name: str, description: str | None, parameters: Any, *, where: str) -> common_pb2.Tool:
    """One tool definition; `where` is the path of its object, for errors (the server checks the name)."""
    spec = common_pb2.Tool(name=name, description=description or "")
    if parameters is not None:
        spec.parameters.CopyFrom(json_object(parameters, f"{where}.parameters"))
    return spec


def tool_choice(mode: str, *, name: str = "") -> common_pb2.ToolChoice:
    """A word of `TOOL_MODES`, or a tool's name (mode TOOL)."""
    if name:
        return common_pb2.ToolChoice(mode=common_pb2.TOOL_CHOICE_MODE_TOOL, name=name)
    return common_pb2.ToolChoice(mode=TOOL_MODES[mode])


def json_format(
    schema: Any = None, *, where: str = "", name: str = "", strict: bool = False
) -> common_pb2.ResponseFormat:
    """Structured output: one JSON object (`schema` None), or JSON valid against `schema`, a non-empty
    JSON Schema object (`where` names it in errors)."""
    if schema is None:
        return common_pb2.ResponseFormat(type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT)
    if schema == {}:
        raise wrong_type(where, "a non-empty JSON Schema object")
    return common_pb2.ResponseFormat(
        type=common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA,
        name=name,
        schema=json_object(schema, where),
        strict=strict,
    )


def arguments_object(call: Any) -> dict[str, Any]:
    """A tool call's arguments as the JSON object dialects that want one (Ollama, Anthropic) carry.

    The model wrote them; one that wrote something else than an object made an answer those dialects
    cannot say, which is the upstream's failure, not the client's.
    """
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UPSTREAM_PROTOCOL_ERROR.error(
            f"the model's call of tool {call.name!r} has arguments that are not a JSON object"
        )
    return value


class ToolCallPieces:
    """Whole tool calls from a stream's pieces (`ToolCallDelta`s: one index per call, the id and name on
    its first piece, the arguments split over several), for dialects that send each call whole."""

    def __init__(self) -> None:
        self._calls: dict[int, common_pb2.ToolCall] = {}

    def add(self, pieces: Iterable[common_pb2.ToolCallDelta]) -> None:
        for piece in pieces:
            call = self._calls.get(piece.index)
            if call is None:
                call = self._calls[piece.index] = common_pb2.ToolCall()
            call.id = call.id or piece.id
            call.name = call.name or piece.name
            call.arguments += piece.arguments

    def take(self) -> list[common_pb2.ToolCall]:
        """The calls so far, in index order; they are forgotten."""
        calls = [call for _, call in sorted(self._calls.items())]
        self._calls.clear()
        return calls


def failover_json(failover: common_pb2.Failover) -> dict[str, str]:
    """The `failover` extension field of a stream chunk (every dialect writes the same object)."""
    return {
        "from_model": failover.from_model,
        "from_deployment": failover.from_deployment,
        "to_model": failover.to_model,
        "to_deployment": failover.to_deployment,
        "reason": failover.reason,
    }


# --- embeddings -----------------------------------------------------------------------------------------


def input_texts(body: Mapping[str, Any], key: str = "input") -> list[str]:
    """The texts to embed: a string or a list of strings (token arrays are OpenAI's only, not served)."""
    value = body.get(key)
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    raise InvalidArgument(
        key,
        f"{key!r} must be a string or a non-empty list of strings (token arrays are not supported)",
        reason=INVALID_FIELD_VALUE,
        prefix=False,
    )


async def call_unary(request: web.Request, rpc: Rpc, message: Any, context: CallContext) -> Any:
    """A unary RPC upstream with `context`'s metadata and deadline (the caller's `call_context`), and
    its answer's wait on its model noted (in the trailers the gateway asks for: call_context)."""
    call = request.app[STATE].upstream.start(rpc, message, metadata=context.metadata, timeout=context.timeout)
    response = await call
    observe.note_upstream_of(await call.initial_metadata(), await call.trailing_metadata())
    return response


async def create_completion(request: web.Request, params: ChatParams) -> Any:
    context = call_context(request)
    message = params.to_request(CREATE_COMPLETION.request_cls)
    return await call_unary(request, CREATE_COMPLETION, message, context)


def stream_completion(request: web.Request, params: ChatParams) -> Any:
    """Start StreamCompletion; the caller relays it under cancel_on_exit."""
    context = call_context(request)
    message = params.to_request(STREAM_COMPLETION.request_cls)
    return request.app[STATE].upstream.start(
        STREAM_COMPLETION, message, metadata=context.metadata, timeout=context.timeout
    )


async def create_embeddings(
    request: web.Request, model: str, texts: list[str], *, dimensions: int | None = None
) -> Any:
    """CreateEmbeddings: one vector per text, in order."""
    context = call_context(request)
    optional = {} if dimensions is None else {"dimensions": dimensions}
    message = CREATE_EMBEDDINGS.request_cls(model=model, input=texts, **optional)
    return await call_unary(request, CREATE_EMBEDDINGS, message, context)


async def list_models(request: web.Request) -> list[Any]:
    """Every model, all pages."""
    context = call_context(request)
    upstream = request.app[STATE].upstream
    models: list[Any] = []
    token = ""
    while True:
        page = await upstream.start(
            LIST_MODELS,
            LIST_MODELS.request_cls(page_size=1000, page_token=token),
            metadata=context.metadata,
            timeout=context.timeout,
        )
        models.extend(page.models)
        token = page.next_page_token
        if not token:
            return models


async def get_model(request: web.Request, model_id: str) -> Any:
    context = call_context(request)
    response = await request.app[STATE].upstream.start(
        GET_MODEL,
        GET_MODEL.request_cls(model_id=model_id),
        metadata=context.metadata,
        timeout=context.timeout,
    )
    return response.model
