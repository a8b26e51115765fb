"""Upstream failures, classified once: what a client is told, and whether trying again may help.

| upstream answer | gRPC code | reason | retried |
|---|---|---|---|
| connection refused / reset, DNS failure | UNAVAILABLE | UPSTREAM_UNREACHABLE | yes |
| 429 | RESOURCE_EXHAUSTED (RetryInfo from Retry-After) | UPSTREAM_RATE_LIMITED | yes |
| 408, 500, 502, 503, 504, 529 | UNAVAILABLE | UPSTREAM_UNAVAILABLE | yes |
| no first token, or a silent stream, past its timeout | UNAVAILABLE | UPSTREAM_TIMEOUT | before a token |
| 400, 404 (bad model name), 413, 422 | FAILED_PRECONDITION | UPSTREAM_REJECTED | no |
| 401, 403 | FAILED_PRECONDITION | UPSTREAM_AUTH_FAILED | no |
| a frame that does not parse | UNAVAILABLE | UPSTREAM_PROTOCOL_ERROR | no |
| an error event or object in the stream | UNAVAILABLE | UPSTREAM_ERROR | no |
| the model's api_key_env is not set | UNAVAILABLE | UPSTREAM_KEY_MISSING | no |
| the caller's deadline | DEADLINE_EXCEEDED | DEADLINE_EXCEEDED | no |

A 4xx from the upstream is FAILED_PRECONDITION, not INVALID_ARGUMENT: our request was already
validated, so the fault is the server's configuration (a wrong upstream_model, a bad key), not the
client's. Messages name the provider and model, quote the upstream's own message (truncated), and
never carry a key or a header: whatever an upstream echoes (some echo the Authorization header they
were sent) passes `redact_error` before it leaves the provider.

The codes, and whether each reason is retried or falls back, are the catalog's (`common.errors`);
`UpstreamError` lives there too, one class for every provider's failure.
"""

from __future__ import annotations

from common.errors import (
    UPSTREAM_AUTH_FAILED,
    UPSTREAM_ERROR,
    UPSTREAM_PROTOCOL_ERROR,
    UPSTREAM_RATE_LIMITED,
    UPSTREAM_REJECTED,
    UPSTREAM_TIMEOUT,
    UPSTREAM_UNAVAILABLE,
    UPSTREAM_UNREACHABLE,
    ApiError,
    UpstreamError,
)

_MESSAGE_LIMIT = 300
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504, 529})


REDACTED = "[redacted]"


def redact(text: str, secret: str | None) -> str:
    """`text` without `secret`, nor any 8+ character piece of it (upstreams echo keys partly masked,
    and a message cut short may end inside one)."""
    if not secret:
        return text
    if len(secret) < 8:
        return text.replace(secret, REDACTED)
    for size in range(len(secret), 7, -1):
        for start in range(0, len(secret) - size + 1):
            piece = secret[start : start + size]
            if piece in text:
                text = text.replace(piece, REDACTED)
    return text


def redact_error(error: ApiError, secret: str | None) -> ApiError:
    """`error` with every text a client, a log or a stored event could see passed through `redact`:
    its message (also what str() gives), the field violation and the metadata. The one redactor of
    upstream failures: `HttpProvider.stream` sends every error it raises through here."""
    if not secret:
        return error
    error.message = redact(error.message, secret)
    error.args = (error.message,)
    error.field_description = redact(error.field_description, secret)
    error.metadata = {k: redact(v, secret) for k, v in error.metadata.items()}
    return error


def truncate(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def from_status(
    provider: str, model: str, status: int, upstream_message: str, *, retry_after: float | None = None
) -> UpstreamError:
    """The error for a non-2xx answer (before any token)."""
    said = f"upstream answered HTTP {status}" + (
        f": {truncate(upstream_message)}" if upstream_message else ""
    )
    if status == 429:
        return UpstreamError(
            provider, model, UPSTREAM_RATE_LIMITED, said, retry_after=retry_after, upstream_status=status
        )
    if status in RETRYABLE_STATUS or status >= 500:
        # 501, 505…: the upstream will not change its mind on a second attempt.
        return UpstreamError(
            provider,
            model,
            UPSTREAM_UNAVAILABLE,
            said,
            retryable=status in RETRYABLE_STATUS,
            upstream_status=status,
        )
    reason = UPSTREAM_AUTH_FAILED if status in (401, 403) else UPSTREAM_REJECTED
    return UpstreamError(provider, model, reason, said, upstream_status=status)


def unreachable(provider: str, model: str, what: str) -> UpstreamError:
    return UpstreamError(provider, model, UPSTREAM_UNREACHABLE, f"upstream unreachable ({what})")


def timed_out(provider: str, model: str, what: str) -> UpstreamError:
    return UpstreamError(provider, model, UPSTREAM_TIMEOUT, what)


def protocol_error(provider: str, model: str, what: str) -> UpstreamError:
    return UpstreamError(provider, model, UPSTREAM_PROTOCOL_ERROR, f"unreadable answer: {truncate(what)}")


def stream_error(provider: str, model: str, upstream_message: str) -> UpstreamError:
    """An error the upstream reported inside its stream (an error event or object)."""
    return UpstreamError(provider, model, UPSTREAM_ERROR, f"upstream error: {truncate(upstream_message)}")


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds form; an HTTP date is ignored)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if 0 <= seconds < 3600 else None
