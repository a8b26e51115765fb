"""`make gen` writes the TypeScript SDK's generated code (tools/codegen_ts.py), the same bytes every run,
and `make check-gen` catches a hand edit or a stale file in it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tools"
TS_GEN = ROOT / "sdk" / "typescript" / "src" / "gen"

pytestmark = pytest.mark.skipif(
    not (ROOT / "node_modules" / ".bin" / "protoc-gen-es").exists(), reason="needs `make install` (npm ci)"
)


def test_generation_is_deterministic_and_matches_the_committed_code(tmp_path: Path) -> None:
    script = (
        "import sys; from pathlib import Path; import codegen; "
        "[codegen.generate_ts([codegen.ROOT / 'proto'], Path(out)) for out in sys.argv[1:]]"
    )
    a, b = tmp_path / "a", tmp_path / "b"
    subprocess.run([sys.executable, "-c", script, a, b], cwd=TOOLS, check=True, timeout=120)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert Path("aibattle/v1/conversations_pb.ts") in files
    # error_details for typed errors and what our protos import; no well-known types (the runtime has them).
    assert Path("google/rpc/error_details_pb.ts") in files
    assert Path("google/api/annotations_pb.ts") in files
    assert not any(f.parts[:2] == ("google", "protobuf") for f in files)
    committed = sorted(p.relative_to(TS_GEN) for p in TS_GEN.rglob("*") if p.is_file())
    assert files == committed
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes() == (TS_GEN / f).read_bytes(), f


def test_check_reports_a_hand_edit_and_a_stale_file(tmp_path: Path) -> None:
    copy = tmp_path / "gen"
    shutil.copytree(TS_GEN, copy)
    edited = copy / "aibattle" / "v1" / "models_pb.ts"
    edited.write_text(edited.read_text() + "// hand edit\n")
    (copy / "aibattle" / "v1" / "stale_pb.ts").write_text("")
    result = subprocess.run(
        [sys.executable, str(TOOLS / "codegen.py"), "--check", "--ts-out", str(copy)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1
    assert "gen/aibattle/v1/models_pb.ts" in result.stderr
    assert "gen/aibattle/v1/stale_pb.ts" in result.stderr
