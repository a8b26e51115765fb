"""HTTP headers ↔ gRPC metadata, request ids and `Grpc-Timeout` deadlines.

Incoming: `Authorization`, `X-API-Key` and `X-Request-Id` pass as themselves; `Grpc-Metadata-<key>`
passes as `<key>` (a `-bin` key's value is base64). Outgoing: the upstream's initial metadata comes back
as `Grpc-Metadata-<key>` headers and, on unary calls, its trailers as `Grpc-Trailer-<key>`.
Which headers pass is configuration: `forward_headers` (the `[gateway]` table) adds to the defaults.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import grpc

from common.errors import INVALID_HEADER, InvalidArgument
from gateway.errors import STATUS_DETAILS_KEY

HeaderMatcher = Callable[[str], "str | None"]

REQUEST_ID_HEADER = "X-Request-Id"
_PASS_THROUGH = frozenset({"authorization", "x-api-key", "x-request-id"})
_PREFIX = "grpc-metadata-"
_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_MAX_TIMEOUT = 30 * 24 * 3600.0
_TIMEOUT_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METADATA_KEY = re.compile(r"[a-z0-9_.\-]+")
#: Metadata the gRPC runtime owns; never forwarded in either direction.
_RESERVED = frozenset({"content-type", "te", "user-agent", "host", "connection", STATUS_DETAILS_KEY})


@dataclass(frozen=True)
class ForwardingMatcher:
    """The metadata key an incoming header becomes, or None to drop it.

    The defaults always pass; `forward` names extra headers (lower-case) that pass as themselves.
    A value-equal object rather than a closure, so two options with the same policy compare equal.
    """

    forward: frozenset[str] = frozenset()

    def __call__(self, header: str) -> str | None:
        lowered = header.lower()
        if lowered in _PASS_THROUGH or lowered in self.forward:
            return lowered
        if lowered.startswith(_PREFIX) and len(lowered) > len(_PREFIX):
            return lowered[len(_PREFIX) :]
        return None


def header_matcher(forward: Iterable[str] = ()) -> HeaderMatcher:
    """The default policy plus `forward`, extra header names in any case."""
    return ForwardingMatcher(frozenset(name.lower() for name in forward))


default_header_matcher: HeaderMatcher = header_matcher()


def owned_by_grpc(header: str) -> bool:
    """True for headers that can't be forwarded: gRPC owns their keys (outgoing_metadata drops them)."""
    lowered = header.lower()
    return lowered in _RESERVED or lowered.startswith("grpc-")


def request_id_from(headers: Mapping[str, str]) -> str:
    """The client's X-Request-Id if it is a sane token, else a fresh one."""
    given = headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def outgoing_metadata(
    headers: Iterable[tuple[str, str]], *, matcher: HeaderMatcher, request_id: str
) -> list[tuple[str, str | bytes]]:
    """gRPC metadata for an HTTP request's headers; the request id is always sent."""
    metadata: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        key = matcher(name)
        if key is None or key == "x-request-id" or key in _RESERVED or key.startswith("grpc-"):
            continue
        if not _METADATA_KEY.fullmatch(key):
            raise InvalidArgument(None, f"header {name!r} is not a valid metadata key", reason=INVALID_HEADER)
        if key.endswith("-bin"):
            try:
                metadata.append((key, base64.b64decode(value, validate=True)))
            except (binascii.Error, ValueError) as exc:
                raise InvalidArgument(
                    None, f"header {name!r} carries binary metadata and must be base64", reason=INVALID_HEADER
                ) from exc
        elif value.isascii() and value.isprintable():
            metadata.append((key, value))
        else:
            raise InvalidArgument(None, f"header {name!r} must be printable ASCII", reason=INVALID_HEADER)
    metadata.append(("x-request-id", request_id))
    return metadata


def parse_grpc_timeout(value: str | None) -> float | None:
    """Seconds from a `Grpc-Timeout` header ("10S", "500m", "1H"…); None when absent."""
    if value is None:
        return None
    match = _TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise InvalidArgument(
            None, f"Grpc-Timeout {value!r} is not <1-8 digits><H|M|S|m|u|n>", reason=INVALID_HEADER
        )
    # The header allows 99999999 hours; grpc-core overflows far below that and expires the call at
    # once, so a deadline that far away is no deadline worth keeping.
    seconds = int(match.group(1)) * _TIMEOUT_UNITS[match.group(2)]
    return None if seconds > _MAX_TIMEOUT else seconds


def _answered(key: str) -> bool:
    """Whether an upstream metadata key goes back to the HTTP client: not the runtime's own, and not the
    request id (echoed as X-Request-Id itself)."""
    return not (key in _RESERVED or key.startswith("grpc-") or key == "x-request-id")


def metadata_fields(metadata: grpc.aio.Metadata | None) -> list[tuple[str, str]]:
    """The upstream's metadata as header fields under their own names (Connect and gRPC-Web carry
    metadata as headers and trailers unprefixed); binary values base64, the runtime's own left out."""
    return [
        (key, base64.b64encode(value).decode("ascii") if isinstance(value, bytes) else value)
        for key, value in metadata or ()
        if _answered(key)
    ]


def response_headers(
    initial: grpc.aio.Metadata | None, trailing: grpc.aio.Metadata | None = None
) -> dict[str, str]:
    """`Grpc-Metadata-*` / `Grpc-Trailer-*` headers for the upstream's metadata (text values only)."""
    return {
        prefix + key: value
        for prefix, metadata in (("Grpc-Metadata-", initial), ("Grpc-Trailer-", trailing))
        for key, value in metadata or ()
        if _answered(key) and isinstance(value, str)
    }
