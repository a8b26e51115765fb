"""Deterministic replies from the configuration, for tests and orchestration demos.

A scripted model answers call i with script[i % len(script)], streamed word by word
(whitespace kept), optionally pausing between words or failing part-way. It is never
configured implicitly: only a `[[models]]` entry with provider = "scripted" creates one.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncGenerator, Iterator

from common.enums import FinishReason
from common.errors import ProviderError
from server.config import ModelConfig
from server.providers.base import ChatRequest, Delta, Finish, StreamItem, Usage
from server.providers.text import StopMatcher

_WORDS = re.compile(r"\S+\s*|\s+")


def count_tokens(text: str) -> int:
    """Scripted 'tokens' are words: deterministic, and close enough for usage accounting."""
    return len(text.split())


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
        prompt_tokens = sum(count_tokens(m.content) for m in request.messages)
        stops = StopMatcher(request.stop)
        produced = 0
        reason = FinishReason.STOP
        for index, word in enumerate(_WORDS.findall(reply)):
            if index == model.error_after_chunks:
                raise ProviderError(model.id, f"scripted failure after {index} chunks")
            if produced >= request.max_tokens:
                reason = FinishReason.LENGTH
                break
            if model.chunk_delay_ms and index:
                await asyncio.sleep(model.chunk_delay_ms / 1000)
            text = stops.feed(word)
            produced += count_tokens(word)
            if text:
                yield Delta(content=text)
            if stops.stopped:
                break
        if tail := stops.flush():
            yield Delta(content=tail)
        yield Finish(Usage(prompt_tokens=prompt_tokens, completion_tokens=produced), reason)
