"""sdk/README.md's section on tools, structured output, token counts and embeddings, run as a user would:
a server with the section's configuration (the embedded model, the local embedding model and a scripted
tool caller), then each of its Python snippets as its own process."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.process import server_process

ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Tools, structured output, token counts and embeddings"


def section() -> tuple[str, list[str]]:
    """The section's TOML block and its Python blocks, in order."""
    readme = (ROOT / "sdk" / "README.md").read_text()
    start = readme.index(HEADING)
    body = readme[start : readme.index("\n## ", start + len(HEADING))]
    [toml] = re.findall(r"```toml\n(.*?)```", body, re.S)
    return toml, re.findall(r"```python\n(.*?)```", body, re.S)


@pytest.mark.slow
def test_the_sections_snippets_run_as_written(tmp_path: Path) -> None:
    toml, snippets = section()
    assert len(snippets) == 3
    outputs = []
    with server_process(toml, tmp_path) as running:
        for i, code in enumerate(snippets):
            script = tmp_path / f"snippet_{i}.py"
            script.write_text(code)
            env = {**os.environ, "AIBATTLE_TARGET": running.grpc_target}
            result = subprocess.run(
                [sys.executable, str(script)],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                check=False,
            )
            assert (result.returncode, result.stderr) == (0, ""), f"snippet {i}"
            outputs.append(result.stdout.splitlines())
    tools, structured, counted = outputs
    assert tools == ['get_weather {"city": "Oslo"}', "It is 4 °C in Oslo."]
    [person] = structured
    parsed = ast.literal_eval(person)  # the snippet prints the dict json.loads gave
    assert isinstance(parsed, dict) and isinstance(parsed["name"], str) and isinstance(parsed["age"], int)
    assert re.fullmatch(r"\d+ tokens", counted[0]) and int(counted[0].split()[0]) > 5
    assert counted[1:] == ["0 576", "1 576"]
