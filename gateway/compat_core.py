"""What the OpenAI and Ollama compatibility endpoints share: one chat request shape, calls to
CompletionService and ModelService through the same upstream channel, one error path.

Each dialect only translates its JSON to `ChatParams` and the answers back; validation, metadata,
deadlines, cancellation and status mapping are the gateway's, as for every other route.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import message_factory
from google.rpc import error_details_pb2, status_pb2

from aibattle.v1 import common_pb2, completions_pb2, models_pb2
from gateway.errors import (
    GatewayError,
    http_status,
    invalid_argument,
    request_too_large,
    status_from_rpc_error,
)
from gateway.routes import Rpc
from gateway.transcode import parse_json
from gateway.web_state import STATE, call_context

_COMPLETIONS = completions_pb2.DESCRIPTOR.services_by_name["CompletionService"]
_MODELS = models_pb2.DESCRIPTOR.services_by_name["ModelService"]


def _rpc(service: Any, name: str) -> Rpc:
    method = service.methods_by_name[name]
    return Rpc(
        method=method,
        request_cls=message_factory.GetMessageClass(method.input_type),
        response_cls=message_factory.GetMessageClass(method.output_type),
    )


CREATE_COMPLETION = _rpc(_COMPLETIONS, "CreateCompletion")
STREAM_COMPLETION = _rpc(_COMPLETIONS, "StreamCompletion")
LIST_MODELS = _rpc(_MODELS, "ListModels")
GET_MODEL = _rpc(_MODELS, "GetModel")

#: Our finish reasons in OpenAI's and Ollama's words.
FINISH_REASONS = {
    common_pb2.FINISH_REASON_STOP: "stop",
    common_pb2.FINISH_REASON_LENGTH: "length",
    common_pb2.FINISH_REASON_CONTENT_FILTER: "content_filter",
}


@dataclass
class ChatParams:
    """A chat request in the terms every dialect shares."""

    model: str
    messages: list[tuple[str, str]] = field(default_factory=list)
    prompt: str = ""
    system: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def to_request(self, cls: type[Any]) -> Any:
        """The CreateCompletionRequest / StreamCompletionRequest for these parameters."""
        request = cls(
            model=self.model,
            prompt=self.prompt,
            system_instruction=self.system,
            messages=[common_pb2.Message(role=role, content=content) for role, content in self.messages],
            stop=self.stop,
        )
        for name in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(self, name)
            if value is not None:
                setattr(request, name, value)
        return request


async def read_object(request: web.Request) -> dict[str, Any]:
    """The JSON object body of a compatibility request (unknown keys are the dialect's to ignore)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise request_too_large(request.app[STATE].options.max_body_bytes) from exc
    body = parse_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise invalid_argument("request body must be a JSON object", reason="INVALID_BODY")
    return body


def typed(body: dict[str, Any], key: str, kinds: type | tuple[type, ...], default: Any = None) -> Any:
    """body[key] if it has one of the JSON kinds, default if absent or null; else INVALID_ARGUMENT."""
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        value = object()  # True is an int to Python, not to JSON
    if not isinstance(value, kinds):
        raise invalid_argument(f"{key!r} has the wrong type", reason="INVALID_FIELD_VALUE", field=key)
    return value


def stop_list(value: Any, key: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise invalid_argument(
        f"{key!r} must be a string or a list of strings", reason="INVALID_FIELD_VALUE", field=key
    )


async def create_completion(request: web.Request, params: ChatParams) -> Any:
    context = call_context(request)
    upstream = request.app[STATE].upstream
    message = params.to_request(CREATE_COMPLETION.request_cls)
    return await upstream.start(
        CREATE_COMPLETION, message, metadata=context.metadata, timeout=context.timeout
    )


def stream_completion(request: web.Request, params: ChatParams) -> Any:
    """Start StreamCompletion; the caller reads it under cancel_on_exit."""
    context = call_context(request)
    upstream = request.app[STATE].upstream
    message = params.to_request(STREAM_COMPLETION.request_cls)
    return upstream.start(STREAM_COMPLETION, message, metadata=context.metadata, timeout=context.timeout)


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
    upstream = request.app[STATE].upstream
    response = await upstream.start(
        GET_MODEL,
        GET_MODEL.request_cls(model_id=model_id),
        metadata=context.metadata,
        timeout=context.timeout,
    )
    return response.model


ErrorRenderer = Callable[[status_pb2.Status, int], web.StreamResponse]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def status_of(error: BaseException) -> tuple[status_pb2.Status, int | None]:
    """Status and HTTP override of a gateway or upstream error."""
    if isinstance(error, GatewayError):
        return error.to_status(), error.http_status
    assert isinstance(error, grpc.aio.AioRpcError)
    return status_from_rpc_error(error), None


def with_errors(render: ErrorRenderer) -> Callable[[Handler], Handler]:
    """Errors of a compatibility handler in its dialect's format (the status table is the gateway's)."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(request)
            except (GatewayError, grpc.aio.AioRpcError) as exc:
                status, override = status_of(exc)
                return render(status, override or http_status(status.code))

        return wrapped

    return decorate


def error_reason(status: status_pb2.Status) -> str:
    """The ErrorInfo reason of a status, lower-cased (OpenAI's `code`), or ""."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason.lower()
    return ""


def field_of(status: status_pb2.Status) -> str | None:
    """The first BadRequest field violation of a status (OpenAI's `param`)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                return bad.field_violations[0].field
    return None


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
                raise invalid_argument(
                    f"{where}: only text content parts are supported", reason="UNSUPPORTED_CONTENT"
                )
            texts.append(part["text"])
        return "".join(texts)
    raise invalid_argument(f"{where} must be a string", reason="INVALID_FIELD_VALUE", field=where)


def chat_messages(raw: Any, key: str = "messages") -> list[tuple[str, str]]:
    if not isinstance(raw, list) or not raw:
        raise invalid_argument(f"{key!r} must be a non-empty list", reason="INVALID_FIELD_VALUE", field=key)
    messages: list[tuple[str, str]] = []
    for i, item in enumerate(raw):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("role"), str):
            raise invalid_argument(f"{where} needs a string role", reason="INVALID_FIELD_VALUE", field=where)
        messages.append((item["role"], text_of(item.get("content"), f"{where}.content")))
    return messages
