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
    answer: Callable[[web.Request, status_pb2.Status, int | None, dict[str, str]], web.Response] | None = None
    """Writes the whole error answer instead of a JSON body under the mapped status (Connect streams and
    gRPC-Web answer 200 and say the status in the body or in headers)."""
    pick: Callable[[web.Request], Dialect] | None = None
    """For paths several protocols share: the dialect of one request (by its Content-Type)."""

    def resolve(self, request: web.Request) -> Dialect:
        """The dialect a request to this dialect's paths is answered in."""
        return self.pick(request) if self.pick is not None else self


NATIVE = Dialect("native", lambda status, _http: status_to_json(status), "rest")


def error_response(
    status: status_pb2.Status,
    *,
    dialect: Dialect = NATIVE,
    http: int | None = None,
    headers: dict[str, str] | None = None,
    request: web.Request | None = None,
) -> web.Response:
    """The HTTP answer for a Status: mapped code, the dialect's body, WWW-Authenticate / Retry-After
    (or the dialect's own `answer`, given the request)."""
    if dialect.answer is not None and request is not None:
        return dialect.answer(request, status, http, {**error_headers(status), **(headers or {})})
    code = http or http_status(status.code)
    return web.Response(
        status=code,
        text=dumps(dialect.error_body(status, code)),
        content_type="application/json",
        headers={**error_headers(status), **(headers or {})},
    )
