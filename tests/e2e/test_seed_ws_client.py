"""Seed 000 §4.1.1's JavaScript WebSocket client, verbatim, run by Node against the real gateway.

The gateway (start_gateway, a real TCP port) fronts the scripted ConversationService of
tests/gateway/collab_servicer.py (to check what the seed's frames become), and the real server.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway import GatewayOptions, start_gateway
from tests.gateway.collab_servicer import AI_MODEL, AI_REPLY, RunningCollab, start_collab

CLIENT = Path(__file__).with_name("seed_ws_client.mjs")
BEGIN = "// ---- BEGIN seed 000 §4.1.1 (verbatim) ----\n"
END = "// ---- END seed 000 §4.1.1 ----"
#: sha256 of the seed's §4.1.1 code block, copied from /work/shared/seeds/000_*.txt.
SEED_CODE_SHA256 = "ab5c125c2b196d4d560c5b455c3237423b5f3daaadbc6bde0b59bf5222d2e4b8"
QUESTION = "What about Shor's algorithm specifically?"

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node 20+")


@pytest.fixture
async def collab() -> AsyncIterator[RunningCollab]:
    server, running = await start_collab()
    yield running
    await server.stop(0)


async def run_seed_client(port: int, conversation_id: str) -> str:
    """Run the verbatim client under Node against the gateway on `port`; its stdout (it must exit 0)."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",
        "--no-warnings",
        str(CLIENT),
        f"ws://127.0.0.1:{port}",
        conversation_id,
        QUESTION,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (stdout.decode(), stderr.decode())
    return stdout.decode()


def test_the_client_is_the_seed_code_verbatim() -> None:
    text = CLIENT.read_text()
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    assert hashlib.sha256(block.encode()).hexdigest() == SEED_CODE_SHA256


async def test_seed_client_prints_the_ai_reply(collab: RunningCollab) -> None:
    handle = await start_gateway(
        grpc_target=collab.target, host="127.0.0.1", port=0, options=GatewayOptions(descriptor_set=None)
    )
    try:
        out = await run_seed_client(handle.port, "conv-seed")
    finally:
        await handle.close()
    lines = out.splitlines()
    assert lines[0] == "Connected to conversation"
    assert f"New message from human (): {QUESTION}" in lines
    assert lines[-1] == f"New message from assistant ({AI_MODEL}): {AI_REPLY}"
    # What the seed's frames became: a token in the call's metadata, a human turn.
    assert collab.state.metadata[-1]["authorization"] == "Bearer your-auth-token"
    said = collab.state.converse_requests[1]
    assert (said.message.content, said.message.role) == (QUESTION, "human")


async def test_seed_client_against_the_real_conversation_service() -> None:
    """The same verbatim client, against the real server: a human-ai conversation waiting for the human."""
    import grpc

    from aibattle.v1 import conversations_pb2, conversations_pb2_grpc
    from tests.server.providers.fake_upstream import serving

    models = [{"id": "scripted-echo", "provider": "scripted", "script": ["Shor factors in polynomial time."]}]
    async with serving(models) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = conversations_pb2_grpc.ConversationServiceStub(channel)
            created = await stub.CreateConversation(
                conversations_pb2.CreateConversationRequest(
                    models=[
                        conversations_pb2.Participant(id="scripted-echo", role="human"),
                        conversations_pb2.Participant(id="scripted-echo", role="assistant"),
                    ],
                    mode="human-ai",
                    rounds=1,
                )
            )
        conversation_id = created.conversation.conversation_id
        handle = await start_gateway(
            grpc_target=server.grpc_target,
            host="127.0.0.1",
            port=0,
            options=GatewayOptions(descriptor_set=None),
        )
        try:
            out = await run_seed_client(handle.port, conversation_id)
        finally:
            await handle.close()
    assert (
        out.splitlines()[-1] == "New message from assistant (scripted-echo): Shor factors in polynomial time."
    )


async def test_seed_client_prints_a_tool_use() -> None:
    """Seed 000's `tool_use` case: the scripted assistant calls a tool on its turn, and the verbatim
    client prints the TOOL_USE event's `data.model` and `data.tool`, then the message."""
    import grpc

    from aibattle.v1 import common_pb2, conversations_pb2, conversations_pb2_grpc
    from tests.server.providers.fake_upstream import serving

    models = [
        {"id": "scripted-echo", "provider": "scripted", "script": ["Unused: people speak for themselves."]},
        {
            "id": "scripted-tools",
            "provider": "scripted",
            "script": ['Let me check.\ntool:web_search {"query": "Shor\'s algorithm"}'],
        },
    ]
    search = common_pb2.Tool(name="web_search", description="Search the web")
    search.parameters.update({"type": "object", "properties": {"query": {"type": "string"}}})
    async with serving(models) as server:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            stub = conversations_pb2_grpc.ConversationServiceStub(channel)
            created = await stub.CreateConversation(
                conversations_pb2.CreateConversationRequest(
                    models=[
                        conversations_pb2.Participant(id="scripted-echo", role="human"),
                        conversations_pb2.Participant(id="scripted-tools", role="assistant"),
                    ],
                    mode="human-ai",
                    rounds=1,
                    tools=[search],
                )
            )
        conversation_id = created.conversation.conversation_id
        handle = await start_gateway(
            grpc_target=server.grpc_target,
            host="127.0.0.1",
            port=0,
            options=GatewayOptions(descriptor_set=None),
        )
        try:
            out = await run_seed_client(handle.port, conversation_id)
        finally:
            await handle.close()
    lines = out.splitlines()
    assert lines[-2:] == [
        "scripted-tools is using tool: web_search",
        "New message from assistant (scripted-tools): Let me check.",
    ]
