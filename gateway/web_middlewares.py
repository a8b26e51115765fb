"""Middlewares: the request id, the access log (and the request's metrics and span: gateway.observe), and
the one place errors become HTTP responses.

The access log is one JSON line per request (logger `gateway.access`, message "http"), written when
the request ends — a stream when it ends, a WebSocket when it closes (status 101): `method`, `route`
(the route's template, never the raw path: ids stay out of the log and lines group by endpoint; null
when no route matched), `status` (499 when the client left first), `ms`, `request_id`, `key_id` (the
key the credential names, never the secret; see gateway.access), `credential` and `model`.

Every error response — the gateway's own, the upstream's, aiohttp's — has the status code of the
gRPC → HTTP table and the body of the endpoint's dialect: a JSON `google.rpc.Status` on the native
API, the OpenAI or Ollama error object on their compat endpoints (`Dialect`). Unexpected exceptions
are logged with their traceback and answered with a generic INTERNAL, never the traceback. The status
each answer carries is noted for the metrics' `error_type` (`observe.note_status`).
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestPayloadError
from google.rpc import status_pb2

from common import logs
from common.api_keys import presented_secret
from common.errors import MALFORMED_REQUEST, ApiError, RequestTooLarge
from gateway import access, observe
from gateway.errors import code_for_http, status_of
from gateway.metadata import REQUEST_ID_HEADER, request_id_from
from gateway.web_errors import Dialect, error_response
from gateway.web_state import REQUEST_ID, STATE

log = logging.getLogger(__name__)
access_log = logging.getLogger("gateway.access")

#: nginx's code for "the client closed the connection before the answer".
CLIENT_CLOSED = 499


@web.middleware
async def request_id_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Take the client's X-Request-Id or make one; it goes upstream and comes back on the response."""
    request[REQUEST_ID] = request_id_from(request.headers)
    token = logs.request_id.set(request[REQUEST_ID])  # every log line about the request carries it
    try:
        return await handler(request)
    finally:
        logs.request_id.reset(token)


@web.middleware
async def access_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One access log line per request, with its final status (see the module docstring); the request's
    metrics and trace span (gateway.observe), the line written while the span is current."""
    record, token = access.open_record()
    access.note_credential(presented_secret(request.headers.items()) or "")
    observed, tokens = observe.begin(request)
    status = 500
    with observe.server_span(request) as span:
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:  # a whole answer: its overhead now, the same on its line
                await observe.add_overhead(request, response)
            return response
        except web.HTTPException as exc:  # redirects; errors are responses by now (error_middleware)
            status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionError):
            status = CLIENT_CLOSED
            raise
        finally:
            access.close_record(token)
            access_log.info(
                "http",
                extra={
                    "method": request.method,
                    "route": observed.route,
                    "status": status,
                    "ms": round(observed.observation.elapsed() * 1000, 1),
                    "overhead_ms": observed.overhead_ms,
                    "key_id": record.key_id,
                    "credential": record.credential,
                    "model": record.model or None,
                },
            )
            observe.end(observed, status, tokens, span)


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
    except RequestPayloadError:
        # The body could not be read as sent (a corrupt gzip or deflate under Content-Encoding; aiohttp's
        # own text is not for clients). Nothing more can be read on this connection: say it closes.
        failure = MALFORMED_REQUEST.error("the request body cannot be decoded under its Content-Encoding")
        status, http, headers = status_of(failure)
        observe.note_status(status)
        answer = error_response(
            status, dialect=dialect_of(request), http=http, headers=headers, request=request
        )
        answer.force_close()
        return answer
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = code_for_http(exc.status)
        status = status_pb2.Status(code=code, message=exc.reason)
        observe.note_status(status)
        return error_response(status, dialect=dialect_of(request), http=exc.status, request=request)
    except ConnectionError:
        raise
    except grpc.aio.AioRpcError as exc:
        observe.note_failed_call(exc)
        failure = exc
    except Exception as exc:
        if not isinstance(exc, ApiError):
            log.exception("unhandled error on %s %s", request.method, request.rel_url.raw_path)
        failure = exc
    status, http, headers = status_of(failure)
    observe.note_status(status)
    return error_response(status, dialect=dialect_of(request), http=http, headers=headers, request=request)


def dialect_of(request: web.Request) -> Dialect:
    """The dialect of the endpoint a request is for (native unless a compat endpoint's path)."""
    return request.app[STATE].dialect_for(request.rel_url.raw_path).resolve(request)
