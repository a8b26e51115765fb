"""Embeddings through `/v1/embeddings`, `/api/embed` and `/api/embeddings`, and what Ollama's clients ask
about models (`/api/show`, `/api/ps`, `/api/version`), driven by the official `openai` and `ollama`
clients. The vectors come from a fake OpenAI upstream (byte for byte its `/embeddings` answer); the
embedded model's own are in test_gateway_compat_local.py (slow)."""

from __future__ import annotations

import base64
import struct
from typing import Any

import ollama
import openai
import pytest
from jsonschema import Draft202012Validator

from tests.gateway import test_gateway_compat_tools as with_tools
from tests.gateway.conftest import GATEWAY_ANSWERS
from tests.server.providers.fake_upstream import FakeUpstream
from tests.server.providers.test_openai_tools import embedding_reply

# The tool tests' server (conftest's, plus scripted tool models and "gpt" behind a fake OpenAI) and clients.
aibattle, fake, fake_ollama = with_tools.aibattle, with_tools.fake, with_tools.fake_ollama
oai, olm = with_tools.oai, with_tools.olm

VECTORS = [[0.25, -0.5, 0.125], [1.0, 0.0, -2.5]]


async def test_openai_client_embeddings_base64_by_default_and_float(
    oai: openai.AsyncOpenAI, fake: tuple[FakeUpstream, str], api: Any
) -> None:
    upstream, _ = fake
    upstream.replies = [embedding_reply(VECTORS, prompt=6, order=[1, 0])]
    reply = await oai.embeddings.create(model="gpt", input=["a b c", "d e f"], dimensions=3, user="u-1")
    # The client asked for base64 (its default) and decoded it: exactly our float32s.
    assert [e.embedding for e in reply.data] == VECTORS
    assert [e.index for e in reply.data] == [0, 1] and reply.model == "gpt" and reply.object == "list"
    assert (reply.usage.prompt_tokens, reply.usage.total_tokens) == (6, 6)
    sent = upstream.requests[-1].json
    assert (sent["input"], sent["dimensions"]) == (["a b c", "d e f"], 3)

    upstream.replies = [embedding_reply(VECTORS[:1], prompt=3)]
    resp = await api.post(
        "/v1/embeddings", json={"model": "gpt", "input": "a b c", "encoding_format": "base64"}
    )
    encoded = (await resp.json())["data"][0]["embedding"]
    assert struct.unpack("<3f", base64.b64decode(encoded)) == tuple(VECTORS[0])
    resp = await api.post(
        "/v1/embeddings", json={"model": "gpt", "input": "a b c", "encoding_format": "float"}
    )
    assert (await resp.json())["data"] == [{"object": "embedding", "index": 0, "embedding": VECTORS[0]}]


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"input": [1, 2, 3]}, "input", "invalid_field_value"),
        ({"input": [[1, 2], [3]]}, "input", "invalid_field_value"),
        ({"input": []}, "input", "invalid_field_value"),
        ({"input": ["ok", ""]}, "input[1]", "invalid_field"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "invalid_field_value"),
        ({"input": "x", "dimensions": "3"}, "dimensions", "invalid_field_value"),
        ({"input": "x", "truncate": True}, "truncate", "unknown_parameter"),
        ({"input": "x", "model": "scripted-echo"}, "model", "capability_missing"),
    ],
)
async def test_openai_embeddings_refusals_name_the_field(
    api: Any, extra: dict[str, Any], param: str, code: str
) -> None:
    resp = await api.post("/v1/embeddings", json={"model": "gpt", **extra})
    assert resp.status == 400, await resp.text()
    error = (await resp.json())["error"]
    assert (error["param"], error["code"]) == (param, code), error


async def test_ollama_client_embed_and_legacy_embeddings(
    olm: ollama.AsyncClient, fake: tuple[FakeUpstream, str]
) -> None:
    upstream, _ = fake
    upstream.replies = [embedding_reply(VECTORS, prompt=6)]
    reply = await olm.embed(model="gpt", input=["a b c", "d e f"], dimensions=3, keep_alive="5m")
    assert [list(v) for v in reply.embeddings] == VECTORS
    assert reply.model == "gpt" and reply.prompt_eval_count == 6 and (reply.total_duration or 0) > 0
    assert upstream.requests[-1].json["dimensions"] == 3

    upstream.replies = [embedding_reply(VECTORS[1:], prompt=3)]
    single = await olm.embed(model="gpt", input="d e f")
    assert [list(v) for v in single.embeddings] == VECTORS[1:]
    legacy = await olm.embeddings(model="gpt", prompt="d e f")
    assert list(legacy.embedding) == VECTORS[1]
    assert list((await olm.embeddings(model="gpt", prompt="")).embedding) == []  # as Ollama's
    loaded = await olm.embed(model="gpt", input=[])  # Ollama's way to load a model: nothing embedded
    assert loaded.embeddings == [] and loaded.model == "gpt"
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.embed(model="nope", input="")
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.embed(model="gpt", input="x", truncate=True)
    assert caught.value.status_code == 400 and "'truncate'" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.embed(model="gpt", input="x", options={"num_ctx": 512})
    assert caught.value.error == "unknown parameter 'options.num_ctx'"
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.embeddings(model="nope", prompt="")
    assert caught.value.status_code == 404


async def test_ollama_client_show(olm: ollama.AsyncClient) -> None:
    shown = await olm.show("gpt")
    assert shown.capabilities == ["completion", "tools", "embedding"]
    assert shown.details is not None and shown.details.family == "openai"
    assert shown.modelinfo is not None and shown.modelinfo["general.architecture"] == "openai"
    assert shown.modelfile is not None and "FROM gpt-4o-mini" in shown.modelfile
    tools = await olm.show("scripted-tools")
    assert tools.capabilities == ["completion", "tools"]
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.show("nope")
    assert caught.value.status_code == 404 and caught.value.error == "model 'nope' not found"


async def test_ollama_show_context_length_and_404_shape(api: Any) -> None:
    resp = await api.post("/api/show", json={"model": "nope"})
    assert resp.status == 404 and await resp.json() == {"error": "model 'nope' not found"}
    resp = await api.post("/api/show", json={"name": "gpt", "verbose": True})  # the older key
    body = await resp.json()
    window = body["model_info"]["openai.context_length"]
    assert window > 0 and body["parameters"] == f"num_ctx {window}"


async def test_ollama_client_ps_lists_every_model_served(olm: ollama.AsyncClient, api: Any) -> None:
    listed = await olm.ps()
    tags = await olm.list()
    assert [m.model for m in listed.models] == [m.model for m in tags.models]
    gpt = next(m for m in listed.models if m.model == "gpt")
    assert gpt.name == "gpt" and gpt.expires_at is not None and gpt.expires_at.year > 2100
    assert gpt.details is not None and gpt.details.family == "openai"


@GATEWAY_ANSWERS
async def test_ollama_version(api: Any) -> None:
    resp = await api.get("/api/version")
    assert resp.status == 200 and await resp.json() == {"version": "0.12.11"}


ASK = {"role": "user", "content": "Weather in Paris?"}
WEATHER = with_tools.WEATHER


@pytest.mark.parametrize(
    ("path", "body", "valid"),
    [
        ("/v1/embeddings", {"model": "gpt", "input": ["a"], "encoding_format": "float"}, True),
        ("/v1/embeddings", {"model": "gpt", "input": "a", "encoding_format": "int8"}, False),
        ("/v1/embeddings", {"model": "gpt", "input": [1, 2]}, False),
        ("/api/embed", {"model": "gpt", "input": "a", "truncate": False, "options": {}}, True),
        ("/api/embed", {"model": "gpt", "input": "a", "truncate": True}, False),
        ("/api/embed", {"model": "gpt", "input": []}, True),
        ("/v1/embeddings", {"model": "gpt", "input": []}, False),
        ("/api/embeddings", {"model": "gpt", "prompt": "a"}, True),
        ("/api/show", {"model": "gpt"}, True),
        ("/api/show", {"model": "gpt", "system": "x"}, False),
        (
            "/v1/chat/completions",
            {"model": "scripted-tools", "messages": [ASK], "tools": [WEATHER], "tool_choice": "required"},
            True,
        ),
        (
            "/v1/chat/completions",
            {
                "model": "scripted-tools",
                "messages": [ASK],
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "parallel_tool_calls": True,
            },
            True,
        ),
        (
            "/v1/chat/completions",
            {
                "model": "scripted-json",
                "messages": [ASK],
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "w", "schema": {"type": "object"}, "strict": False},
                },
            },
            True,
        ),
        (
            "/v1/chat/completions",
            {
                "model": "scripted-json",
                "messages": [ASK],
                "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {}}},
            },
            False,
        ),
        ("/v1/chat/completions", {"model": "scripted-json", "messages": [ASK], "response_format": {}}, False),
        (
            "/api/chat",
            {"model": "scripted-tools", "messages": [ASK], "tools": [WEATHER], "stream": False},
            True,
        ),
        ("/api/chat", {"model": "scripted-json", "messages": [ASK], "format": "json", "stream": False}, True),
        ("/api/generate", {"model": "scripted-json", "prompt": "x", "format": 7, "stream": False}, False),
        ("/api/generate", {"model": "scripted-json", "prompt": "x", "format": {}, "stream": False}, False),
    ],
)
async def test_the_documented_schemas_of_the_new_keys_and_routes_agree_with_the_endpoints(
    api: Any, fake: tuple[FakeUpstream, str], path: str, body: dict[str, Any], valid: bool
) -> None:
    fake[0].replies = [embedding_reply(VECTORS[:1], prompt=1)]
    doc = await (await api.get("/openapi.json")).json()
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert Draft202012Validator(schema).is_valid(body) is valid
    resp = await api.post(path, json=body)
    assert (resp.status == 200) is valid, await resp.text()
