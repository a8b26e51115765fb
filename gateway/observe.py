"""What the gateway shows its operators of each HTTP request: its series, its overhead, its span.

`web_middlewares.access_log_middleware` opens an `Observed` per request (`begin`) and closes it when the
request ends (`end`), after its access line; in between, the code that learns a fact notes it here (in
its `Observation`, `common.observability.requests`):

* the surface and route: from aiohttp's resource for a hand-registered endpoint (`FixedRoute`), else the
  derived route the dispatcher matched (`note_route`), else `UNMATCHED`; never the raw path. The surface
  is `rest` (native routes and the meta endpoints), `openai`, `ollama`, `anthropic`, `websocket`,
  `connect` or `grpc-web` (an RPC's path, by its Content-Type);
* the status rendered for a failure (`note_status`): its gRPC code and ErrorInfo reason give the
  `error_type` label (`metrics.error_type`); without one, an HTTP error status stands for its code;
* the upstream's wait on model providers, reported by the server in each call's initial metadata
  (`UPSTREAM_MS_METADATA`, `note_upstream`); missing, it counts as 0.

Every response, whichever path wrote it, gets `x-aibattle-overhead-ms` when its headers go out
(`add_overhead`, an `on_response_prepare` signal): the gateway's time so far minus the providers' wait;
for a stream that is before its first message. The same figure is the overhead histogram's.

Series are recorded only while `metrics.enabled`; the `/metrics` endpoint is not counted. The opt-in
`aibattle_key_requests_total{key_id}` is not counted here: the server counts each call by the key it
authenticated (the gateway sees only the key id a credential claims, and in-process would count twice).

With tracing on (`tracing.enabled()`), each request is an HTTP SERVER span, `{METHOD} {route}`, child of
an incoming `traceparent`; the upstream calls carry it on (`gateway.upstream`). With tracing off no span
object is made.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from aiohttp import web
from google.rpc import status_pb2
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from common.observability import (
    OVERHEAD_HEADER,
    UPSTREAM_MS_METADATA,
    conventions,
    metrics,
    requests,
    tracing,
)
from gateway.errors import code_for_http, error_reason
from gateway.web_state import STATE

#: The route label of a request no route matched (a 404): bounded, unlike its path.
UNMATCHED = "unmatched"

_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(eq=False)
class Observed:
    """One HTTP request as the gateway observes it (see the module docstring)."""

    observation: requests.Observation
    """Its surface and route template ("" until one matched), its wait on providers, its failure's reason."""
    method: str
    surface: str
    counted: bool
    """False for /metrics itself."""
    in_flight: str | None = None
    """The surface it counts under in `aibattle_requests_in_flight`, while it does."""
    code: int | None = None
    """The gRPC code of the status rendered for it, if one was."""
    overhead_ms: float | None = None
    """`x-aibattle-overhead-ms` as its response headers said it (the access line repeats it)."""

    @property
    def route(self) -> str | None:
        """The route template (None when none matched), as the access line says it."""
        return self.observation.route or None

    @property
    def route_label(self) -> str:
        return self.observation.route or UNMATCHED

    def error_type(self, http_status: int) -> str:
        """Whose fault it was (`metrics.error_type`), "" for a success."""
        code = self.code
        if code is None:
            if http_status < 400:
                return ""
            code = code_for_http(http_status)
        status_code = _STATUS_CODES.get(code, grpc.StatusCode.UNKNOWN)
        return metrics.error_type(status_code, self.observation.reason)


OBSERVED = web.RequestKey("observed", Observed)
_current: contextvars.ContextVar[Observed | None] = contextvars.ContextVar("gateway_observed", default=None)


Tokens = tuple[contextvars.Token[Observed | None], contextvars.Token[requests.Observation | None]]


def begin(request: web.Request) -> tuple[Observed, Tokens]:
    """Start observing a request: its Observation, the surface and the fixed route it is for."""
    state = request.app[STATE]
    resource = request.match_info.route.resource
    fixed = state.fixed_resources.get(resource) if resource is not None else None
    if fixed is not None:
        surface, fixed_route = fixed.dialect.resolve(request).surface, fixed.template.source
        counted = fixed.counted
    else:
        dialect = state.path_dialect(request.rel_url.raw_path).resolve(request)
        surface, fixed_route, counted = dialect.surface, None, True
        if surface == "rest" and request.method == "GET" and _upgrade(request):
            surface = "websocket"
    observation, observation_token = requests.begin(surface, fixed_route or "")
    observed = Observed(observation, request.method, surface, counted)
    request[OBSERVED] = observed
    if counted and metrics.enabled:
        _in_flight(surface).inc()
        observed.in_flight = surface
    return observed, (_current.set(observed), observation_token)


def _upgrade(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def end(observed: Observed, http_status: int, tokens: Tokens, span: Span | None) -> None:
    """Record the request's series (and finish its span's attributes) once it has ended."""
    _current.reset(tokens[0])
    requests.end(tokens[1])
    error_type = observed.error_type(http_status) if (span is not None or metrics.enabled) else ""
    if span is not None:
        _finish_span(span, observed, http_status, error_type)
    if observed.in_flight is not None:
        _in_flight(observed.in_flight).dec()
    if not (observed.counted and metrics.enabled):
        return
    surface, route = observed.surface, observed.route_label
    _requests(surface, route, str(http_status), error_type).inc()
    metrics.REQUEST_DURATION.labels(surface, route).observe(observed.observation.elapsed())


# Children by labels, so a request costs a dict lookup per series (the label sets are bounded).
_IN_FLIGHT: dict[str, Any] = {}
_REQUESTS: dict[tuple[str, str, str, str], Any] = {}


def _in_flight(surface: str) -> Any:
    child = _IN_FLIGHT.get(surface)
    if child is None:
        child = _IN_FLIGHT[surface] = metrics.IN_FLIGHT.labels(surface)
    return child


def _requests(*labels: str) -> Any:
    key = (labels[0], labels[1], labels[2], labels[3])
    child = _REQUESTS.get(key)
    if child is None:
        child = _REQUESTS[key] = metrics.REQUESTS.labels(*key)
    return child


# --- facts learned while the request is served -----------------------------------------------------


def note_route(template: str, *, websocket: bool) -> None:
    """The dispatcher matched a derived route: a WebSocket route, or one served as plain HTTP."""
    if (observed := _current.get()) is None:
        return
    observed.observation.route = template
    if observed.surface in ("rest", "websocket"):
        observed.surface = observed.observation.surface = "websocket" if websocket else "rest"


def note_status(status: status_pb2.Status) -> None:
    """The status a request's answer carries (an error response, a stream's error frame, a WebSocket's
    close): its code and ErrorInfo reason say whose fault a failure was."""
    if (observed := _current.get()) is not None:
        observed.code = status.code
        requests.note_reason(error_reason(status))


def note_upstream(metadata: Iterable[tuple[str, Any]] | None) -> None:
    """An upstream call's initial metadata: the time the server's answer waited on model providers."""
    for key, value in metadata or ():
        if key == UPSTREAM_MS_METADATA:
            try:
                ms = float(value)
            except (TypeError, ValueError):
                return
            if math.isfinite(ms) and ms > 0:
                requests.add_upstream(ms / 1000)
            return


def note_upstream_of(initial: grpc.aio.Metadata | None, trailing: grpc.aio.Metadata | None) -> None:
    """A unary answer's wait: in its initial metadata, or in its trailers (where the gateway asks the
    server to put it, `ECHO_METADATA`)."""
    if any(key == UPSTREAM_MS_METADATA for key, _ in initial or ()):
        note_upstream(initial)
    else:
        note_upstream(trailing)


def note_failed_call(error: grpc.aio.AioRpcError) -> None:
    """A call that failed before any message: its wait, from its initial metadata (or, for an answer of
    trailers only, its trailing metadata)."""
    note_upstream_of(error.initial_metadata(), error.trailing_metadata())


# --- the response's headers ---------------------------------------------------------------------------


async def add_overhead(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: `x-aibattle-overhead-ms` on every response (see the module docstring)."""
    observed = request.get(OBSERVED)
    if observed is None or observed.overhead_ms is not None:
        return  # a whole answer's was set as its handler returned (access_log_middleware)
    seconds = observed.observation.overhead_seconds()
    observed.overhead_ms = round(seconds * 1000, 3)
    response.headers[OVERHEAD_HEADER] = f"{seconds * 1000:.3f}"
    if observed.counted and metrics.enabled:
        metrics.REQUEST_OVERHEAD.labels(observed.surface, observed.route_label).observe(seconds)


# --- open streams ---------------------------------------------------------------------------------------


class OpenStream:
    """Counts one open response stream (`aibattle_open_streams`), from `open()` until `close()`."""

    def __init__(self, transport: str) -> None:
        self._transport = transport
        self._open = False

    def open(self) -> None:
        if not self._open and metrics.enabled:
            self._open = True
            metrics.OPEN_STREAMS.labels(self._transport).inc()

    def close(self) -> None:
        if self._open:
            self._open = False
            metrics.OPEN_STREAMS.labels(self._transport).dec()


@contextlib.contextmanager
def websocket_open() -> Iterator[None]:
    """A WebSocket connection, open for the block: `aibattle_websocket_connections` and an open stream."""
    if not metrics.enabled:
        yield
        return
    stream = OpenStream("websocket")
    stream.open()
    metrics.WEBSOCKETS.inc()
    try:
        yield
    finally:
        metrics.WEBSOCKETS.dec()
        stream.close()


# --- the span -------------------------------------------------------------------------------------------

_NO_SPAN: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def server_span(request: web.Request) -> contextlib.AbstractContextManager[Span | None]:
    """The request's HTTP SERVER span, current for the block, child of the client's `traceparent`; a
    shared null context (no span made) when tracing is off. Named and finished by `end`."""
    if not tracing.enabled():
        return _NO_SPAN
    return tracing.TRACER.start_as_current_span(
        request.method,
        context=tracing.extract(request.headers),
        kind=SpanKind.SERVER,
        attributes={
            conventions.HTTP_REQUEST_METHOD: request.method,
            conventions.URL_PATH: request.path,
        },
        # A client that leaves (CancelledError) is a 499, not a failure of ours: `end` says what failed.
        record_exception=False,
        set_status_on_exception=False,
    )


def _finish_span(span: Span, observed: Observed, http_status: int, error_type: str) -> None:
    route = observed.route
    if route is not None:
        span.update_name(f"{observed.method} {route}")
        span.set_attribute(conventions.HTTP_ROUTE, route)
    span.set_attribute(conventions.HTTP_RESPONSE_STATUS_CODE, http_status)
    if error_type:
        span.set_attribute(conventions.ERROR_TYPE, error_type)
    if http_status >= 500:
        span.set_status(Status(StatusCode.ERROR))
