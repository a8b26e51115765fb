"""Start-up failures say what is wrong and exit non-zero, with no traceback."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.process import ROOT, server_process


def start(tmp_path: Path, toml: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "aibattle.toml"
    config.write_text(toml)
    environment = {
        **os.environ,
        "AIBATTLE_CONFIG": str(config),
        "AIBATTLE_HTTP_ADDR": "",
        "AIBATTLE_DB": str(tmp_path / "aibattle.db"),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "server"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


SCRIPTED = '[[models]]\nid = "echo"\nprovider = "scripted"\nscript = ["hi"]\n'


@pytest.mark.parametrize(
    ("toml", "expected", "code"),
    [
        ("[server]\ngrpc_adr = 'x'\n", ["server.grpc_adr: Extra inputs are not permitted"], 2),
        (
            SCRIPTED + "pricing = { input = 'x' }\n",
            ["models[0].pricing.input: Input should be a valid number, got 'x'"],
            2,
        ),
        (
            "[server]\nlog_level = 'loud'\n",
            ["server.log_level: Input should be 'debug', 'info', 'warning' or 'error', got 'loud'"],
            2,
        ),
        ('[[models]]\nid = "echo"\nprovider = "scripted"\nscript = [1]\n', ["models[0].script[0]:"], 2),
        (
            SCRIPTED + "chunk_delay_ms = -5\ncontext_length = 0\n[gateway]\nmax_body_bytes = -1\n",
            ["gateway.max_body_bytes:", "models[0].context_length:", "models[0].chunk_delay_ms:"],
            2,
        ),
        ("server = 1\n", ["server: Input should be a valid dictionary"], 2),
        (
            # A variable api_key_env names but the environment lacks, with the file's own problems.
            '[server]\nlog_level = "loud"\n[[models]]\nid = "gpt"\nprovider = "openai"\n'
            'api_key_env = "AIBATTLE_TEST_UNSET_KEY"\nfallbacks = ["nope"]\n',
            [
                "server.log_level:",
                "models[0].fallbacks[0]: unknown model 'nope'",
                "models[0].api_key_env: environment variable AIBATTLE_TEST_UNSET_KEY is not set",
            ],
            2,
        ),
        ("[server\n", ["config file"], 2),
        (
            '[[models]]\nid = "x"\nprovider = "local"\n[providers.local]\nmodel_path = "/nonexistent.gguf"\n',
            ["provider 'local' (models: x) failed to start"],
            1,
        ),
    ],
)
def test_bad_configuration(tmp_path: Path, toml: str, expected: list[str], code: int) -> None:
    result = start(tmp_path, toml, AIBATTLE_GRPC_ADDR="127.0.0.1:0")
    assert result.returncode == code
    lines = result.stderr.splitlines()
    for needle in expected:
        assert any(needle in line for line in lines), (needle, result.stderr)
    if code == 2:
        # One line per problem, each naming the file.
        assert len(lines) == len(expected)
        assert all(
            line.startswith(f"aibattle: configuration error: config file {tmp_path}") for line in lines
        )
    assert "Traceback" not in result.stderr


def test_bad_environment_override_names_the_variable(tmp_path: Path) -> None:
    result = start(tmp_path, SCRIPTED, AIBATTLE_GRPC_ADDR="127.0.0.1:99999")
    assert result.returncode == 2
    assert result.stderr == (
        "aibattle: configuration error: AIBATTLE_GRPC_ADDR: "
        "'127.0.0.1:99999' is not HOST:PORT (IPv6 as [::1]:PORT, port 0-65535)\n"
    )


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start(tmp_path, SCRIPTED, AIBATTLE_GRPC_ADDR=f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_gateway_table_reaches_the_in_process_gateway(tmp_path: Path) -> None:
    toml = SCRIPTED + '[gateway]\ncors_origins = ["http://app.example"]\nmax_body_bytes = 2048\n'
    with server_process(toml, tmp_path, AIBATTLE_HTTP_ADDR="127.0.0.1:0") as (_, _, http_url):
        assert http_url.startswith("http://127.0.0.1:")
        ok = urllib.request.Request(f"{http_url}/api/v1/models", headers={"Origin": "http://app.example"})
        with urllib.request.urlopen(ok, timeout=10) as reply:
            assert reply.headers["Access-Control-Allow-Origin"] == "http://app.example"
            assert json.load(reply)["models"][0]["id"] == "echo"
        big = urllib.request.Request(
            f"{http_url}/api/v1/completions", data=b'{"model": "echo", "prompt": "' + b"x" * 4096 + b'"}'
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(big, timeout=10)
        assert caught.value.code == 413
        caught.value.close()
