"""OpenAPI operations of the gateway's hand-registered endpoints: health, the document itself, /docs,
/metrics, /arena.

The derived routes document themselves from the protos; these endpoints are written by hand
(gateway.web_meta, gateway.compat), so their operations are too, beside them in this package. The
app tells build_openapi which of them it serves; tests/gateway/test_gateway_openapi.py checks that
every endpoint it registers has its operation here (or in gateway.openapi.compat).
"""

from __future__ import annotations

from typing import Any

Operation = dict[str, Any]
#: The HTTP server's own answer to a request it cannot parse (see document.bad_request).
PLAIN_400 = {
    "description": "A request line or header the HTTP server cannot read (over 8,190 bytes, or malformed), "
    "answered in plain text before routing.",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}

_HEALTH = {
    "type": "object",
    "properties": {"status": {"type": "string"}},
    "required": ["status"],
}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def meta_operations() -> dict[tuple[str, str], Operation]:
    """(method, path template) → operation, for gateway.web_meta's endpoints."""
    tags = ["Health"]
    return {
        ("GET", "/livez"): {
            "operationId": "livez",
            "tags": tags,
            "summary": "The gateway process answers",
            "security": [{}],
            "responses": {
                "200": _json("Alive.", {**_HEALTH, "properties": {"status": {"const": "ok"}}}),
                "400": PLAIN_400,
            },
        },
        ("GET", "/healthz"): {
            "operationId": "healthz",
            "tags": tags,
            "summary": "The upstream's gRPC health (grpc.health.v1)",
            "security": [{}],
            "parameters": [
                {
                    "name": "service",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "A service's full name (`aibattle.v1.ModelService`); empty or absent: "
                    "the whole server.",
                }
            ],
            "responses": {
                "200": _json("`SERVING`.", _HEALTH),
                "400": PLAIN_400,
                "404": _json("`SERVICE_UNKNOWN`: the server reports on no such service.", _HEALTH),
                "503": _json(
                    "Not serving: `NOT_SERVING`, or the upstream's error code (`UNAVAILABLE`…).", _HEALTH
                ),
            },
        },
        ("GET", "/readyz"): {
            "operationId": "readyz",
            "tags": tags,
            "summary": "Ready for traffic: not shutting down, and the upstream is SERVING",
            "security": [{}],
            "responses": {
                "200": _json("`SERVING`.", _HEALTH),
                "400": PLAIN_400,
                "503": _json("`SHUTTING_DOWN`, `NOT_SERVING` or the upstream's error code.", _HEALTH),
            },
        },
        ("GET", "/openapi.json"): {
            "operationId": "openapi",
            "tags": ["Meta"],
            "summary": "This document (OpenAPI 3.1)",
            "security": [{}],
            "responses": {"200": _json("The document.", {"type": "object"}), "400": PLAIN_400},
        },
        ("GET", "/metrics"): {
            "operationId": "metrics",
            "tags": ["Meta"],
            "summary": "Prometheus metrics of this process (text exposition format)",
            "description": "Served here unless metrics are off or have a listener of their own "
            "(`[server].metrics_addr`). Labels carry route templates and model ids, never a raw path or "
            "a secret; this endpoint is not counted in the series it reports.",
            "security": [{}],
            "responses": {
                "200": {
                    "description": "Every series.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                },
                "400": PLAIN_400,
            },
        },
        ("GET", "/docs"): {
            "operationId": "docs",
            "tags": ["Meta"],
            "summary": "Swagger UI over this document, served without a CDN",
            "security": [{}],
            "responses": {
                "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                "400": PLAIN_400,
            },
        },
        ("GET", "/arena"): {
            "operationId": "arena",
            "tags": ["Meta"],
            "summary": "The arena: start reasoning sessions and conversations, and watch them live",
            "description": "Also at `/arena/`. Served offline, under a Content-Security-Policy that lets "
            "it load only its own assets and call only this gateway (gateway/web_arena.py).",
            "security": [{}],
            "responses": {
                "200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}},
                "400": PLAIN_400,
            },
        },
        ("GET", "/arena/assets/{name}"): {
            "operationId": "arenaAsset",
            "tags": ["Meta"],
            "summary": "A file of the arena's bundle (arena.js, arena.css)",
            "security": [{}],
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {
                "200": {
                    "description": "The file.",
                    "content": {t: {"schema": {"type": "string"}} for t in ("text/javascript", "text/css")},
                },
                "400": PLAIN_400,
                "404": _json("`ROUTE_NOT_FOUND`: the bundle has no file by that name.", {"type": "object"}),
            },
        },
    }
