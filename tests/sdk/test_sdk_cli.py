"""The `aibattle` CLI as installed (the console script), against a real server."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from pathlib import Path

from aibattle_sdk import Client
from aibattle_sdk.v1 import RunStatus

AIBATTLE = Path(sys.executable).parent / "aibattle"


def run(target: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AIBATTLE_TARGET": target}
    return subprocess.run(
        [str(AIBATTLE), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


def test_tokens_print_before_the_completion_ends(target: str) -> None:
    """Under a pseudo-terminal (as a person runs it), the first words show while the model still writes."""
    primary, secondary = pty.openpty()
    env = {**os.environ, "AIBATTLE_TARGET": target}
    proc = subprocess.Popen(
        [str(AIBATTLE), "complete", "--model", "slow", "Count"], stdout=secondary, stderr=secondary, env=env
    )
    os.close(secondary)
    output = b""
    running_when_first_words_shown = None
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(primary, 4096)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            output += data
            if running_when_first_words_shown is None and b"word2" in output:
                running_when_first_words_shown = proc.poll() is None
    finally:
        os.close(primary)
        proc.wait(timeout=30)
    assert running_when_first_words_shown is True  # printed while the stream was still going
    text = output.decode()
    assert "word0 word1 word2" in text and "word79" in text
    assert text.index("word2") < text.index("word79")
    assert "word79\r\n[stop; " in text  # the final chunk: finish reason and usage
    assert proc.returncode == 0


def test_models_and_json(target: str) -> None:
    listed = run(target, "models")
    assert listed.returncode == 0
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["critic", "echo", "flaky", "slow"]
    as_json = run(target, "--json", "models")
    assert [json.loads(line)["id"] for line in as_json.stdout.splitlines()] == [
        "critic",
        "echo",
        "flaky",
        "slow",
    ]
    chunks = [
        json.loads(line)
        for line in run(target, "--json", "complete", "--model", "echo", "Hi").stdout.splitlines()
    ]
    assert "".join(c.get("content", "") for c in chunks) == "Hello there, friend. This is a scripted reply."
    assert chunks[-1]["is_final"] is True


def test_errors_are_one_line_and_a_non_zero_exit(target: str) -> None:
    missing = run(target, "complete", "--model", "nope", "Hi")
    assert missing.returncode == 1
    assert missing.stderr == "aibattle: error: NOT_FOUND: model 'nope' not found (MODEL_NOT_FOUND)\n"
    assert missing.stdout == ""
    unreachable = run("127.0.0.1:1", "--timeout", "3", "models")
    assert unreachable.returncode == 1
    assert (
        unreachable.stderr.startswith("aibattle: error: UNAVAILABLE:") and unreachable.stderr.count("\n") == 1
    )
    usage = run(target, "complete")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr


def test_converse_and_reason_show_the_run_live(target: str) -> None:
    converse = run(target, "converse", "-m", "echo:human", "-m", "echo:assistant", "--rounds", "1", "Hi")
    assert converse.returncode == 0, converse.stderr
    lines = converse.stdout.splitlines()
    assert lines[0].startswith("conversation conv-")
    assert "[echo (assistant)] Hello there, friend. This is a scripted reply." in lines
    assert lines[-1] == "[conversation completed]"
    reason = run(
        target, "reason", "--primary", "echo", "--secondary", "critic", "--max-iterations", "1", "2+2?"
    )
    assert reason.returncode == 0, reason.stderr
    out = reason.stdout
    steps = [
        "── step 1 · echo ──",
        "✓ step 1: draft by echo",
        "── step 2 · critic ──",
        "✓ step 2: critique by critic, verdict approve",
        "═══ final result ═══",
    ]
    positions = [out.index(step) for step in steps]
    assert positions == sorted(positions)
    events = [
        json.loads(line)
        for line in run(
            target,
            "--json",
            "reason",
            "--primary",
            "echo",
            "--secondary",
            "critic",
            "--max-iterations",
            "1",
            "x",
        ).stdout.splitlines()
    ]
    assert [int(e["sequence"]) for e in events] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "REASONING_EVENT_TYPE_COMPLETION"


SECRET = "sk-live-0123'456\"789"
"""Quotes inside: argparse would print it as a repr ('…\\'…'), which must not leak either."""


def test_global_options_before_or_after_the_command(target: str, gateway_url: str) -> None:
    ids = ["critic", "echo", "flaky", "slow"]
    for args in (["models", "--json"], ["--json", "models"], ["models", "--timeout", "20", "--json"]):
        listed = run(target, *args)
        assert listed.returncode == 0, (args, listed.stderr)
        assert [json.loads(line)["id"] for line in listed.stdout.splitlines()] == ids
    after = run("127.0.0.1:1", "complete", "--model", "echo", "--target", target, "--json", "Hi")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout.splitlines()[-1])["is_final"] is True
    # given twice, the later one counts
    overridden = run("127.0.0.1:1", "--target", "127.0.0.1:1", "models", "--target", target)
    assert overridden.returncode == 0, overridden.stderr
    # --target takes the gateway's URL too
    over_http = run("127.0.0.1:1", "models", "--target", gateway_url)
    assert [line.split()[0] for line in over_http.stdout.splitlines()] == ids


def test_usage_errors_never_echo_an_argument(target: str) -> None:
    bad = [
        ["models", "--api-key", SECRET, "--typo"],
        ["--api-key", SECRET, "models", "--typo"],
        ["models", SECRET],
        [SECRET],
        ["--timeout", SECRET, "models"],
        ["models", f"--api-keyy={SECRET}"],
        ["models", f"--tls={SECRET}"],
        ["models", f"--t={SECRET}"],
        ["converse", "-m", SECRET],
        ["complete", "--model", "echo", "--max-tokens", SECRET, "Hi"],
        ["reason", "--primary", "echo", "--max-iterations", SECRET, "x"],
        ["--api-key", SECRET],
        ["models", "--api-key", SECRET, "--provider"],
    ]
    # Each its own process, two at a time (most of a run is the interpreter starting).
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(map(tuple, bad), pool.map(lambda args: run(target, *args), bad), strict=True))
    for args, result in results.items():
        assert result.returncode == 2, args
        for part in (SECRET, "sk-live", "0123", "789"):
            assert part not in result.stdout + result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert ": error: " in result.stderr.splitlines()[-1], result.stderr
    typo = results[("models", "--api-key", SECRET, "--typo")]
    assert (
        typo.stderr.splitlines()[-1]
        == "aibattle: error: unrecognized argument at position 4 (see aibattle --help)"
    )
    timeout = results[("--timeout", SECRET, "models")]
    assert "argument --timeout: invalid float value" in timeout.stderr


def test_version_is_the_installed_distributions() -> None:
    for args in (["--version"], ["models", "--version"]):
        shown = subprocess.run(
            [str(AIBATTLE), *args], capture_output=True, text=True, timeout=30, check=False
        )
        assert shown.returncode == 0
        assert shown.stdout == f"aibattle {metadata.version('aibattle-sdk')}\n"


#: A three-round human-ai conversation typed at the terminal, the human's turns read from stdin.
CONVERSE_INTERACTIVE = ("converse", "-i", "-m", "echo:human", "-m", "echo:assistant", "--rounds", "3", "Hi")


def test_converse_interactive_reads_piped_turns(target: str) -> None:
    """`converse -i` fed by a pipe: each non-empty line is the human's next turn, in order."""
    env = {**os.environ, "AIBATTLE_TARGET": target}
    args = [str(AIBATTLE), *CONVERSE_INTERACTIVE]
    done = subprocess.run(
        args, input="second thing\n\nthird thing\n", capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    reply = "[echo (assistant)] Hello there, friend. This is a scripted reply."
    assert done.stdout.splitlines()[2:] == [
        "[echo (human)] Hi",
        reply,
        "[echo (human)] second thing",
        reply,
        "[echo (human)] third thing",
        reply,
        "[conversation completed]",
    ]


def test_converse_interactive_stops_at_the_end_of_the_pipe(target: str, client: Client) -> None:
    env = {**os.environ, "AIBATTLE_TARGET": target}
    args = [str(AIBATTLE), *CONVERSE_INTERACTIVE]
    short = subprocess.run(args, input="only one\n", capture_output=True, text=True, timeout=60, env=env)
    assert short.returncode == 0, short.stderr
    conversation_id = short.stdout.splitlines()[0].removeprefix("conversation ")
    assert short.stdout.splitlines()[-1] == (
        f"[waiting for input; go on with: aibattle converse --id {conversation_id} -i]"
    )
    conversation = client.conversations.get(conversation_id)
    assert conversation.status == RunStatus.WAITING_FOR_INPUT
    assert [m.content for m in conversation.messages if m.role == "human"] == ["Hi", "only one"]


def test_converse_joined_by_id_reads_input_only_once_caught_up(target: str, client: Client) -> None:
    """`converse --id X -i` replays the history first: its past waits take no input; the first line
    goes to the live wait at the end (the third and last round here)."""
    env = {**os.environ, "AIBATTLE_TARGET": target}
    first = subprocess.run(
        [str(AIBATTLE), *CONVERSE_INTERACTIVE],
        input="one\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    conversation_id = first.stdout.splitlines()[0].removeprefix("conversation ")
    joined = subprocess.run(
        [str(AIBATTLE), "converse", "--id", conversation_id, "-i"],
        input="two\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert joined.returncode == 0, joined.stderr
    lines = [line for line in joined.stdout.splitlines() if line]
    hint = f"[waiting for input; go on with: aibattle converse --id {conversation_id} -i]"
    assert lines[-1] == "[conversation completed]" and hint not in lines
    spoken = [m.content for m in client.conversations.get(conversation_id).messages if m.role == "human"]
    assert spoken == ["Hi", "one", "two"]
