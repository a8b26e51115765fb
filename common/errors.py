"""The one error taxonomy, shared by the server and the gateway.

Code raises an `ApiError` (or a subclass named for the situation); one place on each side turns it
into the answer: the server's error interceptor into a gRPC status with a `google.rpc.Status` in
`grpc-status-details-bin`, the gateway's error middleware into an HTTP response (or a stream's last
frame). `to_status()` is the one rendering (AIP-193): an `ErrorInfo` always, a `BadRequest` when a
field is at fault, a `RetryInfo` when the client should wait. Anything that is not an `ApiError`
becomes a generic INTERNAL whose traceback is logged, never sent.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "aibattle.dev"

ECHO_LIMIT = 64
"""Characters of a client's value an error repeats: enough to recognise it, and a 10,000-character id
cannot make the error itself too large to deliver."""
MAX_MESSAGE_BYTES = 1024
"""A status message's UTF-8 bytes at most; it travels twice (grpc-message, percent-encoded, and in the
rich status)."""
MAX_STATUS_BYTES = 3072
"""The serialized google.rpc.Status at most. It goes out base64-encoded in grpc-status-details-bin,
beside grpc-message; together they stay under gRPC's 8 KiB soft limit for metadata (16 KiB hard). A
status past it is refused by the client as RESOURCE_EXHAUSTED, which clients retry: the wrong answer."""


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """A client's value as an error message quotes it: repr-quoted and cut short, with its length
    when cut. Every message that repeats what a client sent quotes it through here."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… ({len(text)} characters)"


def _cut_utf8(text: str, limit: int) -> str:
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - len("…".encode())].decode("utf-8", "ignore") + "…"


class ApiError(Exception):
    """An error meant for the client: a status code, a machine-readable reason, a message for people.

    Args:
        code: gRPC status code.
        reason: UPPER_SNAKE_CASE reason, stable across releases (ErrorInfo.reason).
        message: what went wrong, in words a client developer can act on.
        metadata: ErrorInfo.metadata, e.g. {"model": "gpt-x"}; never secrets.
        field: the request field at fault, reported as a BadRequest field violation.
        field_description: the violation's description (default: the message).
        retry_after: seconds the client should wait before retrying (RetryInfo).
        http_status: where HTTP has a more precise answer than the code table (405, 413, 426);
            gRPC ignores it.
        headers: HTTP headers that go with it (Allow, Upgrade); gRPC ignores them.
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        reason: str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field: str | None = None,
        field_description: str | None = None,
        retry_after: float | None = None,
        http_status: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field = field
        self.field_description = field_description or message
        self.retry_after = retry_after
        self.http_status = http_status
        self.headers = dict(headers or {})

    def to_status(self) -> status_pb2.Status:
        """The rich status sent to clients, over gRPC and HTTP alike, within MAX_STATUS_BYTES.

        The last guard against an echoed value that outgrows the metadata limit: a status too large
        is built again with its texts and metadata values cut (the code and reason never change).
        """
        status = self._status(self.message, self.metadata, self.field, self.field_description)
        if status.ByteSize() <= MAX_STATUS_BYTES:
            return status
        metadata = {clip(k): clip(v) for k, v in list(self.metadata.items())[:8]}
        field = None if self.field is None else clip(self.field, 256)
        status = self._status(self.message, metadata, field, clip(self.field_description, 256))
        if status.ByteSize() <= MAX_STATUS_BYTES:
            return status
        return self._status(self.message, {}, field, None)

    def _status(
        self, message: str, metadata: Mapping[str, str], field: str | None, description: str | None
    ) -> status_pb2.Status:
        message = _cut_utf8(message, MAX_MESSAGE_BYTES)
        status = status_pb2.Status(code=self.code.value[0], message=message)
        status.details.add().Pack(
            error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=metadata)
        )
        if field is not None:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=field, description=_cut_utf8(description or "", MAX_MESSAGE_BYTES), reason=self.reason
            )
            status.details.add().Pack(error_details_pb2.BadRequest(field_violations=[violation]))
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            status.details.add().Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        return status


class InvalidArgument(ApiError):
    """A request field is missing, malformed or out of range (server validation, gateway decoding).

    With a field, the message is prefixed by it and a BadRequest names it; without one (malformed
    JSON, a bad header) the message stands alone.
    """

    def __init__(self, field: str | None, message: str, *, reason: str = "INVALID_FIELD") -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
            f"{field}: {message}" if field else message,
            metadata={"field": field} if field else None,
            field=field,
            field_description=message,
        )


class NotFound(ApiError):
    """A named resource (model, conversation, reasoning session) does not exist for this caller."""

    def __init__(self, kind: str, name: str) -> None:
        reason = f"{kind.upper().replace(' ', '_')}_NOT_FOUND"
        super().__init__(
            grpc.StatusCode.NOT_FOUND, reason, f"{kind} {shown(name)} not found", metadata={kind: clip(name)}
        )


class Unimplemented(ApiError):
    """An RPC that the schema declares but this server version does not serve yet."""

    def __init__(self, method: str) -> None:
        super().__init__(
            grpc.StatusCode.UNIMPLEMENTED,
            "NOT_IMPLEMENTED",
            f"{method} is declared in the API but not implemented by this server version yet",
            metadata={"method": method},
        )


class ProviderError(ApiError):
    """A model provider failed: upstream unreachable, upstream error, or the local model crashed."""

    def __init__(
        self, model: str, message: str, *, code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    ) -> None:
        super().__init__(code, "PROVIDER_ERROR", f"model {model!r}: {message}", metadata={"model": model})


class DeadlineExceeded(ApiError):
    """The caller's deadline passed before the work was done (waiting for a model, generating)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", message)


class ShuttingDown(ApiError):
    """The server is draining for shutdown and takes no new work."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", "server is shutting down; retry on another replica"
        )


class Unauthenticated(ApiError):
    """No usable credential: the API key is missing, unknown, revoked or expired (HTTP 401).

    The message never repeats what the client sent: a mistyped secret is still a secret.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(grpc.StatusCode.UNAUTHENTICATED, reason, message)


class PermissionDenied(ApiError):
    """The caller is known but may not do this: a model outside its key's list, KeyService without the
    admin key, reflection without a key (HTTP 403)."""

    def __init__(self, reason: str, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(grpc.StatusCode.PERMISSION_DENIED, reason, message, metadata=metadata)


class LimitExceeded(ApiError):
    """A per-key limit is reached: requests or tokens per minute, concurrent streams, budget (HTTP 429).

    `retry_after` (a RetryInfo, HTTP Retry-After) when waiting helps: rates refill, streams end. A
    spent budget does not come back by waiting, so it has none.
    """

    def __init__(self, reason: str, message: str, *, limit: str, retry_after: float | None = None) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            reason,
            message,
            metadata={"limit": limit},
            retry_after=retry_after,
        )


class RequestTooLarge(ApiError):
    """A request body, NDJSON request line or WebSocket message over the configured limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "REQUEST_TOO_LARGE",
            f"request body exceeds the {limit}-byte limit",
            metadata={"limit_bytes": str(limit)},
            http_status=413,
        )


def internal_error(request_id: str | None = None) -> ApiError:
    """What a client learns of an unexpected failure: nothing but where to look (the logged traceback)."""
    quote = f"; quote request id {request_id} when reporting it" if request_id else ""
    return ApiError(grpc.StatusCode.INTERNAL, "INTERNAL", f"internal error{quote}")
