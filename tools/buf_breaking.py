"""`buf breaking` on proto/ against a git revision (what `make buf-breaking` runs).

The base revision is chosen so that the check can fail where it matters:

* BASE given (`make lint BASE=origin/main`): that revision.
* proto/ or buf.yaml has uncommitted changes (a developer editing protos): HEAD, so the edits are
  checked against the last commit.
* otherwise (CI on a fresh clone of main, or a clean checkout): HEAD~1, the previous commit of main
  (the first parent, so a merge commit is compared with main before the merge). Comparing a clean
  tree with HEAD would compare the protos with themselves and never fail.

A base that does not exist (the first commit, a clone with --depth 1) or holds no protos is an error
that says so: the check never passes for want of something to compare.

The base's proto/ and buf.yaml are extracted with `git archive` into build/against, next to a copy
of the google/api and google/rpc protos (build/protodeps, from googleapis-common-protos: no BSR at
run time), built into an image, and compared with an image of the working tree.

    python tools/buf_breaking.py --buf node_modules/.bin/buf [--base REV] [--deps build/protodeps]

Run from the repository root (the directory that holds buf.yaml). Exit 0: no breaking change; 1: buf
reported breaking changes (listed); 2: the comparison could not be made (the message says why).
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

CHECKED = ["proto", "buf.yaml"]  # what the comparison reads from a revision
BUF_FOUND_BREAKING = 100  # buf's exit status when it reports file annotations (here: breaking changes)


class CannotCompare(Exception):
    """The comparison cannot be made; the message says why and what to do."""


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False, timeout=60)


def choose_base(repo: Path, base: str | None) -> tuple[str, str]:
    """(revision, why): the explicit base, else HEAD with uncommitted proto edits, else HEAD~1."""
    if base:
        return base, "BASE given"
    status = git("status", "--porcelain", "--untracked-files=all", "--", *CHECKED, cwd=repo)
    if status.returncode != 0:
        raise CannotCompare(f"git status failed in {repo}: {status.stderr.decode().strip()}")
    if status.stdout.strip():
        return "HEAD", "proto/ has uncommitted changes: checking them against the last commit"
    return "HEAD~1", "proto/ is clean: checking the last commit against the one before"


def resolve(repo: Path, revision: str) -> str:
    """The commit id of revision, or CannotCompare naming the likely cause."""
    found = git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", cwd=repo)
    if found.returncode == 0:
        return found.stdout.decode().strip()
    shallow = git("rev-parse", "--is-shallow-repository", cwd=repo).stdout.decode().strip() == "true"
    hint = (
        "this is a shallow clone: fetch more history (e.g. `git fetch --deepen=1`, or clone with "
        "fetch-depth 2 or more)"
        if shallow
        else "no such commit here (the first commit has no parent; a ref may be unfetched or misspelt)"
    )
    raise CannotCompare(
        f"base revision {revision!r} does not exist: {hint}; or name a base with BASE=<revision>"
    )


def extract(repo: Path, commit: str, dest: Path) -> None:
    """proto/ and buf.yaml as they are in commit, into dest."""
    archive = git("archive", "--format=tar", commit, "--", *CHECKED, cwd=repo)
    if archive.returncode != 0:
        raise CannotCompare(
            f"base {commit[:12]} has no {' and '.join(CHECKED)} to compare with "
            f"({archive.stderr.decode().strip()}); name another base with BASE=<revision>"
        )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")


def buf(buf_exe: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(buf_exe), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def build_image(buf_exe: Path, workspace: Path, out: Path) -> None:
    built = buf(buf_exe, "build", "-o", str(out), cwd=workspace)
    if built.returncode != 0:
        raise CannotCompare(f"buf build failed in {workspace}:\n{built.stdout}{built.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buf", type=Path, required=True, help="the buf executable")
    parser.add_argument("--base", help="git revision to compare against (default: see above)")
    parser.add_argument("--deps", type=Path, default=Path("build/protodeps"), help="google protos for buf")
    args = parser.parse_args(argv)
    repo = Path.cwd()
    buf_exe = args.buf.resolve()
    work = repo / "build"
    against = work / "against"
    try:
        revision, why = choose_base(repo, args.base)
        commit = resolve(repo, revision)
        print(f"buf breaking: comparing proto/ against {revision} ({commit[:12]}); {why}", flush=True)
        if not args.deps.is_dir():
            raise CannotCompare(f"{args.deps} is missing: run `tools/codegen.py --export-deps {args.deps}`")
        if against.exists():
            shutil.rmtree(against)
        against.mkdir(parents=True)
        extract(repo, commit, against)
        # buf.yaml names build/protodeps as a module of the workspace, so the base needs it too.
        shutil.copytree(args.deps, against / "build" / "protodeps")
        build_image(buf_exe, against, work / "against.binpb")
        build_image(buf_exe, repo, work / "current.binpb")
    except CannotCompare as e:
        print(f"buf breaking: cannot compare: {e}", file=sys.stderr)
        return 2
    result = buf(
        buf_exe, "breaking", str(work / "current.binpb"), "--against", str(work / "against.binpb"), cwd=repo
    )
    sys.stdout.write(result.stdout)
    sys.stdout.flush()
    sys.stderr.write(result.stderr)
    if result.returncode == BUF_FOUND_BREAKING:
        print(f"buf breaking: breaking changes against {revision} ({commit[:12]})", file=sys.stderr)
        return 1
    if result.returncode != 0:  # a failure of buf itself is not a verdict on the protos
        print(f"buf breaking: cannot compare: buf breaking exited {result.returncode}", file=sys.stderr)
        return 2
    print(f"buf breaking: no breaking changes against {revision} ({commit[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
