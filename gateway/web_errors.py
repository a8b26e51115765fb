"""HTTP error responses in each endpoint family's dialect (the status code table is always the same)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.rpc import status_pb2

from gateway.errors import error_headers, http_status, status_to_json
from gateway.transcode import dumps


@dataclass(frozen=True)
class Dialect:
    """How a family of endpoints writes its errors: the JSON body for a Status and its HTTP code."""

    name: str
    error_body: Callable[[status_pb2.Status, int], Any]
    surface: str
    """The `surface` label of its requests in the metrics (`common.observability.metrics.SURFACES`)."""


NATIVE = Dialect("native", lambda status, _http: status_to_json(status), "rest")


def error_response(
    status: status_pb2.Status,
    *,
    dialect: Dialect = NATIVE,
    http: int | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The HTTP answer for a Status: mapped code, the dialect's body, WWW-Authenticate / Retry-After."""
    code = http or http_status(status.code)
    return web.Response(
        status=code,
        text=dumps(dialect.error_body(status, code)),
        content_type="application/json",
        headers={**error_headers(status), **(headers or {})},
    )
