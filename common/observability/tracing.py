"""OpenTelemetry: traces and the GenAI metrics, configured only by the standard environment variables.

`configure()` installs the SDK when an OTLP endpoint is set (`OTEL_EXPORTER_OTLP_ENDPOINT`, or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true;
the exporters read the rest themselves (`OTEL_EXPORTER_OTLP_PROTOCOL` is http/protobuf, the only one
shipped here; `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, ...). Unset, nothing is installed: `enabled()` is False, and instrumented code
skips its spans altogether (`span()` is a shared null context), so tracing costs nothing.

Spans are exported in batches from a background thread (BatchSpanProcessor), never on the event loop.
Context crosses every boundary as W3C `traceparent`/`tracestate`: `extract()` from HTTP headers or gRPC
metadata, `inject()` into them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import Span, SpanKind

from common.observability import conventions

log = logging.getLogger(__name__)

_enabled = False
_content = False
_shutdown: list[Any] = []

TRACER = trace.get_tracer("aibattle")
_meter = metrics.get_meter("aibattle")
TOKEN_USAGE = _meter.create_histogram(
    conventions.METRIC_TOKEN_USAGE, unit="{token}", description="Tokens used by model calls."
)
OPERATION_DURATION = _meter.create_histogram(
    conventions.METRIC_OPERATION_DURATION, unit="s", description="Duration of model calls."
)


def configure(environ: Mapping[str, str] | None = None, *, service_name: str = "aibattle") -> bool:
    """Install the SDK and its OTLP exporters if the environment asks for them; whether it did."""
    global _enabled, _content
    env = os.environ if environ is None else environ
    _content = env.get(conventions.CAPTURE_CONTENT_ENV, "").strip().lower() in ("true", "1")
    if _enabled:
        return True
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    # Each signal exports where an endpoint names it (the shared one, or its own) unless its
    # OTEL_<SIGNAL>_EXPORTER says "none": a traces endpoint alone sends no metrics to a default port.
    shared = bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    traces = _wanted(env, "TRACES", shared)
    exported_metrics = _wanted(env, "METRICS", shared)
    if not traces and not exported_metrics:
        return False
    # Imported only when used: a deployment without OTLP never loads the SDK.
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name}).merge(
        OTELResourceDetector().detect()
    )
    # Not shut down at exit by the SDK (unbounded with a collector that is down): shutdown() does it.
    tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    if traces:
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    readers = [PeriodicExportingMetricReader(OTLPMetricExporter())] if exported_metrics else []
    meter_provider = MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    _shutdown[:] = [tracer_provider, meter_provider]
    _enabled = True
    log.info("opentelemetry exporting", extra={"service": resource.attributes.get("service.name")})
    return True


def _wanted(env: Mapping[str, str], signal: str, shared: bool) -> bool:
    if env.get(f"OTEL_{signal}_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return shared or bool(env.get(f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT"))


SHUTDOWN_SECONDS = 3.0
"""How long the process' end waits for pending spans and metrics to leave. The exporters retry an
unreachable collector with backoff for far longer; a Ctrl-C must not wait for that."""


def shutdown(timeout: float = SHUTDOWN_SECONDS) -> None:
    """Flush what is pending (at the process' end), for at most `timeout` seconds; blocking, so call it
    off the event loop or last. What has not left by then is dropped."""

    def flush() -> None:
        for provider in _shutdown:
            with contextlib.suppress(Exception):
                provider.shutdown()

    if _shutdown:
        # A daemon thread: when the collector does not answer in time, the process ends without it.
        worker = threading.Thread(target=flush, name="otel shutdown", daemon=True)
        worker.start()
        worker.join(timeout)


def enabled() -> bool:
    return _enabled


def capture_content() -> bool:
    """Whether prompts and completions may go into spans (off by default, as the conventions say)."""
    return _enabled and _content


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: otel_context.Context | None = None,
    links: Iterable[trace.Link] = (),
) -> contextlib.AbstractContextManager[Span | None]:
    """A current span for the block, or (tracing off) a shared null context yielding None."""
    if not _enabled:
        return _NULL
    return TRACER.start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, links=list(links)
    )


_NULL: contextlib.AbstractContextManager[None] = contextlib.nullcontext()


def extract(carrier: Mapping[str, str] | Iterable[tuple[str, str]]) -> otel_context.Context | None:
    """The remote parent carried by HTTP headers or gRPC metadata (None when tracing is off)."""
    if not _enabled:
        return None
    pairs = carrier.items() if isinstance(carrier, Mapping) else carrier
    headers = {k.lower(): v for k, v in pairs if isinstance(v, str)}
    return propagate.extract(headers)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Add the current context's `traceparent` (and `tracestate`) to outgoing headers or metadata."""
    if _enabled:
        propagate.inject(carrier)


def current_ids() -> tuple[str, str] | None:
    """The active span's (trace_id, span_id) in hex, for log lines; None without one."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return format(context.trace_id, "032x"), format(context.span_id, "016x")


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Run a block outside the current trace (work that outlives the request, e.g. a background run,
    starts its own and links back)."""
    token = otel_context.attach(otel_context.Context())
    try:
        yield
    finally:
        otel_context.detach(token)


# --- spans managed by hand ----------------------------------------------------------------------------
# An async generator must not attach a context at one `yield` and detach it at another: its steps may
# run in different tasks (a consumer awaiting each item in a task of its own), and a context token
# detached in another context than it was attached in fails. So streams start their spans explicitly
# (`start_span`), make them current only around the awaits that need it (`use`), and end them
# themselves.


def start_span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, Any] | None = None,
    parent: otel_context.Context | None = None,
    links: Iterable[trace.Link] = (),
) -> Span | None:
    """A started span that is not made current (None when tracing is off); the caller ends it.

    `parent` None: the current span's child; an empty `Context()`: a new trace (see `detached`)."""
    if not _enabled:
        return None
    return TRACER.start_span(
        name,
        context=parent,
        kind=kind,
        attributes=attributes,
        links=list(links),
        record_exception=False,
        set_status_on_exception=False,
    )


@contextlib.contextmanager
def use(span: Span | None, *, detach_from_current: bool = False) -> Iterator[None]:
    """`span` current for the block (nothing when None); `detach_from_current`: in a context of its own,
    so the block no longer sees the current trace (a background run started by a request)."""
    if span is None:
        yield
        return
    base = otel_context.Context() if detach_from_current else None
    token = otel_context.attach(trace.set_span_in_context(span, base))
    try:
        yield
    finally:
        otel_context.detach(token)


def fail(span: Span | None, error_type: str) -> None:
    """Mark a span failed with a low-cardinality `error.type` (a reason or a class name, never a
    message: messages may quote what a secret-bearing upstream said)."""
    if span is not None:
        span.set_attribute(conventions.ERROR_TYPE, error_type)
        span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))


def traceparent(span: Span | None) -> str | None:
    """The W3C `traceparent` of a span (to store with what outlives it), or None."""
    if span is None:
        return None
    context = span.get_span_context()
    if not context.is_valid:
        return None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def links(*traceparents: str | None, current: bool = False) -> list[trace.Link]:
    """Links to the spans these `traceparent`s name (invalid or None ones skipped), and with `current`
    to the current span: a run's trace points back at the request that started it, and at its earlier
    run's trace."""
    found: list[trace.Link] = []
    if not _enabled:
        return found
    if current:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            found.append(trace.Link(context))
    for value in traceparents:
        if value:
            context = trace.get_current_span(propagate.extract({"traceparent": value})).get_span_context()
            if context.is_valid:
                found.append(trace.Link(context))
    return found


def inject_span(carrier: MutableMapping[str, str], span: Span | None) -> None:
    """Add `span`'s `traceparent` (and the current `tracestate`) to outgoing headers."""
    if span is not None:
        propagate.inject(carrier, context=trace.set_span_in_context(span))


def add_event(name: str, attributes: Mapping[str, Any] | None = None) -> None:
    """An event on the current span (nothing when tracing is off or no span is current)."""
    if _enabled:
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(name, attributes=attributes)


def set_attributes(attributes: Mapping[str, Any]) -> None:
    """Attributes on the current span (nothing when tracing is off or no span is current)."""
    if _enabled:
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes(attributes)
