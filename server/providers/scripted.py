"""Deterministic replies from the configuration, for tests and orchestration demos.

A scripted model answers call i with script[i % len(script)], streamed word by word
(whitespace kept), optionally pausing between words or failing part-way. It is never
configured implicitly: only a `[[models]]` entry with provider = "scripted" creates one.

Usage is honest about what it was given: prompt tokens are the words of every message
(text attachments are inlined there) plus one token per started KiB of each non-text
attachment, which a script cannot read but a real multimodal model would be billed for.
It stops at the request's deadline between words, as a real upstream call would time out.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncGenerator, Iterator

from common.enums import FinishReason
from common.errors import PROVIDER_ERROR, DeadlineExceeded, UpstreamError
from server.providers.base import ChatRequest, Delta, Finish, StreamItem, Usage
from server.providers.text import StopMatcher
from server.settings import ModelConfig

_WORDS = re.compile(r"\S+\s*|\s+")


ATTACHMENT_TOKEN_BYTES = 1024


def count_tokens(text: str) -> int:
    """Scripted 'tokens' are words: deterministic, and close enough for usage accounting."""
    return len(text.split())


def prompt_tokens(request: ChatRequest) -> int:
    """Words of the messages plus a size-based count for each non-text attachment."""
    words = sum(count_tokens(m.content) for m in request.messages)
    files = sum(
        max(1, -(-len(a.content) // ATTACHMENT_TOKEN_BYTES)) for m in request.messages for a in m.attachments
    )
    return words + files


class ScriptedProvider:
    name = "scripted"

    def __init__(self) -> None:
        self._turns: dict[str, Iterator[int]] = {}

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        turn = next(self._turns.setdefault(model.id, itertools.count()))
        reply = model.script[turn % len(model.script)]
        prompt = prompt_tokens(request)
        stops = StopMatcher(request.stop)
        produced = 0
        reason = FinishReason.STOP
        for index, word in enumerate(_WORDS.findall(reply)):
            if index == model.error_after_chunks:
                raise UpstreamError(None, model.id, PROVIDER_ERROR, f"scripted failure after {index} chunks")
            if produced >= request.max_tokens:
                reason = FinishReason.LENGTH
                break
            if model.chunk_delay_ms and index:
                await _sleep_within(model.chunk_delay_ms / 1000, request, produced)
            elif (left := request.time_left()) is not None and left <= 0:
                raise _deadline(produced)
            text = stops.feed(word)
            produced += count_tokens(word)
            if text:
                yield Delta(content=text)
            if stops.stopped:
                break
        if tail := stops.flush():
            yield Delta(content=tail)
        yield Finish(Usage(prompt_tokens=prompt, completion_tokens=produced), reason)


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
