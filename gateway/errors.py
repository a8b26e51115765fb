"""HTTP answers for the one error taxonomy (`common.errors`): everything becomes a `google.rpc.Status`.

Two sources, one rendering:

* `ApiError` — raised by the gateway itself (bad JSON, unknown field, no such route, body too big)
  before or instead of calling upstream, with `http_status` where HTTP has a more precise answer
  than the code table (404 vs 405 vs 413).
* `grpc.aio.AioRpcError` — the upstream's answer; its `grpc-status-details-bin` trailer is the Status,
  with the server's ErrorInfo, RetryInfo, BadRequest… passed through unchanged.

`status_of` turns either (or anything else: INTERNAL, logged) into a Status; `status_to_json`,
`http_status` and `error_headers` render it for every transport and dialect.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import grpc
from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2

from common.errors import DEADLINE_EXCEEDED, ApiError, internal_error

STATUS_DETAILS_KEY = "grpc-status-details-bin"

#: grpc-gateway's runtime/errors.go HTTPStatusFromCode.
_HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

#: HTTP statuses that no Status produced (aiohttp's own errors: a bad request line, a static file's 404…;
#: a health answer) as gRPC codes; 499 is the client that left first.
_CODE_FOR_HTTP: dict[int, int] = {
    400: code_pb2.INVALID_ARGUMENT,
    401: code_pb2.UNAUTHENTICATED,
    403: code_pb2.PERMISSION_DENIED,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    409: code_pb2.ABORTED,
    413: code_pb2.RESOURCE_EXHAUSTED,
    429: code_pb2.RESOURCE_EXHAUSTED,
    499: code_pb2.CANCELLED,
    501: code_pb2.UNIMPLEMENTED,
    503: code_pb2.UNAVAILABLE,
    504: code_pb2.DEADLINE_EXCEEDED,
}

#: WebSocket close codes: 1000 for OK, otherwise the application range 4000 + gRPC code.
WS_CLOSE_OK = 1000
WS_CLOSE_BASE = 4000


def http_status(code: int) -> int:
    """HTTP status for a gRPC code (grpc-gateway's table; unknown codes are 500)."""
    return _HTTP_STATUS.get(code, 500)


def code_for_http(status: int) -> int:
    """The gRPC code of an HTTP error status that no Status produced (UNKNOWN for one of no meaning)."""
    return _CODE_FOR_HTTP.get(status, code_pb2.UNKNOWN)


def ws_close_code(code: int) -> int:
    """WebSocket close code for a gRPC code: 1000 for OK, 4000 + code otherwise."""
    return WS_CLOSE_OK if code == code_pb2.OK else WS_CLOSE_BASE + code


def status_of(error: BaseException) -> tuple[status_pb2.Status, int | None, dict[str, str]]:
    """Status, HTTP status override and extra headers for any failure of a request.

    Unexpected exceptions are the caller's to log (with their traceback); the client gets INTERNAL.
    """
    if isinstance(error, ApiError):
        return error.to_status(), error.http_status, error.headers
    if isinstance(error, grpc.aio.AioRpcError):
        return status_from_rpc_error(error), None, {}
    return internal_error().to_status(), None, {}


def status_from_rpc_error(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The upstream's Status: the rich one from its trailer when present, else code and message."""
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except Exception:  # a corrupt trailer is no reason to lose the code
                break
    code = error.code().value[0]
    message = error.details() or ""
    if code == code_pb2.UNAVAILABLE:
        # The channel's own failure text names upstream addresses; clients get a generic one.
        message = "upstream unavailable"
    if code == code_pb2.DEADLINE_EXCEEDED:
        # The call's own deadline (grpc-core's, or the in-process call's): its reason, like every error.
        return DEADLINE_EXCEEDED.error(f"the deadline passed before the call ended ({message})").to_status()
    return status_pb2.Status(code=code, message=message)


def status_to_json(status: status_pb2.Status) -> dict[str, Any]:
    """The JSON `google.rpc.Status`, details rendered with `@type` (opaque base64 if the type is unknown)."""
    rendered: dict[str, Any] = {"code": status.code, "message": status.message, "details": []}
    for detail in status.details:
        rendered["details"].append(_any_to_json(detail))
    return rendered


def _any_to_json(detail: any_pb2.Any) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(detail, preserving_proto_field_name=True)
    except (TypeError, KeyError, json_format.Error):
        return {"@type": detail.type_url, "value": base64.b64encode(detail.value).decode("ascii")}


def error_headers(status: status_pb2.Status) -> dict[str, str]:
    """Headers HTTP clients expect with some statuses: WWW-Authenticate on 401, Retry-After on 429."""
    headers: dict[str, str] = {}
    if status.code == code_pb2.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="aibattle"'
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
            headers["Retry-After"] = str(max(0, math.ceil(delay)))
    return headers


def error_reason(status: status_pb2.Status) -> str:
    """The ErrorInfo reason of a status (UPPER_SNAKE), or "" when it carries none."""
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def field_at_fault(status: status_pb2.Status) -> str | None:
    """The first BadRequest field violation's field of a status, if any."""
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            if bad.field_violations:
                return bad.field_violations[0].field
    return None
