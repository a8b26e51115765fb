"""Property: no request the schema can express makes any RPC fail with INTERNAL or UNKNOWN.

Every method of every service in aibattle.v1 is found by walking the descriptors, and its
requests are generated from the request message's descriptor: full integer ranges, floats
with nan and inf, any unicode, bytes, enums with unknown numbers, repeated and map fields,
nested messages to a bounded depth. Numbers also draw from a small plausible range and
strings from a few words the server gives meaning to (model ids, roles, attachment types),
so some generated requests get past validation and reach the providers. A real server with
scripted models answers; client-streaming methods (Converse) are sent a few generated messages.
The same generated requests go to every RPC over Connect and gRPC-Web in tests/fuzz/test_http_properties.py.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message_factory
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from gateway.options import default_api_files
from server.app import AIBattleServer
from tests.conftest import SCRIPTED_MODELS, make_config
from tests.security_testlib import ADMIN, ADMIN_KEY

EXAMPLES = 200  # per RPC
MAX_DEPTH = 3
MAX_ITEMS = 3
# Scripted models that answer at once (scripted-slow would only measure its own delay).
MODELS = [m for m in SCRIPTED_MODELS if not m.get("chunk_delay_ms")]
MODEL_IDS = tuple(m["id"] for m in MODELS)
MODEL_FIELDS = ("model", "model_id")
MEANINGFUL_WORDS = (
    *MODEL_IDS,
    *("user", "system", "assistant", "human"),
    *("text", "image", "audio", "video", "document", "text/plain", "image/png"),
)
FORBIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED)
HANG = 30.0  # per call; a DEADLINE_EXCEEDED here means the server hung


def schema_methods() -> list[descriptor.MethodDescriptor]:
    """Every RPC of every service file in the schema (a new one is fuzzed without an edit here)."""
    return [
        method
        for file in default_api_files()
        for service in file.services_by_name.values()
        for method in service.methods
    ]


INTEGERS = {
    **dict.fromkeys((F.TYPE_INT32, F.TYPE_SINT32, F.TYPE_SFIXED32), (-(2**31), 2**31 - 1)),
    **dict.fromkeys((F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64), (-(2**63), 2**63 - 1)),
    **dict.fromkeys((F.TYPE_UINT32, F.TYPE_FIXED32), (0, 2**32 - 1)),
    **dict.fromkeys((F.TYPE_UINT64, F.TYPE_FIXED64), (0, 2**64 - 1)),
}


def single(field: F, depth: int) -> st.SearchStrategy[Any]:
    """One value of the field's type (a message, an enum number or a scalar)."""
    if field.type == F.TYPE_MESSAGE:
        return messages(field.message_type, depth + 1)
    if field.type == F.TYPE_ENUM:
        known = st.sampled_from([v.number for v in field.enum_type.values])
        return known | st.integers(-(2**31), 2**31 - 1)  # open enums keep unknown numbers
    if field.type in INTEGERS:
        low, high = INTEGERS[field.type]
        return st.integers(low, high) | st.integers(max(low, -2), min(high, 64))  # and plausible ones
    if field.type == F.TYPE_FLOAT:
        return st.floats(width=32) | st.floats(0, 1, width=32)
    if field.type == F.TYPE_DOUBLE:
        return st.floats() | st.floats(0, 1)
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return st.text() | st.sampled_from(MEANINGFUL_WORDS)
    if field.type == F.TYPE_BYTES:
        return st.binary()
    raise AssertionError(f"unhandled field type {field.type} of {field.full_name}")


def is_map(field: F) -> bool:
    return field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry


def value(field: F, depth: int) -> st.SearchStrategy[Any]:
    if field.name in MODEL_FIELDS and field.type == F.TYPE_STRING and not field.is_repeated:
        # A configured model two times in three, so most calls get past the lookup.
        known, anything = st.sampled_from(MODEL_IDS), single(field, depth)
        return st.integers(0, 2).flatmap(lambda pick: anything if pick == 2 else known)
    if is_map(field):
        entry = field.message_type
        keys = single(entry.fields_by_name["key"], depth)
        return st.dictionaries(keys, single(entry.fields_by_name["value"], depth), max_size=MAX_ITEMS)
    if field.is_repeated:
        return st.lists(single(field, depth), max_size=MAX_ITEMS)
    return single(field, depth)


def build(cls: type[Message], values: dict[str, Any]) -> Message:
    message = cls()
    for name, item in values.items():
        if item is None:
            continue  # left unset
        field = cls.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if is_map(field):
            for key, entry in item.items():
                if isinstance(entry, Message):
                    target[key].CopyFrom(entry)
                else:
                    target[key] = entry
        elif field.is_repeated:
            for entry in item:
                target.add().CopyFrom(entry) if isinstance(entry, Message) else target.append(entry)
        elif isinstance(item, Message):
            target.CopyFrom(item)
        else:
            setattr(message, name, item)
    return message


_MESSAGES: dict[tuple[str, int], st.SearchStrategy[Message]] = {}


def messages(desc: descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Messages of this type; below MAX_DEPTH nested messages stay empty (Struct/Value recurse)."""
    key = (desc.full_name, depth)
    if key not in _MESSAGES:
        cls = message_factory.GetMessageClass(desc)
        if depth >= MAX_DEPTH:
            _MESSAGES[key] = st.just(cls())
        else:
            # None leaves a field unset; a model is always named, or nearly every call stops there.
            fields = {
                f.name: value(f, depth) if f.name in MODEL_FIELDS else st.none() | value(f, depth)
                for f in desc.fields
            }
            _MESSAGES[key] = st.fixed_dictionaries(fields).map(lambda values: build(cls, values))
    return _MESSAGES[key]


def invoke(channel: grpc.Channel, method: descriptor.MethodDescriptor) -> Callable[[list[Message]], None]:
    """Calls the method with generated requests (one, or a stream of them) and reads every reply."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    shape = {
        (False, False): channel.unary_unary,
        (False, True): channel.unary_stream,
        (True, False): channel.stream_unary,
        (True, True): channel.stream_stream,
    }[(method.client_streaming, method.server_streaming)]
    stub = shape(
        path, request_serializer=request_cls.SerializeToString, response_deserializer=response_cls.FromString
    )

    def call(requests: list[Message]) -> None:
        # As the admin: every service answers (KeyService included), and no rate limit gets in the way.
        reply = stub(iter(requests) if method.client_streaming else requests[0], timeout=HANG, metadata=ADMIN)
        if method.server_streaming:
            for _ in reply:
                pass

    return call


@pytest.fixture(scope="module")
def channel() -> Iterator[grpc.Channel]:
    """A real server on its own event loop thread, so hypothesis can drive it synchronously."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    config = make_config(MODELS)
    admin = config.security.model_copy(update={"admin_key": SecretStr(ADMIN_KEY)})
    server = AIBattleServer(config.model_copy(update={"security": admin}))
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(HANG)
    try:
        with grpc.insecure_channel(server.grpc_target) as chan:
            yield chan
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(grace=0.5), loop).result(HANG)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(HANG)
        loop.close()


@pytest.mark.parametrize("method", schema_methods(), ids=lambda m: f"{m.containing_service.name}.{m.name}")
def test_no_generated_request_is_answered_internal(
    channel: grpc.Channel, method: descriptor.MethodDescriptor
) -> None:
    call = invoke(channel, method)
    count = (1, MAX_ITEMS) if method.client_streaming else (1, 1)
    codes: list[grpc.StatusCode] = []

    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(st.lists(messages(method.input_type), min_size=count[0], max_size=count[1]))
    def check(requests: list[Message]) -> None:
        try:
            call(requests)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            assert code not in FORBIDDEN, f"{code.name}: {error.details()} for {requests}"  # type: ignore[attr-defined]
            codes.append(code)

    check()
    assert len(codes) >= EXAMPLES  # every example reached the server and got an answer
