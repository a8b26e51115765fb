"""One JSON request, one JSON answer: what an HTTP adapter's non-chat calls share (embeddings, token
counting), with the chat stream's rules for keys, time and errors (`server.providers.http.base`).

The whole call is bounded by the model's `ttft_timeout_seconds` (nothing streams: the answer is the
first token) or by the caller's deadline when that comes first (DEADLINE_EXCEEDED). A non-2xx answer
quotes the upstream through the adapter's own `error_message`; an answer `parse` cannot read is
UPSTREAM_PROTOCOL_ERROR; every error passes the redactor.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiohttp

from common.errors import ApiError, DeadlineExceeded
from server.providers.http.base import HttpProvider
from server.providers.http.errors import from_status, protocol_error, redact_error, timed_out, unreachable
from server.providers.http.wire import FrameError
from server.providers.text import estimate_tokens
from server.settings import ModelConfig

T = TypeVar("T")


async def post_json(
    provider: HttpProvider,
    model: ModelConfig,
    url: str,
    body: dict[str, Any],
    *,
    headers: dict[str, str],
    key: str | None,
    deadline: float | None,
    parse: Callable[[Any], T],
) -> T:
    """POST `body` to `url` and return `parse` of the JSON answer; raises the upstream errors the chat
    stream would (UPSTREAM_*), or DeadlineExceeded."""
    name = str(model.provider)
    timeout = model.upstream.ttft_timeout_seconds
    by_deadline = False
    if deadline is not None and deadline - time.monotonic() <= timeout:
        timeout, by_deadline = max(0.0, deadline - time.monotonic()), True
    failure: ApiError
    try:
        async with asyncio.timeout(timeout):
            async with provider._client.session.post(url, json=body, headers=headers) as response:
                raw = await response.read()
                status, retry_header = response.status, response.headers.get("Retry-After")
    except TimeoutError:
        if by_deadline:
            raise DeadlineExceeded(f"the deadline passed while waiting for model {model.id!r}") from None
        failure = timed_out(name, model.id, f"no answer within {model.upstream.ttft_timeout_seconds:g} s")
    except aiohttp.ClientError as exc:
        failure = unreachable(name, model.id, type(exc).__name__)
    else:
        if status >= 300:
            failure = from_status(
                name,
                model.id,
                status,
                provider.error_message(raw),
                retry_after=provider.retry_after(raw, retry_header),
            )
        else:
            try:
                return parse(json.loads(raw))
            except ApiError as exc:
                failure = exc
            except (FrameError, ValueError, TypeError, LookupError, AttributeError) as exc:
                failure = protocol_error(name, model.id, f"{type(exc).__name__}: {exc}")
    raise redact_error(failure, key)


def vectors(model: ModelConfig, found: list[Any], count: int, dimensions: int | None) -> list[list[float]]:
    """The answer's vectors, checked: one per input text, each a list of numbers, all of one length
    (`dimensions` when asked for)."""
    if len(found) != count:
        raise FrameError(f"{len(found)} embeddings for {count} inputs")
    out: list[list[float]] = []
    for vector in found:
        if not isinstance(vector, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in vector
        ):
            raise FrameError(f"an embedding is not a list of numbers: {str(vector)[:200]!r}")
        out.append([float(x) for x in vector])
    lengths = {len(v) for v in out}
    if len(lengths) > 1:
        raise FrameError(f"embeddings of different lengths: {sorted(lengths)}")
    if dimensions is not None and lengths and lengths != {dimensions}:
        raise FrameError(f"embeddings of {lengths.pop()} dimensions, {dimensions} asked for")
    return out


def embedding_tokens(reported: Any, texts: Sequence[str]) -> int:
    """An embeddings answer's prompt tokens: what the upstream reported when it is an integer (not
    a bool), else an estimate from the texts (Gemini reports none)."""
    if isinstance(reported, int) and not isinstance(reported, bool):
        return reported
    return sum(estimate_tokens(text) for text in texts)


def token_count(model: ModelConfig, field: str) -> Callable[[Any], int]:
    """A `parse` for a counting endpoint's answer: the non-negative integer at `field` (Anthropic's
    `input_tokens`, Gemini's `totalTokens`), else a protocol error naming what came."""

    def parse(answer: Any) -> int:
        tokens = answer.get(field) if isinstance(answer, dict) else None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            raise protocol_error(str(model.provider), model.id, f"no {field} in {str(answer)[:200]!r}")
        return tokens

    return parse
