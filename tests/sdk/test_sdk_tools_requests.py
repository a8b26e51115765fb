"""What the SDK sends for tools, tool choice, response formats, tool messages, token counts and embeddings,
read back with the server's own protobuf classes: the Pythonic forms map 1:1 onto the protos' fields."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import json_format

from aibattle.v1 import common_pb2, completions_pb2, embeddings_pb2
from aibattle_sdk import _requests as R
from aibattle_sdk import join_tool_calls, v1

WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city now.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "minimum": 1}},
        "required": ["city"],
        "additionalProperties": False,
    },
}


def on_the_wire(rpc: Any, proto_class: Any, **options: Any) -> Any:
    """The request `R.completion` builds for `rpc`, as the server parses it."""
    defaults: dict[str, Any] = {
        "max_tokens": None,
        "temperature": None,
        "system_instruction": "",
        "messages": (),
        "file_data": None,
        "top_p": None,
        "stop": (),
        "seed": None,
    }
    request = R.completion(rpc, "m", "Hi", **{**defaults, **options})
    return proto_class.FromString(bytes(request))


@pytest.mark.parametrize(
    ("rpc", "proto_class"),
    [
        (R.CREATE_COMPLETION, completions_pb2.CreateCompletionRequest),
        (R.STREAM_COMPLETION, completions_pb2.StreamCompletionRequest),
    ],
)
def test_a_tool_dict_becomes_a_tool_with_its_schema_as_a_struct(rpc: Any, proto_class: Any) -> None:
    sent = on_the_wire(rpc, proto_class, tools=[{**WEATHER, "strict": True}, v1.Tool(name="now")])
    assert [t.name for t in sent.tools] == ["get_weather", "now"]
    assert [t.strict for t in sent.tools] == [True, False]
    assert sent.tools[0].description == "The weather in a city now."
    schema = json_format.MessageToDict(sent.tools[0].parameters)
    assert schema == WEATHER["parameters"]  # JSON numbers come back as floats: 1.0 == 1
    assert not sent.tools[1].HasField("parameters")  # takes none
    assert not sent.HasField("tool_choice") and not sent.HasField("response_format")


@pytest.mark.parametrize(
    ("given", "mode", "name"),
    [
        ("auto", common_pb2.TOOL_CHOICE_MODE_AUTO, ""),
        ("none", common_pb2.TOOL_CHOICE_MODE_NONE, ""),
        ("required", common_pb2.TOOL_CHOICE_MODE_REQUIRED, ""),
        ("get_weather", common_pb2.TOOL_CHOICE_MODE_TOOL, "get_weather"),
        (v1.ToolChoice(mode=v1.ToolChoiceMode.TOOL, name="auto"), common_pb2.TOOL_CHOICE_MODE_TOOL, "auto"),
    ],
)
def test_tool_choice_words_and_names(given: Any, mode: int, name: str) -> None:
    sent = on_the_wire(R.CREATE_COMPLETION, completions_pb2.CreateCompletionRequest, tool_choice=given)
    assert sent.HasField("tool_choice")
    assert (sent.tool_choice.mode, sent.tool_choice.name) == (mode, name)


def test_response_formats() -> None:
    def sent(given: Any) -> common_pb2.ResponseFormat:
        request = on_the_wire(
            R.STREAM_COMPLETION, completions_pb2.StreamCompletionRequest, response_format=given
        )
        assert request.HasField("response_format")
        return request.response_format

    assert sent("json_object").type == common_pb2.RESPONSE_FORMAT_TYPE_JSON_OBJECT
    assert sent("text").type == common_pb2.RESPONSE_FORMAT_TYPE_TEXT
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    as_schema = sent(schema)
    assert as_schema.type == common_pb2.RESPONSE_FORMAT_TYPE_JSON_SCHEMA
    assert json_format.MessageToDict(as_schema.schema) == schema
    assert (as_schema.name, as_schema.strict) == ("", False)
    exact = sent(
        v1.ResponseFormat(
            type=v1.ResponseFormatType.JSON_SCHEMA, name="answer", schema=R.as_struct(schema), strict=True
        )
    )
    assert (exact.name, exact.strict, json_format.MessageToDict(exact.schema)) == ("answer", True, schema)


def test_a_tool_round_trip_history_from_dicts() -> None:
    history = [
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Oslo"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 4}'},
        v1.Message(
            role="assistant", content="4 °C.", tool_calls=[v1.ToolCall(id="c2", name="x", arguments="{}")]
        ),
    ]
    sent = on_the_wire(R.CREATE_COMPLETION, completions_pb2.CreateCompletionRequest, messages=history)
    assert [m.role for m in sent.messages] == ["user", "assistant", "tool", "assistant"]
    call = sent.messages[1].tool_calls[0]
    assert (call.id, call.name, call.arguments) == ("call_1", "get_weather", '{"city": "Oslo"}')
    assert (sent.messages[2].tool_call_id, sent.messages[2].content) == ("call_1", '{"temp_c": 4}')
    assert sent.messages[3].tool_calls[0].id == "c2" and sent.messages[3].content == "4 °C."


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: R.as_tool({"type": "function", "function": WEATHER}), ["unknown key 'function'", "OpenAI"]),
        (lambda: R.as_message({"role": "tool", "tool_call": "x"}), ["unknown key 'tool_call'"]),
        (lambda: R.as_response_format({"type": "json_object"}), ["OpenAI's wrapper", "json_object"]),
        (lambda: R.as_response_format("json"), ["response_format", "'json'"]),
        (lambda: R.as_tool_choice(""), ["tool_choice"]),
    ],
)
def test_shapes_it_cannot_map_are_refused_before_sending(call: Any, words: list[str]) -> None:
    with pytest.raises(ValueError) as caught:
        call()
    for word in words:
        assert word in str(caught.value)


def test_a_string_where_a_message_or_tool_goes_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="message: expected a v1 message or a dict, got str"):
        R.as_messages(["Hi"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="tool: expected"):
        R.as_tools(["get_weather"])  # type: ignore[list-item]


def test_join_tool_calls_puts_stream_pieces_together_in_index_order() -> None:
    chunks = [
        v1.StreamCompletionResponse(content="Let me check. "),
        v1.StreamCompletionResponse(
            tool_calls=[
                v1.ToolCallDelta(index=1, id="call_b", name="get_time", arguments=""),
                v1.ToolCallDelta(index=0, id="call_a", name="get_weather", arguments='{"ci'),
            ]
        ),
        v1.StreamCompletionResponse(tool_calls=[v1.ToolCallDelta(index=0, arguments='ty": "Oslo"}')]),
        v1.StreamCompletionResponse(tool_calls=[v1.ToolCallDelta(index=1, arguments="{}")]),
        v1.StreamCompletionResponse(is_final=True, finish_reason=v1.FinishReason.TOOL_CALLS),
    ]
    calls = join_tool_calls(chunks)
    assert [(c.id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city": "Oslo"}'),
        ("call_b", "get_time", "{}"),
    ]
    pieces = [piece for chunk in chunks for piece in chunk.tool_calls]
    assert [(c.id, c.arguments) for c in join_tool_calls(pieces)] == [(c.id, c.arguments) for c in calls]
    assert join_tool_calls(chunks[:1]) == []


def test_count_tokens_and_embeddings_requests() -> None:
    from aibattle_sdk.client import Client

    sent: list[tuple[str, bytes]] = []

    class Recording:
        """The transport's seat: notes what a method sends and answers an empty response."""

        config = None

        def unary(self, rpc: Any, request: Any, *, timeout: float | None) -> Any:
            sent.append((rpc.route, bytes(request)))
            return rpc.response_type()

    client = Client(target="127.0.0.1:1")
    client.completions._t = client.embeddings._t = Recording()  # type: ignore[assignment]
    client.completions.count_tokens(
        model="m",
        prompt="Hi",
        system_instruction="Be brief.",
        messages=[{"role": "user", "content": "Yo"}],
        tools=[WEATHER],
    )
    client.embeddings.create(model="e", input="one text")
    client.embeddings.create(model="e", input=["a", "b"], dimensions=64)
    client.close()

    route, body = sent[0]
    assert route == "/aibattle.v1.CompletionService/CountTokens"
    count = completions_pb2.CountTokensRequest.FromString(body)
    assert (count.model, count.prompt, count.system_instruction) == ("m", "Hi", "Be brief.")
    assert [m.content for m in count.messages] == ["Yo"] and [t.name for t in count.tools] == ["get_weather"]
    assert sent[1][0] == "/aibattle.v1.EmbeddingService/CreateEmbeddings"
    one = embeddings_pb2.CreateEmbeddingsRequest.FromString(sent[1][1])
    assert list(one.input) == ["one text"] and not one.HasField("dimensions")
    two = embeddings_pb2.CreateEmbeddingsRequest.FromString(sent[2][1])
    assert list(two.input) == ["a", "b"] and two.dimensions == 64
