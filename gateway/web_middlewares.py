"""Middlewares: the request id, and the one place errors become HTTP responses.

Every error response — the gateway's own, the upstream's, aiohttp's — has a JSON `google.rpc.Status`
body and the status code of the gRPC → HTTP table; unexpected exceptions are logged with their
traceback and answered with a generic INTERNAL, never the traceback.
"""

from __future__ import annotations

import logging

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from google.rpc import code_pb2, status_pb2

from gateway.errors import (
    GatewayError,
    error_headers,
    http_status,
    request_too_large,
    status_from_rpc_error,
    status_to_json,
)
from gateway.metadata import REQUEST_ID_HEADER, request_id_from
from gateway.transcode import dumps
from gateway.web_state import REQUEST_ID, STATE

log = logging.getLogger(__name__)

#: aiohttp's own HTTP errors (bad request line, static file 404…) as gRPC codes.
_CODE_FOR_HTTP = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    409: code_pb2.ABORTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
    501: code_pb2.UNIMPLEMENTED,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}


def error_response(
    status: status_pb2.Status, *, http: int | None = None, headers: dict[str, str] | None = None
) -> web.Response:
    """The HTTP answer for a Status: mapped code, JSON body, WWW-Authenticate / Retry-After as due."""
    all_headers = {**error_headers(status), **(headers or {})}
    return web.Response(
        status=http or http_status(status.code),
        text=dumps(status_to_json(status)),
        content_type="application/json",
        headers=all_headers,
    )


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the client's X-Request-Id or make one; it goes upstream and comes back on the response."""
    request[REQUEST_ID] = request_id_from(request.headers)
    return await handler(request)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: echo the request id on every response, streams included."""
    request_id = request.get(REQUEST_ID)
    if request_id is not None:
        response.headers[REQUEST_ID_HEADER] = request_id


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The one place where exceptions become HTTP error responses."""
    try:
        return await handler(request)
    except GatewayError as exc:
        return error_response(exc.to_status(), http=exc.http_status, headers=exc.headers)
    except grpc.aio.AioRpcError as exc:
        return error_response(status_from_rpc_error(exc))
    except web.HTTPRequestEntityTooLarge:
        error = request_too_large(request.app[STATE].options.max_body_bytes)
        return error_response(error.to_status(), http=error.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODE_FOR_HTTP.get(exc.status, code_pb2.UNKNOWN)
        status = status_pb2.Status(code=code, message=exc.reason)
        return error_response(status, http=exc.status)
    except ConnectionError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        status = status_pb2.Status(code=code_pb2.INTERNAL, message="internal error")
        return error_response(status)
