"""What every HTTP adapter shares: the pooled session, the request, status checks, timeouts and keys.

An adapter subclasses `HttpProvider` and writes three things: `build()` (URL, headers, JSON body for
a chat request), `parse_stream()` (its wire format's frames → `Delta`s and one `Finish`) and
`parse_whole()` (a non-streaming answer → the same). Everything else is here, once:

* one `aiohttp.ClientSession` per process with a bounded connection pool (keep-alive, per-host cap);
* timeouts: the first token must come within `ttft_timeout_seconds`, then no gap between chunks may
  exceed `idle_timeout_seconds`, and the caller's deadline bounds all of it (DEADLINE_EXCEEDED);
* closing the stream early (the client went away) closes the upstream connection at once;
* the key comes from the environment variable the model names and goes only into a header: never
  into a log line, an error message or a URL that could be logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import traceback
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from opentelemetry.trace import Span, SpanKind

from common.addresses import join_host_port
from common.errors import UPSTREAM_KEY_MISSING, UPSTREAM_UNREACHABLE, ApiError, DeadlineExceeded
from common.observability import conventions, tracing
from server.providers.base import ChatRequest, Delta, Finish, StreamItem, Usage
from server.providers.http.errors import (
    UpstreamError,
    from_status,
    parse_retry_after,
    protocol_error,
    redact_error,
    timed_out,
    truncate,
    unreachable,
)
from server.providers.http.wire import FrameError
from server.providers.text import estimate_prompt_tokens, estimate_tokens
from server.settings import ModelConfig

log = logging.getLogger(__name__)

#: Connections kept open across requests; a burst beyond them waits for a free one.
POOL_LIMIT = 256
POOL_LIMIT_PER_HOST = 64
_ERROR_BODY_LIMIT = 64 * 1024
_READ_SIZE = 64 * 1024


UNREPORTED = -1
"""A usage count the upstream did not report; `HttpProvider.stream` puts an estimate in its place."""


class HttpClient:
    """The one client session every HTTP provider shares (connection pooling across models)."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=POOL_LIMIT, limit_per_host=POOL_LIMIT_PER_HOST, ttl_dns_cache=300
            )
            # Per-request timeouts are ours (first token, idle, deadline); only connecting is bounded here.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


@dataclass(frozen=True)
class HttpRequest:
    """What an adapter asks for: where, with which headers (the key among them), which JSON body."""

    url: str
    json: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def sampling(
    request: ChatRequest,
    *,
    temperature: str = "temperature",
    top_p: str = "top_p",
    stop: str = "stop",
    seed: str | None = "seed",
) -> dict[str, Any]:
    """The sampling options a request sets, under an API's own names (unset ones are left out, so the
    upstream's defaults apply). `seed=None`: the adapter maps the seed itself."""
    options: dict[str, Any] = {}
    if request.temperature is not None:
        options[temperature] = request.temperature
    if request.top_p is not None:
        options[top_p] = request.top_p
    if request.stop:
        options[stop] = list(request.stop)
    if seed is not None and request.seed is not None:
        options[seed] = request.seed
    return options


class _Clock:
    """Which bound applies to the next read: first token, idle gap, or the caller's deadline."""

    def __init__(self, model: ModelConfig, request: ChatRequest) -> None:
        self._settings = model.upstream
        self._deadline = request.deadline
        self._first_by = time.monotonic() + self._settings.ttft_timeout_seconds
        self.first_token = False

    def next_timeout(self) -> tuple[float, bool]:
        """Seconds the next read may take, and whether the caller's deadline is what bounds it."""
        now = time.monotonic()
        ours = (self._first_by - now) if not self.first_token else self._settings.idle_timeout_seconds
        if self._deadline is not None and self._deadline - now <= ours:
            return max(0.0, self._deadline - now), True
        return max(0.0, ours), False

    def expired(self, model: ModelConfig, by_deadline: bool) -> Exception:
        if by_deadline:
            return DeadlineExceeded(f"the deadline passed while waiting for model {model.id!r}")
        if not self.first_token:
            what = f"no first token within {self._settings.ttft_timeout_seconds:g} s"
        else:
            what = f"the stream went silent for {self._settings.idle_timeout_seconds:g} s"
        return timed_out(_provider_of(model), model.id, what)


def _provider_of(model: ModelConfig) -> str:
    return str(model.provider)


class HttpProvider:
    """Base of the HTTP adapters; see the module docstring."""

    name = "http"

    def __init__(self, client: HttpClient) -> None:
        self._client = client

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the registry closes the shared client

    # --- what an adapter writes ---------------------------------------------------------------

    def build(self, model: ModelConfig, request: ChatRequest, key: str | None) -> HttpRequest:
        raise NotImplementedError

    def parse_stream(self, model: ModelConfig, chunks: AsyncIterator[bytes]) -> AsyncIterator[StreamItem]:
        raise NotImplementedError

    def parse_whole(self, model: ModelConfig, body: Any) -> list[StreamItem]:
        raise NotImplementedError

    def error_message(self, body: bytes) -> str:
        """The upstream's own words from an error body: `error_text` of its JSON, else the raw text."""
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        return self.error_text(parsed) or body.decode("utf-8", "replace")

    def error_text(self, parsed: Any) -> str | None:
        """Where an adapter's API puts its message in a (parsed JSON) error body; None if not there."""
        return None

    def retry_after(self, body: bytes, header: str | None) -> float | None:
        """Seconds to wait before retrying a refused request: the Retry-After header, or where an
        adapter's API says it (Gemini puts a RetryInfo in the error body)."""
        return parse_retry_after(header)

    # --- shared -------------------------------------------------------------------------------

    def api_key(self, model: ModelConfig) -> str | None:
        """The key from the model's api_key_env (None for keyless servers)."""
        name = model.upstream.api_key_env
        if not name:
            return None
        key = os.environ.get(name)
        if not key:
            raise UpstreamError(
                _provider_of(model),
                model.id,
                UPSTREAM_KEY_MISSING,
                f"environment variable {name} (api_key_env) is not set",
            )
        return key

    async def stream(self, model: ModelConfig, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        provider = _provider_of(model)
        key = self.api_key(model)
        spec = self.build(model, request, key)
        headers = spec.headers
        span = _client_span(spec.url) if tracing.enabled() else None
        if span is not None:
            headers = dict(headers)
            tracing.inject_span(headers, span)  # the upstream's own traces join ours
        failure: ApiError | None = None
        try:
            clock = _Clock(model, request)
            timeout, by_deadline = clock.next_timeout()
            try:
                response = await asyncio.wait_for(
                    self._client.session.post(spec.url, json=spec.json, headers=headers), timeout
                )
            except TimeoutError:
                raise clock.expired(model, by_deadline) from None
            except aiohttp.ClientError as exc:
                raise unreachable(provider, model.id, type(exc).__name__) from None
            if span is not None:
                span.set_attribute(conventions.HTTP_RESPONSE_STATUS_CODE, response.status)
                if response.status >= 400:
                    tracing.fail(span, str(response.status))
            try:
                async with aclosing(self._items(model, request, response, clock)) as items:
                    async for item in items:
                        yield item
            except ApiError as exc:
                failure = exc
            except FrameError as exc:
                failure = protocol_error(provider, model.id, str(exc))
            except aiohttp.ClientPayloadError as exc:
                # Unlike a connection that failed, an answer cut off midway is not tried again.
                failure = UpstreamError(
                    provider,
                    model.id,
                    UPSTREAM_UNREACHABLE,
                    f"the answer was cut off ({truncate(str(exc))})",
                    retryable=False,
                )
            except (ValueError, TypeError, LookupError, AttributeError) as exc:
                # An adapter tripped over an answer of a shape it did not expect: an unreadable answer.
                # Its message may quote the upstream's bytes, so only the place is logged, not the text.
                log.warning(
                    "unreadable upstream answer",
                    extra={"model": model.id, "error": type(exc).__name__, "at": _where(exc)},
                )
                failure = protocol_error(provider, model.id, f"{type(exc).__name__}: {exc}")
            finally:
                # Not release(): an abandoned stream must close its connection, so the upstream stops.
                response.close()
        except Exception as exc:
            if span is not None:
                tracing.fail(span, exc.reason if isinstance(exc, ApiError) else type(exc).__name__)
            raise
        finally:
            if span is not None:
                if failure is not None:
                    tracing.fail(span, failure.reason)
                span.end()
        if failure is not None:
            # Raised here, outside the handlers, so no unredacted exception rides along as __context__.
            # Upstreams quote the key they refused ("Incorrect API key provided: sk-…") or echo the
            # headers they were sent: every error text passes the one redactor.
            raise redact_error(failure, key)

    async def _items(
        self, model: ModelConfig, request: ChatRequest, response: aiohttp.ClientResponse, clock: _Clock
    ) -> AsyncGenerator[StreamItem, None]:
        if response.status >= 300:
            body = await response.content.read(_ERROR_BODY_LIMIT)
            raise from_status(
                _provider_of(model),
                model.id,
                response.status,
                self.error_message(body),
                retry_after=self.retry_after(body, response.headers.get("Retry-After")),
            )
        if request.stream:
            items = self.parse_stream(model, self._chunks(model, response, clock))
        else:
            items = _each(self.parse_whole(model, await self._whole_json(model, response, clock)))
        generated: list[str] = []
        async for item in items:
            if isinstance(item, Delta) and (item.content or item.thinking or item.tool_calls):
                clock.first_token = True
                generated.append(item.content + item.thinking)
                generated.extend(piece.name + piece.arguments for piece in item.tool_calls)
            elif isinstance(item, Finish):
                item = _estimated(item, request, "".join(generated))
            yield item

    async def _chunks(
        self, model: ModelConfig, response: aiohttp.ClientResponse, clock: _Clock
    ) -> AsyncIterator[bytes]:
        while True:
            timeout, by_deadline = clock.next_timeout()
            try:
                chunk = await asyncio.wait_for(response.content.readany(), timeout)
            except TimeoutError:
                raise clock.expired(model, by_deadline) from None
            except aiohttp.ClientError as exc:
                raise unreachable(_provider_of(model), model.id, type(exc).__name__) from None
            if not chunk:
                return
            yield chunk

    async def _whole_json(self, model: ModelConfig, response: aiohttp.ClientResponse, clock: _Clock) -> Any:
        body = b"".join([chunk async for chunk in self._chunks(model, response, clock)])
        try:
            return json.loads(body)
        except ValueError:
            raise protocol_error(
                _provider_of(model), model.id, f"the answer is not JSON: {body[:200]!r}"
            ) from None


def _client_span(url: str) -> Span | None:
    """The CLIENT span of one upstream request. Its URL without query or credentials: neither belongs
    in a trace (a key in a query string, a user:password in a base_url)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    netloc = join_host_port(host, parts.port) if parts.port else f"[{host}]" if ":" in host else host
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    return tracing.start_span(
        "POST",
        kind=SpanKind.CLIENT,
        attributes={
            conventions.HTTP_REQUEST_METHOD: "POST",
            conventions.URL_FULL: shown,
            conventions.SERVER_ADDRESS: host,
            conventions.SERVER_PORT: port,
        },
    )


def _where(exc: BaseException) -> str:
    """file:line of where an exception was raised (code locations only, none of its values)."""
    frames = traceback.extract_tb(exc.__traceback__)
    return " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno}" for f in reversed(frames[-3:]))


async def _each(items: list[StreamItem]) -> AsyncIterator[StreamItem]:
    for item in items:
        yield item


def _estimated(finish: Finish, request: ChatRequest, generated: str) -> Finish:
    """Estimates in place of the counts an upstream left out (a proxy, an older server)."""
    prompt, completion = finish.usage.prompt_tokens, finish.usage.completion_tokens
    if prompt != UNREPORTED and completion != UNREPORTED:
        return finish
    return replace(
        finish,
        usage=Usage(
            estimate_prompt_tokens(request.messages) if prompt == UNREPORTED else prompt,
            estimate_tokens(generated) if completion == UNREPORTED else completion,
        ),
    )
