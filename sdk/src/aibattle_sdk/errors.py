"""Typed errors, and the one place where a gRPC failure becomes one of them.

Every call of `Client` and `AsyncClient` goes through `from_rpc_error`: the status code picks the class,
the rich status the server puts in `grpc-status-details-bin` (a `google.rpc.Status`, AIP-193) gives the
`ErrorInfo` reason and metadata and, for rate limits, the `RetryInfo` delay.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc

from aibattle_sdk._gen.google.rpc import BadRequest, ErrorInfo, RetryInfo, Status

_DETAILS_KEY = "grpc-status-details-bin"


class AIBattleError(Exception):
    """Base class of every error the SDK raises."""


class APIError(AIBattleError):
    """The server (or the transport) answered a call with a non-OK status.

    Attributes:
        code: the gRPC status code.
        message: the status message, meant for the developer.
        reason: `ErrorInfo.reason` (UPPER_SNAKE_CASE, stable across releases), or "" if none was sent.
        domain: `ErrorInfo.domain`, e.g. "aibattle.dev".
        metadata: `ErrorInfo.metadata`, e.g. {"model": "gpt-x"}.
        field_violations: (field, description) pairs of a `BadRequest` detail.
        retry_after: seconds to wait before retrying, from a `RetryInfo` detail; None if not sent.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str = "",
        domain: str = "",
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[tuple[str, str]] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}" + (f" ({reason})" if reason else ""))
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.metadata = dict(metadata or {})
        self.field_violations = list(field_violations)
        self.retry_after = retry_after


class CancelledError(APIError):
    """CANCELLED: the call was cancelled, by this client or by the server."""


class UnknownError(APIError):
    """UNKNOWN: the server did not say what went wrong."""


class InvalidArgumentError(APIError):
    """INVALID_ARGUMENT: the request is malformed; `field_violations` names the fields at fault."""


class DeadlineExceededError(APIError):
    """DEADLINE_EXCEEDED: the call's deadline (the `timeout` option) passed before it finished."""


class NotFoundError(APIError):
    """NOT_FOUND: no such model, conversation or session (or it belongs to another key)."""


class AlreadyExistsError(APIError):
    """ALREADY_EXISTS: the resource exists already."""


class PermissionDeniedError(APIError):
    """PERMISSION_DENIED: the API key may not do this (e.g. a model outside its allow-list)."""


class RateLimitError(APIError):
    """RESOURCE_EXHAUSTED: a rate or size limit was hit; wait `retry_after` seconds when it is set."""


class FailedPreconditionError(APIError):
    """FAILED_PRECONDITION: the resource is not in a state that allows this (e.g. a finished conversation)."""


class AbortedError(APIError):
    """ABORTED: the operation was aborted, typically by a concurrent change."""


class OutOfRangeError(APIError):
    """OUT_OF_RANGE: a value is past the valid range."""


class UnimplementedError(APIError):
    """UNIMPLEMENTED: the server does not serve this RPC."""


class InternalError(APIError):
    """INTERNAL: the server failed; its logs hold the details (the message never carries them)."""


class UnavailableError(APIError):
    """UNAVAILABLE: the server or an upstream provider can't be reached now; safe calls were retried."""


class DataLossError(APIError):
    """DATA_LOSS: unrecoverable data loss."""


class AuthenticationError(APIError):
    """UNAUTHENTICATED: no API key, or an unknown or revoked one."""


_BY_CODE: dict[grpc.StatusCode, type[APIError]] = {
    grpc.StatusCode.CANCELLED: CancelledError,
    grpc.StatusCode.UNKNOWN: UnknownError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: RateLimitError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRangeError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DATA_LOSS: DataLossError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
}


def error_for(
    code: grpc.StatusCode, message: str, trailing_metadata: Sequence[tuple[str, Any]] | None = None
) -> APIError:
    """The typed error for a status code, message and trailing metadata."""
    details: list[tuple[str, Any]] = []
    status = _rich_status(trailing_metadata)
    if status is not None:
        message = status.message or message
        for detail in status.details:
            kind = detail.type_url.rsplit("/", 1)[-1]
            parser = _DETAIL_TYPES.get(kind)
            if parser is not None:
                details.append((kind, parser.parse(detail.value)))
    return _typed(code, message, details)


def error_from_json(status: Any, http_status: int) -> APIError:
    """The typed error for an HTTP gateway's answer: a JSON `google.rpc.Status` (details as `@type`d
    objects), or, from something else on the way (a proxy's HTML page), the HTTP status alone."""
    if not isinstance(status, dict) or not isinstance(status.get("code"), int):
        return _typed(_code_of_http(http_status), f"HTTP {http_status} from the gateway", [])
    details: list[tuple[str, Any]] = []
    for detail in status.get("details") or ():
        if not isinstance(detail, dict):
            continue
        kind = str(detail.get("@type", "")).rsplit("/", 1)[-1]
        parser = _DETAIL_TYPES.get(kind)
        if parser is not None:
            try:
                details.append((kind, parser.from_dict({k: v for k, v in detail.items() if k != "@type"})))
            except Exception:  # a malformed detail must not hide the status itself
                continue
    try:
        code = grpc.StatusCode[_CODE_NAMES[status["code"]]]
    except (KeyError, IndexError):
        code = grpc.StatusCode.UNKNOWN
    return _typed(code, str(status.get("message", "")), details)


_DETAIL_TYPES: dict[str, type[ErrorInfo] | type[RetryInfo] | type[BadRequest]] = {
    "google.rpc.ErrorInfo": ErrorInfo,
    "google.rpc.RetryInfo": RetryInfo,
    "google.rpc.BadRequest": BadRequest,
}

_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}

_HTTP_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ABORTED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def _code_of_http(http_status: int) -> grpc.StatusCode:
    """grpc-gateway's mapping of codes to HTTP statuses, read backwards."""
    if http_status in _HTTP_CODES:
        return _HTTP_CODES[http_status]
    return grpc.StatusCode.INTERNAL if http_status >= 500 else grpc.StatusCode.UNKNOWN


def _typed(code: grpc.StatusCode, message: str, details: Sequence[tuple[str, Any]]) -> APIError:
    """The error class of `code`, filled from the parsed ErrorInfo, RetryInfo and BadRequest details."""
    reason, domain, metadata, violations, retry_after = "", "", {}, [], None
    for kind, detail in details:
        if kind == "google.rpc.ErrorInfo":
            reason, domain, metadata = detail.reason, detail.domain, dict(detail.metadata)
        elif kind == "google.rpc.RetryInfo":
            if detail.retry_delay is not None:
                retry_after = detail.retry_delay.total_seconds()
        elif kind == "google.rpc.BadRequest":
            violations = [(v.field, v.description) for v in detail.field_violations]
    cls = _BY_CODE.get(code, UnknownError)
    return cls(
        code,
        message,
        reason=reason,
        domain=domain,
        metadata=metadata,
        field_violations=violations,
        retry_after=retry_after,
    )


def from_rpc_error(error: grpc.RpcError) -> APIError:
    """The choke point: a grpcio (sync or aio) failure as the SDK's typed error."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    return error_for(code or grpc.StatusCode.UNKNOWN, details or "", trailing)


def _rich_status(trailing_metadata: Sequence[tuple[str, Any]] | None) -> Status | None:
    for key, value in trailing_metadata or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return Status.parse(value)
            except Exception:  # a malformed detail must not hide the status itself
                return None
    return None
