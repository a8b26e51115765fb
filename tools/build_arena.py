"""Bundle the arena page (web/arena/) into gateway/arena/static/, which the gateway serves at /arena.

esbuild (node_modules/.bin/esbuild, from the root package.json: `make install`) compiles the TypeScript
of web/arena/src/ together with the TypeScript SDK's sources (sdk/typescript/src/, imported directly, so
the SDK needs no build of its own here) and its npm dependencies into one ES module, arena.js; the
stylesheet goes through it too (arena.css), and index.html is copied as is. Nothing is fetched at run
time: the bundle is the page, committed and shipped as package data, so `pip install .` serves it offline.

The bundle is deterministic (same sources and esbuild, same bytes), so it is drift-checked like generated
code. It is written to a fresh directory beside the target, then swapped in, so a failed build leaves the
old bundle whole and a removed asset leaves nothing stale.

`make gen` runs this through tools/codegen.py, `make check-gen` with --check.

    python tools/build_arena.py            # rewrite gateway/arena/static/
    python tools/build_arena.py --check    # exit 1 if it differs from a fresh build
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "web" / "arena"
STATIC = ROOT / "gateway" / "arena" / "static"
ESBUILD = ROOT / "node_modules" / ".bin" / "esbuild"
#: Browsers of the last few years: BigInt (int64 fields) and top-level await need ES2020+.
TARGET = "es2022"


def _esbuild(entry: Path, outfile: Path, *extra: str) -> None:
    if not ESBUILD.is_file():
        raise SystemExit(f"{ESBUILD.relative_to(ROOT)} is missing: run `npm ci` (make install)")
    # Paths relative to the root: nothing of this machine's layout may end up in the bundle.
    argv = [str(ESBUILD), str(entry.relative_to(ROOT)), "--bundle", "--minify", f"--target={TARGET}"]
    argv += ["--charset=utf8", "--log-level=warning", f"--outfile={outfile}", *extra]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"esbuild failed on {entry.relative_to(ROOT)}:\n{done.stderr}")


def build(out: Path) -> None:
    """The bundle, into `out` (created; expected empty)."""
    out.mkdir(parents=True, exist_ok=True)
    _esbuild(SOURCE / "src" / "main.ts", out / "arena.js", "--format=esm", "--platform=browser")
    _esbuild(SOURCE / "arena.css", out / "arena.css")
    shutil.copyfile(SOURCE / "index.html", out / "index.html")


def _differs(fresh: Path, target: Path) -> list[str]:
    if not target.is_dir():
        return ["(missing)"]
    names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in target.iterdir()})
    return [
        name
        for name in names
        if not (fresh / name).is_file()
        or not (target / name).is_file()
        or not filecmp.cmp(fresh / name, target / name, shallow=False)
    ]


def stale() -> list[str]:
    """The files of gateway/arena/static/ that differ from a fresh build (or are missing, or extra)."""
    with tempfile.TemporaryDirectory() as tmp:
        build(Path(tmp) / "static")
        differs = _differs(Path(tmp) / "static", STATIC)
    shown = STATIC.relative_to(ROOT) if STATIC.is_relative_to(ROOT) else STATIC
    return [str(shown / name) for name in differs]


def write() -> None:
    """Build beside the target, then swap it in."""
    STATIC.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=STATIC.parent, prefix=".build-") as tmp:
        fresh = Path(tmp) / "static"
        build(fresh)
        if not _differs(fresh, STATIC):
            return
        old = Path(tmp) / "old"
        if STATIC.exists():
            STATIC.rename(old)
        fresh.rename(STATIC)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the bundle is out of date")
    args = parser.parse_args()
    if not args.check:
        write()
        return 0
    if changed := stale():
        print("the arena bundle is out of date; run `make gen`. Differs:", file=sys.stderr)
        print("\n".join(f"  {p}" for p in changed), file=sys.stderr)
        return 1
    print("the arena bundle is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
