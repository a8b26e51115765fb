"""Fixtures: the test-only API (compiled once per session), its servicer and a gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config
from tests.gateway.embedding_testlib import embedding_api, embedding_server  # noqa: F401 - fixtures
from tests.gateway.gateway_testlib import (
    ROOT,
    ProtoApi,
    RunningLibrary,
    dummy_options,
    load_api,
    run_codegen,
    stage_protos,
    start_library,
)


@pytest.fixture(scope="session")
def dummy_api(tmp_path_factory: pytest.TempPathFactory) -> ProtoApi:
    base = tmp_path_factory.mktemp("dummy")
    root = stage_protos(base / "protos")
    return load_api(run_codegen(root, base / "gen"))


@pytest.fixture(scope="session")
def api_descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our own API's descriptor set with comments, fresh from proto/ (gen/ may predate it)."""
    return run_codegen(ROOT / "proto", tmp_path_factory.mktemp("api") / "gen")


CONFIG: dict[str, Any] = {
    "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
    "models": [
        {
            "id": "scripted-echo",
            "provider": "scripted",
            "capabilities": ["text"],
            "script": ["Hello there, friend.", "Second reply."],
        },
        {"id": "scripted-fail", "provider": "scripted", "script": ["one two three"], "error_after_chunks": 1},
        {"id": "scripted-peer", "provider": "scripted", "script": ["Peer reply."]},
        {
            "id": "scripted-slow",
            "provider": "scripted",
            "script": [" ".join(f"word{i}" for i in range(100))],
            "chunk_delay_ms": 20,
        },
    ],
}


@pytest.fixture
async def aibattle() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(Config.from_dict(CONFIG))
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture(params=["in-process", "network"])
def dispatch(request: pytest.FixtureRequest) -> str:
    """How the gateway reaches the server (the parity of issue 18): "in-process", its handlers called
    through its interceptor chain, as `python -m server` runs its gateway; "network", over gRPC, as a
    standalone gateway in front of a remote server. Every test of the `api` fixture runs both ways,
    but those marked GATEWAY_ANSWERS."""
    return str(request.param)


GATEWAY_ANSWERS = pytest.mark.parametrize("dispatch", ["in-process"])
"""For a test of `api` whose every request the gateway answers itself (an unknown route, a wrong method, a
body or parameter it refuses before any call): the server is never called, so how the gateway would reach
it cannot change an answer, and the test runs once, in-process. `api` checks that no call reached the
server, so the mark cannot outlive its reason."""


def _gateway_answers(node: pytest.Item) -> bool:
    return any(mark.args[0] == "dispatch" for mark in node.iter_markers("parametrize"))


@pytest.fixture
async def api(
    request: pytest.FixtureRequest,
    aiohttp_client: Any,
    aibattle: AIBattleServer,
    api_descriptor_set: Path,
    dispatch: str,
) -> AsyncIterator[Any]:
    # handler_cancellation as start_gateway runs it: a client that leaves cancels its handler.
    dispatcher = aibattle.dispatcher() if dispatch == "in-process" else None
    client = await aiohttp_client(
        create_app(
            aibattle.grpc_target, GatewayOptions(descriptor_set=api_descriptor_set), dispatcher=dispatcher
        ),
        server_kwargs={"handler_cancellation": True},
    )
    if dispatcher is None or not _gateway_answers(request.node):
        yield client
        return
    called: list[str] = []
    handler = dispatcher.handler

    async def recorded(method: str, metadata: Any) -> Any:
        called.append(method)
        return await handler(method, metadata)

    dispatcher.handler = recorded  # type: ignore[method-assign]  # this test's server only
    yield client
    assert not called, f"marked GATEWAY_ANSWERS, yet the server was called: {called}"


@pytest.fixture
async def library(dummy_api: ProtoApi) -> AsyncIterator[RunningLibrary]:
    server, running = await start_library(dummy_api)
    yield running
    await server.stop(0)


@pytest.fixture
async def client(aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi) -> Any:
    """A test client of a gateway over the test-only API (strict, default limits, no CORS)."""
    return await aiohttp_client(create_app(library.target, dummy_options(dummy_api)))
