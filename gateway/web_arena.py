"""The arena: /arena, a page that starts reasoning sessions and conversations and shows them live.

Its source is web/arena/ (TypeScript on the TypeScript SDK); tools/build_arena.py bundles it into
gateway/arena/static/, which is committed and shipped as package data, so the page is served offline:
no CDN, no external font. The page talks to this same gateway over Connect, which is all its Content
Security Policy lets it reach.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.router import route_not_found

ARENA_STATIC = Path(__file__).parent / "arena" / "static"
ARENA_ASSETS = "/arena/assets"

#: Same origin only: scripts, styles and calls (connect-src) go to this gateway and nowhere else; no
#: inline script or style, no frames, no plugins. `data:` images are the page's empty favicon.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load (the ETag makes that a 304): a rebuilt bundle shows at once.
    "Cache-Control": "no-cache",
}


#: Named here rather than guessed: mimetypes reads the system's tables, which differ between machines.
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


@cache
def _assets(static: Path) -> dict[str, Asset]:
    """Every file of the bundle by name, read once: the set of names is fixed, so a request can
    reach nothing else (no path to traverse)."""
    assets = {}
    for path in sorted(static.iterdir()):
        if path.is_file():
            body = path.read_bytes()
            content_type = _TYPES.get(path.suffix, "application/octet-stream")
            assets[path.name] = Asset(body, content_type, f'"{hashlib.sha256(body).hexdigest()[:32]}"')
    return assets


def _answer(request: web.Request, asset: Asset) -> web.Response:
    headers = {**_HEADERS, "ETag": asset.etag}
    if asset.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    charset = "utf-8" if asset.content_type.startswith("text/") else None
    return web.Response(body=asset.body, content_type=asset.content_type, charset=charset, headers=headers)


def arena_routes(static: Path = ARENA_STATIC) -> list[tuple[str, str, Handler]]:
    """Method, path and handler of the page and its assets; none when the bundle is not built."""
    if not (static / "index.html").is_file():
        return []

    async def page(request: web.Request) -> web.Response:
        return _answer(request, _assets(static)["index.html"])

    async def asset(request: web.Request) -> web.Response:
        found = _assets(static).get(request.match_info["name"])
        if found is None:
            raise route_not_found(f"GET {request.rel_url.raw_path}")
        return _answer(request, found)

    return [("GET", "/arena", page), ("GET", "/arena/", page), ("GET", f"{ARENA_ASSETS}/{{name}}", asset)]
