"""Three replicas of `python -m server` on one PostgreSQL and one Redis (issue 17, scale-out).

Each replica is a real process with gRPC and HTTP on free ports, behind an admin key (so keys are
enforced), with scripted models, `lease_seconds = 2` and `orphan_sweep_seconds = 1` so that a run whose
replica died is adopted within seconds. The cluster is shared by the module (in file order: the tests
that stop PostgreSQL and Redis come last, and each starts them again); a test that kills a replica
leaves the fixture to start a new one before the next test.

What is checked, one test each:
1. a session started on A is followed over SSE on B and over gRPC on C: both see 1..N exactly once,
   and hear of its iterations while A still runs it (not at a later poll of the database);
2. A killed (SIGKILL) mid-session: another replica adopts it, the iterations and events committed before
   the kill are unchanged, and the watchers on B and C still see 1..N exactly once;
3. a key's rpm across the replicas: 40 simultaneous requests admit exactly its burst (2 x rpm);
4. a key revoked on B is refused by C within one second;
5. a budget across the replicas: no overspend, refusals BUDGET_EXCEEDED;
6. PostgreSQL restarted mid-run: nothing committed is lost, the log stays dense, the run ends COMPLETED,
   watchers (reconnecting as clients do) see 1..N once; meanwhile calls answer UNAVAILABLE
   STORE_UNAVAILABLE, and /readyz and gRPC health follow the database down and back up;
7. Redis stopped: limited keys fail closed (UNAVAILABLE / 503, LIMITS_UNAVAILABLE), the rest work,
   readiness follows Redis out; and the service recovers when Redis returns.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aibattle.v1 import (
    common_pb2,
    completions_pb2,
    completions_pb2_grpc,
    keys_pb2,
    keys_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    reasoning_pb2,
    reasoning_pb2_grpc,
)
from tests.conftest import error_info, rich_status
from tests.e2e.process import BANNER, HTTP_BANNER, STARTUP_DEADLINE, Output, started, wait_for_line
from tests.security_testlib import ADMIN, ADMIN_KEY, SECRETS, bearer, new_key
from tools.local_services import RedisServer, as_postgres, free_port, start_redis, tool

S = common_pb2.RunStatus
T = reasoning_pb2.ReasoningEventType
HANG = 60.0
"""Only detects a hang: no outcome here waits for it."""
SERVING = health_pb2.HealthCheckResponse.SERVING
LEASE_SECONDS = 2
SWEEP_SECONDS = 1
DATABASE = "aibattle"
MODELS: list[dict[str, Any]] = [
    {
        "id": "drafter",
        "provider": "scripted",
        "capabilities": ["text", "conversation"],
        "script": [" ".join(f"w{i}" for i in range(12))],
        "chunk_delay_ms": 40,
    },
    {
        "id": "critic",
        "provider": "scripted",
        "capabilities": ["text", "conversation"],
        "script": ["Go deeper.\nVERDICT: REVISE\nFOCUS: depth"],
        "chunk_delay_ms": 20,
    },
    {
        # Six words: a call with max_tokens=4 always produces exactly 4, so its cost is its reservation
        # ($0.004: output at $0.001 a token, input free); with max_tokens=10, $0.006 of $0.010 reserved.
        "id": "priced",
        "provider": "scripted",
        "capabilities": ["text"],
        "script": ["one two three four five six"],
        "chunk_delay_ms": 20,
        "pricing": {"input": 0.0, "output": 0.001},
    },
]


def _toml_value(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers and lists of them: JSON's forms are TOML's


CONFIG = "\n".join(
    [
        "[server]",
        f"lease_seconds = {LEASE_SECONDS}",
        f"orphan_sweep_seconds = {SWEEP_SECONDS}",
        "shutdown_grace_seconds = 1",
        *(
            "\n[[models]]\n" + "\n".join(f"{k} = {_toml_value(v)}" for k, v in model.items())
            for model in MODELS
        ),
        "",
    ]
)


# ---- the cluster


@dataclass
class Postgres:
    """A throwaway PostgreSQL driven by `pg_ctl`, so that a test can stop it and start it again on
    the same data directory and port. `pg_ctl` runs it detached, as the `postgres` user when we are
    root, and signals the postmaster itself; no fork of this process runs as another user (a fork,
    rather than vfork, of a process with gRPC's threads may crash before it runs its program)."""

    directory: Path
    port: int = field(default_factory=free_port)
    running: bool = False

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def log(self) -> Path:
        return self.directory / "postgres.log"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*as_postgres(), *argv],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "LC_ALL": "C"},
            cwd=self.directory,  # one the `postgres` user may enter
        )
        log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        assert done.returncode == 0, f"{argv[0]} {argv[1]}: {done.stdout}{done.stderr}\n{log}"

    def create(self, database: str) -> None:
        self.directory.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self.directory.chmod(0o700)
        self._run(tool("initdb"), "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.start()
        self._run(tool("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", database)

    def start(self) -> None:
        """Start it (again), on its data directory and port; return once it accepts connections."""
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c max_connections=200"
        options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            tool("pg_ctl"),
            "start",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-w",
            "-t",
            "60",
            "-o",
            options,
        )
        self.running = True

    def stop(self) -> None:
        """A "fast" shutdown: its sessions are ended, what they committed is kept."""
        if self.running:
            self.running = False
            self._run(tool("pg_ctl"), "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[str]
    output: Output
    grpc_target: str = ""
    http_url: str = ""

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class Cluster:
    """One PostgreSQL, one Redis, three replicas; what a test disrupts it puts back."""

    directory: Path
    postgres: Postgres
    redis: RedisServer
    stack: ExitStack
    replicas: list[Replica] = field(default_factory=list)
    started: int = 0
    retired: list[Replica] = field(default_factory=list)

    @property
    def db_url(self) -> str:
        return self.postgres.url(DATABASE)

    def start_replicas(self, names: list[str]) -> list[Replica]:
        """Start these replicas at once, then wait for each one's banner."""
        made = []
        for name in names:
            self.started += 1
            config = self.directory / f"replica-{self.started}.toml"
            config.write_text(CONFIG)
            environment = {
                **os.environ,
                "AIBATTLE_CONFIG": str(config),
                "AIBATTLE_GRPC_ADDR": "127.0.0.1:0",
                "AIBATTLE_HTTP_ADDR": "127.0.0.1:0",
                "AIBATTLE_DB": self.db_url,
                "AIBATTLE_REDIS_URL": self.redis.url,
                "AIBATTLE_ADMIN_KEY": ADMIN_KEY,
            }
            proc, output = self.stack.enter_context(started([sys.executable, "-m", "server"], environment))
            made.append(Replica(name, proc, output))
        for replica in made:
            banner = wait_for_line(replica.proc, replica.output, BANNER, STARTUP_DEADLINE)
            http = HTTP_BANNER.search(banner.string)
            assert http is not None, banner.string
            replica.grpc_target, replica.http_url = banner.group(1), http.group(1)
        return made

    def ensure_three(self) -> None:
        """Replace any replica that is no longer running (a test killed it)."""
        for i, replica in enumerate(self.replicas):
            if not replica.alive():
                self.retired.append(replica)
                (self.replicas[i],) = self.start_replicas([replica.name])

    def logs(self) -> str:
        """What every replica logged lately but its access lines (and its latest errors), for a
        failure's message."""

        def notable(output: Output) -> str:
            lines = [line for line in output.stderr().splitlines() if '.access", "msg"' not in line]
            errors = [line[:3000] for line in lines[:-20] if '"level": "error"' in line][-5:]
            return "\n".join([*errors, *(line[:600] for line in lines[-20:])])

        return "\n".join(
            f"--- {r.name} (pid {r.proc.pid}, {'alive' if r.alive() else f'exit {r.proc.returncode}'})\n"
            + notable(r.output)
            for r in [*self.retired, *self.replicas]
        )


@pytest.fixture(scope="module")
def cluster_once() -> Iterator[Cluster]:
    # Not pytest's tmp_path: PostgreSQL (run as `postgres` when we are root) must reach its directory.
    directory = Path(tempfile.mkdtemp(prefix="aibattle-replicas-"))
    directory.chmod(0o711)  # the `postgres` user passes through to its own directory
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, True)
        postgres = Postgres(directory / "pg")
        stack.callback(postgres.stop)
        postgres.create(DATABASE)
        redis = start_redis()
        cluster = Cluster(directory, postgres, redis, stack)
        stack.callback(lambda: cluster.redis.stop())  # the one running at the end (a test replaces it)
        cluster.replicas = cluster.start_replicas(["A", "B", "C"])
        try:
            yield cluster
        finally:
            for replica in cluster.replicas:
                if replica.alive():
                    replica.proc.send_signal(signal.SIGTERM)
            for replica in cluster.replicas:
                try:
                    replica.proc.wait(15)
                except Exception:
                    replica.proc.kill()


@pytest.fixture
def cluster(cluster_once: Cluster) -> Cluster:
    if not cluster_once.postgres.running:
        cluster_once.postgres.start()
    if cluster_once.redis.process is None:
        cluster_once.redis = start_redis(port=cluster_once.redis.port)
    cluster_once.ensure_three()
    return cluster_once


@dataclass
class Client:
    """One replica as a client sees it: a gRPC channel and an HTTP session."""

    replica: Replica
    channel: grpc.aio.Channel
    http: aiohttp.ClientSession

    @property
    def reasoning(self) -> reasoning_pb2_grpc.ReasoningServiceStub:
        return reasoning_pb2_grpc.ReasoningServiceStub(self.channel)

    @property
    def models(self) -> models_pb2_grpc.ModelServiceStub:
        return models_pb2_grpc.ModelServiceStub(self.channel)

    @property
    def completions(self) -> completions_pb2_grpc.CompletionServiceStub:
        return completions_pb2_grpc.CompletionServiceStub(self.channel)

    def url(self, path: str) -> str:
        return self.replica.http_url + path


@pytest.fixture
async def clients(cluster: Cluster) -> AsyncIterator[list[Client]]:
    made: list[Client] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=HANG)) as http:
        for replica in cluster.replicas:
            made.append(Client(replica, grpc.aio.insecure_channel(replica.grpc_target), http))
        try:
            yield made
        finally:
            for client in made:
                await client.channel.close()


def http_bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


# ---- reading a session's events


Event = tuple[int, str]
"""(sequence, type name) of one event."""
OnEvent = Callable[[Event], Awaitable[None]] | None
"""Called as each event arrives, before the next one is read."""


class StreamBroken(Exception):
    """An event stream that ended in an error (UNAVAILABLE, an SSE `event: error` frame, a 503)."""


async def grpc_log(
    client: Client, rid: str, secret: str, *, reconnect: bool = False, on_event: OnEvent = None
) -> list[Event]:
    """A session's events over gRPC, until the stream ends by itself (after the terminal event).
    `reconnect`: after an UNAVAILABLE, follow again from the last sequence seen, as a client would."""
    seen: list[Event] = []
    deadline = time.monotonic() + HANG
    while True:
        call = client.reasoning.StreamReasoningEvents(
            reasoning_pb2.StreamReasoningEventsRequest(
                reasoning_id=rid, after_sequence=seen[-1][0] if seen else 0
            ),
            metadata=bearer(secret),
            timeout=HANG,
        )
        try:
            async for response in call:
                seen.append((response.event.sequence, T.Name(response.event.type)))
                if on_event is not None:
                    await on_event(seen[-1])
            return seen
        except grpc.aio.AioRpcError as exc:
            if not reconnect or exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def sse_log(
    client: Client, rid: str, secret: str, *, reconnect: bool = False, on_event: OnEvent = None
) -> list[Event]:
    """A session's events over SSE, until the stream ends by itself; each event's id is its sequence.
    `reconnect`: after an error, follow again with the last id seen as Last-Event-ID (an EventSource's
    way)."""
    seen: list[Event] = []
    deadline = time.monotonic() + HANG
    while True:
        try:
            await _sse_into(seen, client, rid, secret, on_event)
            return seen
        except (StreamBroken, aiohttp.ClientError):
            if not reconnect or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


async def _sse_into(seen: list[Event], client: Client, rid: str, secret: str, on_event: OnEvent) -> None:
    headers = {"Accept": "text/event-stream", **http_bearer(secret)}
    if seen:
        headers["Last-Event-ID"] = str(seen[-1][0])
    url = client.url(f"/api/v1/collaborative-reasoning/{rid}/events")
    async with client.http.get(url, headers=headers) as response:
        if response.status == 204:  # nothing left to send: the stream had reached the end
            return
        if response.status == 503:
            raise StreamBroken(await response.text())
        assert response.status == 200, await response.text()
        ident, name, data = "", "", []
        async for raw in response.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("id:"):
                ident = line[3:].strip()
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
            elif not line and data:
                frame = json.loads("\n".join(data))
                if name == "error":
                    raise StreamBroken(frame)
                event = frame["result"]["event"]
                assert ident == event["sequence"], (ident, event)
                seen.append((int(event["sequence"]), event["type"]))
                if on_event is not None:
                    await on_event(seen[-1])
                ident, name, data = "", "", []


async def prefix_of_log(
    client: Client, rid: str, secret: str, upto: int
) -> list[reasoning_pb2.ReasoningEvent]:
    """The events 1..upto as stored now (the stream is left once it reaches `upto`)."""
    if upto == 0:
        return []
    call = client.reasoning.StreamReasoningEvents(
        reasoning_pb2.StreamReasoningEventsRequest(reasoning_id=rid), metadata=bearer(secret), timeout=HANG
    )
    got = []
    async for response in call:
        got.append(response.event)
        if response.event.sequence >= upto:
            break
    call.cancel()
    return got


async def get_session(client: Client, rid: str, secret: str) -> reasoning_pb2.Reasoning:
    request = reasoning_pb2.GetReasoningRequest(reasoning_id=rid)
    return (await client.reasoning.GetReasoning(request, metadata=bearer(secret), timeout=10)).reasoning


async def until(
    check: Callable[[], Awaitable[Any]], within: float, what: str, logs: Callable[[], str] = str
) -> Any:
    """`check()`'s first truthy result (exceptions count as falsy) within `within` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if result := await check():
                return result
            last = result
        except (TimeoutError, grpc.aio.AioRpcError, aiohttp.ClientError, OSError) as exc:
            last = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what}: not within {within} s (last: {last!r})\n{logs()}")


def dense(log: list[Event]) -> bool:
    return [sequence for sequence, _ in log] == list(range(1, len(log) + 1))


async def make_key(client: Client, **fields: Any) -> tuple[keys_pb2.ApiKey, str]:
    return await new_key(client.channel, **fields)


# ---- 1. one session followed on the other replicas


async def test_a_session_started_on_a_is_followed_on_b_over_sse_and_on_c_over_grpc(
    cluster: Cluster, clients: list[Client]
) -> None:
    a, b, c = clients
    _, secret = await make_key(a, name="follower")
    body = {
        "primary_model": "drafter",
        "secondary_model": "critic",
        "prompt": "Why is the sky blue?",
        "max_iterations": 3,
    }
    async with a.http.post(
        a.url("/api/v1/collaborative-reasoning"), json=body, headers=http_bearer(secret)
    ) as response:
        assert response.status == 200, await response.text()
        rid = (await response.json())["reasoning_id"]
    # Where the session stood when each watcher got its second iteration (well after the replay it
    # started with): a follower on another replica hears of commits as they happen, while A still runs
    # the session, not at its next poll of the database.
    live: dict[str, str] = {}

    def second_iteration(surface: str) -> OnEvent:
        iterations = 0

        async def seen(event: Event) -> None:
            nonlocal iterations
            if event[1] == "REASONING_EVENT_TYPE_NEW_ITERATION":
                iterations += 1
                if iterations == 2:
                    live[surface] = S.Name((await get_session(a, rid, secret)).status)

        return seen

    on_b, on_c = await asyncio.gather(
        sse_log(b, rid, secret, on_event=second_iteration("SSE on B")),
        grpc_log(c, rid, secret, on_event=second_iteration("gRPC on C")),
    )
    done = await get_session(a, rid, secret)
    stored = await grpc_log(a, rid, secret)  # the whole log, replayed
    assert done.status == S.RUN_STATUS_COMPLETED, cluster.logs()
    assert dense(stored) and stored[-1][1] == "REASONING_EVENT_TYPE_COMPLETION"
    assert len(stored) == done.last_sequence
    assert on_b == stored  # over SSE on B: 1..N, each once, ending at the terminal event
    assert on_c == stored  # over gRPC on C: the same
    assert len(done.iterations) >= 5  # draft, then critiques and revisions: several commits followed
    assert live == {"SSE on B": "RUN_STATUS_IN_PROGRESS", "gRPC on C": "RUN_STATUS_IN_PROGRESS"}


# ---- 2. the replica running a session dies; another adopts it


async def test_a_session_survives_sigkill_of_its_replica(cluster: Cluster, clients: list[Client]) -> None:
    a, b, c = clients
    replica_a = a.replica
    _, secret = await make_key(a, name="adoption")
    created = await a.reasoning.CreateReasoning(
        reasoning_pb2.CreateReasoningRequest(
            primary_model="drafter", secondary_model="critic", prompt="Why?", max_iterations=4
        ),
        metadata=bearer(secret),
    )
    rid = created.reasoning.reasoning_id
    watchers = asyncio.gather(sse_log(b, rid, secret), grpc_log(c, rid, secret))
    try:

        async def two_iterations() -> bool:
            return len((await get_session(b, rid, secret)).iterations) >= 2

        await until(two_iterations, HANG, "two iterations committed", cluster.logs)
        replica_a.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(replica_a.proc.wait, 10)
        # A is dead: what is stored now is what it committed, and nobody runs the session until its
        # lease expires and the sweep of B or C adopts it.
        before = await get_session(b, rid, secret)
        before_events = await prefix_of_log(b, rid, secret, before.last_sequence)
        assert before.status == S.RUN_STATUS_IN_PROGRESS
        assert len(before.iterations) >= 2
        on_b, on_c = await asyncio.wait_for(watchers, HANG)
    finally:
        watchers.cancel()
    done = await get_session(c, rid, secret)
    after_events = await prefix_of_log(c, rid, secret, done.last_sequence)
    stored = [(e.sequence, T.Name(e.type)) for e in after_events]
    assert done.status == S.RUN_STATUS_COMPLETED, cluster.logs()
    # What was committed before the kill is unchanged: its iterations and its events.
    assert list(done.iterations[: len(before.iterations)]) == list(before.iterations)
    assert after_events[: len(before_events)] == before_events
    assert len(done.iterations) > len(before.iterations)  # and the adopter went on from there
    indexes = [e.iteration.index for e in after_events if e.type == T.REASONING_EVENT_TYPE_NEW_ITERATION]
    assert indexes == list(range(1, len(done.iterations) + 1))  # each iteration once, in order
    assert dense(stored) and stored[-1][1] == "REASONING_EVENT_TYPE_COMPLETION"
    assert on_b == stored and on_c == stored  # the watchers saw 1..N exactly once, through the kill
    adopted = [
        r.name
        for r in cluster.replicas
        if r is not replica_a
        and any("orphaned run adopted" in line and rid in line for line in r.output.stderr().splitlines())
    ]
    assert len(adopted) == 1, cluster.logs()  # by B or C, once


# ---- 3. a key's request rate, across the replicas


async def test_a_keys_rpm_holds_across_the_replicas(clients: list[Client]) -> None:
    _, secret = await make_key(clients[0], name="rpm", rpm=10)  # a bucket of 2 x 10, full at first

    async def one(i: int) -> tuple[str, str]:
        """(outcome, reason) of one request: gRPC ListModels or REST GET /api/v1/models."""
        client = clients[i % 3]
        if i % 2:
            try:
                await client.models.ListModels(
                    models_pb2.ListModelsRequest(), metadata=bearer(secret), timeout=HANG
                )
                return "ok", ""
            except grpc.aio.AioRpcError as exc:
                delay = _retry_delay(exc)
                return exc.code().name, f"{error_info(exc).reason} retry={delay}"
        async with client.http.get(client.url("/api/v1/models"), headers=http_bearer(secret)) as response:
            if response.status == 200:
                return "ok", ""
            body = await response.json()
            return str(response.status), f"{_reason(body)} retry={response.headers.get('Retry-After')}"

    outcomes = await asyncio.gather(*(one(i) for i in range(40)))
    admitted = [o for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] != "ok"]
    assert len(admitted) == 20, outcomes  # what one replica alone admits: the burst of 2 x rpm
    # Refused: RESOURCE_EXHAUSTED / 429 RATE_LIMITED, retry after the next token (6 s at 10 a minute).
    assert {o[0] for o in refused} <= {"RESOURCE_EXHAUSTED", "429"}
    assert {o[1].split(" ")[0] for o in refused} == {"RATE_LIMITED"}
    assert all(o[1].endswith(("retry=6", "retry=6.0")) for o in refused), refused


def _retry_delay(error: grpc.aio.AioRpcError) -> float | None:
    for detail in rich_status(error).details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


def _reason(body: dict[str, Any]) -> str:
    return str(next(d["reason"] for d in body["details"] if d["@type"].endswith("ErrorInfo")))


# ---- 4. a revocation reaches every replica


async def test_a_key_revoked_on_b_is_refused_by_c_within_a_second(clients: list[Client]) -> None:
    _, b, c = clients
    key, secret = await make_key(b, name="revoked")
    await c.models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret))  # valid on C
    async with b.http.delete(b.url(f"/api/v1/keys/{key.key_id}"), headers=http_bearer(ADMIN_KEY)) as response:
        assert response.status == 200, await response.text()
    revoked_at = time.monotonic()
    refusal: grpc.aio.AioRpcError | None = None
    while refusal is None and time.monotonic() - revoked_at < 5:
        try:
            await c.models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(secret), timeout=5)
        except grpc.aio.AioRpcError as exc:
            refusal = exc
    took = time.monotonic() - revoked_at
    assert refusal is not None, "C still accepts the key 5 s after its revocation"
    assert took < 1.0, f"C refused the revoked key only after {took:.2f} s"
    assert (refusal.code(), error_info(refusal).reason) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "API_KEY_REVOKED",
    )
    async with c.http.get(c.url("/api/v1/models"), headers=http_bearer(secret)) as response:
        assert response.status == 401
        assert _reason(await response.json()) == "API_KEY_REVOKED"


# ---- 5. a budget, across the replicas


async def _completions(
    clients: list[Client], secret: str, count: int, max_tokens: int
) -> list[tuple[str, str]]:
    """`count` simultaneous completions of the priced model, over gRPC and REST, spread over the
    replicas: (outcome, reason) each."""

    async def one(i: int) -> tuple[str, str]:
        client = clients[i % 3]
        if i % 2:
            try:
                await client.completions.CreateCompletion(
                    completions_pb2.CreateCompletionRequest(
                        model="priced", prompt="go", max_tokens=max_tokens
                    ),
                    metadata=bearer(secret),
                    timeout=HANG,
                )
                return "ok", ""
            except grpc.aio.AioRpcError as exc:
                return exc.code().name, f"{error_info(exc).reason} retry={_retry_delay(exc)}"
        body = {"model": "priced", "prompt": "go", "max_tokens": max_tokens}
        async with client.http.post(
            client.url("/api/v1/completions"), json=body, headers=http_bearer(secret)
        ) as response:
            if response.status == 200:
                return "ok", ""
            payload = await response.json()
            return str(response.status), f"{_reason(payload)} retry={response.headers.get('Retry-After')}"

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _spent(client: Client, key_id: str) -> float:
    listed = await keys_pb2_grpc.KeyServiceStub(client.channel).ListKeys(
        keys_pb2.ListKeysRequest(), metadata=ADMIN
    )
    (key,) = [k for k in listed.keys if k.key_id == key_id]
    return float(key.spent_usd)


async def test_a_budget_holds_across_the_replicas(clients: list[Client]) -> None:
    # Each call reserves its worst case and is charged exactly that ($0.004): 5 fit in $0.02, however
    # the 30 are spread over the replicas and whenever they end.
    key, secret = await make_key(clients[0], name="budget", budget_usd=0.02)
    outcomes = await _completions(clients, secret, 30, max_tokens=4)
    admitted = [o for o in outcomes if o[0] == "ok"]
    refused = [o for o in outcomes if o[0] != "ok"]
    assert len(admitted) == 5, outcomes
    assert {o[0] for o in refused} <= {"RESOURCE_EXHAUSTED", "429"}
    assert {o[1] for o in refused} == {"BUDGET_EXCEEDED retry=None"}  # no RetryInfo, no Retry-After
    spent = await _spent(clients[1], key.key_id)
    assert spent == pytest.approx(0.02)
    assert spent <= 0.02 + 1e-9

    # Reserved $0.010, charged $0.006: how many fit depends on when each call settles, but what is
    # charged never passes the budget, and every call admitted is charged.
    key, secret = await make_key(clients[2], name="budget-settled", budget_usd=0.05)
    outcomes = await _completions(clients, secret, 30, max_tokens=10)
    admitted = [o for o in outcomes if o[0] == "ok"]
    assert {o[1] for o in outcomes if o[0] != "ok"} <= {"BUDGET_EXCEEDED retry=None"}
    spent = await _spent(clients[0], key.key_id)
    assert 5 <= len(admitted) <= 8, outcomes  # $0.05 / $0.010 reserved ... / $0.006 charged
    assert spent == pytest.approx(0.006 * len(admitted))
    assert spent <= 0.05 + 1e-9


# ---- 6. PostgreSQL restarted mid-run


async def _readiness(client: Client) -> tuple[int, int]:
    """(HTTP status of /readyz, gRPC health status of the whole server)."""
    async with client.http.get(client.url("/readyz"), timeout=aiohttp.ClientTimeout(total=10)) as response:
        http = response.status
    try:
        health = await health_pb2_grpc.HealthStub(client.channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        status = int(health.status)
    except grpc.aio.AioRpcError as exc:
        status = -exc.code().value[0]
    return http, status


async def test_a_postgresql_restart_mid_run_loses_nothing(cluster: Cluster, clients: list[Client]) -> None:
    a, b, c = clients
    _, secret = await make_key(a, name="pg-restart")
    created = await a.reasoning.CreateReasoning(
        reasoning_pb2.CreateReasoningRequest(
            primary_model="drafter", secondary_model="critic", prompt="Why?", max_iterations=5
        ),
        metadata=bearer(secret),
    )
    rid = created.reasoning.reasoning_id
    # Watchers that reconnect from where they were when their stream fails, as clients do.
    watchers = asyncio.gather(
        sse_log(b, rid, secret, reconnect=True),
        grpc_log(c, rid, secret, reconnect=True),
        return_exceptions=True,
    )

    async def two_iterations() -> bool:
        return len((await get_session(b, rid, secret)).iterations) >= 2

    await until(two_iterations, HANG, "two iterations committed", cluster.logs)
    before = await get_session(b, rid, secret)
    before_events = await prefix_of_log(b, rid, secret, before.last_sequence)
    problems: list[str] = []
    await asyncio.to_thread(cluster.postgres.stop)
    try:
        down = await asyncio.gather(
            *(_until_or_none(functools.partial(_not_ready, client), 10) for client in clients)
        )
        for client, seen in zip(clients, down, strict=True):
            if seen is None:
                problems.append(
                    f"{client.replica.name}: with PostgreSQL down, /readyz and health stayed"
                    f" {await _readiness(client)} for 10 s (expected 503 and NOT_SERVING)"
                )
        # What a call that needs the database answers meanwhile (README, Errors): retry shortly.
        try:
            await get_session(b, rid, secret)
            problems.append("B answered GetReasoning with PostgreSQL down")
        except grpc.aio.AioRpcError as exc:
            got = (exc.code(), error_info(exc).reason, _retry_delay(exc))
            if got != (grpc.StatusCode.UNAVAILABLE, "STORE_UNAVAILABLE", 1.0):
                problems.append(f"B's GetReasoning with PostgreSQL down: {got} {exc.details()}")
        url = c.url(f"/api/v1/collaborative-reasoning/{rid}")
        async with c.http.get(url, headers=http_bearer(secret)) as response:
            body = await response.text()
            if response.status != 503 or '"STORE_UNAVAILABLE"' not in body:
                problems.append(f"C's GET of the session with PostgreSQL down: {response.status} {body}")
        # Down for longer than a lease: the runner cannot renew it, a sweep may find it expired.
        await asyncio.sleep(LEASE_SECONDS + SWEEP_SECONDS)
    finally:
        await asyncio.to_thread(cluster.postgres.start)
    up = await asyncio.gather(*(_until_or_none(functools.partial(_ready, client), 20) for client in clients))
    for client, seen in zip(clients, up, strict=True):
        if seen is None:
            problems.append(
                f"{client.replica.name}: 20 s after PostgreSQL came back, /readyz and health are"
                f" {await _readiness(client)} (expected 200 and SERVING)"
            )

    async def rested() -> reasoning_pb2.Reasoning | None:
        session = await get_session(c, rid, secret)
        return None if session.status == S.RUN_STATUS_IN_PROGRESS else session

    done = await _until_or_none(rested, 30)
    if done is None:
        watchers.cancel()
        last = await get_session(c, rid, secret)
        problems.append(
            f"the session is still IN_PROGRESS 30 s after PostgreSQL came back"
            f" ({len(last.iterations)} iterations, last sequence {last.last_sequence})"
        )
    else:
        after_events = await prefix_of_log(c, rid, secret, done.last_sequence)
        stored = [(e.sequence, T.Name(e.type)) for e in after_events]
        if done.status != S.RUN_STATUS_COMPLETED:
            problems.append(f"the session ended {S.Name(done.status)}: {done.error}")
        if after_events[: len(before_events)] != before_events:
            problems.append("events committed before PostgreSQL stopped changed or were lost")
        if list(done.iterations[: len(before.iterations)]) != list(before.iterations):
            problems.append("iterations committed before PostgreSQL stopped changed or were lost")
        if not dense(stored):
            problems.append(f"the log is not dense: {[s for s, _ in stored]}")
        for surface, seen in zip(
            ("SSE on B", "gRPC on C"), await asyncio.wait_for(watchers, HANG), strict=True
        ):
            if seen != stored:
                problems.append(f"the watcher over {surface} saw {seen!r}, the log is {stored!r}")
    assert not problems, "\n".join(problems) + "\n" + cluster.logs()


async def _until_or_none(check: Callable[[], Awaitable[Any]], within: float) -> Any:
    try:
        return await until(check, within, "")
    except AssertionError:
        return None


async def _not_ready(client: Client) -> bool:
    http, health = await _readiness(client)
    return http == 503 and health != SERVING


async def _ready(client: Client) -> bool:
    return await _readiness(client) == (200, SERVING)


# ---- 7. Redis stopped, then back


async def test_redis_down_fails_limited_keys_closed_and_the_service_recovers(
    cluster: Cluster, clients: list[Client]
) -> None:
    _, limited = await make_key(clients[0], name="limited", rpm=1000)
    _, budgeted = await make_key(clients[0], name="budgeted", budget_usd=1.0)  # a model call needs Redis
    _, unlimited = await make_key(clients[0], name="unlimited")
    completion = completions_pb2.CreateCompletionRequest(model="priced", prompt="go", max_tokens=4)
    for client in clients:
        await client.models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(limited))
        await client.completions.CreateCompletion(completion, metadata=bearer(budgeted))
    cluster.redis.stop()
    try:
        for client in clients:
            for call in (
                client.models.ListModels(
                    models_pb2.ListModelsRequest(), metadata=bearer(limited), timeout=HANG
                ),
                client.completions.CreateCompletion(completion, metadata=bearer(budgeted), timeout=HANG),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call
                error = caught.value
                assert (error.code(), error_info(error).reason, _retry_delay(error)) == (
                    grpc.StatusCode.UNAVAILABLE,
                    "LIMITS_UNAVAILABLE",
                    1.0,
                ), client.replica.name
            async with client.http.get(
                client.url("/api/v1/models"), headers=http_bearer(limited)
            ) as response:
                assert response.status == 503
                assert _reason(await response.json()) == "LIMITS_UNAVAILABLE"
                assert response.headers.get("Retry-After") == "1"
            # Keys without limits and the admin key do not need Redis.
            await client.models.ListModels(models_pb2.ListModelsRequest(), metadata=bearer(unlimited))
            await client.completions.CreateCompletion(completion, metadata=bearer(unlimited))
            await client.models.ListModels(models_pb2.ListModelsRequest(), metadata=ADMIN)
        # Readiness follows the limits' Redis too (server/app.py): NOT_SERVING while it is away.
        for client in clients:
            await until(
                functools.partial(_not_ready, client), 10, f"{client.replica.name} not ready", cluster.logs
            )
    finally:
        cluster.redis = start_redis(port=cluster.redis.port)  # a new, empty Redis on the same port

    for client in clients:

        async def served(client: Client = client) -> bool:
            await client.models.ListModels(
                models_pb2.ListModelsRequest(), metadata=bearer(limited), timeout=10
            )
            return True

        await until(served, 10, f"{client.replica.name} serving the limited key again", cluster.logs)
        await client.completions.CreateCompletion(completion, metadata=bearer(budgeted))
        async with client.http.get(client.url("/api/v1/models"), headers=http_bearer(limited)) as response:
            assert response.status == 200
        await until(functools.partial(_ready, client), 20, f"{client.replica.name} ready again", cluster.logs)


# ---- last: the replicas' own logs


def test_no_secret_in_any_replicas_log(cluster_once: Cluster) -> None:
    logs = [r.output.stderr() for r in [*cluster_once.retired, *cluster_once.replicas]]
    leaks = [s[:12] for s in SECRETS for text in logs if s in text]
    assert not leaks
