"""Deterministic replies from the configuration, for tests and orchestration demos.

A scripted model answers call i with script[i % len(script)], streamed word by word
(whitespace kept), optionally pausing between words or failing part-way. It is never
configured implicitly: only a `[[models]]` entry with provider = "scripted" creates one.

**Tool calls.** A line of an entry that starts with `tool:` is a call instead of text:
`tool:<name> <arguments as a JSON object>` (no arguments: `{}`), e.g. in TOML

    script = [
        'tool:get_weather {"city": "Paris"}',                  # one call
        "Checking the time too.\ntool:get_time {\"zone\": \"CET\"}",  # text, then a call
        "It is sunny in Paris.",                               # text
    ]

An entry may hold several such lines (several calls, in order) and text lines besides, which are
said first. A script with any call gives the model the "tools" capability (`capabilities`). The
calls are streamed as OpenAI streams them: the first piece of each carries its id (`call_<hex>`)
and name, the arguments follow in fragments; the answer then finishes with TOOL_CALLS. A model
calls only what it is offered: a call to a tool the request does not offer (or forbids, by its
tool choice) is left out, and the entry's text alone answers.

**JSON.** A scripted model cannot shape its output, so it gives JSON only when its configured
`capabilities` claim "json"; asked for JSON then, an entry that is not a JSON value (an object, for
json_object) fails the call rather than pass free text off as structured output.

Usage is honest about what it was given: prompt tokens are the words of every message
(text attachments are inlined there) plus one token per started KiB of each non-text
attachment, which a script cannot read but a real multimodal model would be billed for.
Completion tokens are the words said, plus the words of each call's name and arguments.
It stops at the request's deadline between words, as a real upstream call would time out.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncGenerator, Iterator

from common.enums import FinishReason
from common.errors import PROVIDER_ERROR, DeadlineExceeded, UpstreamError
from server.providers.base import (
    ChatRequest,
    Delta,
    Finish,
    FormatType,
    StreamItem,
    ToolCallPiece,
    ToolMode,
    Usage,
)
from server.providers.http.wire import new_call_id
from server.providers.text import StopMatcher
from server.scripts import parse_entry
from server.settings import ModelConfig

_WORDS = re.compile(r"\S+\s*|\s+")
_NOT_JSON = object()
ARGUMENT_PIECE = 8
"""Characters of a call's arguments per streamed piece (OpenAI sends a few tokens' worth)."""


ATTACHMENT_TOKEN_BYTES = 1024


def count_tokens(text: str) -> int:
    """Scripted 'tokens' are words: deterministic, and close enough for usage accounting."""
    return len(text.split())


def prompt_tokens(request: ChatRequest) -> int:
    """Words of the messages (and of their tool calls, and of the tools offered) plus a size-based
    count for each non-text attachment."""
    words = sum(count_tokens(m.content) for m in request.messages)
    calls = sum(count_tokens(f"{c.name} {c.arguments}") for m in request.messages for c in m.tool_calls)
    tools = sum(
        count_tokens(f"{t.name} {t.description} {json.dumps(t.parameters) if t.parameters else ''}")
        for t in request.tools
    )
    files = sum(
        max(1, -(-len(a.content) // ATTACHMENT_TOKEN_BYTES)) for m in request.messages for a in m.attachments
    )
    return words + calls + tools + files


def offered(calls: tuple[tuple[str, str], ...], request: ChatRequest) -> tuple[tuple[str, str], ...]:
    """The calls a model may make: to tools the request offers, as its tool choice allows."""
    choice = request.tool_choice
    if choice.mode == ToolMode.NONE:
        return ()
    names = {t.name for t in request.tools}
    if choice.mode == ToolMode.TOOL:
        names &= {choice.name}
    return tuple(c for c in calls if c[0] in names)


def pieces(arguments: str) -> list[str]:
    return [arguments[i : i + ARGUMENT_PIECE] for i in range(0, len(arguments), ARGUMENT_PIECE)] or [""]


class ScriptedProvider:
    name = "scripted"

    def __init__(self) -> None:
        self._turns: dict[str, Iterator[int]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        turn = next(self._turns.setdefault(model.id, itertools.count())) % len(model.script)
        reply, declared = parse_entry(model.script[turn])
        calls = offered(declared, request)
        if request.response_format is not None and not calls:
            _check_json(model, turn, reply, request.response_format.type)
        prompt = prompt_tokens(request)
        stops = StopMatcher(request.stop)
        produced = 0
        chunk = 0  # chunks sent, words and call pieces alike: error_after_chunks and the pauses count them
        reason = FinishReason.STOP
        for word in _WORDS.findall(reply):
            if chunk == model.error_after_chunks:
                raise _failure(model, chunk)
            if produced >= request.max_tokens:
                reason = FinishReason.LENGTH
                break
            await _pace(model, request, chunk, produced)
            text = stops.feed(word)
            produced += count_tokens(word)
            chunk += 1
            if text:
                yield Delta(content=text)
            if stops.stopped:
                break
        if tail := stops.flush():
            yield Delta(content=tail)
        if reason == FinishReason.STOP and not stops.stopped:
            for index, (name, arguments) in enumerate(calls):
                if produced >= request.max_tokens:
                    reason = FinishReason.LENGTH
                    break
                call_id = new_call_id()
                for n, fragment in enumerate(pieces(arguments)):
                    if chunk == model.error_after_chunks:
                        raise _failure(model, chunk)
                    await _pace(model, request, chunk, produced)
                    first = n == 0
                    piece = ToolCallPiece(
                        index, call_id if first else "", name if first else "", arguments=fragment
                    )
                    chunk += 1
                    yield Delta(tool_calls=(piece,))
                produced += count_tokens(f"{name} {arguments}")
                reason = FinishReason.TOOL_CALLS
        yield Finish(Usage(prompt_tokens=prompt, completion_tokens=produced), reason)


def _check_json(model: ModelConfig, turn: int, reply: str, kind: FormatType) -> None:
    """Structured output from a script: only an entry that is JSON (an object, for json_object)."""
    try:
        value = json.loads(reply)
    except ValueError:
        value = _NOT_JSON
    if value is _NOT_JSON or (kind == FormatType.JSON_OBJECT and not isinstance(value, dict)):
        what = "a JSON object" if kind == FormatType.JSON_OBJECT else "JSON"
        raise UpstreamError(
            None, model.id, PROVIDER_ERROR, f"script[{turn}] is not {what}, which the request asks for"
        )


def _failure(model: ModelConfig, chunks: int) -> UpstreamError:
    return UpstreamError(None, model.id, PROVIDER_ERROR, f"scripted failure after {chunks} chunks")


async def _pace(model: ModelConfig, request: ChatRequest, chunk: int, produced: int) -> None:
    """The configured pause before every chunk but the first; the deadline checked either way."""
    if model.chunk_delay_ms and chunk:
        await _sleep_within(model.chunk_delay_ms / 1000, request, produced)
    elif (left := request.time_left()) is not None and left <= 0:
        raise _deadline(produced)


async def _sleep_within(delay: float, request: ChatRequest, produced: int) -> None:
    left = request.time_left()
    if left is not None and left < delay:
        await asyncio.sleep(max(left, 0))
        raise _deadline(produced)
    await asyncio.sleep(delay)


def _deadline(produced: int) -> DeadlineExceeded:
    return DeadlineExceeded(
        f"the deadline passed while the scripted model was replying ({produced} tokens sent)"
    )
