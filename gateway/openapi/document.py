"""The OpenAPI 3.1 document, generated from the same routes the gateway serves.

Every route becomes an operation (WebSocket routes as GET operations answering 101, with an
`x-websocket` extension); proto comments become summaries and descriptions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.descriptor import Descriptor
from google.rpc import status_pb2

from gateway.descriptors import SCALAR_LIKE_MESSAGES, message_type, resolve_field_path
from gateway.events import LAST_EVENT_ID
from gateway.openapi.anthropic import anthropic_operations
from gateway.openapi.compat import compat_operations
from gateway.openapi.fixed import meta_operations
from gateway.openapi.schema import Schema, SchemaBuilder
from gateway.path_template import Variable, parse_template
from gateway.routes import Kind, Route
from gateway.source_info import Comments
from gateway.ws_dialects import BEARER_PREFIX, FLAT_PROTOCOL, NATIVE_PROTOCOL, PROTOCOL_HEADER

_MAX_QUERY_DEPTH = 4
_STREAM_DOC = (
    'A stream: NDJSON (one `{"result": …}` object per line) by default, Server-Sent Events with '
    "`Accept: text/event-stream`. A failure after the first message ends the stream with one "
    '`{"error": Status}` frame.'
)
_PAGE_TOKEN_DOC = (
    "A `page_token` is opaque (AIP-158): only a `next_page_token` this server returned, with the same "
    "filters, continues a list; any other value (or one issued for other filters) is refused with "
    "400 INVALID_ARGUMENT naming `page_token`. Empty or absent: the first page."
)
_WS_DOC = (
    "WebSocket. Frames are JSON text: requests in (one per frame for request streams; an empty frame "
    'ends them), `{"result": …}` out, then `{"error": Status}` on failure. Close code 1000 on success, '
    "4000 + gRPC code otherwise."
)


def build_openapi(
    routes: Sequence[Route],
    comments: Comments,
    *,
    title: str,
    version: str,
    strict: bool = True,
    fixed: Sequence[tuple[str, str]] = (),
) -> dict[str, Any]:
    """The document; `strict` (GatewayOptions.strict) makes message schemas refuse unknown fields.

    `fixed`: (method, path template) of the hand-registered endpoints the app serves; those with an
    operation in gateway.openapi.fixed, gateway.openapi.compat or gateway.openapi.anthropic are
    documented with it.
    """
    schemas = SchemaBuilder(comments, strict=strict)
    status_ref = schemas.message(status_pb2.Status.DESCRIPTOR)
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, dict[str, str]] = {}
    for route in routes:
        service = route.rpc.method.containing_service
        tag = {"name": service.name}
        if comment := comments.get(service.full_name):
            tag["description"] = comment
        tags[service.name] = tag
        operation = _operation(route, schemas, comments, status_ref)
        operation["tags"] = [service.name]
        method = "get" if route.kind is Kind.WEBSOCKET else route.http_method.lower()
        paths.setdefault(route.template.openapi_path(), {})[method] = operation
    written = {**meta_operations(), **compat_operations(), **anthropic_operations()}
    for method, path in fixed:
        if (hand := written.get((method, path))) is not None:
            paths.setdefault(parse_template(path).openapi_path(), {})[method.lower()] = hand
            for name in hand.get("tags", ()):
                tags.setdefault(name, {"name": name})
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": (
                "REST, streaming and WebSocket surface of the gRPC API, derived from its protos. "
                "JSON is protobuf's JSON mapping with proto field names. "
                "Errors are a JSON `google.rpc.Status`."
            ),
        },
        "tags": sorted(tags.values(), key=lambda t: t["name"]),
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.components.items())),
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }


def _operation(
    route: Route, schemas: SchemaBuilder, comments: Comments, status_ref: Schema
) -> dict[str, Any]:
    rpc = route.rpc
    comment = comments.get(rpc.full_name)
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": comment.split("\n")[0] if comment else rpc.method.name,
        "description": "\n\n".join(p for p in (comment, f"gRPC: `{rpc.grpc_path}` ({rpc.shape.value})") if p),
    }
    parameters = [_path_parameter(route, var, schemas) for var in route.template.variables]
    if route.kind is Kind.WEBSOCKET or route.body != "*":
        skip = set(route.path_fields) | ({route.body} if route.body not in ("", "*") else set())
        parameters += _query_parameters(rpc.method.input_type, schemas, skip=skip)
    if route.kind is Kind.REST and route.events is not None and route.events.resume_field is not None:
        parameters.append(
            {
                "name": LAST_EVENT_ID,
                "in": "header",
                "required": False,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "description": f"Resume after this event sequence (an SSE `id:`); wins over "
                f"`{route.events.resume_field.name}`. Not an integer: 400.",
            }
        )
    if route.kind is Kind.WEBSOCKET:
        parameters.append(
            {
                "name": PROTOCOL_HEADER,
                "in": "header",
                "required": False,
                "schema": {"type": "string"},
                "description": f"`{NATIVE_PROTOCOL}` (proto-JSON frames) or `{FLAT_PROTOCOL}` "
                f"(seed 000's flat `{{type: …}}` frames), optionally with `{BEARER_PREFIX}<token>`; "
                "see the gateway README.",
            }
        )
    if _paginated(rpc.method.input_type, rpc.method.output_type):
        for parameter in parameters:
            if parameter["name"] == "page_token":
                parameter["description"] = " ".join(
                    p for p in (parameter.get("description"), _PAGE_TOKEN_DOC) if p
                )
    if parameters:
        operation["parameters"] = parameters
    error = {
        "description": "An error: a `google.rpc.Status`.",
        "content": {"application/json": {"schema": status_ref}},
    }

    if route.kind is Kind.WEBSOCKET:
        operation["summary"] = f"WebSocket: {operation['summary']}"
        operation["description"] += "\n\n" + _WS_DOC
        operation["responses"] = {
            "101": {"description": "Switching Protocols: the WebSocket is open."},
            "426": {
                "description": "Upgrade Required: a plain GET, without `Upgrade: websocket`.",
                "headers": {"Upgrade": {"schema": {"type": "string", "const": "websocket"}}},
                "content": {"application/json": {"schema": status_ref}},
            },
            "400": bad_request(status_ref),
            "default": error,
        }
        operation["x-websocket"] = {
            "request": schemas.message(rpc.method.input_type),
            "response": _frame_schema(schemas.message(rpc.method.output_type), status_ref),
        }
        return operation

    if route.body:
        if route.body == "*":
            body_schema = schemas.request_body(rpc.method.input_type, route.path_fields)
            # An absent body is `{}`: it will do unless a field the path doesn't set is required.
            body_required = bool(rpc.required_fields - route.path_fields)
        else:
            body_schema = schemas.field(rpc.method.input_type.fields_by_name[route.body])
            body_required = True
        media = "application/x-ndjson" if rpc.shape.streams_requests else "application/json"
        operation["requestBody"] = {"required": body_required, "content": {media: {"schema": body_schema}}}

    result = (
        schemas.field(rpc.method.output_type.fields_by_name[route.response_body])
        if route.response_body
        else schemas.message(rpc.method.output_type)
    )
    if rpc.shape.streams_responses:
        frame = _frame_schema(result, status_ref)
        stream_doc = _STREAM_DOC
        if route.events is not None:
            stream_doc += " Over SSE each event's `id:` is its sequence."
        ok = {
            "description": stream_doc,
            "content": {
                "application/x-ndjson": {"schema": frame},
                "text/event-stream": {
                    "schema": {"type": "string", "description": "SSE events whose data is a frame."}
                },
            },
        }
    else:
        ok = {"description": "OK", "content": {"application/json": {"schema": result}}}
    operation["responses"] = {"200": ok, "400": bad_request(status_ref), "default": error}
    if _paginated(rpc.method.input_type, rpc.method.output_type):
        operation["responses"]["400"] = bad_request(status_ref, _PAGE_TOKEN_DOC)
    if rpc.shape.streams_responses and route.events is not None:
        operation["responses"]["204"] = {
            "description": "SSE only: the stream ended with no event to send "
            "(an EventSource stops reconnecting)."
        }
    return operation


def bad_request(error: Schema, why: str = "") -> dict[str, Any]:
    """The 400 of every operation: the endpoint's error body, or the HTTP server's plain text for a
    request it cannot parse at all (a request line or header over 8,190 bytes, a malformed one), which
    is answered before any route is known and so in no endpoint's dialect."""
    return {
        "description": " ".join(
            p
            for p in (
                why,
                "An invalid argument: the error body. A request line or header the HTTP server cannot "
                "read (over 8,190 bytes, or malformed) is answered in plain text, before routing.",
            )
            if p
        ),
        "content": {"application/json": {"schema": error}, "text/plain": {"schema": {"type": "string"}}},
    }


def _paginated(request: Descriptor, response: Descriptor) -> bool:
    """A List RPC after AIP-158: `page_token` in, `next_page_token` out."""
    return "page_token" in request.fields_by_name and "next_page_token" in response.fields_by_name


def _frame_schema(result: Schema, status_ref: Schema) -> Schema:
    return {
        "type": "object",
        "properties": {"result": result, "error": status_ref},
        "description": "One frame: a result, or the final error.",
    }


def _path_parameter(route: Route, var: Variable, schemas: SchemaBuilder) -> dict[str, Any]:
    fields = resolve_field_path(route.rpc.method.input_type, var.field_path, context="openapi")
    schema = schemas.constrained_field(fields[-1])
    if var.multi_segment:
        schema = {"type": "string", "pattern": f"^{var.regex()}$"}
    parameter: dict[str, Any] = {"name": var.name, "in": "path", "required": True, "schema": schema}
    if comment := schemas.comments.get(fields[-1].full_name):
        parameter["description"] = comment
    return parameter


def _query_parameters(
    message: Descriptor, schemas: SchemaBuilder, *, skip: set[str], prefix: str = "", depth: int = 0
) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = []
    for field in message.fields:
        if not prefix and field.name in skip:
            continue
        name = prefix + field.name
        sub = message_type(field)
        if sub is not None:
            if sub.GetOptions().map_entry:
                continue  # maps can't be query parameters
            if sub.full_name not in SCALAR_LIKE_MESSAGES:
                if not field.is_repeated and depth < _MAX_QUERY_DEPTH and sub is not message:
                    parameters += _query_parameters(
                        sub, schemas, skip=skip, prefix=f"{name}.", depth=depth + 1
                    )
                continue
        parameter: dict[str, Any] = {"name": name, "in": "query", "schema": schemas.query_field(field)}
        if field.is_repeated:
            parameter["explode"] = True
        if comment := schemas.comments.get(field.full_name):
            parameter["description"] = comment
        parameters.append(parameter)
    return parameters
