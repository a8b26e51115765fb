"""Parity: every RPC with an HTTP or WebSocket rule has its route, every route reaches its RPC;
and an annotated RPC added to a proto gets its route from codegen alone."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor

from aibattle.v1 import options_pb2
from gateway import GatewayOptions, create_app, derive_routes
from gateway.options import default_api_files
from gateway.path_template import Variable
from gateway.routes import Kind, Route, RouteError
from tests.gateway.gateway_testlib import (
    DUMMY_PROTO,
    ProtoApi,
    dummy_options,
    load_api,
    run_codegen,
    stage_protos,
    start_library,
)

Binding = tuple[str, str, str]  # (HTTP method or "WS", path template, RPC full name)


def bindings_from_options(files: Iterable[FileDescriptor]) -> set[Binding]:
    """Read the rules straight from the serialized descriptors, independently of gateway.routes."""
    found: set[Binding] = set()
    for file in files:
        proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
        for service in proto.service:
            for method in service.method:
                name = f"{proto.package}.{service.name}.{method.name}"
                if method.options.HasExtension(annotations_pb2.http):
                    rule = method.options.Extensions[annotations_pb2.http]
                    for r in [rule, *rule.additional_bindings]:
                        kind = r.WhichOneof("pattern")
                        verb, path = (
                            (r.custom.kind, r.custom.path) if kind == "custom" else (kind, getattr(r, kind))
                        )
                        found.add((verb.upper(), path, name))
                if method.options.HasExtension(options_pb2.websocket):
                    found.add(("WS", method.options.Extensions[options_pb2.websocket].path, name))
    return found


def bindings_from_routes(routes: Iterable[Route]) -> set[Binding]:
    return {
        ("WS" if r.kind is Kind.WEBSOCKET else r.http_method, r.template.source, r.rpc.full_name)
        for r in routes
    }


# DESIGN.md's API surface table: the floor the schema must keep.
DESIGN_TABLE = {
    ("GET", "/api/v1/models", "aibattle.v1.ModelService.ListModels"),
    ("GET", "/api/v1/models/{model_id}", "aibattle.v1.ModelService.GetModel"),
    ("POST", "/api/v1/completions", "aibattle.v1.CompletionService.CreateCompletion"),
    ("POST", "/api/v1/completions:stream", "aibattle.v1.CompletionService.StreamCompletion"),
    ("WS", "/api/v1/ws/completions", "aibattle.v1.CompletionService.StreamCompletion"),
    ("POST", "/api/v1/conversations", "aibattle.v1.ConversationService.CreateConversation"),
    ("GET", "/api/v1/conversations/{conversation_id}", "aibattle.v1.ConversationService.GetConversation"),
    ("GET", "/api/v1/conversations", "aibattle.v1.ConversationService.ListConversations"),
    (
        "DELETE",
        "/api/v1/conversations/{conversation_id}",
        "aibattle.v1.ConversationService.DeleteConversation",
    ),
    (
        "POST",
        "/api/v1/conversations/{conversation_id}/messages",
        "aibattle.v1.ConversationService.AddMessage",
    ),
    (
        "POST",
        "/api/v1/conversations/{conversation_id}:run",
        "aibattle.v1.ConversationService.RunConversation",
    ),
    (
        "POST",
        "/api/v1/conversations/{conversation_id}:cancel",
        "aibattle.v1.ConversationService.CancelConversation",
    ),
    (
        "GET",
        "/api/v1/conversations/{conversation_id}/events",
        "aibattle.v1.ConversationService.StreamConversationEvents",
    ),
    ("WS", "/api/v1/ws/conversations/{conversation_id}", "aibattle.v1.ConversationService.Converse"),
    ("POST", "/api/v1/collaborative-reasoning", "aibattle.v1.ReasoningService.CreateReasoning"),
    ("GET", "/api/v1/collaborative-reasoning/{reasoning_id}", "aibattle.v1.ReasoningService.GetReasoning"),
    ("GET", "/api/v1/collaborative-reasoning", "aibattle.v1.ReasoningService.ListReasonings"),
    (
        "POST",
        "/api/v1/collaborative-reasoning/{reasoning_id}:cancel",
        "aibattle.v1.ReasoningService.CancelReasoning",
    ),
    (
        "GET",
        "/api/v1/collaborative-reasoning/{reasoning_id}/events",
        "aibattle.v1.ReasoningService.StreamReasoningEvents",
    ),
    (
        "WS",
        "/api/v1/ws/collaborative-reasoning/{reasoning_id}",
        "aibattle.v1.ReasoningService.StreamReasoningEvents",
    ),
}


def test_api_parity_every_rule_has_its_route_and_back() -> None:
    files = default_api_files()
    assert {f.name for f in files} >= {
        "aibattle/v1/models.proto",
        "aibattle/v1/completions.proto",
        "aibattle/v1/conversations.proto",
        "aibattle/v1/reasoning.proto",
    }
    routes = derive_routes(files)
    assert bindings_from_routes(routes) == bindings_from_options(files)
    assert len(routes) == len(bindings_from_options(files))
    assert bindings_from_routes(routes) >= DESIGN_TABLE
    every_rpc = {m.full_name for f in files for s in f.services_by_name.values() for m in s.methods}
    assert {r.rpc.full_name for r in routes} == every_rpc  # all our RPCs are reachable over HTTP


def test_dummy_parity(dummy_api: ProtoApi) -> None:
    file = dummy_api.file()
    routes = derive_routes([file])
    assert bindings_from_routes(routes) == bindings_from_options([file])
    names = {r.rpc.full_name.rsplit(".", 1)[1] for r in routes}
    assert "Internal" not in names  # no rule, no route
    assert len(names) == len(file.services_by_name["LibraryService"].methods) - 1


def sample_path(route: Route) -> str:
    """A concrete request path for a route's template."""
    parts: list[str] = []
    for seg in route.template.segments:
        if isinstance(seg, Variable):
            parts.append("/".join("x" if s in ("*", "**") else s for s in seg.pattern))
        else:
            parts.append("x" if seg in ("*", "**") else seg)
    return "/" + "/".join(parts) + (f":{route.template.verb}" if route.template.verb else "")


class Recorder(grpc.GenericRpcHandler):
    """Answers every method UNIMPLEMENTED and records which was called."""

    def __init__(self) -> None:
        self.called: list[str] = []

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        self.called.append(handler_call_details.method)  # type: ignore[attr-defined]

        async def unimplemented(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "recorded")

        return grpc.stream_stream_rpc_method_handler(unimplemented)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, Recorder]]:
    server = grpc.aio.server()
    handler = Recorder()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", handler
    await server.stop(0)


async def hit(client: Any, route: Route) -> int:
    path = sample_path(route)
    if route.kind is Kind.WEBSOCKET:
        needs_frame = route.rpc.shape.streams_requests or not route.rpc.required_fields <= route.path_fields
        async with client.ws_connect(path) as ws:
            if needs_frame:
                await ws.send_str("{}")
            async for _ in ws:
                pass
        return int(ws.close_code)
    body = "{}" if route.body else None
    resp = await client.request(route.http_method, path, data=body)
    await resp.read()
    return int(resp.status)


@pytest.mark.parametrize("api", ["aibattle.v1", "dummy"])
async def test_every_route_reaches_its_rpc(
    aiohttp_client: Any, recorder: tuple[str, Recorder], dummy_api: ProtoApi, api: str
) -> None:
    target, handler = recorder
    options = GatewayOptions() if api == "aibattle.v1" else dummy_options(dummy_api)
    client = await aiohttp_client(create_app(target, options))
    routes = derive_routes(options.files)
    for route in routes:
        handler.called.clear()
        status = await hit(client, route)
        assert handler.called == [route.rpc.grpc_path], route.describe()
        assert status in (501, 4012), route.describe()  # the upstream's UNIMPLEMENTED, not a gateway 404/405


def test_codegen_adds_the_route_of_a_new_annotated_rpc(dummy_api: ProtoApi, tmp_path: Path) -> None:
    root = stage_protos(tmp_path / "protos")
    proto = root / DUMMY_PROTO
    text = proto.read_text()
    new_rpc = """  // Moves a book to another shelf.
  rpc ShelveBook(ShelveBookRequest) returns (Book) {
    option (google.api.http) = {
      post: "/v1/{name=shelves/*/books/*}:shelve"
      body: "*"
    };
  }

  // Has no HTTP rule"""
    assert text.count("  // Has no HTTP rule") == 1
    proto.write_text(
        text.replace("  // Has no HTTP rule", new_rpc)
        + "\n// ShelveBookRequest names a book and its new shelf.\nmessage ShelveBookRequest {\n"
        "  // Resource name.\n  string name = 1;\n  // Target shelf.\n  string shelf = 2;\n}\n"
    )
    before = bindings_from_routes(derive_routes([dummy_api.file()]))
    after_api = load_api(run_codegen(root, tmp_path / "gen"))
    after = bindings_from_routes(derive_routes([after_api.file()]))
    added = ("POST", "/v1/{name=shelves/*/books/*}:shelve", "aibattle.testing.v1.LibraryService.ShelveBook")
    assert added not in before
    assert after == before | {added}
    assert (tmp_path / "gen" / "aibattle" / "testing" / "v1" / "dummy_pb2.py").is_file()


async def test_new_rpc_is_served_without_hand_edits(
    aiohttp_client: Any, dummy_api: ProtoApi, tmp_path: Path
) -> None:
    """The route of the new RPC works end to end: the gateway calls it upstream (which lacks it: 501)."""
    root = stage_protos(tmp_path / "protos")
    proto = root / DUMMY_PROTO
    proto.write_text(
        proto.read_text().replace(
            "  // Has no HTTP rule",
            "  // Pings.\n  rpc Ping(InternalRequest) returns (InternalResponse) {\n"
            '    option (google.api.http) = {get: "/v1/ping"};\n  }\n\n  // Has no HTTP rule',
        )
    )
    api = load_api(run_codegen(root, tmp_path / "gen"))
    server, running = await start_library(dummy_api)
    try:
        client = await aiohttp_client(create_app(running.target, dummy_options(api)))
        resp = await client.get("/v1/ping")
        assert resp.status == 501  # routed and called: the old servicer has no Ping
        assert (await resp.json())["code"] == 12
        doc = await (await client.get("/openapi.json")).json()
        assert doc["paths"]["/v1/ping"]["get"]["summary"] == "Pings."
    finally:
        await server.stop(0)


def make_file(rule: dict[str, Any], *, response_body: str = "") -> FileDescriptor:
    """A one-method proto, built in code, with the given HTTP rule."""
    file = descriptor_pb2.FileDescriptorProto(name="bad.proto", package="bad", syntax="proto3")
    msg = file.message_type.add(name="Req")
    msg.field.add(name="id", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    method = file.service.add(name="Svc").method.add(name="Do", input_type=".bad.Req", output_type=".bad.Req")
    http = method.options.Extensions[annotations_pb2.http]
    for key, value in rule.items():
        setattr(http, key, value)
    if response_body:
        http.response_body = response_body
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool.FindFileByName("bad.proto")


@pytest.mark.parametrize(
    ("rule", "needle"),
    [
        ({"get": "/v1/{nope}"}, "no field 'nope'"),
        ({"post": "/v1/x", "body": "nope"}, "body 'nope'"),
        ({"get": "v1/x"}, "must start with '/'"),
        ({"get": "/v1/{id=**}/x"}, "'**'"),
    ],
)
def test_bad_rules_fail_at_start_up(rule: dict[str, Any], needle: str) -> None:
    with pytest.raises(RouteError, match=needle.replace("*", r"\*")):
        derive_routes([make_file(rule)])


def test_bad_response_body_fails_at_start_up() -> None:
    with pytest.raises(RouteError, match="response_body"):
        derive_routes([make_file({"get": "/v1/x"}, response_body="nope")])


def test_custom_pattern_kind() -> None:
    file = make_file({})
    proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
    http = proto.service[0].method[0].options.Extensions[annotations_pb2.http]
    http.custom.kind = "search"
    http.custom.path = "/v1/items"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    (route,) = derive_routes([pool.FindFileByName("bad.proto")])
    assert route.http_method == "SEARCH" and route.template.source == "/v1/items"


def test_the_readme_route_table_lists_every_derived_route() -> None:
    """gateway/README.md's table is for people; the protos are the truth. A new RPC fails here until
    the table names it (HTTP method and path, or WebSocket path)."""
    table = (Path(__file__).parents[2] / "gateway" / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(): line
        for line in table.splitlines()
        if line.startswith("| ") and "Service." in line
    }
    for route in derive_routes(GatewayOptions().files):
        method = route.rpc.method
        row = rows.get(f"{method.containing_service.name}.{method.name}") or rows.get(
            f"{method.containing_service.name}.{method.name} (bidi)"
        )
        assert row is not None, f"{method.full_name} is not in gateway/README.md's route table"
        shown = (
            route.template.source
            if route.kind is Kind.WEBSOCKET
            else f"{route.http_method} {route.template.source}"
        )
        assert shown in row, f"{method.full_name}: {shown!r} not in its row {row!r}"
