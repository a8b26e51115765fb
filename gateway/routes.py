"""Routes derived from service descriptors: `google.api.http` rules and our `(aibattle.v1.websocket)`.

Nothing here names an RPC: every route comes from a method option, so a new annotated RPC gets its
route from `make gen` alone. Rules are validated at start-up (a path variable or body naming a field
that does not exist fails loudly there, not on the first request).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from google.api import annotations_pb2, http_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor, MethodDescriptor

from aibattle.v1 import options_pb2
from gateway.descriptors import RouteError, Rpc, resolve_field_path
from gateway.events import EventStream, event_stream
from gateway.path_template import PathTemplate, TemplateError, parse_template


class Kind(enum.Enum):
    """Transport of a route."""

    REST = "rest"
    WEBSOCKET = "websocket"


@dataclass(frozen=True, eq=False)
class Route:
    """One HTTP method + path template bound to an RPC."""

    rpc: Rpc
    kind: Kind
    http_method: str
    template: PathTemplate
    #: "" (no body), "*" (the whole request) or a top-level request field name.
    body: str = ""
    #: "" (the whole response) or a top-level response field name.
    response_body: str = ""
    #: 0 for the rule itself, 1.. for its additional_bindings.
    binding: int = 0
    #: Top-level request fields a path variable sets (their whole subtree is off-limits to the query).
    path_fields: frozenset[str] = field(default=frozenset())
    #: Where its responses carry a sequence and which request field resumes (None: not an event stream).
    events: EventStream | None = None

    @property
    def operation_id(self) -> str:
        method = self.rpc.method
        base = f"{method.containing_service.name}_{method.name}"
        if self.kind is Kind.WEBSOCKET:
            return f"{base}_WebSocket"
        return base if self.binding == 0 else f"{base}_{self.binding}"

    def describe(self) -> str:
        return f"{self.http_method} {self.template.source} ({self.kind.value}) -> {self.rpc.full_name}"


def derive_routes(files: Iterable[FileDescriptor]) -> list[Route]:
    """Every route of every service of the given files, most specific first."""
    routes: list[Route] = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                routes.extend(_method_routes(method))
    seen: dict[tuple[str, str, str], Route] = {}
    for route in routes:
        key = (route.kind.value, route.http_method, route.template.source)
        if key in seen:
            raise RouteError(f"{route.describe()} duplicates {seen[key].describe()}")
        seen[key] = route
    return sorted(routes, key=lambda r: r.template.specificity())


def _method_routes(method: MethodDescriptor) -> list[Route]:
    options = method.GetOptions()
    rpc: Rpc | None = None
    routes: list[Route] = []

    def get_rpc() -> Rpc:
        nonlocal rpc
        if rpc is None:
            rpc = Rpc.of(method)
        return rpc

    if options.HasExtension(annotations_pb2.http):
        rule = options.Extensions[annotations_pb2.http]
        bindings: Sequence[http_pb2.HttpRule] = [rule, *rule.additional_bindings]
        for index, binding in enumerate(bindings):
            if index > 0 and binding.additional_bindings:
                raise RouteError(f"{method.full_name}: additional_bindings may not nest")
            routes.append(_rest_route(get_rpc(), binding, index))
    if options.HasExtension(options_pb2.websocket):
        ws = options.Extensions[options_pb2.websocket]
        if not (method.client_streaming or method.server_streaming):
            raise RouteError(f"{method.full_name}: a WebSocket route needs a streaming RPC")
        template = _template(method, ws.path)
        routes.append(
            Route(
                rpc=get_rpc(),
                kind=Kind.WEBSOCKET,
                http_method="GET",
                template=template,
                body="*",
                path_fields=_check_path_fields(method, template),
                events=event_stream(get_rpc()),
            )
        )
    return routes


def _rest_route(rpc: Rpc, rule: http_pb2.HttpRule, index: int) -> Route:
    method = rpc.method
    pattern = rule.WhichOneof("pattern")
    if pattern is None:
        raise RouteError(f"{method.full_name}: HTTP rule without a pattern")
    if pattern == "custom":
        http_method, path = rule.custom.kind.upper(), rule.custom.path
    else:
        http_method, path = pattern.upper(), getattr(rule, pattern)
    template = _template(method, path)
    if rule.body not in ("", "*"):
        _top_level_field(method.input_type, rule.body, method, "body")
    if rule.response_body:
        _top_level_field(method.output_type, rule.response_body, method, "response_body")
    if method.client_streaming and rule.body != "*":
        raise RouteError(f'{method.full_name}: a client-streaming RPC needs body "*" (NDJSON)')
    path_fields = _check_path_fields(method, template)
    if rule.body not in ("", "*") and any(v.field_path == (rule.body,) for v in template.variables):
        raise RouteError(f"{method.full_name}: body field {rule.body!r} is also bound by the path")
    return Route(
        rpc=rpc,
        kind=Kind.REST,
        http_method=http_method,
        template=template,
        body=rule.body,
        response_body=rule.response_body,
        binding=index,
        path_fields=path_fields,
        events=event_stream(rpc),
    )


def _template(method: MethodDescriptor, path: str) -> PathTemplate:
    try:
        return parse_template(path)
    except TemplateError as exc:
        raise RouteError(f"{method.full_name}: {exc}") from exc


def _top_level_field(message: Descriptor, name: str, method: MethodDescriptor, what: str) -> FieldDescriptor:
    found = message.fields_by_name.get(name)
    if found is None:
        raise RouteError(f"{method.full_name}: {what} {name!r} is not a field of {message.full_name}")
    return found


def _check_path_fields(method: MethodDescriptor, template: PathTemplate) -> frozenset[str]:
    for var in template.variables:
        resolve_field_path(method.input_type, var.field_path, context=f"{method.full_name} path")
    return frozenset(var.field_path[0] for var in template.variables)
