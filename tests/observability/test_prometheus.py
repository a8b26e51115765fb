"""A real Prometheus scrapes the real server (`python -m server`, as `make run` starts it) and sees the
traffic it was sent: known REST completions through the in-process gateway, known gRPC streams, one
refused request. Once for each place `/metrics` can be served: the gateway's port (the default) and a
listener of its own (`[server].metrics_addr`). Every expression of the Grafana dashboard then runs on it.

Needs Debian's `prometheus` and `promtool` (`make install`); loopback only, every wait bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from tests.e2e.process import Running, server_process
from tests.observability import dashboard as dash
from tests.observability.prometheus import BINARY, Prometheus, free_port, get, prometheus

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

# `make install` installs prometheus; only a hand-run pytest on a machine without it may skip, never CI.
pytestmark = pytest.mark.skipif(
    not Path(BINARY).exists() and not os.environ.get("CI"), reason="needs Debian's prometheus (make install)"
)

MODEL = "echo"
CONFIG = """
[server]
metrics = true
{metrics_addr}

[[models]]
id = "echo"
provider = "scripted"
capabilities = ["text"]
script = ["Hello from a scripted model."]
pricing = {{ input = 0.25, output = 0.5 }}
"""
PROMPT = "hi"  # one scripted token (scripted tokens are words)
REPLY_TOKENS = 5  # "Hello from a scripted model."
COST = 1 * 0.25 + REPLY_TOKENS * 0.5  # USD per call; exact in binary floating point
REST_COMPLETIONS = 3
REST_SENT = REST_COMPLETIONS + 1  # and one for a model that does not exist
GRPC_STREAMS = 2
CALLS = REST_COMPLETIONS + GRPC_STREAMS
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Scraped:
    prometheus: Prometheus
    server: Running
    metrics_target: str
    """host:port Prometheus scrapes."""
    own_listener: bool


def post_json(url: str, body: dict[str, object]) -> int:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with _DIRECT.open(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def send_traffic(server: Running) -> None:
    """REST_COMPLETIONS completions and one for an unknown model over REST, GRPC_STREAMS streams over
    gRPC; each checked, so a count that differs later is the metrics' fault, not the traffic's."""
    for _ in range(REST_COMPLETIONS):
        assert post_json(f"{server.http_url}/api/v1/completions", {"model": MODEL, "prompt": PROMPT}) == 200
    assert post_json(f"{server.http_url}/api/v1/completions", {"model": "nope", "prompt": PROMPT}) == 404
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = completions_pb2_grpc.CompletionServiceStub(channel)
        for _ in range(GRPC_STREAMS):
            chunks = list(
                stub.StreamCompletion(
                    completions_pb2.StreamCompletionRequest(model=MODEL, prompt=PROMPT), timeout=10
                )
            )
            assert chunks[-1].is_final and chunks[-1].usage.completion_tokens == REPLY_TOKENS


@pytest.fixture(scope="module", params=["gateway-port", "own-listener"])
def scraped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    own_listener = request.param == "own-listener"
    tmp = tmp_path_factory.mktemp(f"prometheus-{request.param}")
    listener = f"127.0.0.1:{free_port()}" if own_listener else ""
    config = CONFIG.format(metrics_addr=f'metrics_addr = "{listener}"' if own_listener else "")
    # The gateway's port chosen here, not read from the banner: the banner's wording is not this test's.
    http_addr = f"127.0.0.1:{free_port()}"
    with server_process(config, tmp, AIBATTLE_HTTP_ADDR=http_addr) as running:
        server = running._replace(http_url=f"http://{http_addr}")
        target = listener or http_addr
        with prometheus([target], tmp / "prometheus") as prom:
            send_traffic(server)
            yield Scraped(prom, server, target, own_listener)


def test_prometheus_scrapes_the_server_and_counts_the_traffic(scraped: Scraped) -> None:
    completions = 'route="/api/v1/completions"'
    expected = {
        'up{job="aibattle"}': 1,
        # Each REST completion is counted where it came in (rest) and again at the server, as the
        # in-process gateway's gRPC call (grpc, CreateCompletion).
        f'sum(aibattle_requests_total{{surface="rest", {completions}, status="200", error_type=""}})': (
            REST_COMPLETIONS
        ),
        f'sum(aibattle_requests_total{{surface="rest", {completions}, status="404"}})': 1,
        f'sum(aibattle_requests_total{{surface="rest", {completions}, error_type="caller_not_found"}})': 1,
        'sum(aibattle_requests_total{surface="grpc", route="/aibattle.v1.CompletionService/CreateCompletion",'
        ' status="OK", error_type=""})': REST_COMPLETIONS,
        'sum(aibattle_requests_total{surface="grpc", route="/aibattle.v1.CompletionService/StreamCompletion",'
        ' status="OK", error_type=""})': GRPC_STREAMS,
        f'sum(aibattle_request_duration_seconds_count{{surface="rest", {completions}}})': REST_SENT,
        # One model call per completion answered (the unknown model never reached one).
        f'sum(aibattle_model_calls_total{{model="{MODEL}", error_type=""}})': CALLS,
        f'sum(aibattle_model_calls_total{{model="{MODEL}", error_type!=""}}) or vector(0)': 0,
        f'sum(aibattle_time_to_first_token_seconds_count{{model="{MODEL}", provider="scripted"}})': CALLS,
        f'sum(aibattle_tokens_total{{model="{MODEL}", direction="output"}})': CALLS * REPLY_TOKENS,
        f'sum(aibattle_tokens_total{{model="{MODEL}", direction="input"}})': CALLS * 1,
        f'sum(aibattle_cost_usd_total{{model="{MODEL}"}})': CALLS * COST,
    }
    values = scraped.prometheus.settle(expected)
    assert values == expected, {
        q: f"{values[q]} (expected {v})" for q, v in expected.items() if values[q] != v
    }


def test_the_metrics_endpoint_is_not_counted_and_is_served_in_one_place(scraped: Scraped) -> None:
    # Scraped every second, yet in none of the series it serves.
    assert scraped.prometheus.settle({'up{job="aibattle"}': 1}) == {'up{job="aibattle"}': 1}
    scrapes = scraped.prometheus.value('count_over_time(up{job="aibattle"}[1m])')
    assert scrapes is not None and scrapes >= 1
    assert scraped.prometheus.query('aibattle_requests_total{route=~".*metrics.*"}') == []
    on_gateway = get(f"{scraped.server.http_url}/metrics")[0]
    assert on_gateway == (404 if scraped.own_listener else 200)


def test_every_dashboard_query_runs_on_prometheus(scraped: Scraped) -> None:
    """Each expression parses and evaluates; those over the traffic sent return series once the rates
    have two scrapes to work with."""
    dashboard = dash.load()
    queries = [*dash.queries(dashboard)]
    for q in queries:
        scraped.prometheus.query(dash.resolved(q.expr))  # fails on a PromQL error
    for variable in dash.variable_queries(dashboard):
        # label_values(series, label) is Grafana's; Prometheus answers the same as the series' label.
        series, _, label = variable.expr.removeprefix("label_values(").removesuffix(")").rpartition(",")
        values = {s["metric"].get(label.strip()) for s in scraped.prometheus.query(dash.resolved(series))}
        assert values - {None}, f"{variable.where}: no value of {label.strip()} in {series}"
    with_traffic = {
        "Request rate by surface",
        "Request latency p50 / p95 / p99",
        "Overhead p50 / p95 / p99",
        "Time to first token p50 / p95 / p99",
        "Tokens per second by model",
        "Cost per hour by model",
        "Model calls by outcome",
        "Errors by error_type",
    }
    assert with_traffic <= {q.where for q in queries}

    def answered() -> set[str]:
        return {
            q.where
            for q in queries
            if q.where in with_traffic and scraped.prometheus.query(dash.resolved(q.expr))
        }

    empty = scraped.prometheus.poll(lambda: with_traffic - answered())
    assert not empty, f"panels with no series for the traffic sent: {sorted(empty)}"


def test_the_example_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        [PROMTOOL, "check", "config", str(ROOT / "deploy" / "prometheus" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
