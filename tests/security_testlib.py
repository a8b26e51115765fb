"""What the security tests share: an admin key, servers that require keys, keys made through KeyService,
and the record of every secret the run handed out (tests/conftest.py scans the run's logs for them)."""

from __future__ import annotations

from typing import Any

import grpc

from aibattle.v1 import keys_pb2, keys_pb2_grpc
from server.config import Config
from tests.conftest import SCRIPTED_MODELS, make_config

ADMIN_KEY = "test-admin-key-0123456789abcdef"
#: Every secret this test run made or used; none may appear in any log line of the run.
SECRETS: set[str] = {ADMIN_KEY}

PRICED = {
    "id": "scripted-priced",
    "provider": "scripted",
    "capabilities": ["text", "conversation"],
    # Six words: a call with max_tokens=4 always produces exactly 4, so its cost is its reservation.
    "script": ["one two three four five six"],
    "chunk_delay_ms": 20,
    "pricing": {"input": 0.0, "output": 0.001},
}
MODELS: list[dict[str, Any]] = [*SCRIPTED_MODELS, PRICED]


def secure_config(**server: Any) -> Config:
    """The scripted models, behind keys (the admin key set)."""
    config = make_config(MODELS, **server)
    return config.model_copy(
        update={"security": config.security.model_copy(update={"admin_key": _secret(ADMIN_KEY)})}
    )


def _secret(value: str) -> Any:
    from pydantic import SecretStr

    return SecretStr(value)


def bearer(secret: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


ADMIN = bearer(ADMIN_KEY)


async def new_key(channel: grpc.aio.Channel, **fields: Any) -> tuple[keys_pb2.ApiKey, str]:
    """A key made by the admin through KeyService, and its secret (remembered for the log scan)."""
    stub = keys_pb2_grpc.KeyServiceStub(channel)
    fields.setdefault("name", "test")
    response = await stub.CreateKey(keys_pb2.CreateKeyRequest(**fields), metadata=ADMIN)
    SECRETS.add(response.secret)
    return response.key, response.secret
