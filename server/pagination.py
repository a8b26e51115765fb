"""Opaque page tokens for every List RPC (AIP-158).

A token encodes the offset of the next item and a fingerprint of the filters it was
issued for, so a token replayed with other filters is an INVALID_ARGUMENT rather than
a silently wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Sequence
from typing import TypeVar

from common.errors import InvalidArgument

T = TypeVar("T")


def _fingerprint(filters: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(f) for f in filters]).encode()).hexdigest()[:12]


def encode_token(offset: int, filters: Sequence[object]) -> str:
    raw = json.dumps({"o": offset, "f": _fingerprint(filters)}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_token(token: str, filters: Sequence[object]) -> int:
    """The offset a token points at (0 for no token)."""
    if not token:
        return 0
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        offset, fingerprint = data["o"], data["f"]
    except (binascii.Error, ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument("page_token", "not a token this server issued") from None
    if not isinstance(offset, int) or offset < 0:
        raise InvalidArgument("page_token", "not a token this server issued")
    if fingerprint != _fingerprint(filters):
        raise InvalidArgument("page_token", "was issued for different filters; start again without it")
    return offset


def page_size(requested: int, *, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or default, maximum)


def paginate(
    items: Sequence[T], *, size: int, token: str, filters: Sequence[object], default: int, maximum: int
) -> tuple[Sequence[T], str]:
    """One page of items and the token of the next page ('' on the last page)."""
    limit = page_size(size, default=default, maximum=maximum)
    start = decode_token(token, filters)
    page = items[start : start + limit]
    end = start + len(page)
    return page, encode_token(end, filters) if end < len(items) else ""
