"""`python -m server --workers 2` on PostgreSQL, as real processes: the whole API on one gRPC and one HTTP
port, connections spread over both workers, one `/metrics` scrape for both, signals, a crashed worker.

Each worker keeps its series in a file of PROMETHEUS_MULTIPROC_DIR named after its pid (given here, so
the test can read it): that is how a test knows which worker served what, without trusting the server's
own word. gRPC channels get a subchannel pool of their own, so each is a fresh TCP connection, which the
kernel hands to either worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import aiohttp
import grpc
import pytest
import sseclient
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from aibattle.v1 import (
    completions_pb2,
    completions_pb2_grpc,
    conversations_pb2,
    conversations_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from tests.e2e.process import (
    BANNER,
    ECHO_CONFIG,
    HTTP_BANNER,
    STARTUP_DEADLINE,
    Output,
    Running,
    started,
    wait_for_line,
)
from tests.postgres_testlib import PostgresServer, database_of, postgres_server

__all__ = ["postgres_server"]  # a fixture, imported for the tests below

CONFIG = (
    ECHO_CONFIG
    + """
[[models]]
id = "slow"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["one two three four five"]
chunk_delay_ms = 150
"""
)
LIST_MODELS = "/aibattle.v1.ModelService/ListModels"
FOLLOW = "/aibattle.v1.ConversationService/StreamConversationEvents"


class Cluster(NamedTuple):
    server: Running
    metrics_dir: Path
    banner: str
    output: Output


def fresh_channel(target: str) -> grpc.Channel:
    """A channel on a TCP connection of its own (channels share connections by default)."""
    return grpc.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])


def workers_of(supervisor: int) -> set[int]:
    """The supervisor's children: its workers."""
    try:
        text = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text()
    except FileNotFoundError:
        return set()
    return {int(pid) for pid in text.split()}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"  # a zombie has exited


def eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if check():
            return True
        time.sleep(0.1)
    return check()


def requests_by_worker(metrics_dir: Path, route: str) -> dict[int, float]:
    """Each worker's count of OK gRPC requests to `route`, read from its own file."""
    counts = {}
    for db in metrics_dir.glob("counter_*.db"):
        with tempfile.TemporaryDirectory() as alone:
            shutil.copy(db, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=alone)
            labels = {"surface": "grpc", "route": route, "status": "OK", "error_type": ""}
            counts[int(db.stem.split("_")[1])] = (
                registry.get_sample_value("aibattle_requests_total", labels) or 0
            )
    return counts


def list_models(target: str) -> list[str]:
    with fresh_channel(target) as channel:
        reply = models_pb2_grpc.ModelServiceStub(channel).ListModels(
            models_pb2.ListModelsRequest(), timeout=10
        )
    return [m.id for m in reply.models]


@contextlib.contextmanager
def workers_server(
    postgres: PostgresServer, tmp_path: Path, *, config: str = CONFIG, **env: str
) -> Iterator[Cluster]:
    """`--workers 2` on a fresh PostgreSQL database, HTTP on, metrics kept in a directory of `tmp_path`."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (tmp_path / "aibattle.toml").write_text(config)
    with database_of(postgres) as url:
        environment = {
            **os.environ,
            "AIBATTLE_CONFIG": str(tmp_path / "aibattle.toml"),
            "AIBATTLE_GRPC_ADDR": "127.0.0.1:0",
            "AIBATTLE_HTTP_ADDR": "127.0.0.1:0",
            "AIBATTLE_DB": url,
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            **env,
        }
        argv = [sys.executable, "-m", "server", "--workers", "2"]
        with started(argv, environment, group=True) as (proc, output):
            banner = wait_for_line(proc, output, BANNER, STARTUP_DEADLINE)
            http = HTTP_BANNER.search(banner.string)
            assert http is not None
            yield Cluster(
                Running(proc, banner.group(1), http.group(1)), metrics_dir, banner.string.strip(), output
            )


@pytest.fixture(scope="module")
def cluster(postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with workers_server(postgres_server, tmp_path_factory.mktemp("workers")) as running:
        yield running


def test_sqlite_is_refused_with_a_reason(tmp_path: Path) -> None:
    (tmp_path / "aibattle.toml").write_text(CONFIG)
    env = {
        **os.environ,
        "AIBATTLE_CONFIG": str(tmp_path / "aibattle.toml"),
        "AIBATTLE_DB": str(tmp_path / "a.db"),
    }
    env.pop("AIBATTLE_WORKERS", None)
    result = subprocess.run(
        [sys.executable, "-m", "server", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "aibattle: configuration error: --workers: 2 workers need a postgresql:// database, not an SQLite"
        " file: processes sharing SQLite could not wake a conversation's followers in another process nor"
        " share the per-key limits (or run 1 worker)"
    ]


def test_one_banner_names_the_workers_and_the_ports_they_share(cluster: Cluster) -> None:
    assert cluster.banner.endswith("; models: echo, slow; workers: 2"), cluster.banner
    assert not cluster.server.grpc_target.endswith(":0") and not cluster.server.http_url.endswith(":0")
    assert len(workers_of(cluster.server.proc.pid)) == 2


def test_unary_and_streaming_grpc(cluster: Cluster) -> None:
    target = cluster.server.grpc_target
    for _ in range(4):
        assert list_models(target) == ["echo", "slow"]
    with fresh_channel(target) as channel:
        chunks = list(
            completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="echo", prompt="hi"), timeout=10
            )
        )
    assert "".join(c.content for c in chunks) == "Hello from a scripted model."
    assert chunks[-1].is_final


async def test_sse_and_websocket(cluster: Cluster) -> None:
    url = cluster.server.http_url
    body = {"model": "echo", "prompt": "hi"}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{url}/api/v1/completions:stream", json=body, headers={"Accept": "text/event-stream"}
        ) as resp:
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            events = list(sseclient.SSEClient(iter([await resp.read()])).events())
    assert (
        "".join(json.loads(e.data)["result"].get("content", "") for e in events)
        == "Hello from a scripted model."
    )
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(f"{url}/api/v1/ws/completions?model=echo&prompt=hi") as ws:
            frames = [json.loads(m.data) async for m in ws]
    assert "".join(f["result"].get("content", "") for f in frames) == "Hello from a scripted model."
    assert frames[-1]["result"]["is_final"] is True


def follow_over_grpc(target: str, conversation_id: str) -> list[tuple[int, int]]:
    """(sequence, type) of every event, from a fresh connection, to the stream's end."""
    with fresh_channel(target) as channel:
        stream = conversations_pb2_grpc.ConversationServiceStub(channel).StreamConversationEvents(
            conversations_pb2.StreamConversationEventsRequest(conversation_id=conversation_id), timeout=60
        )
        return [(r.event.sequence, r.event.type) for r in stream]


def test_a_conversation_created_on_one_connection_is_followed_on_others(cluster: Cluster) -> None:
    target = cluster.server.grpc_target
    with fresh_channel(target) as channel:
        created = conversations_pb2_grpc.ConversationServiceStub(channel).CreateConversation(
            conversations_pb2.CreateConversationRequest(
                models=[
                    conversations_pb2.Participant(id="slow", role="debater"),
                    conversations_pb2.Participant(id="slow", role="critic"),
                ],
                mode="ai-ai",
                rounds=2,
                initial_prompt="Is P = NP?",
            ),
            timeout=10,
        )
    cid = created.conversation.conversation_id
    # Followers from the start, live, each on a connection of its own, until both workers have served
    # some: a follower on the worker that does not run the conversation sees its commits all the same.
    seen: list[list[tuple[int, int]]] = []
    threads = [threading.Thread(target=lambda: seen.append(follow_over_grpc(target, cid))) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    before = requests_by_worker(cluster.metrics_dir, FOLLOW)
    while sum(n > 0 for n in before.values()) < 2 and sum(before.values()) < 40:
        seen.append(follow_over_grpc(target, cid))  # a replay of the finished conversation
        before = requests_by_worker(cluster.metrics_dir, FOLLOW)
    assert sum(n > 0 for n in before.values()) == 2, before
    whole = seen[0]
    assert [s for s, _ in whole] == list(range(1, len(whole) + 1))
    assert all(events == whole for events in seen), seen
    assert [t for _, t in whole].count(
        conversations_pb2.CONVERSATION_EVENT_TYPE_MESSAGE
    ) >= 3  # prompt, 2 turns


def test_one_scrape_counts_every_workers_requests(cluster: Cluster) -> None:
    target = cluster.server.grpc_target
    for _ in range(20):
        list_models(target)
    by_worker = requests_by_worker(cluster.metrics_dir, LIST_MODELS)
    assert sum(n > 0 for n in by_worker.values()) == 2, by_worker  # 20 connections: both workers served
    with urllib.request.urlopen(f"{cluster.server.http_url}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    scraped = {
        sample.labels["route"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "aibattle_requests"
        for sample in family.samples
        if sample.name == "aibattle_requests_total" and sample.labels["surface"] == "grpc"
    }
    assert scraped[LIST_MODELS] == sum(by_worker.values())
    assert "aibattle_requests_in_flight" in text and "pid=" not in text  # live gauges summed, not per pid


def slow_stream(target: str, chunks: list[str], first: threading.Event) -> None:
    """A stream of the slow model (about a second), its chunks into `chunks`; a cut stream just ends."""
    with fresh_channel(target) as channel, contextlib.suppress(grpc.RpcError):
        for reply in completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
            completions_pb2.StreamCompletionRequest(model="slow", prompt="hi"), timeout=30
        ):
            chunks.append(reply.content)
            first.set()


def test_sigint_to_the_group_drains_every_worker_and_exits_0(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with workers_server(postgres_server, tmp_path) as running:
        proc = running.server.proc
        pids = workers_of(proc.pid)
        assert len(pids) == 2
        chunks: list[str] = []
        first = threading.Event()
        stream = threading.Thread(target=slow_stream, args=(running.server.grpc_target, chunks, first))
        stream.start()
        assert first.wait(10)
        os.killpg(proc.pid, signal.SIGINT)  # as a Ctrl-C in a terminal: the supervisor and its workers
        assert proc.wait(timeout=30) == 0
        stream.join(timeout=10)
        assert "".join(chunks) == "one two three four five"  # the stream in flight finished
        assert not any(alive(pid) for pid in pids)


def test_a_second_signal_kills_the_workers_and_exits_1(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with workers_server(postgres_server, tmp_path) as running:
        proc = running.server.proc
        pids = workers_of(proc.pid)
        first = threading.Event()
        stream = threading.Thread(
            target=slow_stream, args=(running.server.grpc_target, [], first), daemon=True
        )
        stream.start()
        assert first.wait(10)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 1
        assert eventually(lambda: not any(alive(pid) for pid in pids), 5)


def test_a_killed_worker_is_replaced_and_the_port_keeps_serving(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    with workers_server(postgres_server, tmp_path) as running:
        supervisor = running.server.proc.pid
        before = workers_of(supervisor)
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        assert eventually(lambda: len(workers_of(supervisor)) == 2 and victim not in workers_of(supervisor))
        replacement = (workers_of(supervisor) - before).pop()
        target = running.server.grpc_target

        def the_replacement_serves() -> bool:
            # Until it has bound the port again, the survivor answers every connection alone.
            assert list_models(target) == ["echo", "slow"]
            return requests_by_worker(running.metrics_dir, LIST_MODELS).get(replacement, 0) > 0

        assert eventually(the_replacement_serves)
        logged = [json.loads(line) for line in running.output.stderr().splitlines() if line.startswith("{")]
        died = [e for e in logged if e["msg"] == "worker died: starting it again"]
        assert [(e["level"], e["pid"], e["exit_code"]) for e in died] == [("warning", victim, -9)]
        # Each worker's lines name it: the two share one stderr.
        serving = [e.get("worker") for e in logged if e["msg"] == "grpc serving"]
        assert sorted(serving) == sorted([0, 1, died[0]["worker"]])


def test_no_worker_outlives_a_sigkilled_supervisor(postgres_server: PostgresServer, tmp_path: Path) -> None:
    with workers_server(postgres_server, tmp_path) as running:
        proc = running.server.proc
        pids = workers_of(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
        assert eventually(lambda: not any(alive(pid) for pid in pids), 15)


def test_a_worker_that_cannot_start_stops_them_all(postgres_server: PostgresServer, tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    (tmp_path / "aibattle.toml").write_text(CONFIG)
    try:
        with database_of(postgres_server) as url:
            env = {
                **os.environ,
                "AIBATTLE_CONFIG": str(tmp_path / "aibattle.toml"),
                "AIBATTLE_DB": url,
                "AIBATTLE_GRPC_ADDR": "127.0.0.1:0",
                "AIBATTLE_HTTP_ADDR": f"127.0.0.1:{port}",
            }
            result = subprocess.run(
                [sys.executable, "-m", "server", "--workers", "2"],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
                start_new_session=True,
            )
    finally:
        taken.close()
    assert result.returncode == 1
    assert "aibattle: cannot start:" in result.stderr
    assert "serving gRPC" not in result.stdout


def test_a_metrics_listener_of_port_0_is_one_port_for_every_worker(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    config = '[server]\nmetrics_addr = "127.0.0.1:0"\n' + CONFIG
    with workers_server(postgres_server, tmp_path, config=config) as running:
        found = re.search(r"metrics on (http://\S+?/metrics)[,;]", running.banner)
        assert found is not None, running.banner
        for _ in range(20):
            list_models(running.server.grpc_target)
        by_worker = requests_by_worker(running.metrics_dir, LIST_MODELS)
        assert sum(n > 0 for n in by_worker.values()) == 2, by_worker
        for _ in range(4):  # each scrape on a connection of its own, whichever worker answers it
            with urllib.request.urlopen(found.group(1), timeout=10) as resp:
                text = resp.read().decode()
            assert f'route="{LIST_MODELS}",status="OK",surface="grpc"}} 20.0' in text
