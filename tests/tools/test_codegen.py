"""`make gen` is idempotent and `make check-gen` catches any drift in gen/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CODEGEN = [sys.executable, str(ROOT / "tools" / "codegen.py")]


def codegen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CODEGEN, *args], capture_output=True, text=True, timeout=120, check=False)


def test_committed_gen_is_current_and_drift_is_caught(tmp_path: Path) -> None:
    assert codegen("--check").returncode == 0
    copy = tmp_path / "gen"
    shutil.copytree(ROOT / "gen", copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = copy / "aibattle" / "v1" / "models_pb2.py"
    edited.write_text(edited.read_text() + "# hand edit\n")
    (copy / "aibattle" / "v1" / "stale_pb2.py").write_text("")
    result = codegen("--check", "--out", str(copy))
    assert result.returncode == 1
    assert "aibattle/v1/models_pb2.py" in result.stderr
    assert "aibattle/v1/stale_pb2.py" in result.stderr


def test_generation_is_idempotent(tmp_path: Path) -> None:
    for out in ("a", "b"):
        assert (
            codegen("--out", str(tmp_path / out), "--sdk-out", str(tmp_path / f"sdk-{out}")).returncode == 0
        )
    check = codegen("--check", "--out", str(tmp_path / "a"), "--sdk-out", str(tmp_path / "sdk-a"))
    assert check.returncode == 0, check.stderr
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert Path("aibattle/v1/completions_pb2.py") in files
    assert Path("aibattle/v1/completions_pb2.pyi") in files
    assert Path("aibattle/v1/completions_pb2_grpc.py") in files
    assert Path("aibattle/aibattle_descriptors.binpb") in files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    sdk = sorted(p.relative_to(tmp_path / "sdk-a") for p in (tmp_path / "sdk-a").rglob("*") if p.is_file())
    assert Path("aibattle/v1/__init__.py") in sdk
    assert Path("google/rpc/__init__.py") in sdk
    for f in sdk:
        assert (tmp_path / "sdk-a" / f).read_bytes() == (tmp_path / "sdk-b" / f).read_bytes(), f


def test_sdk_drift_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "_gen"
    shutil.copytree(
        ROOT / "sdk" / "src" / "aibattle_sdk" / "_gen", copy, ignore=shutil.ignore_patterns("__pycache__")
    )
    edited = copy / "aibattle" / "v1" / "__init__.py"
    edited.write_text(edited.read_text() + "# hand edit\n")
    result = codegen("--check", "--sdk-out", str(copy))
    assert result.returncode == 1
    assert "_gen/aibattle/v1/__init__.py" in result.stderr
