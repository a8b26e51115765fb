"""Endpoints about the API rather than of it: /openapi.json, /docs, /healthz, /readyz, /livez."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.openapi import build_openapi
from gateway.transcode import dumps
from gateway.upstream import SERVICE_UNKNOWN
from gateway.web_state import STATE

DOCS_ASSETS = "/docs/assets"

_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>{title}</title>
  <link rel="stylesheet" href="{assets}/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="{assets}/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({{
      url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true, validatorUrl: null
    }});
  </script>
</body>
</html>
"""


def docs_assets_path() -> Path | None:
    """Swagger UI 5 (OpenAPI 3.1 capable) shipped by the openapi-ui-bundles package, if installed."""
    try:
        import openapi_ui_bundles
    except ImportError:
        return None
    path = Path(openapi_ui_bundles.swagger_ui.static_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


async def openapi_json(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.openapi is None:
        state.openapi = build_openapi(
            state.router.routes,
            state.comments,
            title=state.options.title,
            version=state.options.version,
            strict=state.options.strict,
            fixed=[(m, f.template.source) for f in state.fixed_routes for m in f.methods],
        )
    return web.Response(text=dumps(state.openapi), content_type="application/json")


async def docs(request: web.Request) -> web.Response:
    title = request.app[STATE].options.title
    return web.Response(text=_DOCS_PAGE.format(title=title, assets=DOCS_ASSETS), content_type="text/html")


async def livez(request: web.Request) -> web.Response:
    """The gateway process answers."""
    return web.json_response({"status": "ok"})


async def healthz(request: web.Request) -> web.Response:
    """The upstream's gRPC health (grpc.health.v1), for `?service=` or the whole server.

    200 SERVING; 404 SERVICE_UNKNOWN for a service the server does not report on (grpc.health's own
    NOT_FOUND: the caller named something that isn't there, the server is not unwell); 503 otherwise.
    """
    state = request.app[STATE]
    status = await state.upstream.health(request.query.get("service", ""))
    code = {"SERVING": 200, SERVICE_UNKNOWN: 404}.get(status, 503)
    return web.json_response({"status": status}, status=code)


async def readyz(request: web.Request) -> web.Response:
    """Ready for traffic: not shutting down, and the upstream is SERVING."""
    state = request.app[STATE]
    if state.closing:
        return web.json_response({"status": "SHUTTING_DOWN"}, status=503)
    status = await state.upstream.health()
    return web.json_response({"status": status}, status=200 if status == "SERVING" else 503)


def meta_routes() -> list[tuple[str, str, Handler]]:
    """Method, path and handler of each endpoint about the API (/docs only with its assets)."""
    routes: list[tuple[str, str, Handler]] = [
        ("GET", "/openapi.json", openapi_json),
        ("GET", "/livez", livez),
        ("GET", "/healthz", healthz),
        ("GET", "/readyz", readyz),
    ]
    if docs_assets_path() is not None:
        routes.append(("GET", "/docs", docs))
    return routes
