"""The embedded model's structured output and token counting, with the real SmolLM2: response_format
becomes a llama.cpp grammar, so the answer parses as JSON (and follows a JSON Schema); count_tokens
is exactly the prompt generation reads.

Grammar-constrained sampling costs more per token (measured 2026-12-02 on 2 busy vCPUs, SmolLM2, 48
tokens at most: 155-175 ms a token for json_object and 150-320 for a small schema, against 110-120 free,
prompt included); max_tokens stays small here.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from common.enums import FinishReason
from common.errors import InvalidArgument
from server.config import LocalProviderConfig, ModelConfig
from server.providers.base import (
    ChatMessage,
    ChatRequest,
    Delta,
    Finish,
    FormatType,
    ResponseFormat,
    Role,
    TokenCounter,
)
from server.providers.local import LocalProvider

pytestmark = pytest.mark.slow
MODEL = ModelConfig(id="smollm2-135m", provider="local", capabilities=("text", "json"))
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture
async def started() -> AsyncIterator[LocalProvider]:
    local = LocalProvider(LocalProviderConfig())
    await local.start()
    yield local
    await local.close()


def ask(text: str, response_format: ResponseFormat | None = None, **fields: object) -> ChatRequest:
    messages = (ChatMessage(Role.SYSTEM, "You answer in JSON."), ChatMessage(Role.USER, text))
    return ChatRequest(messages=messages, response_format=response_format, **fields)  # type: ignore[arg-type]


async def answer(local: LocalProvider, request: ChatRequest) -> tuple[str, Finish]:
    items = [item async for item in local.stream(MODEL, request)]
    finish = items[-1]
    assert isinstance(finish, Finish)
    return "".join(i.content for i in items if isinstance(i, Delta)), finish


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_json_object_answers_parse(started: LocalProvider, seed: int) -> None:
    request = ask("Describe a cat.", ResponseFormat(FormatType.JSON_OBJECT), max_tokens=96, seed=seed)
    text, finish = await answer(started, request)
    assert finish.reason == FinishReason.STOP, text  # the grammar closed the object, then only EOS fits
    assert isinstance(json.loads(text), dict), text


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_json_schema_answers_follow_the_schema(started: LocalProvider, seed: int) -> None:
    request = ask(
        "Invent a person.", ResponseFormat(FormatType.JSON_SCHEMA, PERSON), max_tokens=48, seed=seed
    )
    text, finish = await answer(started, request)
    assert finish.reason == FinishReason.STOP, text
    value = json.loads(text)
    assert set(value) == {"name", "age"}, text
    assert isinstance(value["name"], str) and type(value["age"]) is int, text


async def test_without_a_format_the_same_request_is_free_text(started: LocalProvider) -> None:
    """The control: this prompt's greedy answer is prose, so the JSON above came from the grammar."""
    text, _ = await answer(started, ask("Describe a cat.", max_tokens=24, temperature=0.0))
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


async def test_a_schema_the_converter_cannot_follow_is_refused(started: LocalProvider) -> None:
    schema = {"type": "object", "properties": {"a": {"$ref": "https://example.com/a.json"}}}
    request = ask("Anything.", ResponseFormat(FormatType.JSON_SCHEMA, schema), max_tokens=8)
    with pytest.raises(InvalidArgument) as caught:
        await answer(started, request)
    assert (caught.value.field, caught.value.reason) == ("response_format.schema", "UNSUPPORTED_PARAMETER")


async def test_count_tokens_is_the_prompt_generation_reads(started: LocalProvider) -> None:
    assert isinstance(started, TokenCounter)
    for request in (
        ask("Describe a cat.", max_tokens=1),
        ask("A longer question, with more words in it, about dogs and cats. " * 5, max_tokens=1),
    ):
        counted = await started.count_tokens(MODEL, request)
        _, finish = await answer(started, request)
        assert counted == finish.usage.prompt_tokens
    short = await started.count_tokens(MODEL, ask("Hi.", max_tokens=1))
    assert await started.count_tokens(MODEL, ask("Hi. " * 20, max_tokens=1)) > short
