"""API key secrets: made, hashed and checked.

A secret is `aib_<key_id>_<random>`: the key id makes the lookup one primary-key read, the random
part (256 bits) is what proves possession. Only SHA-256 of the whole secret is stored; a slow hash
(bcrypt, argon2) protects low-entropy passwords, not 256 random bits, and would cost every call.
Comparisons are constant-time (`hmac.compare_digest`), the admin key's too.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import TYPE_CHECKING

from common.api_keys import PREFIX as PREFIX  # the secret's shape is shared with the gateway
from common.api_keys import key_id_of as key_id_of
from common.errors import API_KEY_EXPIRED, API_KEY_REVOKED, Unauthenticated

if TYPE_CHECKING:
    from server.storage import KeyRow


def new_key_id() -> str:
    return f"k{secrets.token_hex(8)}"


def new_secret(key_id: str) -> str:
    return f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def same_secret(presented: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(presented), stored_hash)


def is_admin(presented: str, admin_key: str) -> bool:
    """Constant-time in the key's content and length (both sides hashed first)."""
    return bool(admin_key) and hmac.compare_digest(hash_secret(presented), hash_secret(admin_key))


def check_usable(row: KeyRow | None, key_id: str) -> None:
    """UNAUTHENTICATED unless the key still exists, is not revoked and has not expired."""
    if row is None or row.revoked_at is not None:
        raise Unauthenticated(API_KEY_REVOKED, f"API key {key_id} was revoked")
    if row.expire_time is not None and row.expire_time <= time.time():
        raise Unauthenticated(API_KEY_EXPIRED, f"API key {key_id} has expired")
