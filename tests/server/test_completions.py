"""CompletionService against a real grpc.aio server with scripted models."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from tests.conftest import error_info, rich_status


async def test_create_completion_returns_reply_usage_and_cost(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    reply = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="scripted-echo", prompt="Say hello", system_instruction="Be kind"
        )
    )
    assert reply.content == "Hello there, friend. This is a scripted reply."
    assert reply.id.startswith("cmpl-")
    assert reply.finish_reason == common_pb2.FINISH_REASON_STOP
    assert reply.usage.prompt_tokens == 4  # "Say hello" + "Be kind", in words
    assert reply.usage.completion_tokens == 8
    assert reply.usage.total_tokens == 12
    assert reply.usage.cost_usd == pytest.approx(4 * 0.001 + 8 * 0.002)


async def test_stream_completion_sends_deltas_then_final_usage(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    chunks = [
        c
        async for c in stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(model="scripted-echo", prompt="hi")
        )
    ]
    assert len(chunks) == 9
    assert "".join(c.content for c in chunks) == "Hello there, friend. This is a scripted reply."
    assert [c.index for c in chunks] == list(range(9))
    assert len({c.id for c in chunks}) == 1
    assert not any(c.is_final for c in chunks[:-1])
    final = chunks[-1]
    assert final.is_final and final.finish_reason == common_pb2.FINISH_REASON_STOP
    assert final.usage.completion_tokens == 8


async def test_stop_sequences_and_max_tokens(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    stopped = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="x", stop=["friend"])
    )
    assert stopped.content == "Hello there, "
    assert stopped.finish_reason == common_pb2.FINISH_REASON_STOP
    capped = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="x", max_tokens=3)
    )
    assert capped.content == "Hello there, friend. "
    assert capped.finish_reason == common_pb2.FINISH_REASON_LENGTH


async def test_unknown_model_is_not_found_naming_it(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="gpt-17", prompt="hi"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "gpt-17" in caught.value.details()
    info = error_info(caught.value)
    assert (info.reason, info.domain, info.metadata["model"]) == ("MODEL_NOT_FOUND", "aibattle.dev", "gpt-17")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"prompt": "hi", "max_tokens": -5}, "max_tokens"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "temperature": 2.5}, "temperature"),
        ({"prompt": "hi", "temperature": -0.1}, "temperature"),
        ({"prompt": "hi", "top_p": 0.0}, "top_p"),
        ({}, "prompt"),
        ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": [common_pb2.Message(role="wizard", content="x")]}, "messages[0].role"),
        ({"model": ""}, "model"),
    ],
)
async def test_invalid_arguments_name_the_field(
    channel: grpc.aio.Channel, fields: dict[str, object], field: str
) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    request = completions_pb2.StreamCompletionRequest(**{"model": "scripted-echo", **fields})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stub.StreamCompletion(request):
            pass
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}:")
    assert error_info(caught.value).reason == "INVALID_FIELD"
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in rich_status(caught.value).details)
    assert bad_request.field_violations[0].field == field


async def test_attachment_needs_the_model_capability(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    image = common_pb2.FileData(type="image", mime_type="image/png", content=b"\x89PNG")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(
                model="scripted-echo", prompt="what is it?", file_data=image
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "'image' capability" in caught.value.details()
    assert error_info(caught.value).reason == "CAPABILITY_MISSING"
    ok = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="scripted-vision", prompt="what is it?", file_data=image
        )
    )
    assert ok.content == "I see."


async def test_provider_failure_mid_stream_ends_with_unavailable(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    received: list[str] = []
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for chunk in stub.StreamCompletion(
            completions_pb2.StreamCompletionRequest(model="scripted-fail", prompt="x")
        ):
            received.append(chunk.content)
    assert received == ["one ", "two "]
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_info(caught.value).reason == "PROVIDER_ERROR"


async def test_unexpected_exception_is_internal_without_details(
    channel: grpc.aio.Channel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from server.providers.scripted import ScriptedProvider

    async def broken(self: object, model: object, request: object):  # type: ignore[no-untyped-def]
        raise RuntimeError("secret internals: /etc/passwd")
        yield

    monkeypatch.setattr(ScriptedProvider, "stream", broken)
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateCompletion(
            completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="x")
        )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret" not in caught.value.details() and "Traceback" not in caught.value.details()
    assert "request id" in caught.value.details()
    assert error_info(caught.value).reason == "INTERNAL"
    logged = [r for r in caplog.records if r.name == "aibattle.errors"]
    assert logged and logged[0].exc_info is not None and "secret internals" in str(logged[0].exc_info[1])


async def test_request_id_is_echoed_or_generated(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    request = completions_pb2.CreateCompletionRequest(model="scripted-echo", prompt="x")
    call = stub.CreateCompletion(request, metadata=(("x-request-id", "req-42"),))
    await call
    assert ("x-request-id", "req-42") in tuple(await call.initial_metadata())
    call = stub.CreateCompletion(request)
    await call
    generated = dict(await call.initial_metadata())["x-request-id"]
    assert len(generated) == 32
