"""The gateway's half of observability: `/metrics`, the request series of every HTTP surface, the
`x-aibattle-overhead-ms` header, and the HTTP span with its trace context carried upstream.

Against the real server with scripted models (one that fails before its first chunk, an HTTP model whose
upstream is a closed port), a server with keys (a key over its rpm), the test-only API behind a servicer
that reports a wait on providers, and, as processes, `python -m server` with `metrics_addr` and
`python -m gateway` exporting its spans to an OTLP receiver run here.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client.parser import text_string_to_metric_families

from aibattle.v1 import models_pb2
from common.observability import OVERHEAD_HEADER, UPSTREAM_MS_METADATA, metrics
from gateway import GatewayOptions, create_app, start_metrics
from gateway.__main__ import parse_args
from server.app import AIBattleServer
from tests.conftest import SCRIPTED_MODELS, make_config
from tests.gateway.gateway_testlib import LibraryServicer, ProtoApi, dummy_options
from tests.security_testlib import ADMIN_KEY, SECRETS, secure_config

ROOT = Path(__file__).resolve().parents[2]
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
UPSTREAM_KEY_ENV = "AIBATTLE_TEST_OBSERVABILITY_UPSTREAM_KEY"
UPSTREAM_SECRET = "sk-observability-upstream-secret-0123456789"
CHAT = {"model": "scripted-echo", "messages": [{"role": "user", "content": "Hi"}]}
GATEWAY_SURFACES = ("rest", "openai", "ollama", "websocket")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- reading /metrics -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def samples(text: str) -> tuple[tuple[str, dict[str, str], float], ...]:
    """Parsed once per text: a test reads the same scrape many times, and after a whole suite's traffic
    one parse is a good part of a second."""
    return tuple((s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples)


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples named `name` whose labels include `labels`."""
    return sum(v for n, ls, v in samples(text) if n == name and labels.items() <= ls.items())


def delta(before: str, after: str, name: str, **labels: str) -> float:
    return total(after, name, **labels) - total(before, name, **labels)


def overhead_ms(headers: Any) -> float:
    """The header, which must be there and be a non-negative number of milliseconds."""
    value = headers.get(OVERHEAD_HEADER)
    assert value is not None, f"no {OVERHEAD_HEADER} among {dict(headers)}"
    ms = float(value)
    assert ms >= 0, value
    return ms


@pytest.fixture
def metrics_on() -> Iterator[None]:
    """Metrics recorded (the default), key ids not, whatever a test changes; restored after."""
    saved = metrics.enabled, metrics.key_label
    metrics.configure(on=True, by_key=False)
    yield
    metrics.configure(on=saved[0], by_key=saved[1])


# --- a server with models that fail -----------------------------------------------------------------------


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[AIBattleServer]:
    monkeypatch.setenv(UPSTREAM_KEY_ENV, UPSTREAM_SECRET)
    SECRETS.add(UPSTREAM_SECRET)  # nor in any log line of the run
    models = [
        *SCRIPTED_MODELS,
        {"id": "scripted-broken", "provider": "scripted", "script": ["never said"], "error_after_chunks": 0},
        {
            "id": "http-closed",
            "provider": "openai",
            "base_url": f"http://127.0.0.1:{free_port()}/v1",  # nothing listens there
            "api_key_env": UPSTREAM_KEY_ENV,
            "upstream": {"retries": 0},
        },
    ]
    srv = AIBattleServer(make_config(models))
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture
async def gw(aiohttp_client: Any, server: AIBattleServer, metrics_on: None) -> Any:
    return await aiohttp_client(
        create_app(server.grpc_target, GatewayOptions(descriptor_set=None)),
        server_kwargs={"handler_cancellation": True},
    )


async def scrape(client: Any, path: str = "/metrics") -> str:
    resp = await client.get(path)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return str(await resp.text())


async def upgrade_headers(port: int, path: str) -> tuple[str, dict[str, str]]:
    """The status line and headers a WebSocket upgrade is answered with (aiohttp's client hides them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
    finally:
        writer.close()
    status, *lines = head.strip().split("\r\n")
    return status, {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


# --- the overhead header -----------------------------------------------------------------------------------


async def test_overhead_header_on_every_surface(gw: Any) -> None:
    completion = {"model": "scripted-echo", "prompt": "Hi"}
    answers = [
        await gw.get("/api/v1/models"),
        await gw.post("/api/v1/completions", json=completion),
        await gw.post("/api/v1/completions:stream", json=completion, headers={"Accept": "text/event-stream"}),
        await gw.post("/api/v1/completions:stream", json=completion),  # NDJSON
        await gw.post("/v1/chat/completions", json=CHAT),
        await gw.post("/v1/chat/completions", json={**CHAT, "stream": True}),
        await gw.post("/v1/completions", json={"model": "scripted-echo", "prompt": "Hi"}),
        await gw.get("/v1/models"),
        await gw.post("/api/chat", json={**CHAT, "stream": False}),
        await gw.post("/api/chat", json=CHAT),  # Ollama streams by default
        await gw.post("/api/generate", json={"model": "scripted-echo", "prompt": "Hi"}),
        await gw.get("/api/tags"),
        await gw.post("/api/v1/completions", json={"model": "scripted-echo", "promt": "typo"}),  # 400
        await gw.post("/api/v1/completions", json={"model": "scripted-broken", "prompt": "Hi"}),  # 503
        await gw.get("/api/v1/no-such-route"),  # 404
        await gw.get("/v1/no-such-route"),  # OpenAI's 404
        await gw.get("/api/v1/ws/completions"),  # 426: a WebSocket route without the upgrade
        await gw.get("/openapi.json"),
        await gw.get("/docs"),
        await gw.get("/healthz"),
    ]
    statuses = [resp.status for resp in answers]
    assert statuses[:12] == [200] * 12
    assert statuses[12:17] == [400, 503, 404, 404, 426]
    for resp in answers:
        await resp.read()
        overhead_ms(resp.headers)
    # The WebSocket upgrade answer carries it too, sent before the first frame.
    status, headers = await upgrade_headers(gw.port, "/api/v1/ws/completions?model=scripted-echo&prompt=Hi")
    assert " 101 " in status
    overhead_ms(headers)


class _WaitingLibrary(LibraryServicer):
    """Says its answers waited ten minutes on model providers (UPSTREAM_MS_METADATA)."""

    async def GetBook(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(((UPSTREAM_MS_METADATA, "600000"),))
        return self.api.msg("Book", name=request.name, title="Dune")

    async def StreamBooks(self, request: Any, context: Any) -> Any:
        await context.send_initial_metadata(((UPSTREAM_MS_METADATA, "600000"),))
        for i in range(request.count):
            yield self.api.msg("Book", name=f"{request.parent}/books/{i}")


async def test_overhead_leaves_out_the_wait_the_server_reports(
    aiohttp_client: Any, dummy_api: ProtoApi, metrics_on: None
) -> None:
    """Our time is the gateway's minus the providers' wait the server reports: a reported wait longer
    than the whole request leaves no overhead, on a unary answer and on a stream's headers alike."""
    upstream = grpc.aio.server()
    upstream.add_generic_rpc_handlers((_WaitingLibrary(dummy_api).handler(),))
    port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()
    try:
        client = await aiohttp_client(create_app(f"127.0.0.1:{port}", dummy_options(dummy_api)))
        book = await client.get("/v1/shelves/s1/books/b1")
        stream = await client.get("/v1/shelves/s1/books:stream?count=2")
        for resp in (book, stream):
            assert resp.status == 200, await resp.text()
            assert resp.headers[OVERHEAD_HEADER] == "0.000"
        # Without a report, the whole time is ours.
        search = await client.get("/v1/books:search")
        assert search.status == 200 and overhead_ms(search.headers) > 0
    finally:
        await upstream.stop(0)


# --- the request series ------------------------------------------------------------------------------------


async def test_request_series_after_known_traffic(gw: Any) -> None:
    before = await scrape(gw)
    assert (await gw.get("/api/v1/models/scripted-echo")).status == 200
    assert (await gw.post("/api/v1/completions", json={"model": "scripted-echo", "promt": "x"})).status == 400
    assert (
        await gw.post("/api/v1/completions", json={"model": "scripted-broken", "prompt": "x"})
    ).status == 503
    closed = await gw.post("/v1/chat/completions", json={**CHAT, "model": "http-closed"})
    assert closed.status >= 500, await closed.text()
    # A stream that fails after its first chunk: 200, its error frame says what failed.
    failing = await gw.post("/api/v1/completions:stream", json={"model": "scripted-fail", "prompt": "x"})
    assert failing.status == 200 and '"error"' in await failing.text()
    assert (await gw.post("/api/chat", json={**CHAT, "stream": False})).status == 200
    assert (await gw.get("/api/v1/models/scripted-echo/nope/nope")).status == 404
    async with gw.ws_connect("/api/v1/ws/completions?model=scripted-echo&prompt=Hi") as ws:
        assert [json.loads(m.data) async for m in ws][-1]["result"]["is_final"] is True
    await scrape(gw)  # not counted
    after = await scrape(gw)

    def counted(**labels: str) -> float:
        return delta(before, after, "aibattle_requests_total", **labels)

    assert counted(surface="rest", route="/api/v1/models/{model_id}", status="200", error_type="") == 1
    assert (
        counted(surface="rest", route="/api/v1/completions", status="400", error_type="caller_invalid") == 1
    )
    provider = {n: v for n, v in _error_types(before, after).items() if n.startswith("provider_")}
    assert counted(surface="rest", route="/api/v1/completions", status="503") == 1
    assert sum(provider.values()) == 3, provider  # the broken model, the closed port, the failed stream
    for error_type in provider:
        assert error_type in metrics.ERROR_TYPES
    assert counted(surface="openai", route="/v1/chat/completions") == 1
    assert counted(surface="openai", route="/v1/chat/completions", error_type="") == 0
    assert counted(surface="rest", route="/api/v1/completions:stream", status="200") == 1
    assert counted(surface="rest", route="/api/v1/completions:stream", error_type="") == 0
    assert counted(surface="ollama", route="/api/chat", status="200", error_type="") == 1
    assert counted(surface="rest", route="unmatched", status="404", error_type="caller_not_found") == 1
    assert counted(surface="websocket", route="/api/v1/ws/completions", status="101", error_type="") == 1
    # Route templates only, never a raw path; /metrics never counts itself.
    routes = {ls["route"] for n, ls, _ in samples(after) if n == "aibattle_requests_total"}
    assert "/api/v1/models/scripted-echo" not in routes and "/metrics" not in routes
    for name in ("aibattle_request_duration_seconds_count", "aibattle_request_overhead_seconds_count"):
        assert delta(before, after, name, surface="rest", route="/api/v1/models/{model_id}") == 1
        assert delta(before, after, name, surface="websocket", route="/api/v1/ws/completions") == 1
        assert delta(before, after, name, route="/metrics") == 0
    for surface in GATEWAY_SURFACES:
        assert total(after, "aibattle_requests_in_flight", surface=surface) == 0
    assert (
        total(after, "aibattle_open_streams") - total(after, "aibattle_open_streams", transport="grpc") == 0
    )
    assert total(after, "aibattle_websocket_connections") == 0
    # No secret: not the upstream's key, not a raw path with an id.
    assert UPSTREAM_SECRET not in after


async def test_connect_and_grpc_web_count_under_their_surface_and_procedure(gw: Any) -> None:
    before = await scrape(gw)
    ok = await gw.post("/aibattle.v1.ModelService/ListModels", json={})
    assert ok.status == 200
    assert float(ok.headers[OVERHEAD_HEADER]) >= 0
    missing = await gw.post("/aibattle.v1.ModelService/GetModel", json={"modelId": "nope"})
    assert missing.status == 404
    web = await gw.post(
        "/aibattle.v1.ModelService/GetModel",
        data=b"\0\0\0\0\x06\n\x04nope",  # one envelope: GetModelRequest(model_id="nope")
        headers={"Content-Type": "application/grpc-web+proto"},
    )
    assert web.headers["grpc-status"] == "5"
    after = await scrape(gw)

    def counted(**labels: str) -> float:
        return delta(before, after, "aibattle_requests_total", **labels)

    route = "/aibattle.v1.ModelService/ListModels"
    assert counted(surface="connect", route=route, status="200", error_type="") == 1
    get_model = "/aibattle.v1.ModelService/GetModel"
    assert counted(surface="connect", route=get_model, status="404", error_type="caller_not_found") == 1
    # gRPC-Web answers 200 and says NOT_FOUND in grpc-status: the series counts the status, not the 200.
    assert counted(surface="grpc-web", route=get_model, error_type="caller_not_found") == 1
    for surface in ("connect", "grpc-web"):
        assert total(after, "aibattle_requests_in_flight", surface=surface) == 0


def _error_types(before: str, after: str) -> dict[str, float]:
    """The requests each error_type counted between two scrapes, over the gateway's surfaces."""
    names = {
        labels["error_type"]
        for name, labels, _ in samples(after)
        if name == "aibattle_requests_total"
        and labels.get("surface") in GATEWAY_SURFACES
        and labels["error_type"]
    }
    return {
        name: sum(
            delta(before, after, "aibattle_requests_total", surface=surface, error_type=name)
            for surface in GATEWAY_SURFACES
        )
        for name in names
    }


async def test_open_streams_and_websockets_while_they_are_open(gw: Any) -> None:
    body = {"model": "scripted-slow", "prompt": "x"}
    sse = await gw.post("/api/v1/completions:stream", json=body, headers={"Accept": "text/event-stream"})
    await sse.content.readline()  # the first event is out: the stream is open
    ndjson = await gw.post("/api/v1/completions:stream", json=body)
    await ndjson.content.readline()
    async with gw.ws_connect("/api/v1/ws/completions?model=scripted-slow&prompt=x") as ws:
        await ws.receive()
        during = await scrape(gw)
    sse.close()
    ndjson.close()
    assert total(during, "aibattle_open_streams", transport="sse") >= 1
    assert total(during, "aibattle_open_streams", transport="ndjson") >= 1
    assert total(during, "aibattle_open_streams", transport="websocket") >= 1
    assert total(during, "aibattle_websocket_connections") >= 1
    assert total(during, "aibattle_requests_in_flight", surface="rest") >= 2
    assert total(during, "aibattle_requests_in_flight", surface="websocket") >= 1

    async def settled() -> str:
        for _ in range(100):
            text = await scrape(gw)
            if total(text, "aibattle_websocket_connections") == 0 and all(
                total(text, "aibattle_open_streams", transport=t) == 0 for t in ("sse", "ndjson", "websocket")
            ):
                return text
            await asyncio.sleep(0.05)
        return text

    after = await settled()
    for transport in ("sse", "ndjson", "websocket"):
        assert total(after, "aibattle_open_streams", transport=transport) == 0, transport
    assert total(after, "aibattle_websocket_connections") == 0


# --- keys: the rate limit, and the opt-in key series --------------------------------------------------------


@pytest.fixture
async def secure_gw(aiohttp_client: Any, metrics_on: None) -> AsyncIterator[Any]:
    srv = AIBattleServer(secure_config())
    await srv.start()
    client = await aiohttp_client(
        create_app(srv.grpc_target, GatewayOptions(descriptor_set=None)),
        server_kwargs={"handler_cancellation": True},
    )
    yield client
    await client.close()
    await srv.stop(grace=0.5)


async def test_a_key_over_its_rpm_is_policy_rate_limited_and_counted_by_key_id(secure_gw: Any) -> None:
    metrics.configure(on=True, by_key=True)
    made = await secure_gw.post("/api/v1/keys", json={"name": "metrics", "rpm": 1}, headers=ADMIN)
    assert made.status == 200, await made.text()
    body = await made.json()
    key_id, secret = body["key"]["key_id"], body["secret"]
    SECRETS.add(secret)
    before = await scrape(secure_gw)
    auth = {"Authorization": f"Bearer {secret}"}
    answers = [await secure_gw.get("/api/v1/models", headers=auth) for _ in range(3)]
    assert [a.status for a in answers] == [200, 200, 429]  # rpm 1 allows a burst of 2
    after = await scrape(secure_gw)
    limited = delta(
        before, after, "aibattle_requests_total", surface="rest", route="/api/v1/models", status="429"
    )
    assert limited == 1
    assert (
        delta(before, after, "aibattle_requests_total", surface="rest", error_type="policy_rate_limited") == 1
    )
    # Each request once, under the key the server authenticated (the gateway does not count it again).
    assert delta(before, after, "aibattle_key_requests_total", key_id=key_id) == 3
    for hidden in (secret, ADMIN_KEY):
        assert hidden not in after


async def test_key_ids_are_not_labels_unless_asked(secure_gw: Any) -> None:
    made = await secure_gw.post("/api/v1/keys", json={"name": "unlabelled"}, headers=ADMIN)
    body = await made.json()
    SECRETS.add(body["secret"])
    assert (await secure_gw.get("/api/v1/models", headers={"X-API-Key": body["secret"]})).status == 200
    text = await scrape(secure_gw)
    assert body["key"]["key_id"] not in text and body["secret"] not in text


# --- off, and elsewhere -------------------------------------------------------------------------------------


def _gateway_series(text: str) -> list[tuple[str, dict[str, str], float]]:
    gateway_gauges = ("aibattle_websocket_connections", "aibattle_open_streams")
    return [
        s
        for s in samples(text)
        if s[1].get("surface") in GATEWAY_SURFACES
        or (s[0].startswith(gateway_gauges) and s[1].get("transport") != "grpc")
    ]


async def test_metrics_off_records_nothing_and_serves_no_route(
    aiohttp_client: Any, server: AIBattleServer, metrics_on: None
) -> None:
    metrics.configure(on=False)
    client = await aiohttp_client(create_app(server.grpc_target, GatewayOptions(descriptor_set=None)))
    before = _gateway_series(metrics.exposition().decode())
    missing = await client.get("/metrics")
    assert missing.status == 404
    assert (
        await client.post("/api/v1/completions", json={"model": "scripted-echo", "prompt": "x"})
    ).status == 200
    assert (await client.post("/v1/chat/completions", json={**CHAT, "stream": True})).status == 200
    assert (await client.get("/nope")).status == 404
    async with client.ws_connect("/api/v1/ws/completions?model=scripted-echo&prompt=Hi") as ws:
        [m async for m in ws]
    assert _gateway_series(metrics.exposition().decode()) == before
    # The header is no metric: it stays.
    overhead_ms(missing.headers)


async def test_metrics_on_a_listener_of_their_own(aiohttp_client: Any, server: AIBattleServer) -> None:
    client = await aiohttp_client(
        create_app(server.grpc_target, GatewayOptions(descriptor_set=None, metrics_route=False))
    )
    listener = await start_metrics(host="127.0.0.1", port=0)
    try:
        resp = await client.get("/metrics")
        assert resp.status == 404 and (await resp.json())["code"] == 5  # the native ROUTE_NOT_FOUND
        async with aiohttp.ClientSession() as session:
            async with session.get(listener.url) as scraped:
                assert scraped.status == 200
                assert "aibattle_requests_total" in await scraped.text()
            async with session.get(listener.url.removesuffix("/metrics") + "/other") as other:
                assert other.status == 404
    finally:
        await listener.close()


async def test_openapi_lists_metrics_as_meta_only_when_served(
    aiohttp_client: Any, server: AIBattleServer
) -> None:
    served = await aiohttp_client(create_app(server.grpc_target, GatewayOptions(descriptor_set=None)))
    doc = await (await served.get("/openapi.json")).json()
    operation = doc["paths"]["/metrics"]["get"]
    assert operation["tags"] == ["Meta"] and operation["security"] == [{}]
    assert list(operation["responses"]["200"]["content"]) == ["text/plain"]
    elsewhere = await aiohttp_client(
        create_app(server.grpc_target, GatewayOptions(descriptor_set=None, metrics_route=False))
    )
    assert "/metrics" not in (await (await elsewhere.get("/openapi.json")).json())["paths"]


# --- tracing off: nothing carried ---------------------------------------------------------------------------


async def test_no_trace_context_upstream_when_tracing_is_off(
    client: Any, library: Any, metrics_on: None
) -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    resp = await client.get("/v1/shelves/s1/books/b1", headers={"traceparent": traceparent})
    assert resp.status == 200
    assert "traceparent" not in library.servicer.metadata[-1]


# --- the processes: python -m server, python -m gateway -----------------------------------------------------


async def _wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    for _ in range(150):
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} never answered 200")


async def _stop(proc: asyncio.subprocess.Process) -> str:
    proc.send_signal(signal.SIGTERM)
    _, stderr = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, stderr.decode()
    return str(stderr.decode())


async def test_server_process_serves_metrics_on_metrics_addr(tmp_path: Path) -> None:
    http, scrape_port = free_port(), free_port()
    config = tmp_path / "aibattle.toml"
    config.write_text(
        f'[server]\ngrpc_addr = "127.0.0.1:0"\nhttp_addr = "127.0.0.1:{http}"\n'
        f'metrics_addr = "127.0.0.1:{scrape_port}"\ndatabase = "{tmp_path / "db.sqlite"}"\n'
        '[[models]]\nid = "scripted-echo"\nprovider = "scripted"\nscript = ["Hi."]\n'
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "server",
        "--config",
        str(config),
        cwd=ROOT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"http://127.0.0.1:{http}/readyz")
            async with session.post(
                f"http://127.0.0.1:{http}/api/v1/completions", json={"model": "scripted-echo", "prompt": "x"}
            ) as resp:
                assert resp.status == 200
                overhead_ms(resp.headers)
            async with session.get(f"http://127.0.0.1:{http}/metrics") as resp:
                assert resp.status == 404
            async with session.get(f"http://127.0.0.1:{scrape_port}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
    finally:
        await _stop(proc)
    assert (
        total(text, "aibattle_requests_total", surface="rest", route="/api/v1/completions", status="200") == 1
    )


class _Collector:
    """An OTLP/HTTP receiver: the spans exported to it."""

    def __init__(self) -> None:
        self.spans: list[Any] = []

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.path == "/v1/traces":
            export = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            for resource in export.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")


async def test_standalone_gateway_traces_and_serves_metrics(tmp_path: Path) -> None:
    """`python -m gateway` with OTEL_EXPORTER_OTLP_ENDPOINT: a SERVER span per request, child of the
    client's traceparent, whose context goes upstream in the call's metadata and onto the access line;
    /metrics on its own port."""
    collector = _Collector()
    receiver = web.Application()
    receiver.router.add_post("/{tail:.*}", collector.handle)
    runner = web.AppRunner(receiver)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    otlp_port = runner.addresses[0][1]

    seen: list[dict[str, str]] = []

    async def list_models(request: Any, context: Any) -> models_pb2.ListModelsResponse:
        seen.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        return models_pb2.ListModelsResponse()

    upstream = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(
        list_models,
        request_deserializer=models_pb2.ListModelsRequest.FromString,
        response_serializer=models_pb2.ListModelsResponse.SerializeToString,
    )
    upstream.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("aibattle.v1.ModelService", {"ListModels": handler}),)
    )
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, upstream)
    grpc_port = upstream.add_insecure_port("127.0.0.1:0")
    await upstream.start()

    http = free_port()
    trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "--grpc-target",
        f"127.0.0.1:{grpc_port}",
        "--http-addr",
        f"127.0.0.1:{http}",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            await _wait_ready(session, f"http://127.0.0.1:{http}/livez")
            headers = {"traceparent": f"00-{trace_id}-{parent_id}-01"}
            async with session.get(f"http://127.0.0.1:{http}/api/v1/models", headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                overhead_ms(resp.headers)
            async with session.get(f"http://127.0.0.1:{http}/metrics") as resp:
                assert resp.status == 200
                text = await resp.text()
        stderr = await _stop(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await upstream.stop(0)
        await runner.cleanup()

    assert total(text, "aibattle_requests_total", surface="rest", route="/api/v1/models", status="200") == 1
    [span] = [s for s in collector.spans if s.name == "GET /api/v1/models"]
    assert span.kind == span.SPAN_KIND_SERVER
    assert (span.trace_id.hex(), span.parent_span_id.hex()) == (trace_id, parent_id)
    attributes = {a.key: a.value for a in span.attributes}
    assert attributes["http.route"].string_value == "/api/v1/models"
    assert attributes["http.response.status_code"].int_value == 200
    assert attributes["http.request.method"].string_value == "GET"
    # The upstream call carries the gateway's span as its parent.
    [metadata] = seen
    assert metadata["traceparent"] == f"00-{trace_id}-{span.span_id.hex()}-01"
    # The access line was written inside the span.
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    [access] = [
        line for line in lines if line["logger"] == "gateway.access" and line["route"] == "/api/v1/models"
    ]
    assert (access["trace_id"], access["span_id"]) == (trace_id, span.span_id.hex())


# --- the standalone gateway's metrics settings --------------------------------------------------------------


def test_standalone_metrics_settings_from_the_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text(
        '[server]\nhttp_addr = "127.0.0.1:9999"\nmetrics_addr = "127.0.0.1:9100"\nmetrics_key_label = true\n'
        "grpc_addr = '127.0.0.1:1'\n"  # the server's keys: not the standalone gateway's business
    )
    launch = parse_args(["--grpc-target", "x:1", "--config", str(path)])
    assert (launch.metrics.metrics, launch.metrics.metrics_addr) == (True, "127.0.0.1:9100")
    assert launch.options.metrics_route is False  # /metrics is on its own listener
    launch = parse_args(["--grpc-target", "x:1", "--config", str(path), "--metrics-addr", "", "--no-metrics"])
    assert (launch.metrics.metrics, launch.metrics.metrics_addr) == (False, "")
    assert launch.options.metrics_route is True
    assert parse_args(["--grpc-target", "x:1"]).metrics.metrics is True


def test_standalone_metrics_settings_refuse_bad_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text('[server]\nmetrics = "yes"\n')
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--grpc-target", "x:1", "--config", str(path), "--metrics-addr", "nowhere"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "server.metrics" in err and "--metrics-addr" in err
