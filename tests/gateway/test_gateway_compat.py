"""OpenAI and Ollama compatibility endpoints, driven by the official `openai` and `ollama` clients."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import ollama
import openai
import pytest

from server.app import AIBattleServer
from tests.gateway.conftest import GATEWAY_ANSWERS
from tests.gateway.gateway_testlib import wait_for


@pytest.fixture
async def oai(api: Any) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="sk-test", max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def olm(api: Any) -> AsyncIterator[ollama.AsyncClient]:
    client = ollama.AsyncClient(host=f"http://127.0.0.1:{api.port}")
    yield client
    await client.close()


async def test_openai_models(oai: openai.AsyncOpenAI) -> None:
    page = await oai.models.list()
    assert [m.id for m in page.data] == ["scripted-echo", "scripted-fail", "scripted-peer", "scripted-slow"]
    model = await oai.models.retrieve("scripted-peer")
    assert model.owned_by == "scripted"
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.models.retrieve("nope")
    assert caught.value.code == "model_not_found"


async def test_openai_chat_completion(oai: openai.AsyncOpenAI, aibattle: AIBattleServer) -> None:
    reply = await oai.chat.completions.create(
        model="scripted-echo",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        ],
        max_tokens=50,
        temperature=0.2,
        stop=["zzz"],
    )
    assert reply.choices[0].message.content == "Hello there, friend."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


async def test_openai_streaming_with_usage(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="scripted-echo",
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello there, friend."
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 3


async def test_openai_errors(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model="scripted-echo", messages=[{"role": "user", "content": "x"}], n=2
        )
    assert caught.value.param == "n"
    with pytest.raises(openai.APIError, match="scripted failure"):
        stream = await oai.chat.completions.create(
            model="scripted-fail", messages=[{"role": "user", "content": "x"}], stream=True
        )
        async for _ in stream:
            pass


async def test_openai_raw_sse_ends_with_done(api: Any) -> None:
    resp = await api.post(
        "/v1/chat/completions",
        json={"model": "scripted-peer", "messages": [{"role": "user", "content": "x"}], "stream": True},
    )
    assert resp.content_type == "text/event-stream"
    events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])


async def test_ollama_list(olm: ollama.AsyncClient) -> None:
    listed = await olm.list()
    assert [m.model for m in listed.models] == [
        "scripted-echo",
        "scripted-fail",
        "scripted-peer",
        "scripted-slow",
    ]


async def test_ollama_chat(olm: ollama.AsyncClient) -> None:
    reply = await olm.chat(
        model="scripted-echo",
        messages=[{"role": "user", "content": "Hi"}],
        stream=False,
        options={"temperature": 0.1, "num_predict": 64},
    )
    assert reply.message.content == "Hello there, friend."
    assert reply.done and reply.done_reason == "stop" and reply.eval_count == 3

    parts = [
        p
        async for p in await olm.chat(
            model="scripted-echo", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    ]
    assert "".join(p.message.content or "" for p in parts) == "Second reply."
    assert parts[-1].done and not any(p.done for p in parts[:-1])


async def test_ollama_generate(olm: ollama.AsyncClient) -> None:
    reply = await olm.generate(model="scripted-peer", prompt="Hi", system="Be brief.", stream=False)
    assert reply.response == "Peer reply." and reply.done
    parts = [p async for p in await olm.generate(model="scripted-peer", prompt="Hi", stream=True)]
    assert "".join(p.response or "" for p in parts) == "Peer reply."
    loaded = await olm.generate(model="scripted-peer")
    assert loaded.done and loaded.response == ""


async def test_ollama_errors(olm: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.chat(model="nope", messages=[{"role": "user", "content": "x"}], stream=False)
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError, match="scripted failure"):
        async for _ in await olm.chat(
            model="scripted-fail", messages=[{"role": "user", "content": "x"}], stream=True
        ):
            pass


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/chat", {"model": "scripted-slow", "messages": [{"role": "user", "content": "x"}]}),
        (
            "/v1/chat/completions",
            {"model": "scripted-slow", "messages": [{"role": "user", "content": "x"}], "stream": True},
        ),
    ],
)
async def test_compat_disconnect_cancels_the_upstream_call(
    api: Any, caplog: pytest.LogCaptureFixture, path: str, body: dict[str, Any]
) -> None:
    """The server's access log is the witness: the stream it served ended CANCELLED, not OK."""
    caplog.set_level(logging.INFO, logger="aibattle.access")
    resp = await api.post(path, json=body)
    assert resp.status == 200
    assert (await resp.content.readline()).strip()  # the stream has started: 100 words, 20 ms apart
    resp.close()  # the client goes away

    def served() -> list[str]:
        return [
            getattr(r, "code", "")
            for r in caplog.records
            if r.name == "aibattle.access" and getattr(r, "method", "").endswith("/StreamCompletion")
        ]

    assert await wait_for(lambda: bool(served()), within=10)
    assert served() == ["CANCELLED"]


# --- nothing dropped in silence: refusals in each dialect ----------------------------------------------

HI = [{"role": "user", "content": "Hi"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def openai_error(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's error object, exactly: the four keys, of the invalid-request type."""
    assert list(body) == ["error"]
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    return dict(error)


def ollama_error(body: dict[str, Any]) -> str:
    """Ollama's error object, exactly: one string."""
    assert list(body) == ["error"] and isinstance(body["error"], str)
    return str(body["error"])


@pytest.mark.parametrize(
    ("extra", "param", "code"),
    [
        ({"functions": [TOOL["function"]]}, "functions", "unsupported_parameter"),
        ({"function_call": "auto"}, "function_call", "unsupported_parameter"),
        ({"tools": [{"type": "custom", "custom": {"name": "f"}}]}, "tools[0].custom", "unknown_parameter"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "n", "schema": {}, "description": "d"},
                }
            },
            "response_format.json_schema.description",
            "unsupported_parameter",
        ),
        ({"n": 2}, "n", "unsupported_parameter"),
        ({"logprobs": True}, "logprobs", "unsupported_parameter"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"logit_bias": {"50256": -100}}, "logit_bias", "unsupported_parameter"),
        ({"store": True}, "store", "unsupported_parameter"),
        ({"reasoning_effort": "high"}, "reasoning_effort", "unsupported_parameter"),
        ({"modalities": ["text", "audio"]}, "modalities", "unsupported_parameter"),
        ({"best_of": 2}, "best_of", "unknown_parameter"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "unsupported_parameter"),
        ({"frequency_penalties": 1}, "frequency_penalties", "unknown_parameter"),
        (
            {"stream": True, "stream_options": {"include_obfuscation": True}},
            "stream_options.include_obfuscation",
            "unknown_parameter",
        ),
        (
            {"messages": [{"role": "user", "content": "Hi", "name": "ann"}]},
            "messages[0].name",
            "unsupported_parameter",
        ),
    ],
)
@GATEWAY_ANSWERS
async def test_openai_refuses_what_it_would_drop_naming_the_field(
    api: Any, extra: dict[str, Any], param: str, code: str
) -> None:
    resp = await api.post("/v1/chat/completions", json={"model": "scripted-echo", "messages": HI, **extra})
    assert resp.status == 400
    error = openai_error(await resp.json())
    assert (error["param"], error["code"]) == (param, code)
    assert repr(param) in error["message"]


async def test_openai_client_gets_bad_request_naming_tools(oai: openai.AsyncOpenAI) -> None:
    """A model that cannot call tools or answer in JSON says so (the server's CAPABILITY_MISSING)."""
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(model="scripted-echo", messages=HI, tools=[TOOL])
    assert (caught.value.param, caught.value.code) == ("tools", "capability_missing")
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(
            model="scripted-echo", messages=HI, response_format={"type": "json_object"}
        )
    assert (caught.value.param, caught.value.code) == ("response_format", "capability_missing")
    with pytest.raises(openai.BadRequestError) as caught:
        await oai.chat.completions.create(model="scripted-echo", messages=HI, functions=[TOOL["function"]])
    assert caught.value.param == "functions" and "use 'tools'" in caught.value.message


@pytest.mark.parametrize(
    "extra",
    [
        {"tools": [], "tool_choice": "none", "parallel_tool_calls": False},
        {"n": 1, "logprobs": False, "response_format": {"type": "text"}, "store": False},
        {"tools": None, "logit_bias": None, "user": "end-user-7", "modalities": ["text"]},
        {"messages": [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi"}]},
        {"messages": [{"role": "assistant", "content": "Hey", "tool_calls": None, "refusal": None}, *HI]},
    ],
)
async def test_openai_takes_values_that_ask_for_nothing_more(api: Any, extra: dict[str, Any]) -> None:
    """Defaults, nulls and an end-user id change no answer; `developer` is OpenAI's newer `system`."""
    resp = await api.post("/v1/chat/completions", json={"model": "scripted-echo", "messages": HI, **extra})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["choices"][0]["message"]["content"] == "Hello there, friend."


@pytest.mark.parametrize(
    ("path", "extra", "field"),
    [
        ("/api/chat", {"format": "yaml"}, "format"),
        (
            "/api/chat",
            {"tools": [{"type": "function", "function": {"name": "f", "strict": True}}]},
            "tools[0].function.strict",
        ),
        (
            "/api/chat",
            {"messages": [{"role": "tool", "content": "4", "tool_name": "f"}]},
            "messages[0].tool_name",
        ),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "Hi", "tool_name": "f"}]},
            "messages[0].tool_name",
        ),
        ("/api/chat", {"think": "high"}, "think"),
        ("/api/chat", {"options": {"num_ctx": 4096}}, "options.num_ctx"),
        ("/api/chat", {"options": {"min_p": 0.1}}, "options.min_p"),
        (
            "/api/chat",
            {"messages": [{"role": "user", "content": "Hi", "images": ["aGk="]}]},
            "messages[0].images",
        ),
        ("/api/chat", {"system": "Be brief."}, "system"),
        ("/api/generate", {"format": ["json"]}, "format"),
        ("/api/generate", {"suffix": "end"}, "suffix"),
        ("/api/generate", {"raw": True}, "raw"),
        ("/api/generate", {"template": "{{ .Prompt }}"}, "template"),
        ("/api/generate", {"context": [1, 2, 3]}, "context"),
        ("/api/generate", {"images": ["aGk="]}, "images"),
        ("/api/generate", {"options": {"mirostat": 2}}, "options.mirostat"),
    ],
)
@GATEWAY_ANSWERS
async def test_ollama_refuses_what_it_would_drop_naming_the_field(
    api: Any, path: str, extra: dict[str, Any], field: str
) -> None:
    turn = {"prompt": "Hi"} if path == "/api/generate" else {"messages": HI}
    resp = await api.post(path, json={"model": "scripted-echo", **turn, **extra})
    assert resp.status == 400
    assert repr(field) in ollama_error(await resp.json())


async def test_ollama_client_gets_response_error_naming_format(olm: ollama.AsyncClient) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.chat(model="scripted-echo", messages=HI, format="json")
    assert caught.value.status_code == 400
    assert "response_format" in caught.value.error and "capability" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        await olm.generate(model="scripted-echo", prompt="Hi", options={"num_ctx": 4096})
    assert caught.value.error == "unknown parameter 'options.num_ctx'"


async def test_ollama_takes_what_its_client_sends_unasked(api: Any) -> None:
    body = {"model": "scripted-echo", "messages": HI, "tools": [], "stream": False, "keep_alive": "5m"}
    resp = await api.post("/api/chat", json={**body, "format": "", "think": False, "options": {"top_k": 5}})
    assert resp.status == 200, await resp.text()
    generate = {
        "model": "scripted-peer",
        "prompt": "Hi",
        "stream": False,
        "raw": False,
        "suffix": "",
        "images": [],
    }
    resp = await api.post("/api/generate", json=generate)
    assert resp.status == 200, await resp.text()


# --- unknown routes in their dialect -------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/moderations"), ("GET", "/v1/nope/deeper")])
@GATEWAY_ANSWERS
async def test_unknown_openai_routes_are_openai_404s(api: Any, method: str, path: str) -> None:
    resp = await api.request(method, path, json={})
    assert resp.status == 404
    error = openai_error(await resp.json())
    assert error["code"] == "route_not_found" and path in error["message"]


@GATEWAY_ANSWERS
async def test_openai_client_gets_not_found_for_an_unknown_route(oai: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await oai.moderations.create(model="scripted-echo", input="hi")
    assert caught.value.code == "route_not_found"


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/api/pull"), ("POST", "/api/create"), ("GET", "/api/v1beta")]
)
@GATEWAY_ANSWERS
async def test_unknown_ollama_routes_are_ollama_404s(api: Any, method: str, path: str) -> None:
    resp = await api.request(method, path)
    assert resp.status == 404
    assert path in ollama_error(await resp.json())


@pytest.mark.parametrize("path", ["/api/v1/nope", "/api/v1", "/api/v1/models/x/y"])
@GATEWAY_ANSWERS
async def test_unknown_native_routes_keep_their_status_404(api: Any, path: str) -> None:
    resp = await api.get(path)
    assert resp.status == 404
    body = await resp.json()
    assert body["code"] == 5 and body["details"][0]["reason"] in ("ROUTE_NOT_FOUND", "MODEL_NOT_FOUND")


@GATEWAY_ANSWERS
async def test_a_wrong_method_on_a_compat_route_is_405_in_its_dialect(api: Any) -> None:
    resp = await api.delete("/v1/chat/completions")
    assert resp.status == 405
    assert openai_error(await resp.json())["code"] == "method_not_allowed"
    resp = await api.get("/api/chat")
    assert resp.status == 405
    assert ollama_error(await resp.json())


# --- ids as OpenAI's ------------------------------------------------------------------------------------


async def test_chat_completion_ids_are_chatcmpl(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model="scripted-echo", messages=HI)
    assert reply.id.startswith("chatcmpl-") and len(reply.id) > len("chatcmpl-")
    stream = await oai.chat.completions.create(model="scripted-echo", messages=HI, stream=True)
    ids = {chunk.id async for chunk in stream}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-")


# --- /v1/completions ---------------------------------------------------------------------------------


async def test_openai_legacy_completions_whole_and_streamed(oai: openai.AsyncOpenAI) -> None:
    reply = await oai.completions.create(
        model="scripted-echo", prompt="Say hi", max_tokens=20, temperature=0.1
    )
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    assert reply.choices[0].text == "Hello there, friend."
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == 3
    stream = await oai.completions.create(
        model="scripted-peer", prompt=["Say hi"], stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Peer reply."
    assert all(c.id.startswith("cmpl-") and c.object == "text_completion" for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": ["a", "b"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"echo": True}, "echo"),
        ({"logprobs": 0}, "logprobs"),
        ({"suffix": "end"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"messages": HI}, "messages"),
    ],
)
@GATEWAY_ANSWERS
async def test_openai_legacy_completions_refuse_what_they_would_drop(
    api: Any, extra: dict[str, Any], param: str
) -> None:
    resp = await api.post("/v1/completions", json={"model": "scripted-echo", "prompt": "Hi", **extra})
    assert resp.status == 400
    assert openai_error(await resp.json())["param"] == param
