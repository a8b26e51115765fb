"""The wheel is complete: an installed gateway still finds the descriptor set its OpenAPI descriptions need.

The wheel is built from a copy of the tree (so build/ and *.egg-info never land in the worktree) with the
venv's own setuptools, offline: `pip wheel --no-deps --no-build-isolation`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from gateway.options import default_descriptor_set

ROOT = Path(__file__).resolve().parents[2]
# What a build reads; everything else (the venv, node_modules, git, caches, outputs) is left behind.
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__", ".*_cache", "*.db*"
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, base / "src", ignore=NOT_SOURCES, symlinks=True)
    # Offline, with the venv's setuptools: no dependency, no isolated build env, no index is fetched.
    offline = ["--no-deps", "--no-build-isolation", "--no-index"]
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(base / "src"), "-w", str(base / "dist"), "-q", *offline],
        check=True,
        capture_output=True,
        timeout=120,
    )
    (built,) = (base / "dist").glob("aibattle-*.whl")
    return built


def expected_member() -> str:
    """Where default_descriptor_set() looks, relative to the import root: gen/ here, site-packages once
    installed."""
    found = default_descriptor_set()
    assert found is not None, "gen/ has no descriptor set: run `make gen`"
    return found.resolve().relative_to(ROOT / "gen").as_posix()


def test_wheel_carries_the_descriptor_set_where_the_gateway_looks(wheel: Path) -> None:
    member = expected_member()
    with zipfile.ZipFile(wheel) as zf:
        assert member in zf.namelist(), f"{member} is not in {wheel.name}"
        shipped = zf.read(member)
    assert shipped == (ROOT / "gen" / member).read_bytes()
    # The comments are what the gateway reads it for: a set built without source info would be useless.
    files = descriptor_pb2.FileDescriptorSet.FromString(shipped).file
    ours = [f for f in files if f.package == "aibattle.v1"]
    assert ours and all(f.source_code_info.location for f in ours)


def test_installed_gateway_finds_the_descriptor_set(wheel: Path, tmp_path: Path) -> None:
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
    # A fresh interpreter with the unpacked wheel first on sys.path, run outside the repo and without the
    # test run's PYTHONPATH (which holds the repo and gen/). The venv may also hold an editable install of
    # some checkout, which could supply a descriptor set of its own, so the found file must be the wheel's.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "import gateway.options as o\n"
        "print(o.__file__); print(o.default_descriptor_set())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, str(site)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    module_file, found = result.stdout.split()
    assert Path(module_file).is_relative_to(site), module_file  # the wheel's code, not the repo's
    assert Path(found) == site / expected_member()
