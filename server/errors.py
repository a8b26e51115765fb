"""The server's one error model.

Handlers raise an `ApiError` (or one of the subclasses below, each named for the situation
that raises it); the error-mapping interceptor is the one place that turns it into a gRPC
status with a `google.rpc.Status` in `grpc-status-details-bin` (AIP-193: an `ErrorInfo`
always, a `BadRequest` for field violations, a `RetryInfo` when the client should wait).
Any other exception becomes a generic INTERNAL: its traceback is logged, never sent.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

DOMAIN = "aibattle.dev"


class ApiError(Exception):
    """An error meant for the client: a status code, a machine-readable reason, a message for people.

    Args:
        code: gRPC status code.
        reason: UPPER_SNAKE_CASE reason, stable across releases (ErrorInfo.reason).
        message: what went wrong, in words a client developer can act on.
        metadata: ErrorInfo.metadata, e.g. {"model": "gpt-x"}; never secrets.
        field: the request field at fault, reported as a BadRequest field violation.
        retry_after: seconds the client should wait before retrying (RetryInfo).
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
    ) -> None:
        super().__init__(message)
        self.field_description = field_description or message
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})
        self.field = field
        self.retry_after = retry_after

    def to_status(self) -> status_pb2.Status:
        """The rich status sent to clients."""
        details = [error_details_pb2.ErrorInfo(reason=self.reason, domain=DOMAIN, metadata=self.metadata)]
        if self.field is not None:
            violation = error_details_pb2.BadRequest.FieldViolation(
                field=self.field, description=self.field_description, reason=self.reason
            )
            details.append(error_details_pb2.BadRequest(field_violations=[violation]))
        if self.retry_after is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after * 1e9))
            details.append(error_details_pb2.RetryInfo(retry_delay=delay))
        packed = []
        for detail in details:
            any_detail = any_pb2.Any()
            any_detail.Pack(detail)
            packed.append(any_detail)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)


class InvalidArgument(ApiError):
    """A request field is missing, malformed or out of range (raised by request validation)."""

    def __init__(self, field: str, message: str, *, reason: str = "INVALID_FIELD") -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            reason,
            f"{field}: {message}",
            metadata={"field": field},
            field=field,
            field_description=message,
        )


class NotFound(ApiError):
    """A named resource (model, conversation, reasoning session) does not exist for this caller."""

    def __init__(self, kind: str, name: str) -> None:
        reason = f"{kind.upper().replace(' ', '_')}_NOT_FOUND"
        super().__init__(
            grpc.StatusCode.NOT_FOUND, reason, f"{kind} {name!r} not found", metadata={kind: name}
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


class ShuttingDown(ApiError):
    """The server is draining for shutdown and takes no new work."""

    def __init__(self) -> None:
        super().__init__(
            grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN", "server is shutting down; retry on another replica"
        )
