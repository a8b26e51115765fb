"""`python -m server --workers N`: N processes serving one gRPC port, one HTTP port and one database.

The supervisor serves nothing itself. It resolves the addresses first: a port 0 becomes one free port,
held by a socket bound (never listening) with SO_REUSEPORT while the workers run, so every worker binds
the same port and nothing else takes it between two restarts. Then it starts N children, `python -m
server` each, told by the environment that they are workers (`WORKER_INDEX`) and where to listen; each
binds its ports with SO_REUSEPORT, and the kernel spreads the connections among them. Once every worker
has printed its banner, the supervisor prints the usual one, with `; workers: N` at its end.

The database is the one thing they share, so it must be PostgreSQL (server/settings.py refuses SQLite):
the same code path as replicas on several machines. Metrics: the workers keep their series in files of
one directory (PROMETHEUS_MULTIPROC_DIR, common/observability/metrics.py), so any worker's `/metrics`
reports them all.

Signals: the first SIGTERM or SIGINT is passed on to every worker, which drains as a single server does;
the supervisor exits 0 once they all have (a Ctrl-C reaches the whole process group, so a worker also
gets it directly: the relay rule of server/__main__.py takes the copy for the same signal). A second one
kills the workers and exits 1. A worker that dies while serving is started again after a backoff; one
that fails to start the first time stops everything (exit 1), its error on stderr. A worker dies with its
supervisor, even a SIGKILLed one (`die_with_supervisor`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from common.addresses import join_host_port, parse_host_port
from server.config import Config

log = logging.getLogger("aibattle")

WORKER_INDEX = "AIBATTLE_WORKER_INDEX"
"""Set in a worker's environment (its index, from 0): serve, rather than supervise."""
SUPERVISOR_PID = "AIBATTLE_SUPERVISOR_PID"
"""The supervisor's pid, in a worker's environment: a worker whose parent is another is an orphan."""
METRICS_ADDR = "AIBATTLE_WORKER_METRICS_ADDR"
"""The resolved `[server] metrics_addr`, in a worker's environment (no public variable sets that key)."""
MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
#: The supervisor's own metrics directory, in the temporary directory: this, its pid, a dash, a suffix.
METRICS_PREFIX = "aibattle-metrics-"
BANNER = "AI Battle serving gRPC on "
#: A worker restarted after a crash waits this long first, doubled at each crash in a row up to the last.
BACKOFF_SECONDS = (0.5, 30.0)
#: A worker that served this long before it died starts its backoff afresh.
HEALTHY_SECONDS = 60.0
#: prctl(2): the signal a process receives when its parent dies.
PR_SET_PDEATHSIG = 1

SignalsFactory = Callable[[asyncio.Event, Callable[[], None]], Callable[[int], None]]
"""server/__main__.py's ShutdownSignals: (stopping, exit_now) -> the handler of SIGTERM and SIGINT."""


def worker_index() -> int | None:
    """This process's index among the workers, or None: it is no worker (serve alone, or supervise)."""
    value = os.environ.get(WORKER_INDEX, "")
    return int(value) if value.isdigit() else None


def as_worker(config: Config) -> Config:
    """A worker's configuration: the metrics address its supervisor resolved."""
    addr = os.environ.get(METRICS_ADDR)
    if addr is None:
        return config
    return config.model_copy(update={"server": config.server.model_copy(update={"metrics_addr": addr})})


def tag_logs(index: int) -> None:
    """Every log line of this worker names it (`worker`): the workers share one stderr."""

    def tag(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


def die_with_supervisor() -> None:
    """SIGTERM (a drain) for this worker when its supervisor dies, however it dies: prctl on Linux,
    elsewhere a thread that watches the parent pid."""
    supervisor = int(os.environ.get(SUPERVISOR_PID, "0") or 0)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    else:
        threading.Thread(target=_watch_parent, args=(supervisor,), daemon=True).start()
    if supervisor and os.getppid() != supervisor:  # it died before prctl took effect
        log.error("supervisor gone before this worker started")
        os._exit(1)


def _watch_parent(supervisor: int) -> None:
    while os.getppid() == supervisor:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def supervise(config: Config, *, argv: list[str], signals: SignalsFactory) -> int:
    """Run `config.server.worker_count` workers (`python -m server *argv`) until a signal stops them;
    the exit code."""
    settings = config.server
    count = settings.worker_count
    if not hasattr(socket, "SO_REUSEPORT"):
        print("aibattle: cannot start: several workers need SO_REUSEPORT (Linux, BSD)", file=sys.stderr)
        return 1
    reserved: list[socket.socket] = []
    env = {**os.environ, SUPERVISOR_PID: str(os.getpid())}
    own_metrics_dir: str | None = None
    try:
        env["AIBATTLE_GRPC_ADDR"] = _resolve(settings.grpc_addr, reserved)
        if settings.http_addr:
            env["AIBATTLE_HTTP_ADDR"] = _resolve(settings.http_addr, reserved)
        if settings.metrics and settings.metrics_addr:
            env[METRICS_ADDR] = _resolve(settings.metrics_addr, reserved)
        if settings.metrics:
            if env.get(MULTIPROC_DIR):  # the operator's: emptied of an earlier run's files, kept after
                for stale in Path(env[MULTIPROC_DIR]).glob("*.db"):
                    stale.unlink()
            else:
                _remove_orphaned_metrics()
                env[MULTIPROC_DIR] = own_metrics_dir = tempfile.mkdtemp(
                    prefix=f"{METRICS_PREFIX}{os.getpid()}-"
                )
        supervisor = _Supervisor(count, argv, env, signals, own_metrics_dir)
        return asyncio.run(supervisor.run())
    except OSError as exc:
        log.error("cannot start: %s", exc)
        print(f"aibattle: cannot start: {exc}", file=sys.stderr)
        return 1
    finally:
        for sock in reserved:
            sock.close()
        if own_metrics_dir:
            shutil.rmtree(own_metrics_dir, ignore_errors=True)


def _remove_orphaned_metrics() -> None:
    """The metrics directories of supervisors that died without removing theirs (SIGKILLed)."""
    for directory in Path(tempfile.gettempdir()).glob(f"{METRICS_PREFIX}*-*"):
        pid = directory.name.removeprefix(METRICS_PREFIX).split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:  # dead: its directory is nobody's (a live pid, even reused, is left)
            shutil.rmtree(directory, ignore_errors=True)
        except PermissionError:  # alive, someone else's
            continue


def _resolve(addr: str, reserved: list[socket.socket]) -> str:
    """`addr` with a concrete port: a port 0 becomes a free one, kept in `reserved` (bound, with
    SO_REUSEPORT, not listening: it takes no connection, and every worker may bind the port too)."""
    host, port = parse_host_port(addr)
    if port:
        return addr
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    reserved.append(sock)
    return join_host_port(host, int(sock.getsockname()[1]))


class _StartFailed(Exception):
    """A worker exited before its banner, the first time it started."""


class _Supervisor:
    def __init__(
        self, count: int, argv: list[str], env: dict[str, str], signals: SignalsFactory, own_dir: str | None
    ) -> None:
        self.count = count
        self.own_dir = own_dir
        self.argv = argv
        self.env = env
        self.signals = signals
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        on_signal = self.signals(self.stopping, self._kill_all)

        def handle(signum: int) -> None:
            first = not self.stopping.is_set()
            on_signal(signum)  # a second signal ends here: workers killed, exit 1
            if first:
                self._send_all(signum)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, handle, signum)
        banners = [loop.create_future() for _ in range(self.count)]
        tasks = [asyncio.create_task(self._keep(i, banners[i])) for i in range(self.count)]
        stopped = asyncio.create_task(self.stopping.wait())
        started = asyncio.gather(*banners)
        waiting: list[asyncio.Future[Any]] = [started, stopped]
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        failed = started.done() and started.exception() is not None
        if started.done() and not failed:
            print(f"{started.result()[0]}; workers: {self.count}", flush=True)
            log.info("workers serving", extra={"workers": self.count, "pids": sorted(self._pids())})
        elif failed:
            log.error(
                "a worker could not start: stopping the others", extra={"error": str(started.exception())}
            )
            self.stopping.set()
            self._send_all(signal.SIGTERM)
        else:
            started.cancel()
        codes = await asyncio.gather(*tasks)
        stopped.cancel()
        log.info("workers stopped", extra={"exit_codes": codes})
        return 1 if failed or any(codes) else 0

    async def _keep(self, index: int, banner: asyncio.Future[str]) -> int:
        """Worker `index`, started again whenever it dies, until the supervisor stops; its last exit code."""
        backoff = BACKOFF_SECONDS[0]
        first = True
        while True:
            began = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "server",
                *self.argv,
                env={**self.env, WORKER_INDEX: str(index)},
                stdout=asyncio.subprocess.PIPE,
            )
            self.procs[index] = proc
            if self.stopping.is_set():  # a signal came while it was being started
                proc.send_signal(signal.SIGTERM)
            line = await self._banner_of(proc)
            if line is not None and first:
                if not banner.done():  # else cancelled: a signal came during start-up
                    banner.set_result(line)
            elif line is not None:
                log.info("worker restarted", extra={"worker": index, "pid": proc.pid})
            await self._relay(proc)
            code = await proc.wait()
            self._dead(proc.pid)
            if first and line is None:
                if not banner.done():
                    banner.set_exception(_StartFailed(f"worker {index} exited with {code} before serving"))
                    banner.exception()  # retrieved: the gather reports it, or it is moot after a signal
                return code
            first = False
            if self.stopping.is_set():
                return code
            if time.monotonic() - began > HEALTHY_SECONDS:
                backoff = BACKOFF_SECONDS[0]
            log.warning(
                "worker died: starting it again",
                extra={"worker": index, "pid": proc.pid, "exit_code": code, "backoff_seconds": backoff},
            )
            # Waiting also covers a worker that got a Ctrl-C a moment before the supervisor did.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), backoff)
            if self.stopping.is_set():
                return code
            backoff = min(backoff * 2, BACKOFF_SECONDS[1])

    async def _banner_of(self, proc: asyncio.subprocess.Process) -> str | None:
        """The worker's banner line (the other lines before it passed on), or None: it ended first."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            if text.startswith(BANNER):
                return text
            print(text, flush=True)
        return None

    async def _relay(self, proc: asyncio.subprocess.Process) -> None:
        """Pass on what the worker prints after its banner, until it closes stdout (it exits)."""
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            print(line.decode(errors="replace").rstrip("\n"), flush=True)

    def _pids(self) -> list[int]:
        return [p.pid for p in self.procs.values() if p.returncode is None]

    def _send_all(self, signum: int) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signum)

    def _kill_all(self) -> None:
        self._send_all(signal.SIGKILL)
        if self.own_dir:
            shutil.rmtree(self.own_dir, ignore_errors=True)  # os._exit follows: no `finally` runs

    def _dead(self, pid: int) -> None:
        """Forget a dead worker's gauges (its counters and histograms still count)."""
        directory = self.env.get(MULTIPROC_DIR)
        if directory:
            multiprocess.mark_process_dead(pid, directory)
