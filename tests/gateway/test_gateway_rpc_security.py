"""API keys and their limits over Connect and gRPC-Web, as over REST (tests/gateway/test_gateway_auth.py)
and gRPC (tests/server/test_keys.py): a real server that requires keys, a gateway in front of it (over
gRPC, and in-process), and requests built by hand (tests/gateway/web_rpc_testlib.py).

Every cell — Connect unary (JSON, binary, GET), Connect streams (JSON, binary), gRPC-Web (binary, text; unary
and streaming RPCs) — answers a missing or bad key UNAUTHENTICATED, a model the key may not use and the
admin-only KeyService PERMISSION_DENIED, a rate over the key's limit RESOURCE_EXHAUSTED with Retry-After
and RetryInfo, a spent budget RESOURCE_EXHAUSTED BUDGET_EXCEEDED without them; in the protocol's own
words (Connect unary: the mapped HTTP status; Connect streams and gRPC-Web: 200 with the status in the
end-of-stream message or the trailers). No secret appears in any answer or log line. Streams past the
server's `max_concurrent_streams` are RESOURCE_EXHAUSTED SERVER_BUSY with when to retry, and a stream
the client leaves ends upstream, freeing its place.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message

from aibattle.v1 import completions_pb2, keys_pb2, models_pb2
from common.errors import SERVER_BUSY
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from tests.conftest import RECORDER
from tests.gateway.test_gateway_rpc import envelope
from tests.gateway.web_rpc_testlib import Outcome, call, decode
from tests.security_testlib import ADMIN_KEY, SECRETS, secure_config
from tests.server.test_admission import hold_streams, until

UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 16, 7, 8
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

COMPLETIONS = completions_pb2.DESCRIPTOR.services_by_name["CompletionService"]
MODELS = models_pb2.DESCRIPTOR.services_by_name["ModelService"]
KEYS = keys_pb2.DESCRIPTOR.services_by_name["KeyService"]


@dataclass(frozen=True)
class Cell:
    """A protocol and the shape of the RPC asked over it."""

    protocol: str
    stream: bool

    def __str__(self) -> str:
        return f"{self.protocol}-{'stream' if self.stream else 'unary'}"

    def read(self) -> tuple[MethodDescriptor, Message]:
        """A call any valid key may make."""
        if self.stream:
            return self.completion("scripted-echo")
        return MODELS.methods_by_name["ListModels"], models_pb2.ListModelsRequest()

    def completion(self, model: str, **fields: Any) -> tuple[MethodDescriptor, Message]:
        """A call that uses (and pays for) `model`: a Connect GET can only look it up."""
        if self.protocol == "connect-get":
            return MODELS.methods_by_name["GetModel"], models_pb2.GetModelRequest(model_id=model)
        if self.stream:
            request: Message = completions_pb2.StreamCompletionRequest(model=model, prompt="hi", **fields)
            return COMPLETIONS.methods_by_name["StreamCompletion"], request
        request = completions_pb2.CreateCompletionRequest(model=model, prompt="hi", **fields)
        return COMPLETIONS.methods_by_name["CreateCompletion"], request


CELLS = [
    Cell(protocol, stream)
    for protocol in ("connect", "connect-proto", "connect-get", "grpc-web", "grpc-web-text")
    for stream in (False, True)
    if not (protocol == "connect-get" and stream)
]
UNARY_CELLS = [cell for cell in CELLS if not cell.stream]


@pytest.fixture
async def server() -> AsyncIterator[AIBattleServer]:
    srv = AIBattleServer(secure_config())
    await srv.start()
    yield srv
    await srv.stop(grace=0.5)


@pytest.fixture(params=["network", "in-process"])
async def gw(request: pytest.FixtureRequest, aiohttp_client: Any, server: AIBattleServer) -> Any:
    dispatcher = server.dispatcher() if request.param == "in-process" else None
    options = GatewayOptions()
    return await aiohttp_client(
        create_app(server.grpc_target, options, dispatcher=dispatcher),
        server_kwargs={"handler_cancellation": True},
    )


@pytest.fixture(autouse=True)
def no_secret_in_this_tests_logs() -> Iterator[None]:
    """The run's log scan (tests/conftest.py), for this test's lines alone: a failure names the test."""
    start = len(RECORDER.lines)
    yield
    leaks = [line for line in RECORDER.lines[start:] for secret in SECRETS if secret in line]
    assert not leaks, f"secrets in log lines: {[line[:200] for line in leaks[:3]]}"


async def make_key(gw: Any, **fields: Any) -> str:
    """A key made by the admin over Connect, and its secret (the one answer that may hold one)."""
    resp = await gw.post("/aibattle.v1.KeyService/CreateKey", json={"name": "rpc", **fields}, headers=ADMIN)
    assert resp.status == 200, await resp.text()
    secret = str((await resp.json())["secret"])
    SECRETS.add(secret)
    return secret


async def ask(gw: Any, cell: Cell, rpc: tuple[MethodDescriptor, Message], headers: dict[str, str]) -> Outcome:
    """The call's answer, which must hold no secret of the run in its headers or body."""
    method, request = rpc
    outcome = await call(gw, cell.protocol, method, request, headers)
    shown = json.dumps(outcome.headers) + outcome.body.decode("latin-1")
    assert not [secret for secret in SECRETS if secret in shown], f"{cell} {method.name} answers a secret"
    return outcome


def refused(outcome: Outcome, code: int, reason: str, cell: Cell) -> None:
    """A refusal in the protocol's words, before any message."""
    assert (outcome.code, outcome.reason) == (code, reason), (str(cell), outcome)
    assert outcome.messages == [], "a refused call sends nothing first"
    assert outcome.message and "Traceback" not in outcome.message


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.mark.parametrize("cell", CELLS, ids=str)
async def test_no_key_or_a_bad_one_is_unauthenticated(gw: Any, cell: Cell) -> None:
    secret = await make_key(gw)
    wrong = secret[:-4] + ("0000" if not secret.endswith("0000") else "1111")
    SECRETS.update({wrong, "not-a-key-at-all"})
    revoked = await make_key(gw)
    key_id = revoked.split("_")[1]
    resp = await gw.post("/aibattle.v1.KeyService/RevokeKey", json={"keyId": key_id}, headers=ADMIN)
    assert resp.status == 200, await resp.text()

    for headers, reason in (
        ({}, "API_KEY_MISSING"),
        (bearer(wrong), "API_KEY_INVALID"),
        (bearer("not-a-key-at-all"), "API_KEY_INVALID"),
        ({"X-API-Key": wrong}, "API_KEY_INVALID"),
        ({"Authorization": f"Basic {wrong}"}, "API_KEY_INVALID"),
        (bearer(revoked), "API_KEY_REVOKED"),
    ):
        outcome = await ask(gw, cell, cell.read(), headers)
        refused(outcome, UNAUTHENTICATED, reason, cell)
        # As REST says it (Connect unary's 401 is checked by the testlib against Connect's table).
        assert outcome.headers["WWW-Authenticate"].startswith("Bearer"), outcome.headers
    for headers in (bearer(secret), {"X-API-Key": secret}, {"Authorization": secret}):  # bare, as REST
        outcome = await ask(gw, cell, cell.read(), headers)
        assert outcome.code == 0 and outcome.messages, (str(cell), outcome)


@pytest.mark.parametrize("cell", CELLS, ids=str)
async def test_a_model_the_key_may_not_use_is_permission_denied(gw: Any, cell: Cell) -> None:
    secret = await make_key(gw, allowedModels=["scripted-echo"])
    for headers in (bearer(secret), {"X-API-Key": secret}):
        outcome = await ask(gw, cell, cell.completion("scripted-slow", max_tokens=2), headers)
        refused(outcome, PERMISSION_DENIED, "MODEL_NOT_ALLOWED", cell)
        assert "'scripted-slow'" in outcome.message
        allowed = await ask(gw, cell, cell.completion("scripted-echo", max_tokens=2), headers)
        assert allowed.code == 0 and allowed.messages, (str(cell), allowed)
    if not cell.stream:
        listing = await ask(gw, cell, cell.read(), bearer(secret))
        [models] = decode(listing, cell.protocol, models_pb2.ListModelsResponse)
        assert isinstance(models, models_pb2.ListModelsResponse)
        assert [m.id for m in models.models] == ["scripted-echo"]


@pytest.mark.parametrize("cell", UNARY_CELLS, ids=str)
async def test_key_service_is_the_admins_alone(gw: Any, cell: Cell) -> None:
    secret = await make_key(gw)
    list_keys = (KEYS.methods_by_name["ListKeys"], keys_pb2.ListKeysRequest())
    for headers in (bearer(secret), {"X-API-Key": secret}):
        refused(await ask(gw, cell, list_keys, headers), PERMISSION_DENIED, "ADMIN_KEY_REQUIRED", cell)
    refused(await ask(gw, cell, list_keys, {}), UNAUTHENTICATED, "API_KEY_MISSING", cell)
    listing = await ask(gw, cell, list_keys, ADMIN)  # lists the keys, never their secrets (ask checks)
    [keys] = decode(listing, cell.protocol, keys_pb2.ListKeysResponse)
    assert isinstance(keys, keys_pb2.ListKeysResponse)
    assert [k.key_id for k in keys.keys] == [secret.split("_")[1]]
    if cell.protocol != "connect-get":  # CreateKey has side effects: no GET
        create = (KEYS.methods_by_name["CreateKey"], keys_pb2.CreateKeyRequest(name="mine"))
        refused(await ask(gw, cell, create, bearer(secret)), PERMISSION_DENIED, "ADMIN_KEY_REQUIRED", cell)


@pytest.mark.parametrize("cell", CELLS, ids=str)
async def test_a_rate_over_the_keys_limit_is_resource_exhausted_with_when_to_retry(
    gw: Any, cell: Cell
) -> None:
    secret = await make_key(gw, rpm=1)
    for _ in range(2):  # the 2x burst
        outcome = await ask(gw, cell, cell.read(), bearer(secret))
        assert outcome.code == 0, (str(cell), outcome)
    limited = await ask(gw, cell, cell.read(), {"X-API-Key": secret})
    refused(limited, RESOURCE_EXHAUSTED, "RATE_LIMITED", cell)
    assert limited.retry_delay() == 60
    assert limited.headers["Retry-After"] == "60"


@pytest.mark.parametrize("cell", [cell for cell in CELLS if cell.protocol != "connect-get"], ids=str)
async def test_a_spent_budget_is_resource_exhausted_budget_exceeded(gw: Any, cell: Cell) -> None:
    secret = await make_key(gw, budgetUsd=0.004)
    first = await ask(gw, cell, cell.completion("scripted-priced", max_tokens=4), bearer(secret))
    assert first.code == 0 and first.messages, (str(cell), first)
    spent = await ask(gw, cell, cell.completion("scripted-priced", max_tokens=4), bearer(secret))
    refused(spent, RESOURCE_EXHAUSTED, "BUDGET_EXCEEDED", cell)
    assert "Retry-After" not in spent.headers and spent.retry_delay() is None


# ---- the server's stream limit, and streams a client leaves

STREAM_CELLS = [cell for cell in CELLS if cell.stream]
LIMIT = 2


@pytest.fixture(params=["network", "in-process"])
async def busy_gw(request: pytest.FixtureRequest, aiohttp_client: Any) -> AsyncIterator[tuple[Any, Any]]:
    """A gateway before a server with keys that holds at most LIMIT response streams."""
    srv = AIBattleServer(secure_config(max_concurrent_streams=LIMIT))
    await srv.start()
    dispatcher = srv.dispatcher() if request.param == "in-process" else None
    gw = await aiohttp_client(
        create_app(srv.grpc_target, GatewayOptions(), dispatcher=dispatcher),
        server_kwargs={"handler_cancellation": True},
    )
    yield gw, srv
    await srv.stop(grace=0.5)


@pytest.mark.parametrize("cell", STREAM_CELLS, ids=str)
async def test_streams_past_the_servers_limit_are_resource_exhausted_with_when_to_retry(
    busy_gw: tuple[Any, Any], cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, srv = busy_gw
    secret = await make_key(gw)
    gate = hold_streams(monkeypatch)
    held = [asyncio.create_task(ask(gw, cell, cell.read(), bearer(secret))) for _ in range(LIMIT)]
    await until(lambda: srv.admission.open == LIMIT)
    busy = await ask(gw, cell, cell.read(), bearer(secret))
    refused(busy, RESOURCE_EXHAUSTED, SERVER_BUSY.name, cell)
    delay = busy.retry_delay()
    assert delay is not None and busy.headers["Retry-After"] == str(math.ceil(delay))
    gate.set()
    for outcome in await asyncio.gather(*held):
        assert outcome.code == 0 and outcome.messages, (str(cell), outcome)


@pytest.mark.parametrize(
    "content_type", ["application/connect+json", "application/grpc-web+proto", "application/grpc-web-text"]
)
async def test_a_stream_the_client_leaves_frees_its_place(
    busy_gw: tuple[Any, Any], content_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A browser that aborts its fetch ends the call upstream: the server's count of open streams drops."""
    gw, srv = busy_gw
    secret = await make_key(gw)
    hold_streams(monkeypatch)  # never set: every stream waits after its first chunk
    request = completions_pb2.StreamCompletionRequest(model="scripted-echo", prompt="hi")
    data = (
        json_format.MessageToJson(request).encode() if "json" in content_type else request.SerializeToString()
    )
    body = envelope(data)
    if "text" in content_type:
        body = base64.b64encode(body)
    for _ in range(LIMIT + 1):  # more than the limit, one after another: each left frees its place
        resp = await gw.post(
            "/aibattle.v1.CompletionService/StreamCompletion",
            data=body,
            headers={**bearer(secret), "Content-Type": content_type},
        )
        assert resp.status == 200
        assert await resp.content.readany(), "the first message arrives"
        assert srv.admission.open == 1
        resp.close()
        await until(lambda: srv.admission.open == 0)
