"""Connect and gRPC-Web on the HTTP port, byte for byte as their specs say, against the real server.

Requests are built by hand from the specs (connectrpc.com/docs/protocol, grpc's PROTOCOL-WEB.md) so that a
mistake on both sides can't cancel out; tests/e2e/test_buf_curl.py and the TypeScript client's tests
(tests/sdk_ts) check the same endpoints with clients nobody here wrote.
"""

from __future__ import annotations

import base64
import gzip
import json
import struct
from typing import Any
from urllib.parse import quote, unquote

import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from aibattle.v1 import completions_pb2, models_pb2
from gateway import GatewayOptions, create_app
from server.app import AIBattleServer

LIST_MODELS = "/aibattle.v1.ModelService/ListModels"
GET_MODEL = "/aibattle.v1.ModelService/GetModel"
STREAM = "/aibattle.v1.CompletionService/StreamCompletion"
CREATE = "/aibattle.v1.CompletionService/CreateCompletion"


def envelope(data: bytes, flags: int = 0) -> bytes:
    return struct.pack(">BI", flags, len(data)) + data


def envelopes(body: bytes) -> list[tuple[int, bytes]]:
    out, offset = [], 0
    while offset < len(body):
        flags, length = struct.unpack_from(">BI", body, offset)
        out.append((flags, body[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    assert offset == len(body), "the body ends inside an envelope"
    return out


def reason_of(details: list[dict[str, str]]) -> str:
    for detail in details:
        if detail["type"] == "google.rpc.ErrorInfo":
            value = detail["value"]
            info = error_details_pb2.ErrorInfo.FromString(base64.b64decode(value + "=" * (-len(value) % 4)))
            return info.reason
    return ""


def trailer_fields(block: bytes) -> dict[str, str]:
    lines = block.decode().split("\r\n")
    assert lines[-1] == "", "every trailer line ends with CRLF"
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[:-1])}


# --- Connect unary ----------------------------------------------------------------------------------------


async def test_connect_unary_json_answers_proto_json_with_json_names(api: Any) -> None:
    resp = await api.post(LIST_MODELS, data=b"{}", headers={"Content-Type": "application/json"})
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    ids = [model["id"] for model in body["models"]]
    assert "scripted-echo" in ids
    assert "displayName" in body["models"][0] or "contextWindow" in body["models"][0]


async def test_connect_unary_binary(api: Any) -> None:
    request = models_pb2.GetModelRequest(model_id="scripted-echo").SerializeToString()
    resp = await api.post(
        GET_MODEL,
        data=request,
        headers={"Content-Type": "application/proto", "Connect-Protocol-Version": "1"},
    )
    assert resp.status == 200
    assert resp.content_type == "application/proto"
    answer = models_pb2.GetModelResponse.FromString(await resp.read())
    assert answer.model.id == "scripted-echo"


async def test_connect_get_for_a_no_side_effects_rpc_in_both_encodings(api: Any) -> None:
    message = quote(json.dumps({"modelId": "scripted-echo"}))
    resp = await api.get(f"{GET_MODEL}?connect=v1&encoding=json&message={message}")
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["model"]["id"] == "scripted-echo"

    raw = models_pb2.GetModelRequest(model_id="scripted-peer").SerializeToString()
    b64 = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    resp = await api.get(f"{GET_MODEL}?connect=v1&encoding=proto&base64=1&message={b64}")
    assert resp.status == 200
    assert models_pb2.GetModelResponse.FromString(await resp.read()).model.id == "scripted-peer"


async def test_get_is_refused_for_an_rpc_with_side_effects(api: Any) -> None:
    resp = await api.get(f"{CREATE}?encoding=json&message=%7B%7D")
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]


async def test_connect_unary_error_is_its_json_with_the_mapped_status_and_details(api: Any) -> None:
    resp = await api.post(GET_MODEL, json={"modelId": "no-such-model"})
    assert resp.status == 404
    assert resp.content_type == "application/json"
    error = await resp.json()
    assert error["code"] == "not_found"
    assert "no-such-model" in error["message"]
    assert reason_of(error["details"]) == "MODEL_NOT_FOUND"


async def test_a_bad_field_is_invalid_argument_naming_it(api: Any) -> None:
    resp = await api.post(CREATE, json={"model": "scripted-echo", "prompt": "hi", "maxTokens": -1})
    assert resp.status == 400
    error = await resp.json()
    assert error["code"] == "invalid_argument"
    assert "max_tokens" in error["message"]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"\xff\xfe", "application/proto"),
        (b'{"noSuchField": 1}', "application/json"),
    ],
)
async def test_malformed_requests_are_invalid_argument(api: Any, body: bytes, content_type: str) -> None:
    resp = await api.post(LIST_MODELS, data=body, headers={"Content-Type": content_type})
    assert resp.status == 400
    assert (await resp.json())["code"] == "invalid_argument"


async def test_an_unserved_content_type_is_415_saying_what_is(api: Any) -> None:
    resp = await api.post(LIST_MODELS, data=b"{}", headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    assert "application/proto" in resp.headers["Accept-Post"]
    assert (await resp.json())["code"] == "unimplemented"
    # A stream's Content-Type on a unary RPC is as wrong as a plain one on a stream.
    resp = await api.post(
        LIST_MODELS, data=envelope(b"{}"), headers={"Content-Type": "application/connect+json"}
    )
    assert resp.status == 415


async def test_an_unknown_method_of_a_known_service_is_unimplemented_as_grpc_says(api: Any) -> None:
    resp = await api.post("/aibattle.v1.ModelService/Nope", json={})
    assert resp.status == 404  # Connect's status for an unknown procedure
    error = await resp.json()
    assert error["code"] == "unimplemented"
    assert reason_of(error["details"]) == "UNKNOWN_RPC"
    assert "Nope" in error["message"]
    web = await api.post(
        "/aibattle.v1.ModelService/Nope", data=envelope(b""), headers={"Content-Type": "application/grpc-web"}
    )
    assert web.headers["grpc-status"] == "12"


async def test_a_request_streaming_rpc_says_where_to_go(api: Any) -> None:
    resp = await api.post(
        "/aibattle.v1.ConversationService/Converse",
        data=envelope(b"{}"),
        headers={"Content-Type": "application/connect+json"},
    )
    assert resp.status == 200  # a Connect stream's error is in its end-of-stream message
    [(flags, data)] = envelopes(await resp.read())
    assert flags == 0x02
    error = json.loads(data)["error"]
    assert error["code"] == "unimplemented"
    assert "WebSocket" in error["message"]


# --- Connect streams --------------------------------------------------------------------------------------


async def test_connect_stream_json_frames_then_end_of_stream(api: Any) -> None:
    request = json.dumps({"model": "scripted-echo", "prompt": "hi", "maxTokens": 20}).encode()
    resp = await api.post(
        STREAM, data=envelope(request), headers={"Content-Type": "application/connect+json"}
    )
    assert resp.status == 200
    assert resp.content_type == "application/connect+json"
    frames = envelopes(await resp.read())
    *messages, (end_flags, end) = frames
    assert end_flags == 0x02
    assert "error" not in json.loads(end)
    assert all(flags == 0 for flags, _ in messages)
    text = "".join(json.loads(data).get("content", "") for _, data in messages)
    assert text == "Hello there, friend."


async def test_connect_stream_binary_gzip_request(api: Any) -> None:
    request = completions_pb2.StreamCompletionRequest(model="scripted-echo", prompt="hi").SerializeToString()
    resp = await api.post(
        STREAM,
        data=envelope(gzip.compress(request), flags=0x01),
        headers={"Content-Type": "application/connect+proto", "Connect-Content-Encoding": "gzip"},
    )
    assert resp.status == 200
    *messages, (end_flags, _) = envelopes(await resp.read())
    assert end_flags == 0x02
    chunks = [completions_pb2.StreamCompletionResponse.FromString(data) for _, data in messages]
    assert "".join(c.content for c in chunks) == "Hello there, friend."


async def test_connect_stream_error_before_and_after_the_first_message(api: Any) -> None:
    before = await api.post(
        STREAM,
        data=envelope(json.dumps({"model": "nope", "prompt": "hi"}).encode()),
        headers={"Content-Type": "application/connect+json"},
    )
    assert before.status == 200
    [(flags, data)] = envelopes(await before.read())
    assert flags == 0x02
    error = json.loads(data)["error"]
    assert error["code"] == "not_found"
    assert reason_of(error["details"]) == "MODEL_NOT_FOUND"

    after = await api.post(
        STREAM,
        data=envelope(json.dumps({"model": "scripted-fail", "prompt": "hi"}).encode()),
        headers={"Content-Type": "application/connect+json"},
    )
    *messages, (flags, data) = envelopes(await after.read())
    assert messages, "the chunk before the failure arrives"
    assert flags == 0x02
    assert json.loads(data)["error"]["code"] == "unavailable"


async def test_a_cut_envelope_is_malformed(api: Any) -> None:
    resp = await api.post(
        STREAM, data=envelope(b'{"model": "x"}')[:-3], headers={"Content-Type": "application/connect+json"}
    )
    [(_flags, data)] = envelopes(await resp.read())
    error = json.loads(data)["error"]
    assert error["code"] == "invalid_argument"
    assert reason_of(error["details"]) == "MALFORMED_REQUEST"


async def test_connect_timeout_becomes_the_calls_deadline(api: Any) -> None:
    request = json.dumps({"model": "scripted-slow", "prompt": "hi"}).encode()
    resp = await api.post(
        STREAM,
        data=envelope(request),
        headers={"Content-Type": "application/connect+json", "Connect-Timeout-Ms": "150"},
    )
    *_, (flags, data) = envelopes(await resp.read())
    assert flags == 0x02
    assert json.loads(data)["error"]["code"] == "deadline_exceeded"


# --- gRPC-Web ---------------------------------------------------------------------------------------------


async def test_grpc_web_binary_unary_and_its_trailer_frame(api: Any) -> None:
    request = models_pb2.ListModelsRequest().SerializeToString()
    resp = await api.post(
        LIST_MODELS,
        data=envelope(request),
        headers={"Content-Type": "application/grpc-web+proto", "X-Grpc-Web": "1"},
    )
    assert resp.status == 200
    assert resp.content_type == "application/grpc-web+proto"
    (flags, data), (trailer_flags, block) = envelopes(await resp.read())
    assert flags == 0
    assert any(m.id == "scripted-echo" for m in models_pb2.ListModelsResponse.FromString(data).models)
    assert trailer_flags == 0x80
    assert trailer_fields(block)["grpc-status"] == "0"


async def test_grpc_web_text_stream(api: Any) -> None:
    request = completions_pb2.StreamCompletionRequest(model="scripted-echo", prompt="hi").SerializeToString()
    resp = await api.post(
        STREAM,
        data=base64.b64encode(envelope(request)),
        headers={"Content-Type": "application/grpc-web-text", "Accept": "application/grpc-web-text"},
    )
    assert resp.status == 200
    assert resp.content_type == "application/grpc-web-text+proto"
    raw = await resp.read()
    # Each frame is its own padded base64 run, as gRPC-Web text allows.
    body = b"".join(base64.b64decode(run + b"=" * (-len(run) % 4)) for run in raw.split(b"=") if run)
    *messages, (flags, block) = envelopes(body)
    assert flags == 0x80
    assert trailer_fields(block)["grpc-status"] == "0"
    text = "".join(completions_pb2.StreamCompletionResponse.FromString(d).content for _, d in messages)
    assert text == "Hello there, friend."


async def test_grpc_web_error_is_trailers_only_with_the_rich_status(api: Any) -> None:
    request = models_pb2.GetModelRequest(model_id="no-such-model").SerializeToString()
    resp = await api.post(
        GET_MODEL, data=envelope(request), headers={"Content-Type": "application/grpc-web+proto"}
    )
    assert resp.status == 200
    assert await resp.read() == b""
    assert resp.headers["grpc-status"] == "5"
    assert "no-such-model" in unquote(resp.headers["grpc-message"])
    details = resp.headers["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(details + "=" * (-len(details) % 4)))
    assert status.code == 5
    info = error_details_pb2.ErrorInfo()
    assert any(d.Unpack(info) and info.reason == "MODEL_NOT_FOUND" for d in status.details)


async def test_grpc_web_stream_error_after_the_first_message_is_in_the_trailers(api: Any) -> None:
    request = completions_pb2.StreamCompletionRequest(model="scripted-fail", prompt="hi").SerializeToString()
    resp = await api.post(
        STREAM, data=envelope(request), headers={"Content-Type": "application/grpc-web+proto"}
    )
    *messages, (flags, block) = envelopes(await resp.read())
    assert messages
    assert flags == 0x80
    assert trailer_fields(block)["grpc-status"] == "14"


async def test_grpc_web_json_codec(api: Any) -> None:
    resp = await api.post(
        GET_MODEL,
        data=envelope(json.dumps({"modelId": "scripted-echo"}).encode()),
        headers={"Content-Type": "application/grpc-web+json"},
    )
    (_flags, data), (_, block) = envelopes(await resp.read())
    assert json_format.Parse(data, models_pb2.GetModelResponse()).model.id == "scripted-echo"
    assert trailer_fields(block)["grpc-status"] == "0"


# --- CORS: the existing allow-list ----------------------------------------------------------------------


@pytest.fixture
async def cors_api(aiohttp_client: Any, aibattle: AIBattleServer) -> Any:
    options = GatewayOptions(descriptor_set=None, cors_origins=("http://app.example",))
    return await aiohttp_client(create_app(aibattle.grpc_target, options))


async def test_a_browser_on_an_allowed_origin_may_call_and_read_the_status(cors_api: Any) -> None:
    preflight = await cors_api.options(
        STREAM,
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, connect-protocol-version, x-grpc-web",
        },
    )
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
    assert "x-grpc-web" in preflight.headers["Access-Control-Allow-Headers"]
    request = models_pb2.GetModelRequest(model_id="nope").SerializeToString()
    resp = await cors_api.post(
        GET_MODEL,
        data=envelope(request),
        headers={"Origin": "http://app.example", "Content-Type": "application/grpc-web+proto"},
    )
    assert resp.headers["Access-Control-Allow-Origin"] == "http://app.example"
    exposed = {h.strip().lower() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed


async def test_a_foreign_origin_is_refused_in_the_protocols_words(cors_api: Any) -> None:
    connect = await cors_api.post(LIST_MODELS, json={}, headers={"Origin": "http://evil.example"})
    assert connect.status == 403
    assert (await connect.json())["code"] == "permission_denied"
    web = await cors_api.post(
        LIST_MODELS,
        data=envelope(b""),
        headers={"Origin": "http://evil.example", "Content-Type": "application/grpc-web+proto"},
    )
    assert web.status == 200
    assert web.headers["grpc-status"] == "7"


@pytest.mark.parametrize("path", [LIST_MODELS, "/api/v1/completions"])
async def test_a_corrupt_gzip_body_is_malformed_not_internal(api: Any, path: str) -> None:
    resp = await api.post(
        path,
        data=b"not gzip at all",
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert resp.status == 400
    assert "Content-Encoding" in (await resp.json())["message"]


async def test_a_passed_deadline_carries_its_reason(api: Any) -> None:
    resp = await api.post(
        CREATE,
        json={"model": "scripted-slow", "prompt": "hi"},
        headers={"Connect-Timeout-Ms": "100"},
    )
    assert resp.status == 504
    error = await resp.json()
    assert error["code"] == "deadline_exceeded"
    assert reason_of(error["details"]) == "DEADLINE_EXCEEDED"
