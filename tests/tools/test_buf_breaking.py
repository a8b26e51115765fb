"""`make buf-breaking` can fail: it compares proto/ with a real base (never the tree with itself).

Each test runs the repository's own Makefile target in a throwaway git repository holding a copy of
proto/ and buf.yaml, with the real buf. Make variables point it at this checkout's tools and buf; the
install prerequisites (STAMP, NPMSTAMP) are emptied, as this checkout's install already provides them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUF = ROOT / "node_modules" / ".bin" / "buf"
MODELS = Path("proto/aibattle/v1/models.proto")
PROVIDER = "  string provider = 2;\n"  # a field of message Model that the tests delete or renumber
ADDED = "  // Added by the test.\n  string added_by_test = 99;\n"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    # The developer's git config (hooks, signing, templates) must not reach the throwaway repository.
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, **GIT_ENV}
    result = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=30, check=True
    )
    return result.stdout


def commit(repo: Path, message: str) -> None:
    git(repo, "add", "proto", "buf.yaml")
    git(repo, "commit", "-q", "-m", message)


def edit(repo: Path, old: str, new: str) -> None:
    path = repo / MODELS
    text = path.read_text()
    assert text.count(old) == 1, f"{MODELS} changed: the test's edit no longer applies"
    path.write_text(text.replace(old, new))


def add_field(repo: Path) -> None:
    edit(repo, "message Model {\n", "message Model {\n" + ADDED)


def buf_breaking(repo: Path, base: str | None = None) -> subprocess.CompletedProcess[str]:
    """`make buf-breaking` in repo, with this checkout's Makefile, tools and buf; stdout+stderr merged."""
    assert BUF.exists(), f"{BUF} is missing: run `make install`"
    args = ["make", "--no-print-directory", "-f", str(ROOT / "Makefile"), "-C", str(repo), "buf-breaking"]
    args += [f"PY={sys.executable}", f"BUF={BUF}", "STAMP=", "NPMSTAMP="]
    if base:
        args.append(f"BASE={base}")
    return subprocess.run(
        args, capture_output=True, text=True, timeout=120, check=False, env={**os.environ, **GIT_ENV}
    )


@pytest.fixture(scope="module")
def protodeps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """google/api and google/rpc for buf, exported once (what `make` does into build/protodeps)."""
    out = tmp_path_factory.mktemp("deps") / "protodeps"
    subprocess.run(
        [sys.executable, str(ROOT / "tools" / "codegen.py"), "--export-deps", str(out)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


@pytest.fixture
def repo(tmp_path: Path, protodeps: Path) -> Path:
    """A git repository whose first commit holds this checkout's proto/ and buf.yaml."""
    repo = tmp_path / "repo"
    shutil.copytree(ROOT / "proto", repo / "proto")
    shutil.copyfile(ROOT / "buf.yaml", repo / "buf.yaml")
    shutil.copytree(protodeps, repo / "build" / "protodeps")
    # The Makefile runs tools/buf_breaking.py relative to the repository; untracked, so never compared.
    (repo / "tools").symlink_to(ROOT / "tools")
    git(repo, "init", "-q")
    commit(repo, "base")
    return repo


def test_a_committed_field_deletion_fails_against_the_previous_commit(repo: Path) -> None:
    edit(repo, PROVIDER, "")
    commit(repo, "delete Model.provider")
    result = buf_breaking(repo)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "against HEAD~1" in out
    assert 'field "2" with name "provider" on message "Model" was deleted' in out


def test_an_uncommitted_renumbering_fails_against_head(repo: Path) -> None:
    edit(repo, PROVIDER, PROVIDER.replace("= 2;", "= 12;"))
    result = buf_breaking(repo)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "against HEAD (" in out and "uncommitted" in out
    assert 'with name "provider" on message "Model"' in out


@pytest.mark.parametrize("committed", [True, False])
def test_adding_a_field_passes(repo: Path, committed: bool) -> None:
    add_field(repo)
    if committed:
        commit(repo, "add a field")
    result = buf_breaking(repo)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"no breaking changes against {'HEAD~1' if committed else 'HEAD'} (" in out


def test_base_is_passed_through(repo: Path) -> None:
    """BASE= reaches the script: the break two commits back is found only against that base."""
    edit(repo, PROVIDER, "")
    commit(repo, "delete Model.provider")
    add_field(repo)
    commit(repo, "add a field")
    assert buf_breaking(repo).returncode == 0  # HEAD~1 already lacks the field
    result = buf_breaking(repo, base="HEAD~2")
    assert result.returncode != 0
    assert '"provider" on message "Model" was deleted' in result.stdout + result.stderr


def test_a_missing_base_fails_loudly(repo: Path) -> None:
    """The first commit has no HEAD~1: no silent pass."""
    result = buf_breaking(repo)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "base revision 'HEAD~1' does not exist" in out


def test_a_shallow_clone_fails_loudly_and_says_so(repo: Path, tmp_path: Path) -> None:
    """CI's default depth-1 clone has no parent commit to compare with."""
    add_field(repo)
    commit(repo, "add a field")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(clone))
    shutil.copytree(repo / "build", clone / "build")
    (clone / "tools").symlink_to(ROOT / "tools")
    result = buf_breaking(clone)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "does not exist: this is a shallow clone" in out
