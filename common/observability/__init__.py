"""What the service lets its operators see: Prometheus metrics, OpenTelemetry traces, and the log lines
that join them.

One package for the server and the gateway, so both count and trace the same way:

* `metrics`: every Prometheus series, in one registry (`REGISTRY`), with bounded labels (route
  templates, model ids, never a raw path or a secret) and the closed `error_type` vocabulary that says
  whose fault a failure was (`error_type`);
* `tracing`: OpenTelemetry, configured only by the standard `OTEL_*` environment variables and free
  when they are unset; W3C trace context in and out of every boundary; the GenAI metrics over OTLP;
* `conventions`: every OpenTelemetry semantic-convention name used, in one place (the GenAI
  conventions are still moving);
* `requests`: the one request being served (`Observation`): its surface, route, model, tokens, cost,
  and how long it waited on model providers, from which its overhead (our time) follows.

Between the gateway and the server, the server reports the time its answer waited on model providers
in the gRPC initial metadata (`UPSTREAM_MS_METADATA`), so the gateway can tell its clients the
overhead of the whole path (`OVERHEAD_HEADER`).
"""

from __future__ import annotations

OVERHEAD_HEADER = "x-aibattle-overhead-ms"
"""On every response: milliseconds of our own time (the whole request's, minus its wait on model
providers), as LiteLLM's `x-litellm-overhead-duration-ms`; on a stream, up to its first message."""
UPSTREAM_MS_METADATA = "x-aibattle-upstream-ms"
"""gRPC initial metadata from the server: milliseconds the answer has waited on model providers so far
(the whole wait for a unary answer; up to the first message for a stream)."""
