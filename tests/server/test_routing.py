"""Routing across deployments: one model id served by several upstreams (issue 19).

Each deployment is a real aiohttp server on 127.0.0.1 speaking OpenAI's streaming wire format
(tests/server/providers/fake_upstream.py, the chunks of test_openai.py); the deployment that answered is
the one whose fake was asked, and the response names it.
"""

from __future__ import annotations

import asyncio
import json
import time
import tomllib
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web

from aibattle.v1 import completions_pb2, completions_pb2_grpc, models_pb2, models_pb2_grpc
from common.config import ConfigError
from common.observability import metrics
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer
from server.config import Config
from tests.server.providers.fake_upstream import FakeUpstream, Reply, serving, start_fake
from tests.server.providers.test_openai import DONE, chunk, usage_chunk

KEY = "sk-routing-test-key"
FAST = {"retries": 0, "backoff_seconds": 0.01}


def answer(text: str = "Hello there", prompt: int = 9, completion: int = 2) -> Reply:
    return Reply(
        chunks=[
            chunk("", role="assistant"),
            chunk(text),
            chunk(finish="stop"),
            usage_chunk(prompt, completion),
            DONE,
        ]
    )


def whole(text: str = "Hello there") -> Reply:
    """One whole (non-streamed) answer, which a unary call asks for."""
    body = {
        "id": "chatcmpl-abc",
        "object": "chat.completion",
        "created": 1741569952,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }
    return Reply(chunks=[json.dumps(body).encode()], content_type="application/json")


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROUTING_KEY", KEY)


def deployed(
    urls: dict[str, str], *, weights: dict[str, float] | None = None, **extra: Any
) -> dict[str, Any]:
    """A model "gpt" with one deployment per named fake upstream."""
    return {
        "id": "gpt",
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "api_key_env": "ROUTING_KEY",
        "upstream": FAST,
        "deployments": [
            {"name": name, "base_url": f"{url}/v1", "weight": (weights or {}).get(name, 1.0)}
            for name, url in urls.items()
        ],
        **extra,
    }


@asynccontextmanager
async def stub_for(models: list[dict[str, Any]]) -> AsyncIterator[tuple[AIBattleServer, Any]]:
    async with serving(models) as server, grpc.aio.insecure_channel(server.grpc_target) as channel:
        yield server, completions_pb2_grpc.CompletionServiceStub(channel)


async def ask(stub: Any, model: str = "gpt") -> list[completions_pb2.StreamCompletionResponse]:
    return [
        c
        async for c in stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(model=model, prompt="hi")
        )
    ]


async def answered_by(stub: Any, model: str = "gpt") -> str:
    chunks = await ask(stub, model)
    assert "".join(c.content for c in chunks) == "Hello there"
    assert {c.model for c in chunks} == {"gpt"}  # the canonical id, whatever the deployment
    [deployment] = {c.deployment for c in chunks}
    return deployment


def calls_of(deployment: str) -> float:
    labels = {"model": "gpt", "provider": "openai", "deployment": deployment, "error_type": ""}
    return metrics.REGISTRY.get_sample_value("aibattle_model_calls_total", labels) or 0.0


async def test_two_deployments_share_traffic_by_weight(aiohttp_server: Any) -> None:
    (a, url_a), (b, url_b) = await start_fake(aiohttp_server), await start_fake(aiohttp_server)
    a.replies = b.replies = [answer()]
    before = {d: calls_of(d) for d in "ab"}
    async with stub_for([deployed({"a": url_a, "b": url_b}, weights={"a": 3, "b": 1})]) as (_, stub):
        counts: Counter[str] = Counter()
        for _ in range(10):  # 200 calls, 20 at a time
            counts.update(await asyncio.gather(*(answered_by(stub) for _ in range(20))))
    # Each call is a's with probability 3/4: 150 expected, standard deviation 6.1; 5 of them either way
    # fails once in ~2 million runs.
    assert 120 <= counts["a"] <= 180, counts
    assert counts["a"] + counts["b"] == 200
    # The response names the deployment whose upstream was asked.
    assert (len(a.requests), len(b.requests)) == (counts["a"], counts["b"])
    assert a.requests[0].json["model"] == "gpt-4o-mini"
    # The model-call series count each deployment's calls under its name.
    assert {d: calls_of(d) - before[d] for d in "ab"} == {"a": counts["a"], "b": counts["b"]}
    assert a.requests[0].headers["Authorization"] == f"Bearer {KEY}"


async def test_a_killed_deployment_gets_no_traffic_while_it_cools_down_then_it_is_tried_again(
    aiohttp_server: Any,
) -> None:
    a, b = FakeUpstream(), FakeUpstream()
    a.replies = [answer()]
    b.replies = [answer()]
    server_a = await aiohttp_server(a.app)
    server_b = await aiohttp_server(b.app)
    port_a = server_a.port
    urls = {"a": f"http://127.0.0.1:{port_a}", "b": f"http://127.0.0.1:{server_b.port}"}
    upstream = {**FAST, "cooldown_after_failures": 1, "cooldown_seconds": 2.0}
    async with stub_for([deployed(urls, upstream=upstream)]) as (server, stub):
        before = Counter([await answered_by(stub) for _ in range(20)])
        assert before["a"] > 0 and before["b"] > 0
        await server_a.close()  # killed mid-test
        killed = time.monotonic()
        # Every call is answered (by b): the one that tries a first falls over to b before any token,
        # and puts a in cooldown; from then on a is skipped.
        after = [await answered_by(stub) for _ in range(20)]
        assert set(after) == {"b"}
        [deployment_a] = [
            d for d in server.registry.routes(server.registry.get("gpt", None)[0]) if d.deployment == "a"
        ]
        cooling = server.registry.circuits.cooling(deployment_a)
        assert 0 < cooling <= 2.0
        assert time.monotonic() - killed < 2.0, "too slow to prove the cooldown skipped a"

        # a comes back on its port; once its cooldown is over it gets traffic again.
        revived = FakeUpstream()
        revived.replies = [answer()]
        await aiohttp_server(revived.app, port=port_a)
        await asyncio.sleep(cooling + 0.05)
        again = Counter([await answered_by(stub) for _ in range(20)])
        assert again["a"] > 0 and again["a"] == len(revived.requests)


async def test_least_in_flight_prefers_the_idle_deployment(aiohttp_server: Any) -> None:
    (a, url_a), (b, url_b) = await start_fake(aiohttp_server), await start_fake(aiohttp_server)
    held = Reply(chunks=[chunk("", role="assistant"), chunk("held")], hang=True)
    a.replies = [held, answer()]
    b.replies = [held, answer()]
    fakes = {"a": a, "b": b}
    async with stub_for([deployed({"a": url_a, "b": url_b}, routing="least_in_flight")]) as (_, stub):
        busy_call = stub.StreamCompletion(completions_pb2.StreamCompletionRequest(model="gpt", prompt="hold"))
        first = await busy_call.read()
        busy = first.deployment
        idle = "b" if busy == "a" else "a"
        fakes[idle].replies = [answer()]  # the idle one was never asked: its held reply goes
        # While one answer is in progress on `busy`, every call goes to the idle one (weighted random
        # would send each there half the time: all 20 by chance, once in a million).
        assert [await answered_by(stub) for _ in range(20)] == [idle] * 20
        busy_call.cancel()
        await fakes[busy].wait_disconnected()
        await asyncio.sleep(0.05)  # the server sees the cancellation and closes its stream
        # Nothing in progress: both get traffic again.
        spread = Counter([await answered_by(stub) for _ in range(30)])
        assert spread["a"] > 0 and spread["b"] > 0, spread


async def test_lowest_latency_prefers_the_fast_deployment(aiohttp_server: Any) -> None:
    (fast, url_fast), (slow, url_slow) = await start_fake(aiohttp_server), await start_fake(aiohttp_server)
    fast.replies = [answer()]
    slow.replies = [Reply(chunks=[0.3, *answer().chunks])]
    async with stub_for([deployed({"fast": url_fast, "slow": url_slow}, routing="lowest_latency")]) as (
        _,
        stub,
    ):
        seen: set[str] = set()
        for _ in range(40):  # until both are measured (one not measured yet goes first)
            seen.add(await answered_by(stub))
            if seen == {"fast", "slow"}:
                break
        assert seen == {"fast", "slow"}
        assert [await answered_by(stub) for _ in range(10)] == ["fast"] * 10


async def test_an_alias_names_the_model_and_listing_shows_aliases_and_deployments(
    aiohttp_server: Any,
) -> None:
    (a, url_a), (b, url_b) = await start_fake(aiohttp_server), await start_fake(aiohttp_server)
    a.replies = b.replies = [answer()]
    async with stub_for([deployed({"a": url_a, "b": url_b}, aliases=["gpt-4o", "chat"])]) as (server, stub):
        assert await answered_by(stub, "gpt-4o") in {"a", "b"}
        a.replies = b.replies = [whole()]
        reply = await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="chat", prompt="hi")
        )
        assert reply.model == "gpt" and reply.deployment in {"a", "b"}
        async with grpc.aio.insecure_channel(server.grpc_target) as channel:
            models = models_pb2_grpc.ModelServiceStub(channel)
            got = (await models.GetModel(models_pb2.GetModelRequest(model_id="gpt-4o"))).model
            assert (got.id, list(got.aliases), list(got.deployments)) == (
                "gpt",
                ["gpt-4o", "chat"],
                ["a", "b"],
            )
            listed = (await models.ListModels(models_pb2.ListModelsRequest())).models
            assert [m.id for m in listed] == ["gpt"]  # an alias is not another model
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await models.GetModel(models_pb2.GetModelRequest(model_id="gpt-5"))
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_model_without_deployments_names_none(aiohttp_server: Any) -> None:
    fake, url = await start_fake(aiohttp_server)
    fake.replies = [answer()]
    plain = {"id": "gpt", "provider": "openai", "base_url": f"{url}/v1", "api_key_env": "ROUTING_KEY"}
    async with stub_for([plain]) as (_, stub):
        assert await answered_by(stub) == ""


async def test_fallbacks_come_after_every_deployment(aiohttp_server: Any) -> None:
    (a, url_a), (b, url_b), (c, url_c) = [await start_fake(aiohttp_server) for _ in range(3)]
    a.replies = b.replies = [Reply(status=503, chunks=[b"{}"], content_type="application/json")]
    c.replies = [answer()]
    backup = {"id": "backup", "provider": "openai", "base_url": f"{url_c}/v1", "api_key_env": "ROUTING_KEY"}
    async with stub_for([deployed({"a": url_a, "b": url_b}, fallbacks=["backup"]), backup]) as (_, stub):
        chunks = await ask(stub)
    assert "".join(x.content for x in chunks) == "Hello there"
    assert {(x.model, x.deployment) for x in chunks} == {("backup", "")}
    assert (len(a.requests), len(b.requests), len(c.requests)) == (1, 1, 1)


async def test_the_native_http_responses_name_the_deployment_in_a_header(
    aiohttp_server: Any, aiohttp_client: Any
) -> None:
    fake, url = await start_fake(aiohttp_server)
    fake.replies = [whole(), answer()]
    async with serving([deployed({"east": url})]) as server:
        client = await aiohttp_client(create_app(server.grpc_target, GatewayOptions(descriptor_set=None)))
        unary = await client.post("/api/v1/completions", json={"model": "gpt", "prompt": "hi"})
        assert unary.status == 200, await unary.text()
        assert unary.headers["x-aibattle-deployment"] == "east"
        assert (await unary.json())["deployment"] == "east"
        sse = await client.post(
            "/api/v1/completions:stream",
            json={"model": "gpt", "prompt": "hi"},
            headers={"Accept": "text/event-stream"},
        )
        assert sse.status == 200 and sse.headers["x-aibattle-deployment"] == "east"
        assert '"deployment":"east"' in (await sse.text()).replace(" ", "")
        await client.close()


def config(models: list[dict[str, Any]]) -> Config:
    return Config.from_dict({"server": {"http_addr": ""}, "models": models})


def test_deployment_names_default_to_provider_at_host_port_or_position() -> None:
    entry = {
        "id": "gpt",
        "provider": "openai",
        "base_url": "http://10.0.0.1:8000/v1",
        "upstream": {"retries": 4},
        "deployments": [
            {},  # the entry's own upstream
            {
                "base_url": "https://api.example.com/v1",
                "upstream_model": "gpt-4o",
                "upstream": {"retries": 1},
            },
            {"provider": "ollama", "base_url": "http://10.0.0.3:11434"},
            {"provider": "ollama", "base_url": "http://10.0.0.3:11434", "upstream_model": "llama3"},
        ],
    }
    [model] = config([entry]).models
    got = [
        (d.deployment, d.provider, d.upstream.base_url, d.upstream_model, d.upstream.retries)
        for d in model.deployment_models()
    ]
    assert got == [
        ("openai@10.0.0.1:8000", "openai", "http://10.0.0.1:8000/v1", "", 4),
        ("openai@api.example.com:443", "openai", "https://api.example.com/v1", "gpt-4o", 1),
        # Another provider: its own table's settings (retries 2), not the entry's upstream.
        ("gpt-3", "ollama", "http://10.0.0.3:11434", "", 2),
        ("gpt-4", "ollama", "http://10.0.0.3:11434", "llama3", 2),
    ]
    assert [d.name for d in model.deployments] == [d.deployment for d in model.deployment_models()]


def test_the_readmes_example_is_valid_and_names_as_it_says(monkeypatch: pytest.MonkeyPatch) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Deployments, routing and aliases") :]
    example = section[section.index("```toml\n") + 8 : section.index("```\n", section.index("```toml"))]
    local = {"id": "llama-local", "provider": "local"}
    data = {"server": {"http_addr": ""}, "models": [*tomllib.loads(example)["models"], local]}
    model = Config.from_dict(data).models[0]
    assert [d.name for d in model.deployments] == ["openai", "vllm-a", "ollama@10.0.0.6:11434"]
    assert [d.upstream.api_key_env for d in model.deployment_models()] == ["OPENAI_API_KEY", "", ""]
    assert (model.routing, model.aliases, model.failover_mid_stream) == ("least_in_flight", ("gpt-4o",), True)


def test_a_deployment_never_gets_a_key_it_was_not_meant_to_have() -> None:
    entry = {
        "id": "gpt",
        "provider": "openai",
        "base_url": "https://api.openai.com/v1",
        "api_key_env": "OPENAI_KEY",
        "deployments": [
            {},  # the entry's key
            {"base_url": "http://10.0.0.5:8000/v1"},  # left out: still the entry's
            {"base_url": "http://10.0.0.6:8000/v1", "api_key_env": ""},  # given empty: keyless
            {"provider": "ollama", "base_url": "http://10.0.0.7:11434"},  # another provider: its table's
            {"provider": "anthropic"},  # nor the entry's base_url
        ],
    }
    data = {
        "server": {"http_addr": ""},
        "providers": {"anthropic": {"api_key_env": "ANTHROPIC_KEY"}},
        "models": [entry],
    }
    [model] = Config.from_dict(data).models
    got = [(d.provider, d.upstream.base_url, d.upstream.api_key_env) for d in model.deployment_models()]
    assert got == [
        ("openai", "https://api.openai.com/v1", "OPENAI_KEY"),
        ("openai", "http://10.0.0.5:8000/v1", "OPENAI_KEY"),
        ("openai", "http://10.0.0.6:8000/v1", ""),
        ("ollama", "http://10.0.0.7:11434", ""),
        ("anthropic", "https://api.anthropic.com", "ANTHROPIC_KEY"),
    ]


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [
                {"id": "a", "provider": "scripted", "script": ["x"]},
                {"id": "b", "provider": "scripted", "script": ["x"], "aliases": ["a"]},
            ],
            "config: models[1].aliases[0]: alias 'a' is already the id of model 'a'",
        ),
        (
            [
                {"id": "a", "provider": "scripted", "script": ["x"], "aliases": ["gpt-4o"]},
                {"id": "b", "provider": "scripted", "script": ["x"], "aliases": ["gpt-4o"]},
            ],
            "config: models[1].aliases[0]: alias 'gpt-4o' is already an alias of model 'a'",
        ),
        (
            [{"id": "a", "provider": "openai", "deployments": [{"name": "x"}, {"name": "x"}]}],
            "config: models[0].deployments[1].name: deployment name 'x' is also deployments[0]'s",
        ),
        (
            [{"id": "a", "provider": "openai", "deployments": [{"provider": "local"}]}],
            "config: models[0].deployments[0].provider: deployments are HTTP upstreams, not 'local'",
        ),
        (
            [{"id": "a", "provider": "openai", "deployments": [{"name": "has space"}]}],
            "config: models[0].deployments[0].name: 'has space' is not a deployment name",
        ),
        (
            [{"id": "a", "provider": "openai", "deployment": "x"}],
            "config: models[0].deployment: set by the server: list upstreams in `deployments`",
        ),
        (
            [{"id": "a", "provider": "openai", "routing": "fastest"}],
            "config: models[0].routing",
        ),
        (
            [{"id": "a", "provider": "openai", "deployments": [{"weight": 0}]}],
            "config: models[0].deployments[0].weight",
        ),
    ],
)
def test_config_errors_name_the_clash(models: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config(models)
    assert message in str(caught.value)


async def test_ollama_discovery_serves_the_pulled_models(aiohttp_server: Any) -> None:
    tags = web.Application()
    pulled = {
        "models": [
            {"name": "llama3.2:1b", "model": "llama3.2:1b"},
            {"name": "qwen3:0.6b", "model": "qwen3:0.6b"},
        ]
    }

    async def list_tags(request: web.Request) -> web.Response:
        return web.json_response(pulled)

    tags.router.add_get("/api/tags", list_tags)
    ollama = await aiohttp_server(tags)
    configured = {"id": "qwen3:0.6b", "provider": "scripted", "script": ["configured wins"]}
    async with serving(
        [configured], ollama={"base_url": f"http://127.0.0.1:{ollama.port}", "discover": True}
    ) as server:
        models = {m.id: m for m in server.registry.models()}
        assert set(models) == {"llama3.2:1b", "qwen3:0.6b"}
        assert models["llama3.2:1b"].provider == "ollama"
        assert models["llama3.2:1b"].upstream.base_url == f"http://127.0.0.1:{ollama.port}"
        assert models["qwen3:0.6b"].provider == "scripted"
    # Unreachable: logged, and the configured models are served.
    async with serving([configured], ollama={"base_url": "http://127.0.0.1:9", "discover": True}) as server:
        assert [m.id for m in server.registry.models()] == ["qwen3:0.6b"]
