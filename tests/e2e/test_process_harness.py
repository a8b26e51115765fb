"""The end-to-end harness (tests/e2e/process.py) keeps its start-up deadline even when the
child prints nothing, and fails with what the child did print."""

from __future__ import annotations

import re
import sys

import pytest

from tests.e2e.process import started, wait_for_line

SILENT = "import sys, time; print('loading weights', file=sys.stderr, flush=True); time.sleep(600)"


@pytest.mark.timeout(60)  # the child sleeps 600 s: only the harness's deadline can end this test
def test_startup_deadline_applies_to_a_silent_process() -> None:
    with started([sys.executable, "-c", SILENT]) as (proc, output):
        with pytest.raises(AssertionError) as caught:
            wait_for_line(proc, output, re.compile("serving"), deadline=1.0)
        assert proc.returncode is not None  # killed, not left running
    assert "within 1.0 s" in str(caught.value)
    assert "loading weights" in str(caught.value)


def test_a_process_that_exits_early_fails_with_its_output() -> None:
    script = "print('config error: bad key'); raise SystemExit(2)"
    with started([sys.executable, "-c", script]) as (proc, output):
        with pytest.raises(AssertionError) as caught:
            wait_for_line(proc, output, re.compile("serving"), deadline=30.0)
    assert "exit code 2" in str(caught.value) and "config error: bad key" in str(caught.value)


def test_the_matching_line_is_returned() -> None:
    # It must outlive the test: the harness returns the line while the process keeps running.
    script = "import time; print('warming up'); print('serving gRPC on 127.0.0.1:1234, ok', flush=True)"
    script += "; time.sleep(600)"
    with started([sys.executable, "-c", script]) as (proc, output):
        match = wait_for_line(proc, output, re.compile(r"serving gRPC on (\S+?),"), deadline=30.0)
        assert match.group(1) == "127.0.0.1:1234"
        assert proc.poll() is None
