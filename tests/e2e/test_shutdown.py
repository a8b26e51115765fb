"""SIGTERM: health turns NOT_SERVING, in-flight streams finish or are cancelled after the grace
period, the process exits 0; a second signal exits at once, but the first one relayed (the same
signal again at once, as `make run` passes on a process group's SIGTERM) does not."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from server.__main__ import RELAY_WINDOW_SECONDS
from tests.e2e.process import BANNER, ROOT, STARTUP_DEADLINE, Output, server_process, wait_for_line

CONFIG = """
[server]
shutdown_grace_seconds = {grace}

[[models]]
id = "slow"
provider = "scripted"
script = ["{words}"]
chunk_delay_ms = 100
"""


def config(grace: float, words: int) -> str:
    return CONFIG.format(grace=grace, words=" ".join(f"w{i}" for i in range(words)))


async def test_sigterm_cancels_a_long_stream_after_the_grace_period(tmp_path: Path) -> None:
    # 300 words at 100 ms need 30 s; the 2 s grace lets some through, then cuts the rest.
    with server_process(config(grace=2.0, words=300), tmp_path) as (proc, target, _):
        async with grpc.aio.insecure_channel(target) as channel:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.SERVING
            stream = completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="slow", prompt="go")
            )
            await stream.read()
            proc.send_signal(signal.SIGTERM)
            assert (await watch.read()).status == health_pb2.HealthCheckResponse.NOT_SERVING
            after_signal = 0
            try:
                while (chunk := await stream.read()) is not grpc.aio.EOF:
                    assert not chunk.is_final
                    after_signal += 1
            except grpc.aio.AioRpcError as exc:
                assert exc.code() in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert after_signal >= 3  # it kept streaming through the grace period...
        assert after_signal < 299  # ...and was cut before the stream could finish
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_sigterm_lets_a_short_stream_finish(tmp_path: Path) -> None:
    with server_process(config(grace=5.0, words=10), tmp_path) as (proc, target, _):
        async with grpc.aio.insecure_channel(target) as channel:
            stream = completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="slow", prompt="go")
            )
            await stream.read()
            proc.send_signal(signal.SIGTERM)
            chunks = []
            while (chunk := await stream.read()) is not grpc.aio.EOF:
                chunks.append(chunk)
        assert chunks[-1].is_final and chunks[-1].usage.completion_tokens == 10
        assert await asyncio.to_thread(proc.wait, 10) == 0


async def test_second_signal_exits_at_once(tmp_path: Path) -> None:
    # The grace period (10 min) and the stream (5 min) both outlast the wait below: only the
    # second signal can end the process in time.
    outputs: list[Output] = []
    with server_process(config(grace=600.0, words=3000), tmp_path, outputs=outputs) as (proc, target, _):
        (output,) = outputs
        async with grpc.aio.insecure_channel(target) as channel:
            stream = completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="slow", prompt="go")
            )
            await stream.read()
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(logged, output, "shutting down")
            # Past the window in which a repeat counts as the first signal relayed.
            await asyncio.sleep(RELAY_WINDOW_SECONDS + 0.5)
            assert proc.poll() is None  # the first signal drains; it does not exit
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 60)
        assert code == 1
        assert "second signal: exiting now" in output.stderr()


def logged(output: Output, text: str, deadline: float = 30.0) -> None:
    """Wait until the process has logged `text` on stderr."""
    until = time.monotonic() + deadline
    while text not in output.stderr():
        assert time.monotonic() < until, f"{text!r} never logged:\n{output.stderr()}"
        time.sleep(0.02)


async def finish(stream: grpc.aio.UnaryStreamCall) -> list[completions_pb2.StreamCompletionResponse]:
    chunks = []
    while (chunk := await stream.read()) is not grpc.aio.EOF:
        chunks.append(chunk)
    return chunks


async def test_the_same_signal_again_at_once_still_drains(tmp_path: Path) -> None:
    # What a relaying parent does: the same SIGTERM a moment after the first.
    outputs: list[Output] = []
    with server_process(config(grace=30.0, words=10), tmp_path, outputs=outputs) as (proc, target, _):
        (output,) = outputs
        async with grpc.aio.insecure_channel(target) as channel:
            stream = completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="slow", prompt="go")
            )
            await stream.read()
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(logged, output, "shutting down")
            proc.send_signal(signal.SIGTERM)
            chunks = await finish(stream)
        assert chunks[-1].is_final and chunks[-1].usage.completion_tokens == 10
        assert await asyncio.to_thread(proc.wait, 30) == 0
    assert "second signal" not in output.stderr()


@contextmanager
def make_run(config_toml: str, tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str, Output]]:
    """`make run` in a process group of its own, as a terminal or a service manager starts it; yields
    make, the server's gRPC target and their output. The group is killed on exit if still alive."""
    config_file = tmp_path / "aibattle.toml"
    config_file.write_text(config_toml)
    env = {
        **os.environ,
        "AIBATTLE_CONFIG": str(config_file),
        "AIBATTLE_GRPC_ADDR": "127.0.0.1:0",
        "AIBATTLE_HTTP_ADDR": "",
        "AIBATTLE_DB": str(tmp_path / "aibattle.db"),
    }
    # -o: never (re)install here; PY: this interpreter (the venv's, as make's default is).
    argv = ["make", "-s", "-o", ".venv/.installed-stamp", "run", f"PY={sys.executable}"]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    output = Output(proc)
    try:
        target = wait_for_line(proc, output, BANNER, STARTUP_DEADLINE).group(1)
        yield proc, target, output
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        output.join()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_one_signal_to_make_runs_process_group_drains(tmp_path: Path, signum: signal.Signals) -> None:
    with make_run(config(grace=30.0, words=10), tmp_path) as (proc, target, output):
        async with grpc.aio.insecure_channel(target) as channel:
            stream = completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="slow", prompt="go")
            )
            await stream.read()
            os.killpg(proc.pid, signum)  # kill -TERM -- -PGID, or Ctrl-C in the terminal
            chunks = await finish(stream)
        assert chunks[-1].is_final and chunks[-1].usage.completion_tokens == 10
        # make dies of the signal once its child is done; the server drained and stopped cleanly.
        assert await asyncio.to_thread(proc.wait, 30) == -signum
    log = output.stderr()
    assert '"msg": "stopped"' in log, log
    assert "second signal" not in log, log
