"""The one error taxonomy, shared by the server and the gateway.

Every reason a client can be given (`ErrorInfo.reason`) is declared once, below: a `Reason` with its
gRPC code, one line on what the client did or what happened, and what the server does about it
(`fallback`: the next model of a fallback chain is tried; `retryable`: the same model is tried again).
`REASONS` holds them by name, and README.md's error tables list the same (a test compares the two).

Code raises an `ApiError` for a reason of the catalog (`QUEUE_FULL.error("…")`, the code and any HTTP
status from the catalog), or a subclass named for a recurring situation (`InvalidArgument`, `NotFound`,
`FailedPrecondition`, `UpstreamError`…). Decisions read the error's properties (`error.fallback`,
`error.retryable`), never its reason's spelling. One place on each side turns an error into the answer:
the server's error interceptor into a gRPC status with a `google.rpc.Status` in
`grpc-status-details-bin`, the gateway's error middleware into an HTTP response (or a stream's last
frame). `to_status()` is the one rendering (AIP-193): an `ErrorInfo` always, a `BadRequest` when a
field is at fault, a `RetryInfo` when the client should wait. Anything that is not an `ApiError`
becomes a generic INTERNAL whose traceback is logged, never sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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


def status_code(number: int) -> grpc.StatusCode:
    """The gRPC code a `google.rpc.Status` (or a handler's int) carries by number; UNKNOWN for a number
    no code has."""
    return next((c for c in grpc.StatusCode if c.value[0] == number), grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True)
class Reason:
    """One `ErrorInfo.reason`: its gRPC code, what it means, and what the server does about it.

    Declared once each, below; raise one with `reason.error(message)` or a subclass of `ApiError`.
    """

    name: str
    """UPPER_SNAKE_CASE, stable across releases."""
    code: grpc.StatusCode
    doc: str
    """What the client did, or what happened: one line."""
    fallback: bool = False
    """A failure of the model's provider rather than of the request: before a first token, the next
    model of a fallback chain is tried (`server/providers/resilience.py`)."""
    retryable: bool = False
    """Another attempt at the same upstream may succeed: the server tries it again, before a first
    token and within the model's `retries`. (Whether a client may retry is the code's business:
    RetryInfo says when.)"""
    http_status: int | None = None
    """Where HTTP says it more precisely than the gateway's code table (405, 413, 426)."""
    visible: bool = True
    """False for a reason no client receives (the client is gone by then): it shows in logs only, and
    the README need not list it."""

    def __str__(self) -> str:
        return self.name

    def error(
        self,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        field: str | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> ApiError:
        """An `ApiError` for this reason: its code and HTTP status from here."""
        return ApiError(
            self.code, self, message, metadata=metadata, field=field, retry_after=retry_after, headers=headers
        )


REASONS: dict[str, Reason] = {}
"""Every declared reason, by name."""


def _declare(
    name: str,
    code: grpc.StatusCode,
    doc: str,
    *,
    fallback: bool = False,
    retryable: bool = False,
    http_status: int | None = None,
    visible: bool = True,
) -> Reason:
    if name in REASONS:
        raise ValueError(f"reason {name} is declared twice")
    reason = Reason(name, code, doc, fallback, retryable, http_status, visible)
    REASONS[name] = reason
    return reason


_C = grpc.StatusCode

# --- the request is at fault (INVALID_ARGUMENT, HTTP 400): fixing it is the client's to do ------------
INVALID_FIELD = _declare(
    "INVALID_FIELD", _C.INVALID_ARGUMENT, "a request field is missing, malformed or out of range"
)
UNSUPPORTED_PARAMETER = _declare(
    "UNSUPPORTED_PARAMETER",
    _C.INVALID_ARGUMENT,
    "a parameter the model's provider, or an OpenAI or Ollama endpoint, does not take",
)
CAPABILITY_MISSING = _declare(
    "CAPABILITY_MISSING",
    _C.INVALID_ARGUMENT,
    "an attachment, tools or structured output the model cannot take (a capability it lacks, or a kind"
    " its provider cannot pass on)",
)
PROMPT_TOO_LONG = _declare(
    "PROMPT_TOO_LONG", _C.INVALID_ARGUMENT, "a prompt or message over [server].max_prompt_chars characters"
)
CONTEXT_LENGTH_EXCEEDED = _declare(
    "CONTEXT_LENGTH_EXCEEDED", _C.INVALID_ARGUMENT, "a prompt longer than the model's context window"
)
MALFORMED_REQUEST = _declare(
    "MALFORMED_REQUEST",
    _C.INVALID_ARGUMENT,
    "request bytes that are not the method's message (protobuf, or a Connect / gRPC-Web envelope or JSON)",
)
MALFORMED_JSON = _declare(
    "MALFORMED_JSON",
    _C.INVALID_ARGUMENT,
    "a body, body line or WebSocket frame that is not UTF-8 JSON (or is nested too deeply)",
)
INVALID_BODY = _declare(
    "INVALID_BODY", _C.INVALID_ARGUMENT, "a request body that is not the JSON object the route takes"
)
UNEXPECTED_BODY = _declare(
    "UNEXPECTED_BODY", _C.INVALID_ARGUMENT, "a request body on a route that takes none"
)
UNKNOWN_FIELD = _declare(
    "UNKNOWN_FIELD", _C.INVALID_ARGUMENT, "a JSON field that the request message does not have"
)
INVALID_FIELD_VALUE = _declare(
    "INVALID_FIELD_VALUE",
    _C.INVALID_ARGUMENT,
    "a JSON value of the wrong type or out of its field's range, or a required one missing",
)
UNKNOWN_QUERY_PARAMETER = _declare(
    "UNKNOWN_QUERY_PARAMETER",
    _C.INVALID_ARGUMENT,
    "a query parameter or path variable that names no field of the request",
)
INVALID_QUERY_PARAMETER = _declare(
    "INVALID_QUERY_PARAMETER",
    _C.INVALID_ARGUMENT,
    "a query parameter that cannot set its field (a bad value, repeated, a message, set by the path or body)",
)
INVALID_HEADER = _declare(
    "INVALID_HEADER",
    _C.INVALID_ARGUMENT,
    "a header the gateway cannot read or pass on (metadata, Grpc-Timeout, Last-Event-ID, WebSocket offer)",
)
INVALID_FRAME = _declare(
    "INVALID_FRAME",
    _C.INVALID_ARGUMENT,
    "a flat-dialect WebSocket frame without a known string type, or an auth frame with a bad token",
)
UNEXPECTED_FRAME = _declare(
    "UNEXPECTED_FRAME", _C.INVALID_ARGUMENT, "a further frame on a WebSocket route that takes one request"
)
BINARY_FRAME = _declare(
    "BINARY_FRAME", _C.INVALID_ARGUMENT, "a binary WebSocket frame (only JSON text frames are read)"
)
CONFLICTING_CREDENTIALS = _declare(
    "CONFLICTING_CREDENTIALS",
    _C.INVALID_ARGUMENT,
    "a WebSocket token other than the one the connection already carries",
)
UNKNOWN_PARAMETER = _declare(
    "UNKNOWN_PARAMETER", _C.INVALID_ARGUMENT, "a key the OpenAI or Ollama endpoint does not know"
)
UNSUPPORTED_CONTENT = _declare(
    "UNSUPPORTED_CONTENT",
    _C.INVALID_ARGUMENT,
    "a message content part other than text, at an OpenAI or Ollama endpoint",
)

# --- nothing by that name, for this caller (NOT_FOUND, HTTP 404) ---------------------------------------
MODEL_NOT_FOUND = _declare(
    "MODEL_NOT_FOUND", _C.NOT_FOUND, "the request names a model this server does not serve"
)
CONVERSATION_NOT_FOUND = _declare(
    "CONVERSATION_NOT_FOUND", _C.NOT_FOUND, "no such conversation for this key (another key's looks the same)"
)
REASONING_NOT_FOUND = _declare(
    "REASONING_NOT_FOUND",
    _C.NOT_FOUND,
    "no such reasoning session for this key (another key's looks the same)",
)
KEY_NOT_FOUND = _declare("KEY_NOT_FOUND", _C.NOT_FOUND, "no API key with that id")
ROUTE_NOT_FOUND = _declare("ROUTE_NOT_FOUND", _C.NOT_FOUND, "no gateway route serves that path")

# --- the request is fine, the state is not (FAILED_PRECONDITION, HTTP 400) -----------------------------
CONVERSATION_TOO_LONG = _declare(
    "CONVERSATION_TOO_LONG",
    _C.FAILED_PRECONDITION,
    "a message or reply that would take a conversation past what its models can be sent or a response carry",
)
CONVERSATION_RUNNING = _declare(
    "CONVERSATION_RUNNING",
    _C.FAILED_PRECONDITION,
    "a change to a running conversation (a message without a seat, additional_rounds)",
)
NOT_YOUR_TURN = _declare(
    "NOT_YOUR_TURN",
    _C.FAILED_PRECONDITION,
    "a message out of turn, or while models speak in a mode without people",
)
QUEUE_FULL = _declare(
    "QUEUE_FULL", _C.FAILED_PRECONDITION, "a person's message while the most that may wait already wait"
)
CONVERSATION_COMPLETED = _declare(
    "CONVERSATION_COMPLETED",
    _C.FAILED_PRECONDITION,
    "RunConversation on a conversation that completed its rounds, without additional_rounds",
)
RUNNING_ELSEWHERE = _declare(
    "RUNNING_ELSEWHERE",
    _C.FAILED_PRECONDITION,
    "a run (:resume, :run, :cancel) held by another request or server",
)
NOT_RESUMABLE = _declare(
    "NOT_RESUMABLE",
    _C.FAILED_PRECONDITION,
    ":resume of a reasoning session that is running or completed (or whose strategy changed since)",
)
WEBSOCKET_UPGRADE_REQUIRED = _declare(
    "WEBSOCKET_UPGRADE_REQUIRED",
    _C.FAILED_PRECONDITION,
    "a plain GET on a WebSocket route",
    http_status=426,
)

# --- who is calling (UNAUTHENTICATED, HTTP 401) and what they may do (PERMISSION_DENIED, HTTP 403) -----
API_KEY_MISSING = _declare("API_KEY_MISSING", _C.UNAUTHENTICATED, "no API key, on a server that needs one")
API_KEY_INVALID = _declare("API_KEY_INVALID", _C.UNAUTHENTICATED, "an API key this server did not issue")
API_KEY_REVOKED = _declare("API_KEY_REVOKED", _C.UNAUTHENTICATED, "an API key that was revoked")
API_KEY_EXPIRED = _declare("API_KEY_EXPIRED", _C.UNAUTHENTICATED, "an API key past its expire_time")
MODEL_NOT_ALLOWED = _declare(
    "MODEL_NOT_ALLOWED",
    _C.PERMISSION_DENIED,
    "a model outside the key's allowed_models (also one that does not exist)",
)
ADMIN_KEY_REQUIRED = _declare(
    "ADMIN_KEY_REQUIRED", _C.PERMISSION_DENIED, "KeyService called with a key other than the admin key"
)
ADMIN_KEY_NOT_CONFIGURED = _declare(
    "ADMIN_KEY_NOT_CONFIGURED",
    _C.PERMISSION_DENIED,
    "KeyService on a server without an admin key (it runs open)",
)
HOST_NOT_ALLOWED = _declare(
    "HOST_NOT_ALLOWED", _C.PERMISSION_DENIED, "a Host other than a loopback name, at a gateway on loopback"
)
ORIGIN_NOT_ALLOWED = _declare(
    "ORIGIN_NOT_ALLOWED",
    _C.PERMISSION_DENIED,
    "a state-changing request, CORS preflight or WebSocket from an origin not in [gateway].cors_origins",
)

# --- a limit is reached (RESOURCE_EXHAUSTED, HTTP 429) -------------------------------------------------
RATE_LIMITED = _declare(
    "RATE_LIMITED", _C.RESOURCE_EXHAUSTED, "the key's requests per minute (rpm) are spent"
)
TOKEN_RATE_LIMITED = _declare(
    "TOKEN_RATE_LIMITED", _C.RESOURCE_EXHAUSTED, "the key's tokens per minute (tpm) cannot cover this call"
)
TOO_MANY_STREAMS = _declare(
    "TOO_MANY_STREAMS", _C.RESOURCE_EXHAUSTED, "the key holds its max_concurrent_streams already"
)
SERVER_BUSY = _declare(
    "SERVER_BUSY",
    _C.RESOURCE_EXHAUSTED,
    "the server holds its [server].max_concurrent_streams response streams already (every key together)",
)
BUDGET_EXCEEDED = _declare(
    "BUDGET_EXCEEDED", _C.RESOURCE_EXHAUSTED, "the key's budget_usd cannot cover this call's worst case"
)
REQUEST_TOO_LARGE = _declare(
    "REQUEST_TOO_LARGE",
    _C.RESOURCE_EXHAUSTED,
    "an HTTP body or NDJSON line over [gateway].max_body_bytes",
    http_status=413,
)

# --- not served (UNIMPLEMENTED, HTTP 501) ---------------------------------------------------------------
METHOD_NOT_ALLOWED = _declare(
    "METHOD_NOT_ALLOWED", _C.UNIMPLEMENTED, "an HTTP method the path is not served with", http_status=405
)
UNKNOWN_RPC = _declare(
    "UNKNOWN_RPC",
    _C.UNIMPLEMENTED,
    "a Connect or gRPC-Web path naming a method its service does not have (as gRPC answers it)",
    http_status=404,
)
UNSUPPORTED_MEDIA_TYPE = _declare(
    "UNSUPPORTED_MEDIA_TYPE",
    _C.UNIMPLEMENTED,
    "a Connect or gRPC-Web call whose Content-Type (or GET encoding) the RPC is not served with",
    http_status=415,
)
UNSUPPORTED_COMPRESSION = _declare(
    "UNSUPPORTED_COMPRESSION", _C.UNIMPLEMENTED, "a Connect or gRPC-Web message compressed other than gzip"
)
STREAMING_REQUESTS_UNSUPPORTED = _declare(
    "STREAMING_REQUESTS_UNSUPPORTED",
    _C.UNIMPLEMENTED,
    "a client- or bidi-streaming RPC over Connect or gRPC-Web (use gRPC or its WebSocket route)",
)

# --- a model's provider failed: the next model of a fallback chain is tried ----------------------------
PROVIDER_ERROR = _declare(
    "PROVIDER_ERROR",
    _C.UNAVAILABLE,
    "an in-process model failed (the local model is not loaded, a scripted failure)",
    fallback=True,
)
UPSTREAM_UNREACHABLE = _declare(
    "UPSTREAM_UNREACHABLE",
    _C.UNAVAILABLE,
    "the upstream could not be reached (connection refused or reset, DNS), or its answer was cut off",
    fallback=True,
    retryable=True,
)
UPSTREAM_RATE_LIMITED = _declare(
    "UPSTREAM_RATE_LIMITED",
    _C.RESOURCE_EXHAUSTED,
    "the upstream answered 429",
    fallback=True,
    retryable=True,
)
UPSTREAM_UNAVAILABLE = _declare(
    "UPSTREAM_UNAVAILABLE",
    _C.UNAVAILABLE,
    "the upstream answered 408 or 5xx",
    fallback=True,
    retryable=True,
)
UPSTREAM_TIMEOUT = _declare(
    "UPSTREAM_TIMEOUT",
    _C.UNAVAILABLE,
    "no first token, or a silent stream, past its timeout",
    fallback=True,
    retryable=True,
)
UPSTREAM_REJECTED = _declare(
    "UPSTREAM_REJECTED",
    _C.FAILED_PRECONDITION,
    "the upstream refused the request (400, 404, 413, 422): the server's configuration, e.g. upstream_model",
    fallback=True,
)
UPSTREAM_AUTH_FAILED = _declare(
    "UPSTREAM_AUTH_FAILED",
    _C.FAILED_PRECONDITION,
    "the upstream refused the server's key (401, 403)",
    fallback=True,
)
UPSTREAM_PROTOCOL_ERROR = _declare(
    "UPSTREAM_PROTOCOL_ERROR", _C.UNAVAILABLE, "an upstream answer that does not parse", fallback=True
)
UPSTREAM_ERROR = _declare(
    "UPSTREAM_ERROR", _C.UNAVAILABLE, "an error event or object inside the upstream's stream", fallback=True
)
UPSTREAM_COOLDOWN = _declare(
    "UPSTREAM_COOLDOWN",
    _C.UNAVAILABLE,
    "the upstream is skipped for a while after repeated failures",
    fallback=True,
)
UPSTREAM_KEY_MISSING = _declare(
    "UPSTREAM_KEY_MISSING",
    _C.UNAVAILABLE,
    "the environment variable the model's api_key_env names is not set",
    fallback=True,
)

# --- the rest --------------------------------------------------------------------------------------------
DEADLINE_EXCEEDED = _declare(
    "DEADLINE_EXCEEDED", _C.DEADLINE_EXCEEDED, "the caller's deadline passed before the work was done"
)
LIMITS_UNAVAILABLE = _declare(
    "LIMITS_UNAVAILABLE",
    _C.UNAVAILABLE,
    "a limited key's counters cannot be checked: [server].redis_url's Redis is unreachable (fails closed)",
)
STORE_UNAVAILABLE = _declare(
    "STORE_UNAVAILABLE",
    _C.UNAVAILABLE,
    "the database ([server].database) cannot be reached; what was committed is kept (retry shortly)",
)
INTERNAL = _declare("INTERNAL", _C.INTERNAL, "anything unexpected (its traceback is logged, never sent)")
CANCELLED = _declare("CANCELLED", _C.CANCELLED, "the client abandoned its request stream", visible=False)


def _checked(reason: Reason | str, *codes: grpc.StatusCode) -> Reason | str:
    """`reason`, which must be declared with one of `codes` when it is declared at all."""
    entry = reason if isinstance(reason, Reason) else REASONS.get(reason)
    if entry is not None and entry.code not in codes:
        raise ValueError(f"{entry.name} is a {entry.code.name} reason, not {'/'.join(c.name for c in codes)}")
    return reason


class ApiError(Exception):
    """An error meant for the client: a status code, a machine-readable reason, a message for people.

    Args:
        code: gRPC status code.
        reason: UPPER_SNAKE_CASE reason, stable across releases (ErrorInfo.reason): a `Reason` of the
            catalog (then `http_status` defaults to its), or a name.
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
        reason: Reason | str,
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
        if http_status is None and isinstance(reason, Reason):
            http_status = reason.http_status
        self.code = code
        self.reason = str(reason)
        self.message = message
        self.metadata = dict(metadata or {})
        self.field = field
        self.field_description = field_description or message
        self.retry_after = retry_after
        self.http_status = http_status
        self.headers = dict(headers or {})
        self._retryable: bool | None = None

    @property
    def entry(self) -> Reason | None:
        """The reason's catalog entry (None for a reason not declared there)."""
        return REASONS.get(self.reason)

    @property
    def fallback(self) -> bool:
        """Whether the next model of a fallback chain may be tried: the provider failed, not the request."""
        entry = self.entry
        return entry is not None and entry.fallback

    @property
    def retryable(self) -> bool:
        """Whether another attempt at the same upstream may succeed: the catalog's answer for the
        reason, unless the raise site knows better (an upstream's 501 is no 503)."""
        if self._retryable is not None:
            return self._retryable
        entry = self.entry
        return entry is not None and entry.retryable

    @retryable.setter
    def retryable(self, value: bool) -> None:
        self._retryable = value

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
    """A request field is missing, malformed or out of range: the one builder of INVALID_ARGUMENT, for
    the server's validation and the gateway's decoding alike.

    With a field, a BadRequest names it and, unless `prefix` is False (a message that names it in its
    own words), the message starts with it; without one (malformed JSON, a bad header) the message
    stands alone.
    """

    def __init__(
        self,
        field: str | None,
        message: str,
        *,
        reason: Reason | str = INVALID_FIELD,
        prefix: bool = True,
    ) -> None:
        super().__init__(
            grpc.StatusCode.INVALID_ARGUMENT,
            _checked(reason, grpc.StatusCode.INVALID_ARGUMENT),
            f"{field}: {message}" if field and prefix else message,
            metadata={"field": field} if field else None,
            field=field,
            field_description=message,
        )


class NotFound(ApiError):
    """A named resource (model, conversation, reasoning session, key) does not exist for this caller;
    the reason is `<KIND>_NOT_FOUND` (MODEL_NOT_FOUND…)."""

    def __init__(self, kind: str, name: str) -> None:
        reason = f"{kind.upper().replace(' ', '_')}_NOT_FOUND"
        super().__init__(
            grpc.StatusCode.NOT_FOUND,
            _checked(reason, grpc.StatusCode.NOT_FOUND),
            f"{kind} {shown(name)} not found",
            metadata={kind: clip(name)},
        )


class FailedPrecondition(ApiError):
    """The request is well-formed but the state does not allow it now (a conversation running or
    completed, a run held elsewhere, a session not resumable): no retry helps until the state changes."""

    def __init__(
        self,
        reason: Reason | str,
        message: str,
        *,
        metadata: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            grpc.StatusCode.FAILED_PRECONDITION,
            _checked(reason, grpc.StatusCode.FAILED_PRECONDITION),
            message,
            metadata=metadata,
            headers=headers,
        )


class UpstreamError(ApiError):
    """A model's provider failed: an upstream unreachable, refusing or failing, or an in-process model
    that cannot answer. Its reason is one with `fallback` (the next model of a chain may do better);
    `retryable` is the reason's unless the raise site says otherwise.

    The message and metadata name the provider (None for the in-process ones: the model says it all),
    the model and, for an HTTP answer, the `upstream_status`.
    """

    def __init__(
        self,
        provider: str | None,
        model: str,
        reason: Reason,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        upstream_status: int | None = None,
    ) -> None:
        metadata = {"model": model} if provider is None else {"provider": provider, "model": model}
        if upstream_status is not None:
            metadata["upstream_status"] = str(upstream_status)
        named = f"model {model!r}" if provider is None else f"model {model!r} ({provider})"
        super().__init__(
            reason.code, reason, f"{named}: {message}", metadata=metadata, retry_after=retry_after
        )
        self.provider = provider
        self.model = model
        self.upstream_status = upstream_status
        if retryable is not None:
            self.retryable = retryable


class DeadlineExceeded(ApiError):
    """The caller's deadline passed before the work was done (waiting for a model, generating)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, DEADLINE_EXCEEDED, message)


class Unauthenticated(ApiError):
    """No usable credential: the API key is missing, unknown, revoked or expired (HTTP 401).

    The message never repeats what the client sent: a mistyped secret is still a secret.
    """

    def __init__(self, reason: Reason | str, message: str) -> None:
        super().__init__(
            grpc.StatusCode.UNAUTHENTICATED, _checked(reason, grpc.StatusCode.UNAUTHENTICATED), message
        )


class PermissionDenied(ApiError):
    """The caller is known but may not do this: a model outside its key's list, KeyService without the
    admin key, reflection without a key, a foreign Host or Origin at the gateway (HTTP 403)."""

    def __init__(
        self, reason: Reason | str, message: str, *, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(
            grpc.StatusCode.PERMISSION_DENIED,
            _checked(reason, grpc.StatusCode.PERMISSION_DENIED),
            message,
            metadata=metadata,
        )


class LimitExceeded(ApiError):
    """A per-key limit is reached: requests or tokens per minute, concurrent streams, budget (HTTP 429).

    `retry_after` (a RetryInfo, HTTP Retry-After) when waiting helps: rates refill, streams end. A
    spent budget does not come back by waiting, so it has none.
    """

    def __init__(
        self, reason: Reason | str, message: str, *, limit: str, retry_after: float | None = None
    ) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            _checked(reason, grpc.StatusCode.RESOURCE_EXHAUSTED),
            message,
            metadata={"limit": limit},
            retry_after=retry_after,
        )


class RequestTooLarge(ApiError):
    """A request body, NDJSON request line or WebSocket message over the configured limit (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            REQUEST_TOO_LARGE,
            f"request body exceeds the {limit}-byte limit",
            metadata={"limit_bytes": str(limit)},
        )


def internal_error(request_id: str | None = None) -> ApiError:
    """What a client learns of an unexpected failure: nothing but where to look (the logged traceback)."""
    quote = f"; quote request id {request_id} when reporting it" if request_id else ""
    return INTERNAL.error(f"internal error{quote}")
