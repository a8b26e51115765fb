"""Ollama's native API: POST /api/chat, answered as NDJSON (or one JSON object with stream=false).

Each line of a streamed answer is one object: `{"message": {"content", "thinking"?}, "done": false}`
while the model writes, then one `{"done": true, "done_reason", "prompt_eval_count", "eval_count",
...durations in ns}`. An error after the headers is a line `{"error": "..."}`; before them, a
non-2xx status with the same body. Sampling options go in `options` (`num_predict` is max_tokens).
Ollama has no authentication of its own; a key, when `api_key_env` names one, is sent as a bearer
token for the proxies that put one in front of it.

`discover_models()` lists what an Ollama server has pulled (GET /api/tags).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from common.enums import FinishReason
from server.providers.attachments import cannot_take
from server.providers.base import PENALTIES, ChatMessage, ChatRequest, Delta, Finish, StreamItem, Usage
from server.providers.http.base import UNREPORTED, HttpClient, HttpProvider, HttpRequest, sampling
from server.providers.http.errors import (
    from_status,
    parse_retry_after,
    protocol_error,
    redact_error,
    stream_error,
    unreachable,
)
from server.providers.http.wire import FrameError, NdjsonParser
from server.settings import ModelConfig

PROVIDER = "ollama"
#: done_reason → ours. "load"/"unload" answer a request without messages (which we never send);
#: anything unknown is a normal stop rather than a failure.
_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}
_DISCOVERY_TIMEOUT = 10.0


class OllamaProvider(HttpProvider):
    """Models served by an Ollama server, through its native /api/chat."""

    name = PROVIDER

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        options: dict[str, Any] = {
            "num_predict": request.max_tokens,
            **sampling(request),
            **request.penalties(model, {name: name for name in PENALTIES}),
        }
        body = {
            "model": model.upstream_model or model.id,
            "messages": [_message(model, m) for m in request.messages],
            "stream": request.stream,
            "options": options,
        }
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return HttpRequest(f"{model.upstream.base_url}/api/chat", body, headers)

    async def parse_stream(
        self, model: ModelConfig, chunks: AsyncIterator[bytes]
    ) -> AsyncIterator[StreamItem]:
        parser = NdjsonParser()
        async for chunk in chunks:
            for line in parser.feed(chunk):
                for item in _items(model, line):
                    yield item
                    if isinstance(item, Finish):
                        return
        for line in parser.close():
            for item in _items(model, line):
                yield item
                if isinstance(item, Finish):
                    return
        raise protocol_error(PROVIDER, model.id, 'the stream ended without its "done": true line')

    def parse_whole(self, model: ModelConfig, body: Any) -> list[StreamItem]:
        items = _items(model, body)
        if not items or not isinstance(items[-1], Finish):
            raise protocol_error(PROVIDER, model.id, f'an answer without "done": true: {str(body)[:200]}')
        return items

    def error_text(self, parsed: Any) -> str | None:
        """Ollama's `{"error": "..."}`."""
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
            return str(parsed["error"])
        return None


def _message(model: ModelConfig, message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": str(message.role), "content": message.content}
    images = []
    for attachment in message.attachments:
        if attachment.type != "image":
            raise cannot_take(model, attachment, "images only")
        images.append(base64.b64encode(attachment.content).decode("ascii"))
    if images:
        out["images"] = images
    return out


def _items(model: ModelConfig, frame: Any) -> list[StreamItem]:
    """One Ollama object → a Delta (if it carries text) and, on the last one, the Finish."""
    if not isinstance(frame, dict):
        raise FrameError(f"a line is not a JSON object: {str(frame)[:200]!r}")
    if "error" in frame:
        raise stream_error(PROVIDER, model.id, str(frame["error"]))
    message = frame.get("message") or {}
    if not isinstance(message, dict):
        raise FrameError(f'"message" is not an object: {str(message)[:200]!r}')
    content, thinking = message.get("content") or "", message.get("thinking") or ""
    if not isinstance(content, str) or not isinstance(thinking, str):
        raise FrameError("message content or thinking is not a string")
    items: list[StreamItem] = []
    if content or thinking:
        items.append(Delta(content=content, thinking=thinking))
    if frame.get("done") is True:
        # Ollama leaves prompt_eval_count out when the whole prompt came from its cache (it was still
        # billed), and an older or proxied server may leave out both: the base estimates them.
        completion = frame.get("eval_count")
        prompt = frame.get("prompt_eval_count")
        reason = _FINISH_REASONS.get(str(frame.get("done_reason") or "stop"), FinishReason.STOP)
        usage = Usage(
            prompt_tokens=prompt if isinstance(prompt, int) else UNREPORTED,
            completion_tokens=completion if isinstance(completion, int) else UNREPORTED,
        )
        items.append(Finish(usage, reason))
    return items


async def discover_models(client: HttpClient, base_url: str, *, key: str | None = None) -> list[str]:
    """The names of the models an Ollama server has pulled (GET {base_url}/api/tags), in its order.

    Errors are the same UpstreamErrors a chat call raises (with model "*"), so a caller can report
    an unreachable or misconfigured server the same way.
    """
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        async with asyncio.timeout(_DISCOVERY_TIMEOUT):
            async with client.session.get(f"{base_url.rstrip('/')}/api/tags", headers=headers) as response:
                body = await response.read()
                if response.status >= 300:
                    raise redact_error(
                        from_status(
                            PROVIDER,
                            "*",
                            response.status,
                            OllamaProvider(client).error_message(body),
                            retry_after=parse_retry_after(response.headers.get("Retry-After")),
                        ),
                        key,
                    )
    except TimeoutError:
        raise unreachable(
            PROVIDER, "*", f"no answer from /api/tags within {_DISCOVERY_TIMEOUT:g} s"
        ) from None
    except aiohttp.ClientError as exc:
        raise unreachable(PROVIDER, "*", type(exc).__name__) from None
    try:
        listed = json.loads(body)["models"]
        return [str(entry["name"]) for entry in listed]
    except (ValueError, KeyError, TypeError):
        raise redact_error(protocol_error(PROVIDER, "*", f"/api/tags answered {body[:200]!r}"), key) from None
