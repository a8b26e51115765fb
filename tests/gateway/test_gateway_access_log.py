"""The gateway's access log: one JSON line per HTTP request, as the shared JSON formatter writes it.

Against the real server with keys (so a key id is there to log), through create_app.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from common.logs import JsonFormatter
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from tests.gateway.gateway_testlib import wait_for
from tests.security_testlib import ADMIN_KEY, SECRETS, secure_config

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = self.format(record)
        self.raw.append(text)
        self.lines.append(json.loads(text))


@pytest.fixture
def access() -> Iterator[_Lines]:
    logger = logging.getLogger("gateway.access")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
async def gw(aiohttp_client: Any) -> AsyncIterator[Any]:
    server = AIBattleServer(secure_config())
    await server.start()
    client = await aiohttp_client(
        create_app(server.grpc_target, GatewayOptions(descriptor_set=None)),
        server_kwargs={"handler_cancellation": True},
    )
    yield client
    await client.close()
    await server.stop(grace=0.5)


async def new_key(gw: Any) -> tuple[str, str]:
    resp = await gw.post("/api/v1/keys", json={"name": "access-log"}, headers=ADMIN)
    body = await resp.json()
    SECRETS.add(body["secret"])
    return body["key"]["key_id"], body["secret"]


def last(access: _Lines, route: str | None, status: int) -> dict[str, Any]:
    matching = [line for line in access.lines if (line["route"], line["status"]) == (route, status)]
    assert matching, access.lines
    return matching[-1]


async def test_one_line_per_request_with_route_status_ms_request_id_key_and_model(
    gw: Any, access: _Lines
) -> None:
    key_id, secret = await new_key(gw)
    resp = await gw.post(
        "/api/v1/completions",
        json={"model": "scripted-echo", "prompt": "hi"},
        headers={"Authorization": f"Bearer {secret}", "X-Request-Id": "req-access-1"},
    )
    assert resp.status == 200
    line = last(access, "/api/v1/completions", 200)
    assert line["logger"] == "gateway.access" and line["msg"] == "http"
    assert line["method"] == "POST"
    assert line["request_id"] == "req-access-1" == resp.headers["X-Request-Id"]
    assert (line["key_id"], line["credential"], line["model"]) == (key_id, "key", "scripted-echo")
    assert isinstance(line["ms"], float) and line["ms"] >= 0
    # The overhead the response's header told the client, on the line that joins the server's.
    assert line["overhead_ms"] == float(resp.headers["x-aibattle-overhead-ms"])
    assert not any(secret in raw for raw in access.raw)


async def test_the_route_is_the_template_never_the_raw_path(gw: Any, access: _Lines) -> None:
    body = {
        "models": [{"id": "scripted-echo", "role": "human"}, {"id": "scripted-echo", "role": "assistant"}]
    }
    created = await (await gw.post("/api/v1/conversations", json=body, headers=ADMIN)).json()
    conversation_id = created["conversation_id"]
    assert (await gw.get(f"/api/v1/conversations/{conversation_id}", headers=ADMIN)).status == 200
    line = last(access, "/api/v1/conversations/{conversation_id}", 200)
    # The admin key is not one of KeyService's keys: no key id to name, but a credential came.
    assert (line["key_id"], line["credential"], line["model"]) == (None, "other", None)
    assert not any(conversation_id in raw for raw in access.raw if '"route"' in raw)
    # Fixed endpoints by their template too; a path no route serves has none.
    assert (await gw.get("/v1/models/scripted-echo", headers=ADMIN)).status == 200
    last(access, "/v1/models/{model}", 200)
    assert (await gw.get("/api/v1/no-such-thing/42", headers=ADMIN)).status == 404
    assert last(access, None, 404)["method"] == "GET"
    assert not any("no-such-thing" in raw for raw in access.raw)


async def test_errors_compat_and_websockets_are_logged(gw: Any, access: _Lines) -> None:
    key_id, secret = await new_key(gw)
    # Refused for want of a key: the final status, no credential.
    assert (
        await gw.post("/api/v1/completions", json={"model": "scripted-echo", "prompt": "hi"})
    ).status == 401
    line = last(access, "/api/v1/completions", 401)
    assert (line["credential"], line["key_id"], line["model"]) == ("none", None, "scripted-echo")
    chat = {"model": "scripted-echo", "messages": [{"role": "user", "content": "hi"}]}
    resp = await gw.post("/v1/chat/completions", json=chat, headers={"X-API-Key": secret})
    assert resp.status == 200
    line = last(access, "/v1/chat/completions", 200)
    assert (line["key_id"], line["model"]) == (key_id, "scripted-echo")
    # A WebSocket's line comes when it closes: 101, with the key of its subprotocol offer.
    async with gw.ws_connect(
        "/api/v1/ws/completions?model=scripted-echo&prompt=hi",
        protocols=("aibattle.proto.v1", f"bearer.{secret}"),
    ) as ws:
        frames = [json.loads(m.data) async for m in ws]
    assert frames[-1]["result"]["is_final"] is True
    assert await wait_for(lambda: any(line["status"] == 101 for line in access.lines))
    line = last(access, "/api/v1/ws/completions", 101)
    assert (line["key_id"], line["model"]) == (key_id, "scripted-echo")
    assert not any(secret in raw for raw in access.raw)
