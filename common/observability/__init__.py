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
overhead of the whole path (`OVERHEAD_HEADER`). The gateway asks for it in the trailing metadata of a
unary answer instead (`ECHO_METADATA`): there it rides with the status, where initial metadata sent
after the handler costs a write of its own.
"""

from __future__ import annotations

OVERHEAD_HEADER = "x-aibattle-overhead-ms"
"""On every response: milliseconds of our own time (the whole request's, minus its wait on model
providers), as LiteLLM's `x-litellm-overhead-duration-ms`; on a stream, up to its first message."""
UPSTREAM_MS_METADATA = "x-aibattle-upstream-ms"
"""gRPC initial metadata from the server: milliseconds the answer has waited on model providers so far
(the whole wait for a unary answer; up to the first message for a stream)."""
ECHO_METADATA = "x-aibattle-echo"
"""gRPC request metadata: `trailers` asks the server to put the request id and `UPSTREAM_MS_METADATA` of
a unary answer in its trailing metadata, sent with the status at no cost, instead of initial metadata,
which grpc.aio can only send as a write of its own once the handler has returned (a stream's must go
before its first message, so it keeps initial metadata). The gateway asks for it on every call; other
clients get initial metadata."""
ECHO_IN_TRAILERS = "trailers"
