"""A conversation's run as a collector receives it: an `invoke_workflow {mode}` span beginning a trace of
its own, linked to the request that started it, with its model calls as children (as the README's
Observability section says).

The rest of the trace chain the README describes (gateway → RPC → `chat {model}` → upstream request, gRPC
metadata, a reasoning session's workflow span, content capture, the GenAI metrics, trace ids in log
lines) is checked by tests/server/test_observability_traces.py; this covers the conversation. The real
server (`python -m server`, in-process gateway, a scripted model) exports over OTLP/HTTP to a sink this
test runs on 127.0.0.1; every wait is bounded.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.e2e.process import ECHO_CONFIG, server_process
from tests.observability.prometheus import free_port

DEADLINE = 30.0
"""Seconds the spans may take to reach the sink (batched every 100 ms here)."""
CONFIG = ECHO_CONFIG
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class Sink:
    """An OTLP/HTTP trace receiver on 127.0.0.1: keeps every span it is sent."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        lock = self.lock = threading.Lock()
        spans = self.spans

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/v1/traces":
                    export = ExportTraceServiceRequest.FromString(body)
                    with lock:
                        spans.extend(
                            s for r in export.resource_spans for sc in r.scope_spans for s in sc.spans
                        )
                self.send_response(200)  # an empty Export*ServiceResponse: all accepted
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def received(self) -> list[Span]:
        with self.lock:
            return list(self.spans)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Sink]]:
    """The server's HTTP base URL, exporting its spans to the sink."""
    sink = Sink()
    http_addr = f"127.0.0.1:{free_port()}"
    try:
        with server_process(
            CONFIG,
            tmp_path_factory.mktemp("traces"),
            AIBATTLE_HTTP_ADDR=http_addr,
            OTEL_EXPORTER_OTLP_ENDPOINT=sink.url,
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="60000",
        ):
            yield f"http://{http_addr}", sink
    finally:
        sink.close()


def attributes(span: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in span.attributes:
        kind = a.value.WhichOneof("value")
        out[a.key] = getattr(a.value, kind) if kind else None
    return out


def test_a_conversation_run_is_an_invoke_workflow_span_linked_to_its_request(
    traced: tuple[str, Sink],
) -> None:
    base, sink = traced
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    body = {
        "models": [
            {"id": "echo", "role": "assistant", "name": "A"},
            {"id": "echo", "role": "assistant", "name": "B"},
        ],
        "mode": "ai-ai",
        "rounds": 2,
        "initial_prompt": "Say hello.",
        "wait": True,
    }
    request = urllib.request.Request(
        f"{base}/api/v1/conversations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "traceparent": f"00-{trace_id}-{parent_id}-01"},
        method="POST",
    )
    with _DIRECT.open(request, timeout=30) as response:
        conversation = json.loads(response.read())
    assert conversation["status"] == "RUN_STATUS_COMPLETED", conversation
    conversation_id = conversation["conversation_id"]

    def runs(spans: list[Span]) -> list[Span]:
        return [s for s in spans if attributes(s).get("gen_ai.conversation.id") == conversation_id]

    def children(spans: list[Span], run: Span) -> list[Span]:
        return [s for s in spans if s.trace_id == run.trace_id and s.parent_span_id == run.span_id]

    # In ai-ai mode the initial prompt is the first seat's first turn; every other message is a model call.
    calls = sum(m["content"] != body["initial_prompt"] for m in conversation["messages"])
    assert calls == 3, conversation["messages"]

    until = time.monotonic() + DEADLINE
    while True:  # the run's span ends after its model calls' spans: wait for it, then for them
        spans = sink.received()
        found = runs(spans)
        if (found and len(children(spans, found[0])) >= calls) or time.monotonic() > until:
            break
        time.sleep(0.1)

    assert [run.name for run in found] == ["invoke_workflow ai-ai"], [s.name for s in spans]  # its mode
    run = found[0]
    assert attributes(run)["gen_ai.operation.name"] == "invoke_workflow"
    # A trace of its own, linked to the request that started it.
    assert run.trace_id.hex() != trace_id and not run.parent_span_id
    request_spans = [s for s in spans if s.trace_id.hex() == trace_id]
    assert any(s.name == "POST /api/v1/conversations" for s in request_spans), [s.name for s in request_spans]
    assert any(link.trace_id.hex() == trace_id for link in run.links)
    # Each model call of the run is its child.
    assert [s.name for s in children(spans, run)] == ["chat echo"] * calls


def test_a_connect_stream_is_one_trace_from_the_http_request_to_the_model_call(
    traced: tuple[str, Sink],
) -> None:
    """Connect goes the way every HTTP surface goes: an HTTP SERVER span named by the RPC's path, the
    client's traceparent its parent, the server's RPC span and the model call below it."""
    base, sink = traced
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    message = json.dumps({"model": "echo", "prompt": "Say hello."}).encode()
    request = urllib.request.Request(
        f"{base}/aibattle.v1.CompletionService/StreamCompletion",
        data=len(message).to_bytes(5, "big") + message,  # one envelope: flags 0, then the length
        headers={"Content-Type": "application/connect+json", "traceparent": f"00-{trace_id}-{parent_id}-01"},
        method="POST",
    )
    with _DIRECT.open(request, timeout=30) as response:
        assert response.status == 200
        assert b"Hello" in response.read()  # the first chunk's content, in its envelope

    def in_trace() -> list[Span]:
        return [s for s in sink.received() if s.trace_id.hex() == trace_id]

    until = time.monotonic() + DEADLINE
    while not any(s.name == "chat echo" for s in in_trace()) and time.monotonic() < until:
        time.sleep(0.1)
    spans = {s.name: s for s in in_trace()}
    http = spans["POST /aibattle.v1.CompletionService/StreamCompletion"]
    assert http.parent_span_id.hex() == parent_id
    assert http.kind == Span.SPAN_KIND_SERVER
    rpc = spans["aibattle.v1.CompletionService/StreamCompletion"]
    assert rpc.parent_span_id == http.span_id
    assert spans["chat echo"].trace_id == http.trace_id
