"""The shape of an API key's secret, `aib_<key_id>_<random>`, which the server and the gateway both read.

The key id in it is not secret (it names the key in lists, errors and logs); the random part is. The
server checks the whole secret (server.security.keys); the gateway only reads the id, to name the key
its access log line is for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

PREFIX = "aib_"
_SECRET = re.compile(r"aib_(k[0-9a-f]{16})_[A-Za-z0-9_-]{43}")


def key_id_of(secret: str) -> str | None:
    """The key id a secret names, or None if it is not shaped like one of ours."""
    match = _SECRET.fullmatch(secret)
    return match.group(1) if match else None


def presented_secret(pairs: Iterable[tuple[str, Any]] | None) -> str | None:
    """The secret in `authorization` (Bearer, or bare) or `x-api-key`, from gRPC metadata or HTTP headers."""
    given: dict[str, str] = {}
    for key, value in pairs or ():
        name = key.lower()
        if name in ("authorization", "x-api-key") and isinstance(value, str):
            given.setdefault(name, value)
    if "authorization" in given:
        scheme, _, rest = given["authorization"].strip().partition(" ")
        return rest.strip() if scheme.lower() == "bearer" else given["authorization"].strip()
    return given["x-api-key"].strip() if "x-api-key" in given else None
