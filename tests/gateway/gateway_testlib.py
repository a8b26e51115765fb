"""Test support for the gateway: the test-only proto compiled with tools/codegen.py, and its servicer.

The test proto (tests/protos/aibattle/testing/v1/dummy.proto) is compiled into a temporary directory
by the same codegen `make gen` runs, then loaded from its FileDescriptorSet into a fresh descriptor
pool, so it never touches gen/ or the default pool.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway import GatewayOptions

ROOT = Path(__file__).resolve().parents[2]
TEST_PROTOS = ROOT / "tests" / "protos"
DUMMY_PROTO = "aibattle/testing/v1/dummy.proto"
OPTIONS_PROTO = "aibattle/v1/options.proto"
SERVICE = "aibattle.testing.v1.LibraryService"


def stage_protos(dest: Path) -> Path:
    """A proto root with the test protos plus our options.proto (which they import)."""
    shutil.copytree(TEST_PROTOS, dest)
    (dest / OPTIONS_PROTO).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "proto" / OPTIONS_PROTO, dest / OPTIONS_PROTO)
    return dest


def run_codegen(proto_root: Path, out: Path) -> Path:
    """Run tools/codegen.py (what `make gen` runs) on a proto root; returns the descriptor set it wrote."""
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "codegen.py"),
            "--proto-root",
            str(proto_root),
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    # codegen writes it inside the top-level package directory (e.g. out/aibattle/), as package data.
    sets = sorted(out.glob("*/*_descriptors.binpb"))
    assert sets, f"codegen wrote no descriptor set into {out}"
    return sets[0]


@dataclass
class ProtoApi:
    """Protos loaded into their own pool."""

    pool: descriptor_pool.DescriptorPool
    descriptor_set: Path

    def file(self, name: str = DUMMY_PROTO) -> FileDescriptor:
        return self.pool.FindFileByName(name)

    def cls(self, full_name: str) -> type[Message]:
        return message_factory.GetMessageClass(self.pool.FindMessageTypeByName(full_name))

    def msg(self, type_name: str, /, **fields: Any) -> Message:
        return self.cls(f"aibattle.testing.v1.{type_name}")(**fields)


def load_api(descriptor_set: Path) -> ProtoApi:
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return ProtoApi(pool=pool, descriptor_set=descriptor_set)


def dummy_options(api: ProtoApi, **overrides: Any) -> GatewayOptions:
    """Gateway options serving the test-only API, with its comments."""
    return GatewayOptions(files=(api.file(),), descriptor_set=api.descriptor_set, **overrides)


def status_code(number: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == number)


@dataclass
class LibraryServicer:
    """Answers LibraryService by echoing; records calls, metadata and cancellations."""

    api: ProtoApi
    calls: list[str] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    cancelled: defaultdict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    sent: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    def handler(self) -> grpc.GenericRpcHandler:
        service = self.api.pool.FindServiceByName(SERVICE)
        handlers: dict[str, grpc.RpcMethodHandler] = {}
        for method in service.methods:
            make = {
                (False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler,
            }[(method.client_streaming, method.server_streaming)]
            handlers[method.name] = make(
                self._recorded(method.name, getattr(self, method.name), method.server_streaming),
                request_deserializer=self.api.cls(method.input_type.full_name).FromString,
                response_serializer=self.api.cls(method.output_type.full_name).SerializeToString,
            )
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    def _recorded(self, name: str, impl: Callable[..., Any], streaming: bool) -> Callable[..., Any]:
        def before(context: Any) -> None:
            self.calls.append(name)
            self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})

        # grpc.aio cancels the handler's task when the client cancels the call.
        if streaming:

            async def stream_wrapper(request: Any, context: Any) -> AsyncIterator[Message]:
                before(context)
                try:
                    async for item in impl(request, context):
                        yield item
                except asyncio.CancelledError:
                    self.cancelled[name].set()
                    raise

            return stream_wrapper

        async def unary_wrapper(request: Any, context: Any) -> Message:
            before(context)
            try:
                result: Message = await impl(request, context)
            except asyncio.CancelledError:
                self.cancelled[name].set()
                raise
            return result

        return unary_wrapper

    async def GetBook(self, request: Any, context: Any) -> Message:
        await context.send_initial_metadata((("x-served-by", "library"),))
        context.set_trailing_metadata((("x-book-count", "1"),))
        return self.api.msg("Book", name=request.name, title="Dune", isbn=9780441013593)

    async def CreateBook(self, request: Any, context: Any) -> Message:
        book = self.api.msg("Book")
        book.CopyFrom(request.book)
        book.name = f"{request.parent}/books/new"
        book.etag = request.request_id
        return book

    async def UpdateBook(self, request: Any, context: Any) -> Message:
        return request.book

    async def DeleteBook(self, request: Any, context: Any) -> Message:
        return self.api.cls("google.protobuf.Empty")()

    async def ArchiveBook(self, request: Any, context: Any) -> Message:
        return self.api.msg(
            "ArchiveBookResponse",
            book=self.api.msg("Book", name=request.name, title=request.reason),
            note="n",
        )

    async def SearchBooks(self, request: Any, context: Any) -> Message:
        return self.api.msg(
            "SearchBooksResponse", echo=request, books=[self.api.msg("Book", name="b/1", title="A")]
        )

    async def Fail(self, request: Any, context: Any) -> Message:
        status = status_pb2.Status(code=request.code, message=request.message)
        status.details.add().Pack(
            error_details_pb2.ErrorInfo(reason=request.reason or "TEST_FAILURE", domain="aibattle.dev")
        )
        if request.HasField("retry_delay"):
            info = error_details_pb2.RetryInfo()
            info.retry_delay.seconds = request.retry_delay.seconds
            info.retry_delay.nanos = request.retry_delay.nanos
            status.details.add().Pack(info)
        await context.abort(
            status_code(request.code),
            request.message,
            trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
        )
        raise AssertionError("abort returns never")

    async def Sleep(self, request: Any, context: Any) -> Message:
        seconds = request.duration.seconds + request.duration.nanos / 1e9
        remaining = context.time_remaining()
        await asyncio.sleep(seconds)
        response = self.api.msg(
            "SleepResponse", metadata={k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        )
        response.slept.CopyFrom(request.duration)
        if remaining is not None:
            response.time_remaining.value = remaining
        return response

    async def StreamBooks(self, request: Any, context: Any) -> AsyncIterator[Message]:
        interval = request.interval.seconds + request.interval.nanos / 1e9
        for i in range(request.count):
            if (request.fail_after and i == request.fail_after) or request.fail_after < 0:
                status = status_pb2.Status(
                    code=grpc.StatusCode.UNAVAILABLE.value[0], message="shelf collapsed"
                )
                status.details.add().Pack(
                    error_details_pb2.ErrorInfo(reason="SHELF_COLLAPSED", domain="aibattle.dev")
                )
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE,
                    "shelf collapsed",
                    trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),),
                )
            self.sent["StreamBooks"] += 1
            yield self.api.msg("Book", name=f"{request.parent}/books/{i}", title=f"Book {i}", pages=i)
            if interval:
                await asyncio.sleep(interval)

    async def UploadBooks(self, request_iterator: Any, context: Any) -> Message:
        titles = [book.title async for book in request_iterator]
        return self.api.msg("UploadBooksResponse", count=len(titles), titles=titles)

    async def Chat(self, request_iterator: Any, context: Any) -> AsyncIterator[Message]:
        index = 0
        async for line in request_iterator:
            yield self.api.msg("ChatResponse", room=line.room, text=line.text.upper(), index=index)
            index += 1

    async def Internal(self, request: Any, context: Any) -> Message:
        return self.api.msg("InternalResponse")


@dataclass
class RunningLibrary:
    target: str
    servicer: LibraryServicer
    health: Any


async def start_library(api: ProtoApi) -> tuple[grpc.aio.Server, RunningLibrary]:
    server = grpc.aio.server()
    servicer = LibraryServicer(api)
    server.add_generic_rpc_handlers((servicer.handler(),))
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, RunningLibrary(target=f"127.0.0.1:{port}", servicer=servicer, health=health_servicer)


async def wait_for(predicate: Callable[[], bool], within: float = 5.0) -> bool:
    """Poll until predicate() holds or `within` seconds pass; returns its last value."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()
