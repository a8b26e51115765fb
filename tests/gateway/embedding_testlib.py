"""A server with the local embedding model (SmolLM2 by llama.cpp, embedding=True) and a gateway in front
of it, for the tests of every embeddings endpoint (/api/v1/embeddings, OpenAI's /v1/embeddings,
Ollama's /api/embed): tests/gateway/conftest.py imports the fixtures `embedding_server` and
`embedding_api` (the gateway, both ways of `dispatch`). The config's [[models]] entry is all it takes:
provider "local", capabilities ["embedding"].
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config

EMBED = "smollm2-embed"
N_EMBD = 576  # SmolLM2-135M's hidden size: the vectors' length
CONFIG: dict[str, Any] = {
    "server": {"grpc_addr": "127.0.0.1:0", "http_addr": "", "database": ":memory:"},
    "models": [
        {"id": "smollm2-135m", "provider": "local"},
        {"id": EMBED, "provider": "local", "capabilities": ["embedding"], "pricing": {"input": 0.001}},
    ],
}


@pytest.fixture
async def embedding_server() -> AsyncIterator[AIBattleServer]:
    server = AIBattleServer(Config.from_dict(CONFIG))
    await server.start()
    yield server
    await server.stop(grace=0.5)


@pytest.fixture
async def embedding_api(
    aiohttp_client: Any, embedding_server: AIBattleServer, api_descriptor_set: Path, dispatch: str
) -> Any:
    """The gateway over `embedding_server`, in-process and over the network (the `dispatch` fixture)."""
    dispatcher = embedding_server.dispatcher() if dispatch == "in-process" else None
    return await aiohttp_client(
        create_app(
            embedding_server.grpc_target,
            GatewayOptions(descriptor_set=api_descriptor_set),
            dispatcher=dispatcher,
        ),
        server_kwargs={"handler_cancellation": True},
    )
