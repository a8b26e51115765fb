"""Opaque page tokens for every List RPC (AIP-158), by key (keyset), never by offset.

A token carries the sort key of the last item it returned and a fingerprint of the list and filters
it was issued for. The next page starts strictly after that key, so items created or deleted between
two pages shift nothing: no item is returned twice, and none that existed when listing began is
skipped. An offset, by contrast, counts rows, and every row created in front of it pushed the next
page back onto rows already sent.

Tokens are not signed: every replica must accept every other's tokens, and a token only says where a
list the caller may read anyway resumes, so a forged one shows nothing new. A token is checked for its
version and shape instead; anything else, or a token issued for other filters, is an INVALID_ARGUMENT
naming `page_token` (never echoing it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from common.errors import InvalidArgument

T = TypeVar("T")

#: (created_at, id) of a stored row: newest first, the id breaking ties between rows made in the same
#: instant, so the order is total and "after this key" is exact.
Key = tuple[float, str]

_VERSION = 1
# Ours are under 200 characters (more only for a very long model id); the bound keeps a hostile token
# from costing a large decode.
_MAX_TOKEN_CHARS = 8192
_NOT_OURS = "is not a page token this server issued; start again without it"


def _fingerprint(filters: Sequence[object]) -> str:
    return hashlib.sha256(json.dumps([str(f) for f in filters]).encode()).hexdigest()[:12]


def _encode(after: Sequence[float | str], filters: Sequence[object]) -> str:
    raw = json.dumps({"v": _VERSION, "a": list(after), "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _no_constants(name: str) -> object:
    raise ValueError(name)  # NaN and Infinity: no key of ours is one


def _decode(token: str, filters: Sequence[object]) -> list[object]:
    """The key a well-formed token of this version carries (its items unchecked)."""
    if len(token) > _MAX_TOKEN_CHARS:
        raise InvalidArgument("page_token", _NOT_OURS)
    try:
        raw = base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_", validate=True)
        data = json.loads(raw, parse_constant=_no_constants)
    except (ValueError, RecursionError):  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise InvalidArgument("page_token", _NOT_OURS) from None
    if not (
        isinstance(data, dict)
        and data.keys() == {"v", "a", "f"}
        and data["v"] == _VERSION
        and type(data["v"]) is int
        and isinstance(data["f"], str)
        and isinstance(data["a"], list)
    ):
        raise InvalidArgument("page_token", _NOT_OURS)
    if data["f"] != _fingerprint(filters):
        raise InvalidArgument("page_token", "was issued for different filters; start again without it")
    return data["a"]


def encode_key(after: Key, filters: Sequence[object]) -> str:
    return _encode(after, filters)


def decode_key(token: str, filters: Sequence[object]) -> Key | None:
    """The (created_at, id) a page starts after (None for no token: the first page)."""
    if not token:
        return None
    after = _decode(token, filters)
    if len(after) != 2:
        raise InvalidArgument("page_token", _NOT_OURS)
    created_at, item_id = after
    # bool is an int to Python; a number too large for a float decodes as inf.
    if (
        isinstance(created_at, bool)
        or not isinstance(created_at, int | float)
        or not math.isfinite(created_at)
        or not isinstance(item_id, str)
        or not item_id
    ):
        raise InvalidArgument("page_token", _NOT_OURS)
    return float(created_at), item_id


def page_size(requested: int, *, default: int, maximum: int) -> int:
    if requested < 0:
        raise InvalidArgument("page_size", "must not be negative")
    return min(requested or default, maximum)


async def keyset_page(
    fetch: Callable[[Key | None, int], Awaitable[Sequence[T]]],
    key: Callable[[T], Key],
    *,
    size: int,
    token: str,
    filters: Sequence[object],
    default: int,
    maximum: int,
) -> tuple[Sequence[T], str]:
    """One page of stored rows, newest first, and the token of the next page ('' on the last page).

    `fetch(after, limit)` returns up to `limit` rows whose key is below `after` (all rows for None),
    newest first; `filters` names the list and every filter, so a token fits only the list it came from.
    """
    limit = page_size(size, default=default, maximum=maximum)
    after = decode_key(token, filters)
    # One row more than the page: whether it exists says if there is a next page.
    rows = await fetch(after, limit + 1)
    page = rows[:limit]
    return page, encode_key(key(page[-1]), filters) if len(rows) > limit else ""


def paginate(
    items: Sequence[T],
    *,
    key: Callable[[T], str],
    size: int,
    token: str,
    filters: Sequence[object],
    default: int,
    maximum: int,
) -> tuple[Sequence[T], str]:
    """One page of in-memory items in ascending order of their unique `key`, and the next page's token.

    Keyed like the stored lists, so a page resumes after the last item shown even if the items changed
    in between (another replica's configuration, say).
    """
    limit = page_size(size, default=default, maximum=maximum)
    ordered = sorted(items, key=key)
    if token:
        after = _decode(token, filters)
        last = after[0] if len(after) == 1 else None
        if not isinstance(last, str) or not last:
            raise InvalidArgument("page_token", _NOT_OURS)
        ordered = [item for item in ordered if key(item) > last]
    page = ordered[:limit]
    return page, _encode([key(page[-1])], filters) if len(ordered) > limit else ""
