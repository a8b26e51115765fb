"""Attachments through a real gRPC server: text is inlined into the prompt, never dropped;
invalid UTF-8 is refused naming the field; non-text attachments are counted, not ignored."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from aibattle.v1 import common_pb2, completions_pb2, completions_pb2_grpc
from server.providers.base import ChatRequest
from tests.conftest import error_info, rich_status

NOTES = common_pb2.FileData(
    type="text", mime_type="text/plain", content=b"alpha beta gamma\n", path="notes.txt"
)


async def complete(channel: grpc.aio.Channel, **fields: object) -> completions_pb2.CreateCompletionResponse:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    return await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(model="scripted-echo", **fields)
    )


async def test_text_attachment_is_a_delimited_block_before_the_prompt(
    channel: grpc.aio.Channel, scripted_requests: list[ChatRequest]
) -> None:
    await complete(channel, prompt="Summarise it.", file_data=NOTES)
    (message,) = scripted_requests[0].messages
    assert message.content == (
        '<attachment path="notes.txt" mime_type="text/plain">\n'
        "alpha beta gamma\n"
        "</attachment>\n"
        "\n"
        "Summarise it."
    )
    assert message.attachments == ()


async def test_text_attachment_words_count_as_prompt_tokens(channel: grpc.aio.Channel) -> None:
    bare = await complete(channel, prompt="Summarise it.")
    attached = await complete(channel, prompt="Summarise it.", file_data=NOTES)
    assert attached.usage.prompt_tokens >= bare.usage.prompt_tokens + 3  # alpha beta gamma


async def test_message_attachments_keep_their_order_and_a_text_document_counts_as_text(
    channel: grpc.aio.Channel, scripted_requests: list[ChatRequest]
) -> None:
    readme = common_pb2.FileData(type="document", mime_type="text/markdown", content="# Títle".encode())
    message = common_pb2.Message(role="user", content="Compare them.", file_data=[NOTES, readme])
    # scripted-echo lacks the "document" capability: a text/* document is read as text.
    await complete(channel, messages=[message])
    content = scripted_requests[0].messages[0].content
    assert content.index("alpha beta gamma") < content.index("# Títle") < content.index("Compare them.")
    assert '<attachment mime_type="text/markdown">' in content


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        (
            {"prompt": "x", "file_data": common_pb2.FileData(type="text", content=b"ok \xff\xfe")},
            "file_data.content",
        ),
        (
            {
                "messages": [
                    common_pb2.Message(
                        role="user", file_data=[NOTES, common_pb2.FileData(type="text", content=b"\xc3(")]
                    )
                ]
            },
            "messages[0].file_data[1].content",
        ),
    ],
)
async def test_invalid_utf8_text_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, fields: dict[str, object], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await complete(channel, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details().startswith(f"{field}: a text attachment must be UTF-8")
    assert error_info(caught.value).metadata["field"] == field
    bad_request = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad_request) for d in rich_status(caught.value).details)
    assert bad_request.field_violations[0].field == field


async def test_scripted_model_counts_non_text_attachments_by_size(channel: grpc.aio.Channel) -> None:
    stub = completions_pb2_grpc.CompletionServiceStub(channel)
    image = common_pb2.FileData(type="image", mime_type="image/png", content=b"\x89PNG" + bytes(2996))
    reply = await stub.CreateCompletion(
        completions_pb2.CreateCompletionRequest(
            model="scripted-vision", prompt="what is it?", file_data=image
        )
    )
    assert reply.usage.prompt_tokens == 3 + 3  # three words, three started KiB
