"""Middlewares: the request id, and the one place errors become HTTP responses.

Every error response — the gateway's own, the upstream's, aiohttp's — has the status code of the
gRPC → HTTP table and the body of the endpoint's dialect: a JSON `google.rpc.Status` on the native
API, the OpenAI or Ollama error object on their compat endpoints (`Dialect`). Unexpected exceptions
are logged with their traceback and answered with a generic INTERNAL, never the traceback.
"""

from __future__ import annotations

import logging

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from google.rpc import code_pb2, status_pb2

from common.errors import ApiError, RequestTooLarge
from gateway.errors import status_of
from gateway.metadata import REQUEST_ID_HEADER, request_id_from
from gateway.web_errors import Dialect, error_response
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
    """The one place where exceptions become HTTP error responses, in the dialect of the path."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        failure: BaseException = RequestTooLarge(request.app[STATE].options.max_body_bytes)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _CODE_FOR_HTTP.get(exc.status, code_pb2.UNKNOWN)
        status = status_pb2.Status(code=code, message=exc.reason)
        return error_response(status, dialect=dialect_of(request), http=exc.status)
    except ConnectionError:
        raise
    except Exception as exc:
        if not isinstance(exc, ApiError | grpc.aio.AioRpcError):
            log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        failure = exc
    status, http, headers = status_of(failure)
    return error_response(status, dialect=dialect_of(request), http=http, headers=headers)


def dialect_of(request: web.Request) -> Dialect:
    """The dialect of the endpoint a request is for (native unless a compat endpoint's path)."""
    return request.app[STATE].dialect_for(request.rel_url.raw_path)
