"""KeyService: API keys created, listed and revoked by the admin key (the interceptor checks that)."""

from __future__ import annotations

import math
import time

import grpc
from google.protobuf import timestamp_pb2

from aibattle.v1 import keys_pb2, keys_pb2_grpc
from common.errors import InvalidArgument, NotFound
from server.pagination import keyset_page
from server.security import keys
from server.storage import KeyRow, KeyStore

MAX_NAME = 64
MAX_TIMESTAMP = 253402300799  # 9999-12-31T23:59:59Z, the last instant proto-JSON can write


def _timestamp(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    if seconds is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def key_proto(row: KeyRow) -> keys_pb2.ApiKey:
    return keys_pb2.ApiKey(
        key_id=row.key_id,
        name=row.name,
        allowed_models=row.allowed_models,
        rpm=row.rpm,
        tpm=row.tpm,
        max_concurrent_streams=row.max_concurrent_streams,
        budget_usd=row.budget_usd,
        expire_time=_timestamp(row.expire_time),
        created_at=_timestamp(row.created_at),
        revoked_at=_timestamp(row.revoked_at),
        spent_usd=row.spent_usd,
    )


class KeyServicer(keys_pb2_grpc.KeyServiceServicer):
    def __init__(self, keystore: KeyStore, *, model_ids: frozenset[str]) -> None:
        self._keys = keystore
        self._models = model_ids

    async def CreateKey(
        self, request: keys_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.CreateKeyResponse:
        now = time.time()
        self._validate(request, now)
        key_id = keys.new_key_id()
        secret = keys.new_secret(key_id)
        row = KeyRow(
            key_id=key_id,
            name=request.name,
            secret_hash=keys.hash_secret(secret),
            allowed_models=tuple(dict.fromkeys(request.allowed_models)),
            rpm=request.rpm,
            tpm=request.tpm,
            max_concurrent_streams=request.max_concurrent_streams,
            budget_usd=request.budget_usd,
            expire_time=request.expire_time.ToNanoseconds() / 1e9
            if request.HasField("expire_time")
            else None,
            created_at=now,
            revoked_at=None,
            spent_usd=0.0,
        )
        await self._keys.create_key(row)
        return keys_pb2.CreateKeyResponse(key=key_proto(row), secret=secret)

    def _validate(self, request: keys_pb2.CreateKeyRequest, now: float) -> None:
        if not request.name.strip():
            raise InvalidArgument("name", "is required")
        if len(request.name) > MAX_NAME or not request.name.isprintable():
            raise InvalidArgument("name", f"at most {MAX_NAME} printable characters")
        # Counts and signs (allowed_models, rpm, tpm, max_concurrent_streams, budget_usd >= 0) are the
        # schema's bounds, checked before the call reaches us.
        for i, model in enumerate(request.allowed_models):
            if model not in self._models:
                raise InvalidArgument(f"allowed_models[{i}]", f"{model!r} is not a configured model")
        if not math.isfinite(request.budget_usd):
            raise InvalidArgument("budget_usd", "must be a finite number (0 means no limit)")
        if request.HasField("expire_time"):
            if request.expire_time.ToNanoseconds() / 1e9 <= now:
                raise InvalidArgument("expire_time", "must be in the future")
            if request.expire_time.seconds > MAX_TIMESTAMP:
                raise InvalidArgument("expire_time", "must be before the year 10000")

    async def ListKeys(
        self, request: keys_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.ListKeysResponse:
        rows, next_token = await keyset_page(
            lambda after, limit: self._keys.list_keys(
                show_revoked=request.show_revoked, after=after, limit=limit
            ),
            lambda row: (row.created_at, row.key_id),
            size=request.page_size,
            token=request.page_token,
            filters=["ListKeys", request.show_revoked],
            default=50,
            maximum=1000,
        )
        return keys_pb2.ListKeysResponse(keys=[key_proto(r) for r in rows], next_page_token=next_token)

    async def RevokeKey(
        self, request: keys_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> keys_pb2.RevokeKeyResponse:
        if not request.key_id:
            raise InvalidArgument("key_id", "is required")
        row = await self._keys.revoke_key(request.key_id, at=time.time())
        if row is None:
            raise NotFound("key", request.key_id)
        return keys_pb2.RevokeKeyResponse(key=key_proto(row))
