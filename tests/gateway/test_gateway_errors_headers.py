"""gRPC status → HTTP, rich error bodies, headers ↔ metadata, deadlines, CORS."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest
from grpc_health.v1 import health_pb2

from gateway import GatewayOptions, create_app
from tests.gateway.gateway_testlib import ProtoApi, RunningLibrary, dummy_options, wait_for

# grpc-gateway's table (runtime/errors.go HTTPStatusFromCode).
TABLE = [
    (1, 499),
    (2, 500),
    (3, 400),
    (4, 504),
    (5, 404),
    (6, 409),
    (7, 403),
    (8, 429),
    (9, 400),
    (10, 409),
    (11, 400),
    (12, 501),
    (13, 500),
    (14, 503),
    (15, 500),
    (16, 401),
]


@pytest.mark.parametrize(("code", "http"), TABLE)
async def test_status_table_and_status_body(client: Any, code: int, http: int) -> None:
    resp = await client.post(
        "/v1/fail", json={"code": code, "message": f"failure {code}", "reason": "WHY_NOT"}
    )
    assert resp.status == http
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert body["code"] == code
    assert body["message"] == f"failure {code}"
    assert body["details"] == [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "WHY_NOT", "domain": "aibattle.dev"}
    ]
    assert ("WWW-Authenticate" in resp.headers) == (code == 16)


async def test_unauthenticated_has_www_authenticate(client: Any) -> None:
    resp = await client.post("/v1/fail", json={"code": 16, "message": "no key"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")


async def test_resource_exhausted_has_retry_after_from_retry_info(client: Any) -> None:
    resp = await client.post("/v1/fail", json={"code": 8, "message": "slow down", "retry_delay": "2.2s"})
    assert resp.status == 429
    assert resp.headers["Retry-After"] == "3"
    body = await resp.json()
    retry = next(d for d in body["details"] if d["@type"].endswith("RetryInfo"))
    assert retry["retry_delay"] == "2.200s"


async def test_upstream_down_is_503_without_internals(aiohttp_client: Any, dummy_api: ProtoApi) -> None:
    client = await aiohttp_client(create_app("127.0.0.1:1", dummy_options(dummy_api)))
    resp = await client.get("/v1/shelves/s/books/b", headers={"Grpc-Timeout": "2S"})
    assert resp.status == 503
    body = await resp.json()
    assert body == {"code": 14, "message": "upstream unavailable", "details": []}


async def test_health_follows_the_upstream(client: Any, library: RunningLibrary) -> None:
    assert (await client.get("/livez")).status == 200
    assert await (await client.get("/healthz")).json() == {"status": "SERVING"}
    assert (await client.get("/readyz")).status == 200
    await library.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    healthz = await client.get("/healthz")
    assert healthz.status == 503 and await healthz.json() == {"status": "NOT_SERVING"}
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/livez")).status == 200


async def test_health_without_upstream(aiohttp_client: Any, dummy_api: ProtoApi) -> None:
    client = await aiohttp_client(create_app("127.0.0.1:1", dummy_options(dummy_api)))
    resp = await client.get("/healthz")
    assert resp.status == 503 and (await resp.json())["status"] == "UNAVAILABLE"
    assert (await client.get("/readyz")).status == 503
    assert (await client.get("/livez")).status == 200


async def test_headers_become_metadata(client: Any, library: RunningLibrary) -> None:
    resp = await client.post(
        "/v1/sleep",
        json={},
        headers={
            "Authorization": "Bearer secret-token",
            "X-API-Key": "key-1",
            "Grpc-Metadata-Tenant": "acme",
            "X-Request-Id": "req-123",
            "Cookie": "session=1",
            "X-Other": "not forwarded",
        },
    )
    assert resp.status == 200
    seen = (await resp.json())["metadata"]
    assert seen["authorization"] == "Bearer secret-token"
    assert seen["x-api-key"] == "key-1"
    assert seen["tenant"] == "acme"
    assert seen["x-request-id"] == "req-123"
    assert "cookie" not in seen and "x-other" not in seen
    assert resp.headers["X-Request-Id"] == "req-123"


async def test_request_id_generated_when_absent(client: Any, library: RunningLibrary) -> None:
    resp = await client.post("/v1/sleep", json={})
    generated = resp.headers["X-Request-Id"]
    assert len(generated) == 32
    assert library.servicer.metadata[-1]["x-request-id"] == generated
    # Also on errors the gateway answers itself.
    missing = await client.get("/nowhere")
    assert len(missing.headers["X-Request-Id"]) == 32


async def test_binary_metadata_header_is_base64(client: Any) -> None:
    resp = await client.post("/v1/sleep", json={}, headers={"Grpc-Metadata-Trace-Bin": "not base64!"})
    assert resp.status == 400
    assert "base64" in (await resp.json())["message"]


async def test_grpc_timeout_sets_the_deadline(client: Any) -> None:
    resp = await client.post("/v1/sleep", json={}, headers={"Grpc-Timeout": "5S"})
    remaining = (await resp.json())["time_remaining"]
    assert 3.0 < remaining <= 5.5  # the server sees the 5 s deadline, give or take clock jitter


async def test_deadline_exceeded_is_504(client: Any, library: RunningLibrary) -> None:
    resp = await client.post("/v1/sleep", json={"duration": "5s"}, headers={"Grpc-Timeout": "100m"})
    assert resp.status == 504
    assert (await resp.json())["code"] == 4


async def test_bad_grpc_timeout_is_400(client: Any) -> None:
    resp = await client.post("/v1/sleep", json={}, headers={"Grpc-Timeout": "soon"})
    assert resp.status == 400
    assert "Grpc-Timeout" in (await resp.json())["message"]


async def test_unary_disconnect_cancels_upstream(client: Any, library: RunningLibrary) -> None:
    task = asyncio.ensure_future(client.post("/v1/sleep", json={"duration": "30s"}))
    assert await wait_for(lambda: "Sleep" in library.servicer.calls)
    task.cancel()  # the HTTP client goes away mid-call
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(lambda: library.servicer.cancelled["Sleep"].is_set())


async def test_cors_allow_list(aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi) -> None:
    app = create_app(library.target, dummy_options(dummy_api, cors_origins=("http://app.example",)))
    client = await aiohttp_client(app)
    preflight = await client.options(
        "/v1/shelves/s/books/b",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "PATCH",
            "Access-Control-Request-Headers": "Authorization, Grpc-Metadata-Tenant",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert set(preflight.headers["Access-Control-Allow-Methods"].split(", ")) == {"GET", "PATCH", "DELETE"}
    assert preflight.headers["Access-Control-Allow-Headers"] == "Authorization, Grpc-Metadata-Tenant"

    actual = await client.get("/v1/shelves/s/books/b", headers={"Origin": "http://app.example"})
    assert actual.headers["Access-Control-Allow-Origin"] == "http://app.example"
    assert "X-Request-Id" in actual.headers["Access-Control-Expose-Headers"]
    assert "Grpc-Metadata-x-served-by" in actual.headers["Access-Control-Expose-Headers"]
    exposed = actual.headers["Access-Control-Expose-Headers"].split(", ")
    ours = {
        "x-aibattle-deployment",
        "x-aibattle-reasoning-id",
        "x-aibattle-overhead-ms",
        "x-aibattle-tokens-estimated",
    }
    assert ours <= set(exposed)

    refused = await client.options(
        "/v1/shelves/s/books/b",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert refused.status == 403
    assert "Access-Control-Allow-Origin" not in refused.headers
    other = await client.get("/v1/shelves/s/books/b", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


async def test_no_cors_headers_by_default(client: Any) -> None:
    resp = await client.get("/v1/shelves/s/books/b", headers={"Origin": "http://app.example"})
    assert resp.status == 200
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_foreign_page_cannot_send_a_state_changing_request(client: Any) -> None:
    """A cross-site form-like POST needs no preflight: it is refused before it runs, not after."""
    body = {"code": 5, "message": "reached the upstream"}
    for headers in ({"Origin": "http://evil.example"}, {"Origin": "null"}):
        refused = await client.post("/v1/fail", json=body, headers=headers)
        assert refused.status == 403, headers
        assert (await refused.json())["details"][0]["reason"] == "ORIGIN_NOT_ALLOWED"
    # This host's own pages (such as /docs) and non-browser clients (no Origin) are served.
    own = f"http://{client.server.host}:{client.server.port}"
    assert (await client.post("/v1/fail", json=body, headers={"Origin": own})).status == 404
    assert (await client.post("/v1/fail", json=body)).status == 404
    # Reading is not refused: CORS keeps the answer from a foreign page.
    assert (
        await client.get("/v1/shelves/s/books/b", headers={"Origin": "http://evil.example"})
    ).status == 200


async def test_a_loopback_gateway_answers_only_to_loopback_host_names(client: Any) -> None:
    """DNS rebinding: attacker.example resolved to 127.0.0.1 is same-origin to the browser, not to us."""
    port = client.server.port
    rebound = await client.get("/v1/shelves/s/books/b", headers={"Host": f"attacker.example:{port}"})
    assert rebound.status == 403
    assert (await rebound.json())["details"][0]["reason"] == "HOST_NOT_ALLOWED"
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"app.localhost:{port}", f"[::1]:{port}"):
        assert (await client.get("/v1/shelves/s/books/b", headers={"Host": host})).status == 200, host


async def test_unexpected_failure_is_generic_500(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("gateway.web_rest.response_json", boom)
    resp = await client.get("/v1/shelves/s/books/b")
    assert resp.status == 500
    body = await resp.json()
    assert (body["code"], body["message"]) == (13, "internal error")
    assert [d["reason"] for d in body["details"]] == ["INTERNAL"]
    assert "secret" not in await resp.text()


async def test_unexpected_failure_mid_stream_is_an_error_frame(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway import web_stream

    real = web_stream.response_json
    calls = 0

    def second_fails(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("secret internals")
        return real(*args, **kwargs)

    monkeypatch.setattr(web_stream, "response_json", second_fails)
    resp = await client.get("/v1/shelves/s1/books:stream?count=3")
    text = await resp.text()
    assert "secret" not in text and "Traceback" not in text
    frames = [json.loads(line) for line in text.splitlines()]
    assert "result" in frames[0]
    error = frames[-1]["error"]
    assert (error["code"], error["message"], error["details"][0]["reason"]) == (
        13,
        "internal error",
        "INTERNAL",
    )


async def test_allow_names_the_most_specific_resource(client: Any) -> None:
    # "2:archive" could be a book id for the `{name=shelves/*/books/*}` routes, but the path names
    # the `:archive` resource, and Allow says so (as the OpenAPI document does).
    resp = await client.put("/v1/shelves/1/books/2:archive")
    assert resp.status == 405
    assert resp.headers["Allow"] == "POST"
    get = await client.get("/v1/shelves/1/books/2:archive")
    assert get.status == 405
    assert get.headers["Allow"] == "POST"
    books = await client.put("/v1/shelves/1/books/2")
    assert set(books.headers["Allow"].split(", ")) == {"GET", "PATCH", "DELETE"}
    served = await client.get("/v1/shelves/1/books/2:draft")  # no `:draft` route: an id with a colon
    assert served.status == 200
    assert (await served.json())["name"] == "shelves/1/books/2:draft"


async def test_every_405_allow_matches_the_openapi_document(aiohttp_client: Any) -> None:
    """For every documented path, an undocumented method gets 405 and Allow lists the documented ones."""
    client = await aiohttp_client(create_app("127.0.0.1:1", GatewayOptions(descriptor_set=None)))
    doc = await (await client.get("/openapi.json")).json()
    checked = 0
    for template, item in doc["paths"].items():
        path = re.sub(r"\{[^}]+\}", "x1", template)
        documented = {method.upper() for method in item}
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - documented):
            resp = await client.request(method, path)
            assert resp.status == 405, (method, path)
            assert set(resp.headers["Allow"].split(", ")) == documented, (method, path)
            body = await resp.json()
            if {"OpenAI", "Ollama", "Anthropic"} & set(next(iter(item.values()))["tags"]):
                assert "error" in body, (method, path)  # the compat endpoint's own error body
            else:
                assert body["code"] == 12 and "METHOD_NOT_ALLOWED" in json.dumps(body["details"])
            checked += 1
    assert checked >= 3 * len(doc["paths"])
