"""/openapi.json (OpenAPI 3.1, generated from the protos, with their comments) and /docs (offline)."""

from __future__ import annotations

import asyncio
import html
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from gateway import GatewayOptions, create_app, derive_routes
from gateway.openapi import build_openapi
from gateway.openapi.schema import decimal_pattern
from gateway.path_template import parse_template
from gateway.routes import Kind
from gateway.source_info import Comments
from gateway.web_meta import DOCS_ASSETS
from gateway.web_rpc import RPC
from gateway.web_state import STATE
from tests.gateway.conftest import GATEWAY_ANSWERS
from tests.gateway.gateway_testlib import ProtoApi, RunningLibrary, dummy_options

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def api_client(aiohttp_client: Any, api_descriptor_set: Path) -> Any:
    # Nothing listens on port 1: the document and the docs page need no upstream.
    return await aiohttp_client(create_app("127.0.0.1:1", GatewayOptions(descriptor_set=api_descriptor_set)))


def operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


async def test_openapi_validates_and_covers_every_route(api_client: Any) -> None:
    resp = await api_client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)
    routes = derive_routes(GatewayOptions().files)
    expected = {
        ("GET" if r.kind is Kind.WEBSOCKET else r.http_method, r.template.openapi_path()) for r in routes
    }
    # Every endpoint the app registers by hand too (health, the document, /docs), but Swagger UI's files
    # and the Connect / gRPC-Web paths (the protos describe those; OpenAPI is the REST surface's).
    fixed = {
        (method, parse_template(f.template.source).openapi_path())
        for f in api_client.server.app[STATE].fixed_routes
        for method in f.methods
        if not f.template.source.startswith(DOCS_ASSETS) and f.dialect is not RPC
    }
    assert {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/livez"), ("GET", "/openapi.json")} <= fixed
    assert {("POST", "/v1/chat/completions"), ("POST", "/api/chat"), ("GET", "/api/tags")} <= fixed
    assert operations(doc) == expected | fixed
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(routes) + len(fixed)


async def test_openapi_carries_proto_comments(api_client: Any) -> None:
    doc = await (await api_client.get("/openapi.json")).json()
    get_model = doc["paths"]["/api/v1/models/{model_id}"]["get"]
    assert get_model["summary"] == "Returns one model by id."
    assert get_model["parameters"][0]["description"] == "Id of the model."
    assert get_model["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/aibattle.v1.Model"
    }
    model = doc["components"]["schemas"]["aibattle.v1.Model"]
    assert model["description"].startswith("Model is a configured model")
    assert model["properties"]["pricing"]["description"] == "Price per token in US dollars."
    create = doc["components"]["schemas"]["aibattle.v1.CreateCompletionRequest"]
    assert create["required"] == ["model"]
    status_enum = doc["components"]["schemas"]["aibattle.v1.RunStatus"]
    assert "RUN_STATUS_COMPLETED" in status_enum["enum"]
    assert "Finished normally." in status_enum["description"]
    conversation = doc["components"]["schemas"]["aibattle.v1.Conversation"]
    assert conversation["properties"]["conversation_id"]["readOnly"] is True
    tags = {t["name"]: t.get("description", "") for t in doc["tags"]}
    assert tags["ModelService"].startswith("ModelService lists")


async def test_openapi_streaming_and_websocket_operations(api_client: Any) -> None:
    doc = await (await api_client.get("/openapi.json")).json()
    stream = doc["paths"]["/api/v1/completions:stream"]["post"]
    content = stream["responses"]["200"]["content"]
    assert set(content) == {"application/x-ndjson", "text/event-stream"}
    frame = content["application/x-ndjson"]["schema"]["properties"]
    assert frame["result"] == {"$ref": "#/components/schemas/aibattle.v1.StreamCompletionResponse"}
    ws = doc["paths"]["/api/v1/ws/conversations/{conversation_id}"]["get"]
    assert "101" in ws["responses"]
    assert ws["x-websocket"]["request"] == {"$ref": "#/components/schemas/aibattle.v1.ConverseRequest"}
    events = doc["paths"]["/api/v1/collaborative-reasoning/{reasoning_id}/events"]["get"]
    assert [p["name"] for p in events["parameters"]] == ["reasoning_id", "after_sequence", "Last-Event-ID"]
    assert events["parameters"][-1]["in"] == "header" and "204" in events["responses"]
    assert ws["parameters"][-1]["name"] == "Sec-WebSocket-Protocol"


async def test_openapi_without_descriptor_set_has_no_descriptions(aiohttp_client: Any) -> None:
    client = await aiohttp_client(create_app("127.0.0.1:1", GatewayOptions(descriptor_set=None)))
    doc = await (await client.get("/openapi.json")).json()
    validate(doc, cls=OpenAPIV31SpecValidator)
    assert doc["paths"]["/api/v1/models/{model_id}"]["get"]["summary"] == "GetModel"


async def test_dummy_openapi_query_and_path_parameters(
    aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi
) -> None:
    client = await aiohttp_client(create_app(library.target, dummy_options(dummy_api)))
    doc = await (await client.get("/openapi.json")).json()
    validate(doc, cls=OpenAPIV31SpecValidator)
    search = doc["paths"]["/v1/books:search"]["get"]
    names = {p["name"]: p for p in search["parameters"]}
    assert {
        "filter.author",
        "filter.genres",
        "filter.born_after",
        "tags",
        "published_after",
        "read_mask",
    } <= set(names)
    assert names["filter.genres"]["schema"]["type"] == "array"
    assert names["published_after"]["schema"]["format"] == "date-time"
    get_book = doc["paths"]["/v1/{name}"]["get"]
    assert get_book["parameters"][0]["schema"]["pattern"] == "^shelves/[^/]+/books/[^/]+$"
    update = doc["paths"]["/v1/{book.name}"]["patch"]
    assert update["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/aibattle.testing.v1.Book"
    }
    upload = doc["paths"]["/v1/books:upload"]["post"]
    assert "application/x-ndjson" in upload["requestBody"]["content"]


async def test_docs_page_assets_are_local(api_client: Any) -> None:
    page = await api_client.get("/docs")
    assert page.status == 200
    text = await page.text()
    assert "https://" not in text and "http://" not in text
    bundle = await api_client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status == 200 and len(await bundle.read()) > 100_000


# `make install` installs chromium; only a hand-run pytest on a machine without it may skip, never CI.
@pytest.mark.skipif(
    not Path(CHROMIUM).exists() and not os.environ.get("CI"), reason="needs Debian's chromium (make install)"
)
async def test_docs_render_offline_in_headless_chromium(api_client: Any, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{api_client.port}/docs"
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        # No name resolves but loopback: a page that needed a CDN would render nothing.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=5000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 60)
    dom = html.unescape(stdout.decode())
    assert "swagger-ui" in dom
    for path in (
        "/api/v1/models",
        "/api/v1/completions:stream",
        "/api/v1/conversations/{conversation_id}:run",
    ):
        assert f'data-path="{path}"' in dom, path
    assert "ListModels" in dom or "Lists configured models" in dom


def dummy_document(dummy_api: ProtoApi, *, strict: bool = True) -> dict[str, Any]:
    routes = derive_routes((dummy_api.file(),))
    return build_openapi(routes, Comments(), title="t", version="v", strict=strict)


def test_strict_message_schemas_refuse_unknown_fields(dummy_api: ProtoApi) -> None:
    schemas = dummy_document(dummy_api)["components"]["schemas"]
    book = schemas["aibattle.testing.v1.Book"]
    assert book["additionalProperties"] is False
    # Free-form JSON and maps keep their additional properties.
    assert book["properties"]["extra"]["additionalProperties"] is True  # google.protobuf.Struct
    assert book["properties"]["attributes"]["additionalProperties"] == {"type": "string"}  # a map
    status = schemas["google.rpc.Status"]
    assert status["additionalProperties"] is False
    assert status["properties"]["details"]["items"]["additionalProperties"] is True  # google.protobuf.Any
    validator = Draft202012Validator({**book, "components": {"schemas": schemas}})
    assert validator.is_valid({"title": "Dune"})
    assert not validator.is_valid({"title": "Dune", "titel": "typo"})

    lenient = dummy_document(dummy_api, strict=False)["components"]["schemas"]
    assert "additionalProperties" not in lenient["aibattle.testing.v1.Book"]


async def test_served_document_is_strict_like_the_gateway(api_client: Any) -> None:
    doc = await (await api_client.get("/openapi.json")).json()
    request = doc["components"]["schemas"]["aibattle.v1.CreateCompletionRequest"]
    assert request["additionalProperties"] is False


def test_required_fields_are_non_empty_and_declared_bounds_are_published(dummy_api: ProtoApi) -> None:
    doc = dummy_document(dummy_api)
    book = doc["components"]["schemas"]["aibattle.testing.v1.Book"]
    assert book["properties"]["title"]["minLength"] == 1  # REQUIRED: "" is the same as unset
    assert "minLength" not in book["properties"]["name"]
    routes = derive_routes(GatewayOptions().files)
    ours = build_openapi(routes, Comments(), title="t", version="v")
    create = ours["components"]["schemas"]["aibattle.v1.CreateConversationRequest"]
    # REQUIRED alone would give minItems 1; the declared (aibattle.v1.bounds) says 2 to 8.
    assert (create["properties"]["models"]["minItems"], create["properties"]["models"]["maxItems"]) == (2, 8)
    assert (create["properties"]["rounds"]["minimum"], create["properties"]["rounds"]["maximum"]) == (0, 50)
    list_models = ours["paths"]["/api/v1/models"]["get"]
    page_size = next(p for p in list_models["parameters"] if p["name"] == "page_size")
    assert page_size["schema"]["minimum"] == 0  # AIP-158
    assert page_size["schema"]["maximum"] == 2**31 - 1
    events = ours["paths"]["/api/v1/conversations/{conversation_id}/events"]["get"]
    after = next(p for p in events["parameters"] if p["name"] == "after_sequence")["schema"]
    assert after["minimum"] == 0  # a 64-bit bound narrows its decimal-string pattern too
    assert re.match(after["pattern"], "12") and not re.match(after["pattern"], "-1")


def test_request_body_requirements(dummy_api: ProtoApi) -> None:
    routes = derive_routes(GatewayOptions().files)
    paths = build_openapi(routes, Comments(), title="t", version="v")["paths"]
    # No body is `{}`: enough for ListModels-like requests, not when a required field must come in it.
    assert paths["/api/v1/completions"]["post"]["requestBody"]["required"] is True
    add = paths["/api/v1/conversations/{conversation_id}/messages"]["post"]["requestBody"]
    assert add["required"] is True
    body = add["content"]["application/json"]["schema"]
    assert body["required"] == ["content"]  # the path sets conversation_id
    assert body["additionalProperties"] is False
    cancel = paths["/api/v1/conversations/{conversation_id}:cancel"]["post"]["requestBody"]
    assert cancel["required"] is False  # its only required field comes from the path
    archive = dummy_document(dummy_api)["paths"]["/v1/{name}:archive"]["post"]["requestBody"]
    assert archive["required"] is False


def test_websocket_operations_document_the_426(api_client_doc: dict[str, Any]) -> None:
    ws = api_client_doc["paths"]["/api/v1/ws/completions"]["get"]
    assert set(ws["responses"]) == {"101", "400", "426", "default"}
    assert ws["responses"]["426"]["headers"]["Upgrade"]["schema"]["const"] == "websocket"


@pytest.fixture
def api_client_doc() -> dict[str, Any]:
    return build_openapi(derive_routes(GatewayOptions().files), Comments(), title="t", version="v")


@pytest.mark.parametrize("low, high", [(-(2**63), 2**63 - 1), (0, 2**64 - 1), (0, 9), (-10, 10), (0, 1999)])
def test_decimal_pattern_is_exactly_the_range(low: int, high: int) -> None:
    pattern = re.compile(decimal_pattern(low, high))
    rng = random.Random(0)
    near = [b + d for b in (low, high, 0, high // 10, low // 10) for d in range(-12, 13)]
    numbers = near + [rng.randint(low * 10 - 10, high * 10 + 10) for _ in range(3000)]
    for n in numbers:
        assert bool(pattern.fullmatch(str(n))) == (low <= n <= high), n
    for text in ("", "-", "-0", "+1", "01", "1.0", "1e3", " 1", "00"):
        assert pattern.fullmatch(text) is None, text


# Canonical forms only: proto-JSON also takes "+5", "007" and base64 with stray characters, which
# the document leaves out on purpose.
@pytest.mark.parametrize(
    "field, value",
    [
        ("isbn", v)
        for v in (
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            2**63 - 1,
            2**63,
            -(2**63) - 1,
            "",
            "12a",
            "0",
        )
    ]
    + [("cover", v) for v in ("", "ab", "ab==", "abc", "abc=", "abcd", "a-_b", "a+/b", "a", "abcde")],
)
def test_integer_and_bytes_schemas_agree_with_proto_json(dummy_api: ProtoApi, field: str, value: Any) -> None:
    schemas = dummy_document(dummy_api)["components"]["schemas"]
    schema = schemas["aibattle.testing.v1.Book"]["properties"][field]
    valid = Draft202012Validator(schema).is_valid(value)
    try:
        json_format.ParseDict({field: value}, dummy_api.cls("aibattle.testing.v1.Book")())
    except json_format.ParseError:
        parsed = False
    else:
        parsed = True
    assert valid == parsed, (schema, value)


async def test_served_document_of_a_lenient_gateway_allows_unknown_fields(aiohttp_client: Any) -> None:
    client = await aiohttp_client(
        create_app("127.0.0.1:1", GatewayOptions(descriptor_set=None, strict=False))
    )
    doc = await (await client.get("/openapi.json")).json()
    assert "additionalProperties" not in doc["components"]["schemas"]["aibattle.v1.CreateCompletionRequest"]


def test_string_fields_with_allowed_values_publish_the_servers_lists(api_client_doc: dict[str, Any]) -> None:
    from server.orchestration.reasoning import STRATEGIES
    from server.orchestration.turns import MODES

    schemas = api_client_doc["components"]["schemas"]
    mode = schemas["aibattle.v1.CreateConversationRequest"]["properties"]["mode"]
    strategy = schemas["aibattle.v1.CreateReasoningRequest"]["properties"]["collaboration_strategy"]
    # "" is proto3's unset: the server's default (the first of each list).
    assert mode["enum"] == ["", *MODES]
    assert strategy["enum"] == ["", *STRATEGIES]


async def test_allowed_values_are_what_the_server_takes(api: Any) -> None:
    schemas = (await (await api.get("/openapi.json")).json())["components"]["schemas"]
    seats = [{"id": "scripted-echo", "role": "human"}, {"id": "scripted-echo", "role": "assistant"}]
    for mode in schemas["aibattle.v1.CreateConversationRequest"]["properties"]["mode"]["enum"]:
        models = (
            seats if mode in ("", "human-ai") else [{"id": "scripted-echo", "role": r} for r in ("a", "b")]
        )
        resp = await api.post(
            "/api/v1/conversations",
            json={"models": models, "mode": mode, "rounds": 0, "initial_prompt": "Hi"},
        )
        assert resp.status == 200, (mode, await resp.text())
    resp = await api.post("/api/v1/conversations", json={"models": seats, "mode": "human-human"})
    assert resp.status == 400 and "mode" in (await resp.json())["message"]


def test_enum_query_parameters_take_names_and_declared_numbers(api_client_doc: dict[str, Any]) -> None:
    listing = api_client_doc["paths"]["/api/v1/conversations"]["get"]
    status = next(p for p in listing["parameters"] if p["name"] == "status")["schema"]
    by_name, by_number = status["anyOf"]
    assert by_name == {"$ref": "#/components/schemas/aibattle.v1.RunStatus"}
    names = api_client_doc["components"]["schemas"]["aibattle.v1.RunStatus"]["enum"]
    assert by_number == {"type": "integer", "enum": list(range(len(names)))}


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ("RUN_STATUS_COMPLETED", 200),
        ("0", 200),
        ("4", 200),
        ("99", 400),
        ("-1", 400),
        ("done", 400),
        ("", 400),
    ],
)
async def test_enum_query_parameters_agree_with_the_document(api: Any, value: str, status: int) -> None:
    resp = await api.get("/api/v1/conversations", params={"status": value})
    assert resp.status == status, await resp.text()
    if status == 400:
        body = await resp.json()
        assert body["details"][0]["reason"] == "INVALID_QUERY_PARAMETER" and "status" in body["message"]


def test_list_operations_document_the_page_token_refusal(api_client_doc: dict[str, Any]) -> None:
    lists = [
        op
        for item in api_client_doc["paths"].values()
        for op in item.values()
        if any(p["name"] == "page_token" for p in op.get("parameters", ()))
    ]
    assert len(lists) == 4  # models, conversations, reasoning sessions, keys
    for op in lists:
        assert (
            "not issued" in op["responses"]["400"]["description"]
            or "opaque" in op["responses"]["400"]["description"]
        )
        token = next(p for p in op["parameters"] if p["name"] == "page_token")
        assert "400 INVALID_ARGUMENT" in token["description"]


def test_every_operation_documents_the_plain_text_400_of_the_http_server(
    api_client_doc: dict[str, Any],
) -> None:
    for item in api_client_doc["paths"].values():
        for op in item.values():
            assert set(op["responses"]["400"]["content"]) == {"application/json", "text/plain"}


@GATEWAY_ANSWERS
async def test_an_unparsable_request_line_is_the_documented_plain_text_400(api: Any) -> None:
    resp = await api.get("/api/v1/models", params={"provider": "x" * 9000})
    assert resp.status == 400 and resp.content_type == "text/plain"


async def test_page_tokens_not_issued_are_400_as_documented(api: Any) -> None:
    for path in ("/api/v1/models", "/api/v1/conversations", "/api/v1/collaborative-reasoning"):
        resp = await api.get(path, params={"page_token": "not-one-of-ours"})
        assert resp.status == 400, path
        assert (await resp.json())["details"][0]["metadata"]["field"] == "page_token"


async def test_health_operations_are_documented(api_client: Any) -> None:
    doc = await (await api_client.get("/openapi.json")).json()
    healthz = doc["paths"]["/healthz"]["get"]
    assert set(healthz["responses"]) == {"200", "400", "404", "503"}
    assert healthz["security"] == [{}]
    assert doc["paths"]["/livez"]["get"]["responses"]["200"]


_CHAT = {"model": "scripted-echo", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("path", "body", "valid"),
    [
        ("/v1/chat/completions", _CHAT, True),
        ("/v1/chat/completions", {**_CHAT, "tools": [], "n": 1, "temperature": None}, True),
        (
            "/v1/chat/completions",
            {**_CHAT, "tools": [{"type": "function", "function": {"name": "f", "strict": "yes"}}]},
            False,
        ),
        ("/v1/chat/completions", {**_CHAT, "n": 2}, False),
        ("/v1/chat/completions", {**_CHAT, "no_such_key": 1}, False),
        ("/v1/chat/completions", {**_CHAT, "messages": []}, False),
        ("/v1/chat/completions", {**_CHAT, "max_tokens": 0}, False),
        ("/v1/chat/completions", {**_CHAT, "stream_options": {"include_usage": True}}, False),
        ("/v1/chat/completions", {**_CHAT, "stream_options": {}}, True),
        ("/v1/chat/completions", {**_CHAT, "stream": True, "stream_options": {"include_usage": True}}, True),
        ("/v1/completions", {"model": "scripted-echo", "prompt": ["one prompt"]}, True),
        ("/v1/completions", {"model": "scripted-echo", "prompt": ["two", "prompts"]}, False),
        ("/api/chat", {**_CHAT, "stream": False, "options": {"temperature": 0.5, "num_predict": -1}}, True),
        ("/api/chat", {**_CHAT, "stream": False, "options": {"num_ctx": 4096}}, False),
        ("/api/generate", {"model": "scripted-echo", "prompt": "hi", "stream": False, "raw": False}, True),
        ("/api/generate", {"model": "scripted-echo", "prompt": "hi", "stream": False, "raw": True}, False),
    ],
)
async def test_compat_request_schemas_agree_with_the_endpoints(
    api: Any, path: str, body: dict[str, Any], valid: bool
) -> None:
    """The document's compat request schemas (read from the endpoints' own key lists) and the endpoints
    take and refuse the same bodies."""
    doc = await (await api.get("/openapi.json")).json()
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert Draft202012Validator(schema).is_valid(body) is valid
    resp = await api.post(path, json=body)
    assert (resp.status == 200) is valid, await resp.text()
