"""Every Prometheus series of the service, in one registry, and whose fault a failure was.

Labels are bounded: a route is its template (`/v1/conversations/{conversation_id}`), never the raw path;
a model is a configured id; a deployment a configured name ("" for a model without deployments); a key's
id appears only in the opt-in `aibattle_key_*` series (never its secret). Scraped at `/metrics`
(`exposition`).

Several workers (`python -m server --workers N`) share one scrape: their supervisor gives each the same
PROMETHEUS_MULTIPROC_DIR, which prometheus_client reads when a metric is created (at this module's
import), so each worker's values live in files there and any worker's `/metrics` adds them all up
(`MULTIPROCESS`). A gauge says how it adds up (`multiprocess_mode`): the live workers' sum (their most,
for a cooldown). Without that variable, one process: its own `REGISTRY`.

`error_type` is a closed vocabulary, by fault:

* `caller_*`: the request was wrong or not allowed (invalid, not found, unauthenticated, ...);
* `policy_rate_limited`, `policy_budget`: a limit on the caller's key refused it;
* `provider_*`: the model's provider failed (unreachable, timed out, rate limited, rejected, erred);
* `gateway_*`: we failed (an internal error, shutting down).
"""

from __future__ import annotations

import os

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from common import errors

REGISTRY = CollectorRegistry(auto_describe=True)
CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
"""Whether this process is one of several workers whose series `exposition` adds up."""

enabled = True
"""Whether anything is recorded ([server].metrics): instrumented code checks it before it records, so
metrics switched off cost a branch."""
key_label = False
"""Whether the `aibattle_key_*` series are kept ([server].metrics_key_label)."""


def configure(*, on: bool, by_key: bool = False) -> None:
    global enabled, key_label
    enabled, key_label = on, by_key


SURFACES = ("grpc", "rest", "openai", "ollama", "anthropic", "websocket", "connect", "grpc-web")
"""Where a request came in: gRPC, the native REST/SSE/NDJSON routes, the OpenAI, Ollama and Anthropic
compatible endpoints, a WebSocket, Connect or gRPC-Web on the HTTP port."""

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_OVERHEAD = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
_STORE = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_LAG = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)

# --- requests --------------------------------------------------------------------------------------
REQUESTS = Counter(
    "aibattle_requests",
    "Requests answered, by surface, RPC or route template, status (gRPC code name, or HTTP status) and"
    " error_type (empty on success).",
    ["surface", "route", "status", "error_type"],
    registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "aibattle_request_duration_seconds",
    "Whole requests, from arrival to the last byte (a stream: its whole life).",
    ["surface", "route"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
REQUEST_OVERHEAD = Histogram(
    "aibattle_request_overhead_seconds",
    "Our own time in a request: its duration minus its wait on model providers (a stream: up to its first"
    " message).",
    ["surface", "route"],
    buckets=_OVERHEAD,
    registry=REGISTRY,
)
IN_FLIGHT = Gauge(
    "aibattle_requests_in_flight",
    "Requests being served, by surface.",
    ["surface"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
OPEN_STREAMS = Gauge(
    "aibattle_open_streams",
    "Response streams open, by transport (grpc, sse, ndjson, websocket).",
    ["transport"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
WEBSOCKETS = Gauge(
    "aibattle_websocket_connections",
    "WebSocket connections open.",
    multiprocess_mode="livesum",
    registry=REGISTRY,
)

# --- model calls -----------------------------------------------------------------------------------
MODEL_CALLS = Counter(
    "aibattle_model_calls",
    "Model calls (each attempt of a fallback chain is one), by model, provider, deployment (empty: the model"
    " has none) and error_type (empty: it answered).",
    ["model", "provider", "deployment", "error_type"],
    registry=REGISTRY,
)
UPSTREAM_DURATION = Histogram(
    "aibattle_upstream_duration_seconds",
    "Time a model call waited on its provider, from the request to the last chunk.",
    ["model", "provider", "deployment"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "aibattle_time_to_first_token_seconds",
    "From a model call's start to its first chunk.",
    ["model", "provider", "deployment"],
    buckets=_LATENCY,
    registry=REGISTRY,
)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "aibattle_time_per_output_token_seconds",
    "After the first chunk, the time per further output token.",
    ["model", "provider", "deployment"],
    buckets=_PER_TOKEN,
    registry=REGISTRY,
)
TOKENS = Counter(
    "aibattle_tokens",
    "Tokens of model calls, by model, provider, deployment and direction (input, output).",
    ["model", "provider", "deployment", "direction"],
    registry=REGISTRY,
)
COST = Counter(
    "aibattle_cost_usd",
    "Cost of model calls in US dollars, at the configured pricing.",
    ["model", "provider", "deployment"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "aibattle_upstream_retries",
    "Attempts of a model call made again at the same upstream.",
    ["model", "provider", "deployment"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "aibattle_fallbacks",
    "Model calls handed to the next model of a fallback chain, from `model` to `fallback`.",
    ["model", "fallback"],
    registry=REGISTRY,
)
COOLDOWN = Gauge(
    "aibattle_upstream_cooldown",
    "1 while an upstream (provider and host) is skipped after failures in a row, else 0.",
    ["provider", "upstream"],
    multiprocess_mode="livemax",
    registry=REGISTRY,
)
LIMIT_REFUSALS = Counter(
    "aibattle_limit_refusals",
    "Calls a limit refused, by limit (a key's rpm, tpm, max_concurrent_streams, budget_usd; the server's"
    " server_max_concurrent_streams).",
    ["limit"],
    registry=REGISTRY,
)

# --- runs (conversations and reasoning sessions) ------------------------------------------------------
RUNS_IN_PROGRESS = Gauge(
    "aibattle_runs_in_progress",
    "Runs going on in this process, by kind (conversation, reasoning).",
    ["kind"],
    multiprocess_mode="livesum",
    registry=REGISTRY,
)
RUNS = Counter(
    "aibattle_runs",
    "Runs ended, by kind, strategy (a conversation's mode) and final status.",
    ["kind", "strategy", "status"],
    registry=REGISTRY,
)
STUCK_SIGNALS = Counter(
    "aibattle_stuck_signals",
    "Stuck signals detected in reasoning drafts, by signal.",
    ["signal"],
    registry=REGISTRY,
)
HANDOFFS = Counter(
    "aibattle_handoffs",
    "Work handed from one model to another within a run, by strategy.",
    ["strategy"],
    registry=REGISTRY,
)
ESCALATIONS = Counter(
    "aibattle_escalations",
    "Cascades that escalated to the secondary model, by strategy.",
    ["strategy"],
    registry=REGISTRY,
)
FOLLOWER_LAG = Histogram(
    "aibattle_follower_lag_events",
    "How many events of the log a follower had yet to read when it caught up with a batch.",
    buckets=_LAG,
    registry=REGISTRY,
)
STORE_DURATION = Histogram(
    "aibattle_store_duration_seconds",
    "Store operations, by operation.",
    ["operation"],
    buckets=_STORE,
    registry=REGISTRY,
)

# --- per key (opt-in: [server].metrics_key_label) -------------------------------------------------------
KEY_REQUESTS = Counter(
    "aibattle_key_requests",
    "Requests by API key id (only with [server].metrics_key_label on).",
    ["key_id"],
    registry=REGISTRY,
)
KEY_COST = Counter(
    "aibattle_key_cost_usd",
    "Cost by API key id (only with [server].metrics_key_label on).",
    ["key_id"],
    registry=REGISTRY,
)


def exposition() -> bytes:
    """The registry in Prometheus' text format (`CONTENT_TYPE`); with several workers, every worker's
    series added up (read from their files: call it off the event loop)."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


# --- whose fault -----------------------------------------------------------------------------------
ERROR_TYPES = (
    "caller_invalid",
    "caller_not_found",
    "caller_unauthenticated",
    "caller_permission_denied",
    "caller_state",
    "caller_too_large",
    "caller_cancelled",
    "caller_deadline",
    "caller_unsupported",
    "policy_rate_limited",
    "policy_budget",
    "provider_unavailable",
    "provider_timeout",
    "provider_rate_limited",
    "provider_rejected",
    "provider_error",
    "gateway_internal",
    "gateway_unavailable",
)
_POLICY = {
    errors.RATE_LIMITED.name: "policy_rate_limited",
    errors.TOKEN_RATE_LIMITED.name: "policy_rate_limited",
    errors.TOO_MANY_STREAMS.name: "policy_rate_limited",
    errors.BUDGET_EXCEEDED.name: "policy_budget",
}
_PROVIDER = {
    errors.UPSTREAM_TIMEOUT.name: "provider_timeout",
    errors.UPSTREAM_RATE_LIMITED.name: "provider_rate_limited",
    errors.UPSTREAM_REJECTED.name: "provider_rejected",
    errors.UPSTREAM_AUTH_FAILED.name: "provider_rejected",
    errors.UPSTREAM_ERROR.name: "provider_error",
    errors.UPSTREAM_PROTOCOL_ERROR.name: "provider_error",
}
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: "caller_invalid",
    grpc.StatusCode.OUT_OF_RANGE: "caller_invalid",
    grpc.StatusCode.NOT_FOUND: "caller_not_found",
    grpc.StatusCode.UNAUTHENTICATED: "caller_unauthenticated",
    grpc.StatusCode.PERMISSION_DENIED: "caller_permission_denied",
    grpc.StatusCode.FAILED_PRECONDITION: "caller_state",
    grpc.StatusCode.ALREADY_EXISTS: "caller_state",
    grpc.StatusCode.ABORTED: "caller_state",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "caller_too_large",
    grpc.StatusCode.CANCELLED: "caller_cancelled",
    grpc.StatusCode.DEADLINE_EXCEEDED: "caller_deadline",
    grpc.StatusCode.UNIMPLEMENTED: "caller_unsupported",
    grpc.StatusCode.UNAVAILABLE: "gateway_unavailable",
}


def error_type(code: grpc.StatusCode, reason: str = "") -> str:
    """Whose fault a failure with this code and ErrorInfo reason was; "" for OK."""
    if code == grpc.StatusCode.OK:
        return ""
    if reason in _POLICY:
        return _POLICY[reason]
    entry = errors.REASONS.get(reason)
    if entry is not None and entry.fallback:  # the model's provider failed
        return _PROVIDER.get(reason, "provider_unavailable")
    return _BY_CODE.get(code, "gateway_internal")
