"""Start-up failures say what is wrong and exit non-zero, with no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.process import ROOT


def start(tmp_path: Path, toml: str, **env: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "aibattle.toml"
    config.write_text(toml)
    environment = {**os.environ, "AIBATTLE_CONFIG": str(config), "AIBATTLE_HTTP_ADDR": "", **env}
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
        ("[server]\ngrpc_adr = 'x'\n", "configuration error: unknown key(s): server.grpc_adr", 2),
        (
            '[[models]]\nid = "x"\nprovider = "local"\n[providers.local]\nmodel_path = "/nonexistent.gguf"\n',
            "provider 'local' (models: x) failed to start",
            1,
        ),
    ],
)
def test_bad_configuration(tmp_path: Path, toml: str, expected: str, code: int) -> None:
    result = start(tmp_path, toml, AIBATTLE_GRPC_ADDR="127.0.0.1:0")
    assert result.returncode == code
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = start(tmp_path, SCRIPTED, AIBATTLE_GRPC_ADDR=f"127.0.0.1:{port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
