"""SIGTERM: health turns NOT_SERVING, in-flight streams finish or are cancelled after the grace
period, the process exits 0; a second signal exits at once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aibattle.v1 import completions_pb2, completions_pb2_grpc
from tests.e2e.process import server_process

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
    with server_process(config(grace=600.0, words=3000), tmp_path) as (proc, target, _):
        async with grpc.aio.insecure_channel(target) as channel:
            stream = completions_pb2_grpc.CompletionServiceStub(channel).StreamCompletion(
                completions_pb2.StreamCompletionRequest(model="slow", prompt="go")
            )
            await stream.read()
            proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            assert proc.poll() is None  # the first signal drains; it does not exit
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(proc.wait, 60)
        assert code == 1
