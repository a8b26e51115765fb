"""ModelService: filters, pagination, errors."""

from __future__ import annotations

import base64

import grpc
import pytest

from aibattle.v1 import models_pb2, models_pb2_grpc
from tests.conftest import error_info


async def test_list_models_with_filters(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    everything = await stub.ListModels(models_pb2.ListModelsRequest())
    assert [m.id for m in everything.models] == [
        "scripted-echo",
        "scripted-fail",
        "scripted-slow",
        "scripted-vision",
    ]
    assert everything.total_size == 4 and not everything.next_page_token
    echo = everything.models[0]
    assert (echo.provider, list(echo.capabilities)) == ("scripted", ["text", "conversation"])
    assert (echo.pricing.input, echo.pricing.output) == (0.001, 0.002)
    vision = await stub.ListModels(models_pb2.ListModelsRequest(capability="image"))
    assert [m.id for m in vision.models] == ["scripted-vision"]
    none = await stub.ListModels(models_pb2.ListModelsRequest(provider="openai"))
    assert list(none.models) == [] and none.total_size == 0


async def test_pagination_walks_every_model_once(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    seen: list[str] = []
    token = ""
    for _ in range(10):
        page = await stub.ListModels(models_pb2.ListModelsRequest(page_size=3, page_token=token))
        seen += [m.id for m in page.models]
        token = page.next_page_token
        if not token:
            break
    assert seen == ["scripted-echo", "scripted-fail", "scripted-slow", "scripted-vision"]


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"page_token": "garbage!"}, "page_token"),
        # A crafted token of deeply nested JSON was an INTERNAL (RecursionError in the decoder).
        ({"page_token": base64.urlsafe_b64encode(b"[" * 100_000).decode()}, "page_token"),
        ({"page_size": -1}, "page_size"),
    ],
)
async def test_bad_page_arguments(
    channel: grpc.aio.Channel, request_fields: dict[str, object], field: str
) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(models_pb2.ListModelsRequest(**request_fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(field)


async def test_page_token_bound_to_its_filters(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    first = await stub.ListModels(models_pb2.ListModelsRequest(page_size=1))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.ListModels(
            models_pb2.ListModelsRequest(page_size=1, page_token=first.next_page_token, provider="x")
        )
    assert "different filters" in caught.value.details()


async def test_get_model(channel: grpc.aio.Channel) -> None:
    stub = models_pb2_grpc.ModelServiceStub(channel)
    reply = await stub.GetModel(models_pb2.GetModelRequest(model_id="scripted-vision"))
    assert reply.model.id == "scripted-vision" and "image" in reply.model.capabilities
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetModel(models_pb2.GetModelRequest(model_id="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_info(caught.value).metadata["model"] == "nope"
