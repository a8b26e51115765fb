"""/openapi.json (OpenAPI 3.1, generated from the protos, with their comments) and /docs (offline)."""

from __future__ import annotations

import asyncio
import html
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator, validate

from gateway import GatewayOptions, create_app, derive_routes
from gateway.routes import Kind
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
    assert operations(doc) == expected
    ids = [op["operationId"] for item in doc["paths"].values() for op in item.values()]
    assert len(ids) == len(set(ids)) == len(routes)


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
    assert [p["name"] for p in events["parameters"]] == ["reasoning_id", "after_sequence"]


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
