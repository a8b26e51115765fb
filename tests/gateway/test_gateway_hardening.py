"""Bad input, tried as a careless or hostile client would: never a 5xx, errors in the endpoint's dialect.

Each test here failed before the [Hardening] fixes (a 500, a hang, a native error body on a compat
endpoint, a second response after a stream's headers) and passes now.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2, descriptor_pool

from gateway import GatewayOptions, create_app
from gateway.descriptors import RouteError
from tests.gateway.conftest import GATEWAY_ANSWERS

DEEP = b"[" * 200_000
CHAT = {"model": "scripted-echo", "messages": [{"role": "user", "content": "Hi"}]}


def assert_openai_error(body: dict[str, Any], *, param: str | None = None) -> dict[str, Any]:
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param
    return error


def assert_ollama_error(body: dict[str, Any]) -> str:
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


# --- deeply nested JSON ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/completions", "/api/v1/completions:stream"])
async def test_deeply_nested_json_is_a_400_and_the_service_keeps_serving(api: Any, path: str) -> None:
    resp = await api.post(path, data=DEEP)
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == 3 and "nested too deeply" in body["message"]
    assert (await api.get("/api/v1/models")).status == 200


@GATEWAY_ANSWERS
async def test_deeply_nested_json_on_compat_endpoints(api: Any) -> None:
    resp = await api.post("/v1/chat/completions", data=DEEP)
    assert resp.status == 400
    assert "nested too deeply" in assert_openai_error(await resp.json())["message"]
    resp = await api.post("/api/chat", data=DEEP)
    assert resp.status == 400
    assert "nested too deeply" in assert_ollama_error(await resp.json())


async def test_deeply_nested_json_in_a_request_stream_ends_the_call(client: Any) -> None:
    """A bad NDJSON line used to kill the request pump silently: the call hung until the client left."""
    resp = await asyncio.wait_for(client.post("/v1/rooms/r1:chat", data=b'{"text": "a"}\n' + DEEP), 30)
    text = await asyncio.wait_for(resp.text(), 30)
    if resp.status == 200:  # the first message was relayed: the failure is the final frame
        frames = [json.loads(line) for line in text.splitlines()]
        assert frames[-1]["error"]["code"] == 3 and "nested too deeply" in frames[-1]["error"]["message"]
    else:
        assert resp.status == 400 and "nested too deeply" in json.loads(text)["message"]


async def test_a_failing_request_pump_never_leaves_the_call_hanging(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("gateway.web_rest.decode_request", boom)
    resp = await asyncio.wait_for(client.post("/v1/rooms/r1:chat", data=b'{"text": "a"}\n'), 30)
    assert resp.status == 500
    body = await resp.json()
    assert body["code"] == 13 and "secret" not in json.dumps(body)


# --- out-of-range numbers on the compat endpoints ---------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 99_999_999_999),
        ("max_completion_tokens", -(2**40)),
        ("seed", 2**70),
        ("n", 2**40),
        ("temperature", 10**400),
    ],
)
@GATEWAY_ANSWERS
async def test_openai_out_of_range_numbers_are_400_naming_the_param(api: Any, field: str, value: int) -> None:
    raw = json.dumps({**CHAT, field: value})
    resp = await api.post("/v1/chat/completions", data=raw)
    assert resp.status == 400
    error = assert_openai_error(await resp.json(), param=field)
    assert error["type"] == "invalid_request_error"


@GATEWAY_ANSWERS
async def test_openai_client_gets_bad_request_error_for_huge_max_tokens(api: Any) -> None:
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{api.port}/v1", api_key="sk-test", max_retries=0)
    try:
        with pytest.raises(openai.BadRequestError) as caught:
            await client.chat.completions.create(
                model="scripted-echo", messages=[{"role": "user", "content": "Hi"}], max_tokens=99_999_999_999
            )
        assert caught.value.param == "max_tokens"
    finally:
        await client.close()


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize(("option", "value"), [("num_predict", 2**40), ("seed", 2**70), ("seed", -(2**64))])
@GATEWAY_ANSWERS
async def test_ollama_out_of_range_options_are_400(api: Any, path: str, option: str, value: int) -> None:
    turn = {"prompt": "Hi"} if path == "/api/generate" else {"messages": CHAT["messages"]}
    body = {"model": "scripted-echo", **turn, "options": {option: value}}
    resp = await api.post(path, data=json.dumps(body))
    assert resp.status == 400
    assert f"options.{option}" in assert_ollama_error(await resp.json())


# --- every failure in the dialect of its endpoint ----------------------------------------------------


@GATEWAY_ANSWERS
async def test_compat_wrong_method_is_a_405_in_dialect_with_allow(api: Any) -> None:
    resp = await api.get("/v1/chat/completions")
    assert resp.status == 405 and resp.headers["Allow"] == "POST"
    assert_openai_error(await resp.json())
    resp = await api.put("/api/tags")
    assert resp.status == 405 and resp.headers["Allow"] == "GET"
    assert_ollama_error(await resp.json())


@GATEWAY_ANSWERS
async def test_compat_bad_headers_and_bodies_are_in_dialect(api: Any) -> None:
    resp = await api.post("/v1/chat/completions", json=CHAT, headers={"Grpc-Timeout": "soon"})
    assert resp.status == 400
    assert "Grpc-Timeout" in assert_openai_error(await resp.json())["message"]
    resp = await api.post("/api/chat", data=b"{not json")
    assert resp.status == 400
    assert "malformed JSON" in assert_ollama_error(await resp.json())
    resp = await api.post("/api/generate", data=b"[1, 2]")
    assert resp.status == 400
    assert_ollama_error(await resp.json())
    resp = await api.post("/v1/chat/completions", data=json.dumps({**CHAT, "messages": "Hi"}))
    assert resp.status == 400
    assert_openai_error(await resp.json(), param="messages")


async def test_compat_body_over_the_limit_is_413_in_dialect(
    aiohttp_client: Any, aibattle: Any, api_descriptor_set: Any
) -> None:
    options = GatewayOptions(descriptor_set=api_descriptor_set, max_body_bytes=1024)
    small = await aiohttp_client(create_app(aibattle.grpc_target, options))
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 4096}]}
    resp = await small.post("/v1/chat/completions", json=big)
    assert resp.status == 413
    assert assert_openai_error(await resp.json())["code"] == "request_too_large"
    resp = await small.post("/api/chat", json=big)
    assert resp.status == 413
    assert "limit" in assert_ollama_error(await resp.json())


@GATEWAY_ANSWERS
async def test_compat_unexpected_failure_is_a_generic_500_in_dialect(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret internals")

    monkeypatch.setattr("gateway.compat.openai.create_completion", boom)
    monkeypatch.setattr("gateway.compat.ollama.create_completion", boom)
    resp = await api.post("/v1/chat/completions", json=CHAT)
    assert resp.status == 500
    error = assert_openai_error(await resp.json())
    assert error["type"] == "server_error" and "secret" not in error["message"]
    resp = await api.post("/api/chat", json={**CHAT, "stream": False})
    assert resp.status == 500
    assert "secret" not in assert_ollama_error(await resp.json())


async def test_compat_failure_after_the_stream_started_ends_it_in_dialect(
    api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-gRPC exception after the headers used to reach the error middleware, which then tried to
    send a second response; now the stream ends the way its dialect ends a failed stream."""
    from gateway.compat import ollama
    from gateway.compat import openai as compat_openai

    for framing in (compat_openai.ChunkFraming, ollama.LineFraming):
        real = framing.message
        calls = {"n": 0}

        def second_fails(self: Any, message: Any, real: Any = real, calls: dict[str, int] = calls) -> bytes:
            calls["n"] += 1
            if calls["n"] == 2:
                raise RuntimeError("secret internals")
            return bytes(real(self, message))

        monkeypatch.setattr(framing, "message", second_fails)

    resp = await api.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert resp.status == 200
    events = [line[6:] for line in (await resp.text()).splitlines() if line.startswith("data: ")]
    assert "choices" in json.loads(events[0])
    error = assert_openai_error(json.loads(events[-2]))
    assert error["type"] == "server_error" and "secret" not in error["message"]
    assert events[-1] == "[DONE]"

    resp = await api.post("/api/chat", json=CHAT)
    assert resp.status == 200
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert lines[0]["done"] is False
    assert "secret" not in assert_ollama_error(lines[-1])


# --- routes the gateway serves itself are never shadowed --------------------------------------------


def _file_with_rule(path: str) -> Any:
    file = descriptor_pb2.FileDescriptorProto(name="clash.proto", package="clash", syntax="proto3")
    msg = file.message_type.add(name="Req")
    msg.field.add(name="model", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING)
    method = file.service.add(name="Svc").method.add(
        name="Do", input_type=".clash.Req", output_type=".clash.Req"
    )
    method.options.Extensions[annotations_pb2.http].get = path
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return pool.FindFileByName("clash.proto")


@pytest.mark.parametrize("path", ["/healthz", "/openapi.json", "/v1/models/{model}", "/api/{model=**}"])
def test_a_derived_route_overlapping_a_gateway_endpoint_is_refused_at_start_up(path: str) -> None:
    from aibattle.v1 import completions_pb2

    files = (completions_pb2.DESCRIPTOR, _file_with_rule(path))
    with pytest.raises(RouteError, match="overlaps the gateway's own endpoint"):
        create_app("127.0.0.1:1", GatewayOptions(files=files))


def test_a_derived_route_beside_the_gateway_endpoints_is_accepted() -> None:
    from aibattle.v1 import completions_pb2

    files = (completions_pb2.DESCRIPTOR, _file_with_rule("/v2/things/{model}"))
    create_app("127.0.0.1:1", GatewayOptions(files=files))


async def test_a_far_grpc_timeout_is_no_deadline_not_an_instant_504(api: Any) -> None:
    """grpc-core overflowed on the header's largest values and expired the call at once."""
    resp = await api.get("/api/v1/models", headers={"Grpc-Timeout": "99999999H"})
    assert resp.status == 200
    resp = await api.get("/v1/models", headers={"Grpc-Timeout": "99999999H"})
    assert resp.status == 200


async def test_cors_preflight_covers_the_compat_endpoints(
    aiohttp_client: Any, aibattle: Any, api_descriptor_set: Any
) -> None:
    options = GatewayOptions(descriptor_set=api_descriptor_set, cors_origins=("http://app.example",))
    browser = await aiohttp_client(create_app(aibattle.grpc_target, options))
    resp = await browser.options(
        "/v1/chat/completions",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Methods"] == "POST"
    assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"file_data": {"type": "text", "mime_type": "text/plain", "content": "!!!!"}}, "file_data.content"),
        ({"seed": "+0_7"}, "seed"),
        ({"max_tokens": " 12"}, "max_tokens"),
    ],
)
@GATEWAY_ANSWERS
async def test_values_protobuf_would_misread_are_refused_not_dropped(
    api: Any, fields: dict[str, Any], field: str
) -> None:
    """protobuf's JSON parser decodes invalid base64 to nothing and reads "+0_7" as 7."""
    resp = await api.post("/api/v1/completions", json={"model": "scripted-echo", "prompt": "hi", **fields})
    assert resp.status == 400
    body = await resp.json()
    assert field in body["message"]
    violations = [d for d in body["details"] if d["@type"].endswith("BadRequest")]
    assert violations[0]["field_violations"][0]["field"] == field


async def test_valid_base64_and_integer_strings_still_pass(api: Any) -> None:
    text = {"type": "text", "mime_type": "text/plain", "content": "aGVsbG8="}  # "hello"
    for content in ("aGVsbG8=", "aGVsbG8", "aGV-bG8_"):
        body = {
            "model": "scripted-echo",
            "prompt": "hi",
            "seed": "7",
            "file_data": {**text, "content": content},
        }
        assert (await api.post("/api/v1/completions", json=body)).status == 200
