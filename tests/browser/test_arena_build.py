"""The arena's bundle: type-checked against the SDK, deterministic, and what its sources give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.process import ROOT

sys.path.insert(0, str(ROOT / "tools"))
import build_arena  # tools/ is no package

pytestmark = pytest.mark.skipif(not build_arena.ESBUILD.is_file(), reason="needs node_modules (make install)")


def test_the_page_type_checks_against_the_sdk() -> None:
    done = subprocess.run(
        [str(ROOT / "node_modules" / ".bin" / "tsc"), "-p", "web/arena"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_bundle_is_deterministic_and_up_to_date(tmp_path: Path) -> None:
    build_arena.build(tmp_path / "a")
    build_arena.build(tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["arena.css", "arena.js", "index.html"]
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    assert str(ROOT) not in (tmp_path / "a" / "arena.js").read_text()  # nothing of this machine in it
    assert build_arena.stale() == [], "run `.venv/bin/python tools/build_arena.py`"


def test_write_swaps_in_a_whole_bundle_and_check_sees_any_difference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    static = tmp_path / "arena" / "static"
    monkeypatch.setattr(build_arena, "STATIC", static)
    assert build_arena.stale() == [str(static / "(missing)")]
    build_arena.write()
    assert build_arena.stale() == []
    committed = ROOT / "gateway" / "arena" / "static"
    assert (static / "arena.js").read_bytes() == (committed / "arena.js").read_bytes()
    with (static / "arena.css").open("a") as css:
        css.write("body{}")
    (static / "stray.js").write_text("")
    assert build_arena.stale() == [str(static / "arena.css"), str(static / "stray.js")]
    build_arena.write()
    assert build_arena.stale() == []
    assert sorted(p.name for p in static.parent.iterdir()) == ["static"]  # no build directory left behind
