"""A throwaway Prometheus (Debian's `prometheus`, installed by `make install`) scraping given targets.

`prometheus()` writes a config scraping the targets' `/metrics` every second, starts the binary on a free
127.0.0.1 port with a temporary TSDB, waits for `/-/ready`, and kills it on exit (the test failing
included). `Prometheus.query` asks its HTTP API; `Prometheus.settle` polls until values reach what a
test expects, within a bounded wait.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tests.e2e.process import started

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
READY_DEADLINE = 30.0
"""Seconds Prometheus may take to answer /-/ready."""
SETTLE_DEADLINE = 30.0
"""Seconds the scraped values may take to reach what a test expects."""
T = TypeVar("T")
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with _DIRECT.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query's result (a vector's samples); fails the test on an API error."""
        status, body = get(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", f"{promql}: {status} {answer}"
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The single value of an instant query (None: no series yet)."""
        result = self.query(promql)
        assert len(result) <= 1, f"{promql} has several series: {result}"
        return float(result[0]["value"][1]) if result else None

    def poll(self, check: Callable[[], T], deadline: float = SETTLE_DEADLINE) -> T:
        """Call `check` until it returns something falsy (nothing left to wait for) or `deadline` seconds
        pass; its last result either way."""
        until = time.monotonic() + deadline
        while (left := check()) and time.monotonic() < until:
            time.sleep(0.5)
        return left

    def settle(
        self, expected: Mapping[str, float], deadline: float = SETTLE_DEADLINE
    ) -> dict[str, float | None]:
        """Poll each query until all equal their expected values, or `deadline` seconds pass; the last
        values either way (the caller compares them, so a failure shows every query's value)."""
        until = time.monotonic() + deadline
        while True:
            values = {promql: self.value(promql) for promql in expected}
            if values == dict(expected) or time.monotonic() > until:
                return values
            time.sleep(0.5)


def config(targets: list[str], metrics_path: str = "/metrics") -> dict[str, Any]:
    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "aibattle",
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "metrics_path": metrics_path,
                "static_configs": [{"targets": targets}],
            }
        ],
    }


@contextlib.contextmanager
def prometheus(targets: list[str], workdir: Path, metrics_path: str = "/metrics") -> Iterator[Prometheus]:
    """Prometheus scraping `targets` (host:port) every second, ready; killed on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(json.dumps(config(targets, metrics_path), indent=2))  # JSON is YAML
    with contextlib.ExitStack() as stack:
        for _attempt in range(3):  # another process may take the free port before Prometheus does
            port = free_port()
            argv = [
                BINARY,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / f'data-{port}'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ]
            proc, output = stack.enter_context(started(argv))
            url = f"http://127.0.0.1:{port}"
            until = time.monotonic() + READY_DEADLINE
            while proc.poll() is None and time.monotonic() < until:
                with contextlib.suppress(OSError):
                    if get(f"{url}/-/ready", timeout=1)[0] == 200:
                        break
                time.sleep(0.2)
            else:
                if proc.poll() is None:
                    raise AssertionError(f"prometheus not ready within {READY_DEADLINE} s: {output.stderr()}")
                if "address already in use" in output.stderr():
                    continue
                raise AssertionError(f"prometheus exited {proc.returncode}: {output.stderr()}")
            break
        else:
            raise AssertionError("prometheus found no free port in 3 attempts")
        yield Prometheus(url)
