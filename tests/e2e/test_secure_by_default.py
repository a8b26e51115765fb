"""Secure by default, with real server processes: no admin key means loopback only; with one, keys are
required, and no secret reaches the process's logs (at DEBUG)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.process import ROOT, SETUPS, Output, served
from tests.postgres_testlib import postgres_server
from tests.security_testlib import SECRETS

SCRIPTED = '[[models]]\nid = "echo"\nprovider = "scripted"\nscript = ["hi there"]\n'
ADMIN = "e2e-admin-key-fedcba9876543210"

__all__ = ["postgres_server"]  # a fixture: `served` runs 2 workers on it


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"AIBATTLE_GRPC_ADDR": "0.0.0.0:0"}, "AIBATTLE_GRPC_ADDR"),
        ({"AIBATTLE_GRPC_ADDR": "127.0.0.1:0", "AIBATTLE_HTTP_ADDR": "[::]:0"}, "AIBATTLE_HTTP_ADDR"),
    ],
)
def test_refuses_to_listen_beyond_loopback_without_an_admin_key(
    tmp_path: Path, env: dict[str, str], key: str
) -> None:
    config = tmp_path / "aibattle.toml"
    config.write_text(SCRIPTED)
    environment = {k: v for k, v in os.environ.items() if k != "AIBATTLE_ADMIN_KEY"}
    environment |= {
        "AIBATTLE_CONFIG": str(config),
        "AIBATTLE_DB": str(tmp_path / "db"),
        "AIBATTLE_HTTP_ADDR": "",
    }
    result = subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=environment | env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aibattle: configuration error: {key}:")
    assert "AIBATTLE_ADMIN_KEY" in lines[0] and "[security].admin_key" in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


def _http(method: str, url: str, body: Any = None, key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.mark.parametrize("setup", SETUPS)
def test_with_an_admin_key_it_listens_anywhere_requires_keys_and_logs_no_secret(
    setup: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    SECRETS.add(ADMIN)
    outputs: list[Output] = []
    with served(
        setup,
        request,
        SCRIPTED,
        tmp_path,
        AIBATTLE_ADMIN_KEY=ADMIN,
        AIBATTLE_HTTP_ADDR="0.0.0.0:0",
        AIBATTLE_LOG_LEVEL="debug",
        outputs=outputs,
    ) as running:
        base = running.http_url.replace("0.0.0.0", "127.0.0.1")
        assert _http("GET", f"{base}/healthz")[0] == 200  # probes need no key
        assert _http("GET", f"{base}/api/v1/models")[0] == 401
        status, created = _http("POST", f"{base}/api/v1/keys", {"name": "e2e"}, key=ADMIN)
        assert status == 200, created
        secret = created["secret"]
        SECRETS.add(secret)
        body = {"model": "echo", "prompt": "hello"}
        assert _http("POST", f"{base}/api/v1/completions", body, key=secret)[0] == 200
        assert _http("POST", f"{base}/api/v1/completions", body, key=secret[:-2] + "xx")[0] == 401
        assert _http("DELETE", f"{base}/api/v1/keys/{created['key']['key_id']}", key=ADMIN)[0] == 200
        assert _http("POST", f"{base}/api/v1/completions", body, key=secret)[0] == 401
        running.proc.terminate()
        assert running.proc.wait(timeout=30) == 0
        outputs[0].join()
        logged = outputs[0].stderr()
    assert '"logger": "aibattle.access"' in logged and '"level": "debug"' in logged  # it did log, at DEBUG
    assert ADMIN not in logged and secret not in logged and secret[:-2] not in logged
