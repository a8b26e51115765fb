"""The server's traces and GenAI metrics as an OTLP collector receives them.

The real server (`python -m server`, with the gateway in process) exports over OTLP/HTTP to a receiver
this test runs (aiohttp, decoding the `opentelemetry-proto` messages), and its one model is an HTTP
(OpenAI-compatible) model in front of a fake upstream of this test that records the headers it is
sent. Both run on a loop in a thread of their own, so the tests can drive the server synchronously.

Checked: a REST completion carrying a `traceparent` is one trace under that parent, from the gateway's
HTTP SERVER span through the server's RPC span and the `chat {model}` span to the upstream request's
CLIENT span, whose context the upstream received; a reasoning session is an `invoke_workflow` span of
its own trace, linked to the request that created it, with its model calls as children and its
handoffs as events; the GenAI metrics are exported; prompts and completions appear only with content
capture on; and no secret (the admin key, an API key's secret, the upstream's key) is in anything
exported or in the server's log lines.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import signal
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from aibattle.v1 import (
    completions_pb2,
    completions_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from common.observability import tracing
from tests.e2e.process import Output, Running, server_process

DEADLINE = 30.0
"""Seconds spans and metrics may take to arrive (batched every 100 ms, metrics every 300 ms here)."""
MODEL = "upstream-gpt"
REPLY = "Canberra is the capital of Australia."
PROMPT = "Which city is the capital of Australia? (a prompt for the trace)"
ADMIN_KEY = "obs-admin-key-5a1f0c9e7d3b2a4f6e8c"
UPSTREAM_KEY = "sk-obs-upstream-9f8e7d6c5b4a39281706"
UPSTREAM_KEY_ENV = "AIBATTLE_OBS_UPSTREAM_KEY"
REST_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
REST_PARENT = "00f067aa0ba902b7"
GRPC_TRACE = "0af7651916cd43dd8448eb211c80319c"
GRPC_PARENT = "b7ad6b7169203331"
SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# ---- the collector and the upstream


@dataclass
class Received:
    """What the receiver and the fake upstream were sent (raw exports kept for the secret scan)."""

    traces: list[bytes] = field(default_factory=list)
    metrics: list[bytes] = field(default_factory=list)
    upstream: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spans(self) -> list[Span]:
        with self.lock:
            exports = [ExportTraceServiceRequest.FromString(body) for body in self.traces]
        return [
            span
            for export in exports
            for resource in export.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def metric_names(self) -> set[str]:
        with self.lock:
            exports = [ExportMetricsServiceRequest.FromString(body) for body in self.metrics]
        return {
            metric.name
            for export in exports
            for resource in export.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def token_types(self) -> set[str]:
        """The gen_ai.token.type values of the token usage histogram's data points."""
        with self.lock:
            exports = [ExportMetricsServiceRequest.FromString(body) for body in self.metrics]
        return {
            attribute.value.string_value
            for export in exports
            for resource in export.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == "gen_ai.client.token.usage"
            for point in metric.histogram.data_points
            for attribute in point.attributes
            if attribute.key == "gen_ai.token.type"
        }


def _sse(payload: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(payload)}\n\n".encode()


class Loopback:
    """The OTLP/HTTP receiver and the fake OpenAI-compatible upstream, on an event loop in a thread."""

    def __init__(self) -> None:
        self.received = Received()
        self.quick: int | None = None
        """How many streamed answers come at once before the rest hang (a server killed mid-call);
        None: all of them."""
        self._streamed = 0
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        receiver = web.Application()
        receiver.router.add_post("/v1/traces", self._traces)
        receiver.router.add_post("/v1/metrics", self._metrics)
        upstream = web.Application()
        upstream.router.add_post("/v1/chat/completions", self._chat)
        self.receiver_port = self._serve(receiver)
        self.upstream_port = self._serve(upstream)

    def _serve(self, app: web.Application) -> int:
        async def start() -> int:
            # A hanging answer ends with its connection (or within a second of the shutdown).
            runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self._runners.append(runner)
            port: int = runner.addresses[0][1]
            return port

        return asyncio.run_coroutine_threadsafe(start(), self._loop).result(10)

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @staticmethod
    async def _body(request: web.Request) -> bytes:
        body = await request.read()
        return gzip.decompress(body) if request.headers.get("Content-Encoding") == "gzip" else body

    async def _traces(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ExportTraceServiceRequest.FromString(body)  # a malformed export fails here, visibly
        with self.received.lock:
            self.received.traces.append(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        ExportMetricsServiceRequest.FromString(body)
        with self.received.lock:
            self.received.metrics.append(body)
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        asked = await request.json()
        with self.received.lock:
            self.received.upstream.append({k.lower(): v for k, v in request.headers.items()})
        usage = {"prompt_tokens": 11, "completion_tokens": 6, "total_tokens": 17}
        base = {"id": "chatcmpl-obs", "created": 1, "model": "fake-model"}
        if not asked.get("stream"):
            message = {"role": "assistant", "content": REPLY}
            return web.json_response(
                {
                    **base,
                    "object": "chat.completion",
                    "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
                    "usage": usage,
                }
            )
        self._streamed += 1
        if self.quick is not None and self._streamed > self.quick:
            await asyncio.sleep(60)  # until the server dies
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        await response.write(_sse({**chunk, "choices": [{"index": 0, "delta": {"content": REPLY}}]}))
        await response.write(_sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        await response.write(_sse({**chunk, "choices": [], "usage": usage}))
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


@dataclass
class Traced:
    running: Running
    output: Output
    received: Received


SERVER_TABLE = """
[server]
lease_seconds = 1
orphan_sweep_seconds = 0.3
"""


@contextmanager
def _serving(loopback: Loopback, tmp_path: Path, **env: str) -> Iterator[Traced]:
    """The server exporting to `loopback`'s receiver, its model in front of its fake upstream (a short
    lease, so a run whose server died is adopted within a second)."""
    config = f"""{SERVER_TABLE}
[[models]]
id = "{MODEL}"
provider = "openai"
base_url = "http://127.0.0.1:{loopback.upstream_port}/v1"
api_key_env = "{UPSTREAM_KEY_ENV}"
upstream_model = "fake-model"
capabilities = ["text", "conversation"]
pricing = {{ input = 0.001, output = 0.002 }}
"""
    outputs: list[Output] = []
    environment: dict[str, Any] = {
        "AIBATTLE_HTTP_ADDR": "127.0.0.1:0",
        "AIBATTLE_ADMIN_KEY": ADMIN_KEY,
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{loopback.receiver_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "aibattle-server-test",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "OTEL_METRIC_EXPORT_INTERVAL": "300",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        **env,
    }
    with server_process(config, tmp_path, outputs=outputs, **environment) as running:
        yield Traced(running, outputs[0], loopback.received)


def _traced(tmp_path: Path, **env: str) -> Iterator[Traced]:
    loopback = Loopback()
    try:
        with _serving(loopback, tmp_path, **env) as traced:
            yield traced
    finally:
        loopback.close()


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """Content capture left at its default (off)."""
    yield from _traced(
        tmp_path_factory.mktemp("traced"), OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=""
    )


@pytest.fixture(scope="module")
def capturing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    """Content capture on."""
    yield from _traced(
        tmp_path_factory.mktemp("capturing"), OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="true"
    )


# ---- helpers


def api_key(traced: Traced) -> str:
    """An API key made by the admin for this server (its secret must never be exported)."""
    with grpc.insecure_channel(traced.running.grpc_target) as channel:
        made = keys_pb2_grpc.KeyServiceStub(channel).CreateKey(
            keys_pb2.CreateKeyRequest(name="obs"), metadata=(("authorization", f"Bearer {ADMIN_KEY}"),)
        )
    secret: str = made.secret
    return secret


def complete(traced: Traced, secret: str, traceparent: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"{traced.running.http_url}/api/v1/completions",
        data=json.dumps({"model": MODEL, "prompt": PROMPT}).encode(),
        headers={
            "Content-Type": "application/json",
            "Authorization": f"Bearer {secret}",
            "traceparent": traceparent,
        },
        method="POST",
    )
    with _DIRECT.open(request, timeout=30) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def wait_for(what: Callable[[], bool], deadline: float = DEADLINE) -> bool:
    until = time.monotonic() + deadline
    while not what():
        if time.monotonic() > until:
            return False
        time.sleep(0.05)
    return True


def of_trace(spans: list[Span], trace_id: str) -> list[Span]:
    return [s for s in spans if s.trace_id.hex() == trace_id]


def attributes(item: Any) -> dict[str, Any]:
    """A span's (or an event's) attributes as a dict; array values as their AnyValue list."""
    found: dict[str, Any] = {}
    for a in item.attributes:
        kind = a.value.WhichOneof("value")
        found[a.key] = getattr(a.value, kind) if kind else None
    return found


def only(spans: list[Span], test: Callable[[Span], bool], what: str) -> Span:
    matching = [s for s in spans if test(s)]
    assert len(matching) == 1, f"{what}: {[(s.name, s.kind) for s in spans]}"
    return matching[0]


def ancestors(span: Span, spans: list[Span]) -> list[str]:
    """The span ids above `span`, nearest first, as far as the received spans go (then one more: the
    parent that was not received, the caller's)."""
    by_id = {s.span_id: s for s in spans}
    found = []
    parent = span.parent_span_id
    while parent:
        found.append(parent.hex())
        above = by_id.get(parent)
        parent = above.parent_span_id if above is not None else b""
    return found


def chat_spans(traced: Traced | Loopback, trace_id: str) -> list[Span]:
    return [s for s in of_trace(traced.received.spans(), trace_id) if s.name == f"chat {MODEL}"]


# ---- the tests


def test_a_rest_completion_is_one_trace_from_the_gateway_to_the_upstream(traced: Traced) -> None:
    secret = api_key(traced)
    answer = complete(traced, secret, f"00-{REST_TRACE}-{REST_PARENT}-01")
    assert answer["content"] == REPLY

    def trace() -> list[Span]:
        return of_trace(traced.received.spans(), REST_TRACE)

    names = {"aibattle.v1.CompletionService/CreateCompletion", f"chat {MODEL}", "POST"}
    assert wait_for(lambda: names <= {s.name for s in trace()}), [s.name for s in trace()]
    # The gateway's span ends (and is exported) a moment after the server's.
    wait_for(lambda: any(s.kind == SERVER and s.name.startswith("POST") for s in trace()), 5.0)
    spans = trace()

    gateway = only(spans, lambda s: s.kind == SERVER and s.name.startswith("POST"), "the gateway's HTTP span")
    assert gateway.parent_span_id.hex() == REST_PARENT
    rpc = only(spans, lambda s: s.name == "aibattle.v1.CompletionService/CreateCompletion", "the RPC span")
    assert rpc.kind == SERVER
    assert gateway.span_id.hex() in ancestors(rpc, spans)
    assert ancestors(rpc, spans)[-1] == REST_PARENT  # one connected trace under the caller's parent
    rpc_attributes = attributes(rpc)
    assert rpc_attributes["rpc.system"] == "grpc"
    assert rpc_attributes["rpc.service"] == "aibattle.v1.CompletionService"
    assert rpc_attributes["rpc.method"] == "CreateCompletion"
    assert rpc_attributes["rpc.grpc.status_code"] == 0

    chat = only(spans, lambda s: s.name == f"chat {MODEL}", "the model call")
    assert chat.kind == CLIENT and chat.parent_span_id == rpc.span_id
    gen_ai = attributes(chat)
    assert gen_ai["gen_ai.operation.name"] == "chat"
    assert gen_ai["gen_ai.provider.name"] == "openai"
    assert gen_ai["gen_ai.request.model"] == gen_ai["gen_ai.response.model"] == "fake-model"
    assert gen_ai["aibattle.model.id"] == MODEL
    assert (gen_ai["gen_ai.usage.input_tokens"], gen_ai["gen_ai.usage.output_tokens"]) == (11, 6)
    assert [v.string_value for v in gen_ai["gen_ai.response.finish_reasons"].values] == ["stop"]
    assert gen_ai["gen_ai.request.max_tokens"] > 0
    assert gen_ai["gen_ai.response.time_to_first_chunk"] > 0
    # Content is not captured by default.
    assert "gen_ai.input.messages" not in gen_ai and "gen_ai.output.messages" not in gen_ai

    http = only(spans, lambda s: s.name == "POST" and s.kind == CLIENT, "the upstream request")
    assert http.parent_span_id == chat.span_id
    request = attributes(http)
    port = traced.received.upstream[-1]["host"].rsplit(":", 1)[1]
    assert request["http.request.method"] == "POST"
    assert request["url.full"] == f"http://127.0.0.1:{port}/v1/chat/completions"
    assert (request["server.address"], request["server.port"]) == ("127.0.0.1", int(port))
    assert request["http.response.status_code"] == 200

    # The upstream was sent the HTTP CLIENT span's context: the same trace.
    sent = [h["traceparent"] for h in traced.received.upstream if REST_TRACE in h.get("traceparent", "")]
    assert sent == [f"00-{REST_TRACE}-{http.span_id.hex()}-01"]

    # The access line joins the trace: it carries the RPC span's ids, and the call's model and usage.
    lines = [json.loads(line) for line in traced.output.stderr().splitlines() if line.startswith("{")]
    [access] = [x for x in lines if x.get("msg") == "rpc" and x.get("trace_id") == REST_TRACE]
    assert access["span_id"] == rpc.span_id.hex()
    assert access["model"] == MODEL and access["output_tokens"] == 6 and "overhead_ms" in access


def test_a_reasoning_session_is_a_workflow_span_with_its_model_calls_as_children(traced: Traced) -> None:
    with grpc.insecure_channel(traced.running.grpc_target) as channel:
        response = reasoning_pb2_grpc.ReasoningServiceStub(channel).CreateReasoning(
            reasoning_pb2.CreateReasoningRequest(
                prompt=PROMPT, primary_model=MODEL, collaboration_strategy="cascade", wait=True
            ),
            metadata=(
                ("authorization", f"Bearer {ADMIN_KEY}"),
                ("traceparent", f"00-{GRPC_TRACE}-{GRPC_PARENT}-01"),
            ),
        )
    reasoning = response.reasoning
    calls = len(reasoning.iterations)
    assert calls >= 2

    def workflow() -> Span | None:
        return next(
            (
                s
                for s in traced.received.spans()
                if s.name == "invoke_workflow cascade"
                and attributes(s).get("aibattle.run.id") == reasoning.reasoning_id
            ),
            None,
        )

    assert wait_for(lambda: workflow() is not None)
    run = workflow()
    assert run is not None

    def children() -> list[Span]:
        return [
            s
            for s in of_trace(traced.received.spans(), run.trace_id.hex())
            if s.parent_span_id == run.span_id
        ]

    assert wait_for(lambda: len(children()) >= calls), [s.name for s in children()]
    assert {s.name for s in children()} == {f"chat {MODEL}"}
    assert all(s.kind == CLIENT for s in children())

    # A trace of its own, linked to the request that created it.
    assert run.kind == INTERNAL and run.trace_id.hex() != GRPC_TRACE and not run.parent_span_id
    request = only(
        of_trace(traced.received.spans(), GRPC_TRACE),
        lambda s: s.name == "aibattle.v1.ReasoningService/CreateReasoning",
        "the creating request",
    )
    assert request.parent_span_id.hex() == GRPC_PARENT
    assert [(link.trace_id.hex(), link.span_id) for link in run.links] == [(GRPC_TRACE, request.span_id)]
    run_attributes = attributes(run)
    assert run_attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert run_attributes["aibattle.reasoning.strategy"] == "cascade"
    assert run_attributes["aibattle.reasoning.iterations"] == calls
    assert run_attributes["aibattle.run.status"] == "completed"
    # The secondary reads the primary's answer: a handoff, an event on the run.
    handoffs = [e for e in run.events if e.name == "aibattle.handoff"]
    assert handoffs and attributes(handoffs[0])["aibattle.handoff.to_model"] == MODEL


def test_a_grpc_stream_is_traced_under_the_parent_its_metadata_carries(traced: Traced) -> None:
    trace_id, parent = "5" * 32, "6" * 16
    with grpc.insecure_channel(traced.running.grpc_target) as channel:
        chunks = list(
            completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model=MODEL, prompt=PROMPT),
                metadata=(
                    ("authorization", f"Bearer {ADMIN_KEY}"),
                    ("traceparent", f"00-{trace_id}-{parent}-01"),
                ),
            )
        )
    assert "".join(c.content for c in chunks) == REPLY

    def trace() -> list[Span]:
        return of_trace(traced.received.spans(), trace_id)

    names = {"aibattle.v1.CompletionService/StreamCompletion", f"chat {MODEL}", "POST"}
    assert wait_for(lambda: names <= {s.name for s in trace()}), [s.name for s in trace()]
    spans = trace()
    rpc = only(spans, lambda s: s.name == "aibattle.v1.CompletionService/StreamCompletion", "the stream")
    chat = only(spans, lambda s: s.name == f"chat {MODEL}", "the model call")
    http = only(spans, lambda s: s.name == "POST", "the upstream request")
    assert rpc.parent_span_id.hex() == parent and rpc.kind == SERVER
    assert chat.parent_span_id == rpc.span_id and http.parent_span_id == chat.span_id
    # The stream's access line comes at its end, still in its span.
    lines = [json.loads(line) for line in traced.output.stderr().splitlines() if line.startswith("{")]
    [access] = [x for x in lines if x.get("msg") == "rpc" and x.get("trace_id") == trace_id]
    assert access["span_id"] == rpc.span_id.hex() and access["method"].endswith("/StreamCompletion")


def test_the_gen_ai_metrics_are_exported(traced: Traced) -> None:
    complete(traced, api_key(traced), f"00-{'3' * 32}-{REST_PARENT}-01")
    wanted = {"gen_ai.client.token.usage", "gen_ai.client.operation.duration"}
    assert wait_for(lambda: wanted <= traced.received.metric_names()), traced.received.metric_names()
    assert wait_for(lambda: {"input", "output"} <= traced.received.token_types())


def test_content_is_captured_only_when_asked(capturing: Traced) -> None:
    trace_id = "1" * 32
    complete(capturing, api_key(capturing), f"00-{trace_id}-{REST_PARENT}-01")
    assert wait_for(lambda: bool(chat_spans(capturing, trace_id)))
    [chat] = chat_spans(capturing, trace_id)
    gen_ai = attributes(chat)
    [message] = json.loads(gen_ai["gen_ai.input.messages"])
    assert message == {"role": "user", "parts": [{"type": "text", "content": PROMPT}]}
    [output] = json.loads(gen_ai["gen_ai.output.messages"])
    assert output["role"] == "assistant" and output["parts"][0]["content"] == REPLY
    assert output["finish_reason"] == "stop"


def test_no_content_and_no_secret_is_exported_or_logged(traced: Traced) -> None:
    trace_id = "2" * 32
    secret = api_key(traced)
    complete(traced, secret, f"00-{trace_id}-{REST_PARENT}-01")
    assert wait_for(lambda: bool(chat_spans(traced, trace_id)))
    assert wait_for(lambda: bool(traced.received.metrics))
    with traced.received.lock:
        exported = [*traced.received.traces, *traced.received.metrics]
        upstream = traced.received.upstream[-1]
    # The upstream's key did reach the upstream, in its Authorization header and nowhere else.
    assert upstream["authorization"] == f"Bearer {UPSTREAM_KEY}"
    for text in (ADMIN_KEY, secret, UPSTREAM_KEY, PROMPT, REPLY):
        assert not [body for body in exported if text.encode() in body], f"{text[:8]}… was exported"
    logged = traced.output.stderr()
    assert f'"trace_id": "{trace_id}"' in logged  # lines were written, with their trace ids
    for text in (ADMIN_KEY, secret, UPSTREAM_KEY):
        assert text not in logged, f"{text[:8]}… is in a log line"
    # Spans are made current only within one step of a stream (never across its yields).
    assert "Failed to detach context" not in logged


def test_a_run_adopted_after_a_restart_links_to_its_earlier_trace(tmp_path: Path) -> None:
    loopback = Loopback()
    loopback.quick = 1
    try:
        with _serving(loopback, tmp_path) as first:
            with grpc.insecure_channel(first.running.grpc_target) as channel:
                reasoning = (
                    reasoning_pb2_grpc.ReasoningServiceStub(channel)
                    .CreateReasoning(
                        reasoning_pb2.CreateReasoningRequest(
                            prompt=PROMPT, primary_model=MODEL, collaboration_strategy="cascade"
                        ),
                        metadata=(("authorization", f"Bearer {ADMIN_KEY}"),),
                    )
                    .reasoning
                )
            # Its first model call answers (and its span is exported); the second one hangs, and the
            # server dies in the middle of it.
            assert wait_for(lambda: len(loopback.received.upstream) >= 2)
            assert wait_for(lambda: any(s.name == f"chat {MODEL}" for s in loopback.received.spans()))
            first.running.proc.kill()
        with sqlite3.connect(tmp_path / "aibattle.db") as db:
            (stored,) = db.execute(
                "SELECT traceparent FROM resources WHERE resource_id = ?", (reasoning.reasoning_id,)
            ).fetchone()
        _, trace_id, span_id, _ = stored.split("-")
        # The stored context is the first run's: its first model call is that span's child.
        assert [s.parent_span_id.hex() for s in chat_spans(loopback, trace_id)] == [span_id]

        loopback.quick = None
        with _serving(loopback, tmp_path):

            def adopted() -> Span | None:
                return next(
                    (
                        s
                        for s in loopback.received.spans()
                        if s.name == "invoke_workflow cascade"
                        and attributes(s).get("aibattle.run.id") == reasoning.reasoning_id
                    ),
                    None,
                )

            assert wait_for(lambda: adopted() is not None)
        run = adopted()
        assert run is not None and run.trace_id.hex() != trace_id
        assert [(link.trace_id.hex(), link.span_id.hex()) for link in run.links] == [(trace_id, span_id)]
        assert attributes(run)["aibattle.run.status"] == "completed"
        assert chat_spans(loopback, run.trace_id.hex())  # it went on calling the model, in its own trace
    finally:
        loopback.close()


def test_a_collector_that_is_down_does_not_hold_up_the_servers_stop(tmp_path: Path) -> None:
    """The exporters retry an unreachable collector for many seconds; SIGINT must not wait for them (the
    SDK's own exit hook did, about 15 s): the flush at exit is bounded (tracing.SHUTDOWN_SECONDS)."""
    config = '[[models]]\nid = "echo"\nprovider = "scripted"\nscript = ["hello there"]\n'
    with server_process(
        config, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:1", OTEL_SERVICE_NAME="down"
    ) as running:
        with grpc.insecure_channel(running.grpc_target) as channel:
            stub = completions_pb2_grpc.CompletionServiceStub(channel)
            stub.CreateCompletion(completions_pb2.CreateCompletionRequest(model="echo", prompt="hi"))
        started = time.monotonic()
        running.proc.send_signal(signal.SIGINT)
        code = running.proc.wait(timeout=60)
        took = time.monotonic() - started
    assert code == 0
    # Well inside the exporters' retry horizon, whatever the machine's load: the bound holds.
    assert took < tracing.SHUTDOWN_SECONDS + 4
