"""Fixtures: the test-only API (compiled once per session), its servicer and a gateway in front of it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from gateway_testlib import ProtoApi, RunningLibrary, load_api, run_codegen, stage_protos, start_library

from gateway import GatewayOptions, create_app


@pytest.fixture(scope="session")
def dummy_api(tmp_path_factory: pytest.TempPathFactory) -> ProtoApi:
    base = tmp_path_factory.mktemp("dummy")
    root = stage_protos(base / "protos")
    return load_api(run_codegen(root, base / "gen"))


@pytest.fixture(scope="session")
def api_descriptor_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our own API's descriptor set with comments, fresh from proto/ (gen/ may predate it)."""
    from gateway_testlib import ROOT

    return run_codegen(ROOT / "proto", tmp_path_factory.mktemp("api") / "gen")


@pytest.fixture
async def library(dummy_api: ProtoApi) -> AsyncIterator[RunningLibrary]:
    server, running = await start_library(dummy_api)
    yield running
    await server.stop(0)


def dummy_options(api: ProtoApi, **overrides: Any) -> GatewayOptions:
    return GatewayOptions(files=(api.file(),), descriptor_set=api.descriptor_set, **overrides)


@pytest.fixture
async def client(aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi) -> Any:
    """A test client of a gateway over the test-only API (strict, default limits, no CORS)."""
    return await aiohttp_client(create_app(library.target, dummy_options(dummy_api)))
