"""The TypeScript SDK (sdk/typescript) against a live server, through Node's own test runner.

The SDK is built once (tsc, `npm run build -w sdk/typescript`); each test starts the real server with keys
and its HTTP gateway on a free port, then runs one of sdk/typescript/test/*.test.mjs with `node --test`,
which reads the gateway's URL and the keys from its environment. A TCP proxy sits in front of the gateway
(tests/sdk/proxy.py): a Node test cuts its connections mid-stream by POSTing to a control endpoint here,
to prove that subscriptions resume from their last sequence. The README's example runs as written.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from gateway import GatewayOptions, start_gateway
from server.app import AIBattleServer
from tests.conftest import make_config
from tests.sdk.proxy import Proxy
from tests.security_testlib import MODELS as SECURE_MODELS
from tests.security_testlib import new_key, secure_config
from tests.server.providers.fake_upstream import start_fake
from tests.server.providers.test_ollama import final, line, stream_reply, token

ROOT = Path(__file__).resolve().parents[2]
SDK = ROOT / "sdk" / "typescript"
README = SDK / "README.md"
ECHO_REPLY = "Hello there, friend. This is a scripted reply."
ANALYST_REPLY = "No abnormalities are visible in this scan."
THINKER_REPLY = "The upper left lobe."
MODELS: list[dict[str, Any]] = [
    *SECURE_MODELS,
    {
        # Slow enough that a connection cut after its first words lands mid-turn.
        "id": "scripted-talker",
        "provider": "scripted",
        "capabilities": ["text", "conversation"],
        "script": [" ".join(f"w{i}" for i in range(40))],
        "chunk_delay_ms": 30,
    },
    {
        "id": "scripted-tools",
        "provider": "scripted",
        "capabilities": ["text", "conversation"],
        "script": ['Let me look that up.\ntool:web_search {"query": "MRI artifacts"}'],
    },
    # Seed 000 §7.2's seats, renamed: 'ollama-gemma3-1b' (the human's) and 'claude-3-sonnet', which is
    # given the image the seed attaches, so it must see images.
    {
        "id": "scripted-human",
        "provider": "scripted",
        "capabilities": ["text", "conversation"],
        "script": ["People speak for this seat."],
    },
    {
        "id": "scripted-analyst",
        "provider": "scripted",
        "capabilities": ["text", "conversation", "image"],
        "script": [ANALYST_REPLY],
    },
]

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None, reason="needs Node 20+ and npm"
)


def build_inputs_digest() -> str:
    """sha256 of everything tsc's output depends on: the sources, the configuration, the locked packages."""
    digest = hashlib.sha256()
    configs = [SDK / "tsconfig.json", SDK / "package.json", ROOT / "package-lock.json"]
    inputs = [*(SDK / "src").rglob("*"), *configs]
    for path in sorted(p for p in inputs if p.is_file()):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="session")
def sdk_built() -> Path:
    """dist/ as tsc builds it from the current sources (strict: a type error fails every test here).

    Built under a lock, and only when the inputs changed since the last build (a stamp in dist/): two
    test processes never write dist/ while the other's Node reads it, and a rerun skips tsc."""
    dist = SDK / "dist"
    stamp = dist / ".inputs-sha256"
    (ROOT / "build").mkdir(exist_ok=True)
    with (ROOT / "build" / "ts-sdk-build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        digest = build_inputs_digest()
        if stamp.exists() and stamp.read_text() == digest:
            return dist
        shutil.rmtree(dist, ignore_errors=True)  # no output left of a source that is gone
        result = subprocess.run(
            ["npm", "run", "build", "-w", "sdk/typescript"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        stamp.write_text(digest)
    return dist


@dataclass
class Live:
    env: dict[str, str]
    proxy: Proxy


def thinker(base_url: str) -> dict[str, Any]:
    """An Ollama model (a fake Ollama server speaking /api/chat's NDJSON) that thinks before it answers:
    scripted models cannot think, and onThinking deserves a live test."""
    return {
        "id": "ollama-thinker",
        "provider": "ollama",
        "upstream_model": "qwen3:0.6b",
        "base_url": base_url,
        "capabilities": ["text", "conversation"],
        "upstream": {"retries": 0, "backoff_seconds": 0.0},
    }


@pytest.fixture
async def live(sdk_built: Path, aiohttp_server: Any) -> AsyncIterator[Live]:
    """The server with keys (and a fake Ollama server behind one model), its gateway, a proxy in front of
    it, and four keys made by the admin."""
    ollama, ollama_url = await start_fake(aiohttp_server)
    thought = [token("", "Which"), token("", " lobe?")]
    ollama.replies = [stream_reply(*thought, token(THINKER_REPLY), line(final()))]
    models = make_config([*MODELS, thinker(ollama_url)]).models
    config = secure_config().model_copy(update={"models": models})
    server = AIBattleServer(config)
    await server.start()
    gateway = await start_gateway(
        grpc_target=server.grpc_target,
        host="127.0.0.1",
        port=0,
        options=GatewayOptions(),
        dispatcher=server.dispatcher(),
    )
    proxy = Proxy(f"127.0.0.1:{gateway.port}")

    async def drop(_: web.Request) -> web.Response:
        return web.json_response({"dropped": proxy.drop()})

    control = web.Application()
    control.router.add_post("/drop", drop)
    runner = web.AppRunner(control, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    control_port = runner.addresses[0][1]
    try:
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            _, key = await new_key(channel, name="ts-main")
            _, other = await new_key(channel, name="ts-other")
            _, limited = await new_key(channel, name="ts-limited", rpm=1)
            _, narrow = await new_key(channel, name="ts-narrow", allowed_models=["scripted-echo"])
        yield Live(
            env={
                "AIBATTLE_URL": gateway.url,
                "AIBATTLE_PROXY_URL": f"http://{proxy.target}",
                "AIBATTLE_CONTROL_URL": f"http://127.0.0.1:{control_port}",
                "AIBATTLE_API_KEY": key,
                "AIBATTLE_OTHER_KEY": other,
                "AIBATTLE_LIMITED_KEY": limited,
                "AIBATTLE_NARROW_KEY": narrow,
                "AIBATTLE_MODELS": json.dumps([m.id for m in models]),
                "AIBATTLE_ECHO_REPLY": ECHO_REPLY,
                "AIBATTLE_ANALYST_REPLY": ANALYST_REPLY,
                "AIBATTLE_THINKER_REPLY": THINKER_REPLY,
            },
            proxy=proxy,
        )
    finally:
        proxy.close()
        await runner.cleanup()
        await gateway.close()
        await server.stop(grace=0.5)


async def node(*args: str, env: dict[str, str], cwd: Path = SDK) -> str:
    """Run node with `env` added to ours; its stdout (it must exit 0)."""
    proc = await asyncio.create_subprocess_exec(
        "node",
        *args,
        cwd=cwd,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    out = stdout.decode()
    assert proc.returncode == 0, out + stderr.decode()
    return out


async def node_test(live: Live | None, name: str) -> list[str]:
    """Run sdk/typescript/test/<name>.test.mjs with `node --test` (against `live`, when given); the names
    of the tests that passed, all of them (a failing or cancelled one fails here, with Node's report)."""
    args = ("--test", "--test-reporter=tap", "--test-timeout=20000", f"test/{name}.test.mjs")
    out = await node(*args, env=live.env if live else {})
    tests = re.search(r"^# tests (\d+)$", out, re.MULTILINE)
    assert tests is not None, out
    total = int(tests.group(1))
    passed = re.findall(r"^ {0,4}ok \d+ - (.*)$", out, re.MULTILINE)
    assert re.search(r"^# fail 0$", out, re.MULTILINE) and total > 0, out
    assert f"# pass {total}" in out, out
    return passed


async def test_every_rpc_is_wrapped_or_raw_and_the_public_api_is_the_snapshot(sdk_built: Path) -> None:
    passed = await node_test(None, "exports")
    assert "the hand-written exports are public_api.txt" in passed


async def test_subscription_engine_on_scripted_streams(sdk_built: Path) -> None:
    passed = await node_test(None, "subscribe")
    assert "a rate limit with RetryInfo is waited out, then the stream reopens" in passed


async def test_unary_calls_over_connect_and_grpc_web(live: Live) -> None:
    passed = await node_test(live, "unary")
    assert "listModels, getModel and createCompletion over grpc-web (node http)" in passed
    assert "Connect sends the NO_SIDE_EFFECTS reads as GET and the rest as POST" in passed


async def test_streams_and_subscriptions(live: Live) -> None:
    passed = await node_test(live, "streams")
    assert "watchReasoning over grpc-web shows iterations, handoffs and the result" in passed
    assert "an idle subscription reopens from its last sequence and still gets the next event once" in passed


async def test_typed_errors_401_403_404_429(live: Live) -> None:
    passed = await node_test(live, "errors")
    for status in ("401", "403", "404", "429"):
        assert any(name.startswith(status) for name in passed), (status, passed)


async def test_subscriptions_resume_after_a_forced_disconnect(live: Live) -> None:
    before = live.proxy.accepted
    passed = await node_test(live, "resume")
    assert len(passed) >= 2
    # Each cut connection was replaced by a new one through the proxy.
    assert live.proxy.accepted - before >= 4


# ---- seed 000 §7.2

SEED_BEGIN = "// ---- BEGIN seed 000 §7.2 (verbatim, model ids swapped) ----\n"
SEED_END = "// ---- END seed 000 §7.2 ----"
SEED_IDS = {"'scripted-human'": "'ollama-gemma3-1b'", "'scripted-analyst'": "'claude-3-sonnet'"}
#: sha256 of the seed's §7.2 code block, copied from /work/shared/seeds/000_*.txt.
SEED_CODE_SHA256 = "f8201b55797084e708fc836b96ef2c10efac102d5e577b7cef3a1963b860f11f"


def test_the_seed_flow_is_the_seed_code_with_only_model_ids_swapped() -> None:
    text = (SDK / "test" / "seed_7_2.test.mjs").read_text()
    block = text.split(SEED_BEGIN, 1)[1].split(SEED_END, 1)[0]
    for ours, seeds in SEED_IDS.items():
        block = block.replace(ours, seeds)
    assert hashlib.sha256(block.encode()).hexdigest() == SEED_CODE_SHA256


async def test_seed_7_2_flow(live: Live) -> None:
    passed = await node_test(live, "seed_7_2")
    assert passed


# ---- the README's example

README_INTRO = "This program, run against a local server"


def readme_example() -> str:
    """The first ```js block after the sentence introducing the runnable example."""
    text = README.read_text()
    assert README_INTRO in text, "the README no longer introduces the example this test runs"
    block = re.search(r"```js\n(.*?)```", text.split(README_INTRO, 1)[1], re.DOTALL)
    assert block is not None
    return block.group(1)


@pytest.fixture
def example_file() -> Iterator[Path]:
    """A file for the example where `import "@aibattle/sdk"` resolves: inside the repository, whose
    node_modules links the workspace (build/ is ignored by git)."""
    (ROOT / "build").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=ROOT / "build", prefix="ts-readme-") as tmp:
        path = Path(tmp) / "example.mjs"
        path.write_text(readme_example())
        yield path


async def test_readme_example_runs_as_written(live: Live, example_file: Path) -> None:
    env = {"AIBATTLE_MODEL": "scripted-echo"}
    out = await node(str(example_file), cwd=example_file.parent, env={**live.env, **env})
    assert out.splitlines() == [
        f"models: {', '.join(sorted([*(m['id'] for m in MODELS), 'ollama-thinker']))}",
        f"scripted-echo: {ECHO_REPLY}",
        "404 MODEL_NOT_FOUND",
        "[assistant] scripted-echo: Is a hot dog a sandwich?",
        f"[critic] scripted-echo: {ECHO_REPLY}",
        # The prompt, a status, the critic's turn, its tokens, its message, a status, the completion.
        "done after event 7",
    ]
