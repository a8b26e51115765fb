"""The README's WebSocket snippet (a reasoning session followed in the flat dialect, a conversation talked
to), as written, run by Node against the real server and gateway.

The snippet is read from README.md at test time, so what runs is what the README says. The reasoning
socket offers only `aibattle.flat.v1` and sends nothing: it must receive the session's events and close
1000, on a server without keys, which is what the README's examples run (`make run`).
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
from pathlib import Path

import grpc
import pytest

from aibattle.v1 import conversations_pb2, conversations_pb2_grpc, reasoning_pb2, reasoning_pb2_grpc
from gateway import GatewayOptions, start_gateway
from tests.e2e.process import served
from tests.postgres_testlib import postgres_server
from tests.server.providers.fake_upstream import serving

README = Path(__file__).parents[2] / "README.md"
HARNESS = Path(__file__).with_name("readme_ws_snippet.mjs")
INTRO = "following a reasoning session and talking in a conversation:"
AI_REPLY = "Shor factors in polynomial time."
MODELS = [
    {
        "id": "scripted-echo",
        "provider": "scripted",
        "capabilities": ["text", "conversation"],
        "script": [AI_REPLY],
    }
]

__all__ = ["postgres_server"]  # a fixture: `served` runs 2 workers on it

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node 20+")


def readme_snippet() -> str:
    """The ```js block after the README's sentence introducing it."""
    text = README.read_text()
    assert INTRO in text, "the README no longer introduces the WebSocket snippet this test runs"
    block = re.search(r"```js\n(.*?)```", text.split(INTRO, 1)[1], re.DOTALL)
    assert block is not None
    return block.group(1)


def test_the_snippet_is_the_flat_reasoning_socket_without_a_frame() -> None:
    snippet = readme_snippet()
    assert "['aibattle.flat.v1']" in snippet
    assert "reasoning.send" not in snippet and "reasoning.onopen" not in snippet


async def run_snippet(tmp_path: Path, port: int, **bindings: str) -> str:
    snippet = tmp_path / "snippet.js"
    snippet.write_text(readme_snippet())
    proc = await asyncio.create_subprocess_exec(
        "node",
        "--experimental-websocket",
        "--no-warnings",
        str(HARNESS),
        str(snippet),
        f"ws://127.0.0.1:{port}",
        f"^scripted-echo: {re.escape(AI_REPLY)}$",
        "1",  # the reasoning socket closes; the conversation's stays open for more turns
        *(f"{name}={value}" for name, value in bindings.items()),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, (stdout.decode(), stderr.decode())
    return stdout.decode()


async def test_readme_websocket_snippet_as_written(tmp_path: Path) -> None:
    async with serving(MODELS) as server:
        handle = await start_gateway(
            grpc_target=server.grpc_target,
            host="127.0.0.1",
            port=0,
            options=GatewayOptions(descriptor_set=None),
        )
        try:
            out = await create_and_run_snippet(tmp_path, server.grpc_target, handle.url)
        finally:
            await handle.close()
    check_output(out)


def test_readme_websocket_snippet_against_two_workers(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """The same against `--workers 2` on PostgreSQL: the session and the conversation made over one gRPC
    connection, the snippet's sockets on connections of their own, to either worker."""
    # MODELS, as TOML
    config = (
        '[[models]]\nid = "scripted-echo"\nprovider = "scripted"\ncapabilities = ["text", "conversation"]\n'
        f"script = [{json.dumps(AI_REPLY)}]\n"
    )
    with served("2 workers", request, config, tmp_path, AIBATTLE_HTTP_ADDR="127.0.0.1:0") as running:
        # A synchronous test: the throwaway database has an event loop of its own.
        out = asyncio.run(create_and_run_snippet(tmp_path, running.grpc_target, running.http_url))
    check_output(out)


async def create_and_run_snippet(tmp_path: Path, grpc_target: str, http_url: str) -> str:
    """A reasoning session and a conversation made over gRPC, then the snippet run on them."""
    async with grpc.aio.insecure_channel(grpc_target) as channel:
        reasoning = await reasoning_pb2_grpc.ReasoningServiceStub(channel).CreateReasoning(
            reasoning_pb2.CreateReasoningRequest(
                primary_model="scripted-echo", prompt="Is P = NP?", max_iterations=1, wait=True
            )
        )
        conversation = await conversations_pb2_grpc.ConversationServiceStub(channel).CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=[
                    conversations_pb2.Participant(id="scripted-echo", role="human"),
                    conversations_pb2.Participant(id="scripted-echo", role="assistant"),
                ],
                mode="human-ai",
                rounds=1,
            )
        )
    return await run_snippet(
        tmp_path,
        int(http_url.rsplit(":", 1)[1]),
        reasoningId=reasoning.reasoning.reasoning_id,
        conversationId=conversation.conversation.conversation_id,
        apiKey="sk-unused-on-an-open-server",
    )


def check_output(out: str) -> None:
    lines = out.splitlines()
    # The reasoning socket: `sequence type model content` per event, from 1, ending with the completion.
    events = [line for line in lines if re.match(r"^\d+ ", line)]
    assert [int(line.split(" ")[0]) for line in events] == list(range(1, len(events) + 1))
    assert events[0].startswith("1 status_changed")
    assert any(line.startswith(f"{i} new_iteration scripted-echo ") for i, line in enumerate(events, 1))
    assert events[-1].split(" ")[1] == "completion"
    assert "closed 1000" in lines
    # The conversation: the human turn, then the model's reply (before or after the other socket's close:
    # the two sockets may be served by two workers).
    talk = [line for line in lines if line.startswith("scripted-echo: ")]
    assert talk == ["scripted-echo: Go on.", f"scripted-echo: {AI_REPLY}"]
