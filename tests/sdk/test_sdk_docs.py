"""What users paste: sdk/README.md's quick-start, the examples/ scripts and seed 000 §7.1, each run as its
own process against a live server (`python -m server`), as a user would run them against `make run`."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.process import server_process

ROOT = Path(__file__).resolve().parents[2]
SEED = Path(__file__).with_name("seed_7_1.txt")
#: sha256 of the seed's §7.1 code block, copied from /work/shared/seeds/000_*.txt.
SEED_CODE_SHA256 = "22b9169ca4b49f11bd1d15edbe81edaab81b2af3dc2ed0af9a3214cff494e73b"

CONFIG = """
[[models]]
id = "smollm2-135m"
provider = "local"
capabilities = ["text", "conversation"]
context_length = 2048

[[models]]
id = "drafter"
provider = "scripted"
script = ["Lattice-based keys: hard for Shor's algorithm, practical on today's hardware."]

[[models]]
id = "reviewer"
provider = "scripted"
script = ["Sound and complete.\\nVERDICT: APPROVE"]
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with server_process(CONFIG, tmp_path_factory.mktemp("sdk-docs")) as running:
        yield running.grpc_target


def python(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIBATTLE_TARGET": target}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=90, env=env, cwd=ROOT, check=False
    )


def test_the_readme_quick_start_streams_a_completion(target: str, tmp_path: Path) -> None:
    readme = (ROOT / "sdk" / "README.md").read_text()
    first = re.search(r"```python\n(.*?)```", readme, re.S)
    assert first is not None
    script = tmp_path / "quickstart.py"
    script.write_text(first.group(1))
    assert 'model="smollm2-135m"' in first.group(1) and "stream=True" in first.group(1)
    result = python(target, str(script))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.strip()) > 0 and result.stderr == ""


def test_stream_completion_example(target: str) -> None:
    result = python(target, "examples/stream_completion.py", "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    assert re.search(r"\(\d+ tokens, (stop|length)\)", result.stdout)


def test_conversation_example(target: str) -> None:
    result = python(target, "examples/conversation.py")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("conversation conv-")
    assert "[smollm2-135m as human] What makes a good unit test?" in out
    assert out.rstrip().endswith("(conversation completed)")


def test_reasoning_example_shows_steps_live(target: str) -> None:
    result = python(target, "examples/reasoning_live.py", "--max-tokens", "24")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    marks = ["--- step 1: smollm2-135m ---", "[draft recorded]", "=== final result ==="]
    assert [out.index(m) for m in marks] == sorted(out.index(m) for m in marks)


def test_seed_section_7_1_runs_with_model_ids_swapped(target: str, tmp_path: Path) -> None:
    text = SEED.read_text()
    code = text.split("(verbatim) ----\n", 1)[1].split("# ---- END", 1)[0]
    assert hashlib.sha256(code.encode()).hexdigest() == SEED_CODE_SHA256
    swapped = code.replace('"ollama-phi4"', '"drafter"').replace('"claude-3-sonnet"', '"reviewer"')
    assert swapped != code
    script = tmp_path / "seed_7_1.py"
    script.write_text(swapped)
    result = python(target, str(script))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Reasoning ID: reas-")
    assert lines[1] == "Status: RUN_STATUS_COMPLETED"
    assert lines[2] == "Iterations: 2"  # a draft and the reviewer's approving critique
    assert (
        lines[3]
        == "Final Result: Lattice-based keys: hard for Shor's algorithm, practical on today's hardware...."
    )
