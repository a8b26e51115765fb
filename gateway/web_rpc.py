"""Connect and gRPC-Web on the HTTP port: every unary and server-streaming RPC at `/<service>/<method>`.

The endpoints are derived from the descriptors like the REST routes (a new RPC is served here by `make gen`
alone), and a request goes the way every other surface's does: the same middlewares (request id, access log,
metrics, span, CORS), the same upstream call (the server's interceptors: auth, limits, ownership), the same
relay for streams. Only the bytes differ (gateway.rpc_wire); one path serves both protocols, told apart by
Content-Type:

| Content-Type | protocol |
|---|---|
| `application/json`, `application/proto` | Connect unary (POST; GET for NO_SIDE_EFFECTS RPCs) |
| `application/connect+json`, `application/connect+proto` | Connect server stream |
| `application/grpc-web[+proto\\|+json]`, `application/grpc-web-text[+proto\\|+json]` | gRPC-Web, any RPC |

Client- and bidi-streaming RPCs (Converse) need a request stream, which browsers' HTTP/1.1 fetch cannot
send: they answer UNIMPLEMENTED naming their WebSocket route. Responses are never compressed (identity is
always allowed); requests may be gzip.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from google.protobuf.descriptor import FileDescriptor, MethodDescriptor
from google.protobuf.descriptor_pb2 import MethodOptions
from google.protobuf.message import Message
from google.rpc import status_pb2

from common.errors import (
    INVALID_HEADER,
    STREAMING_REQUESTS_UNSUPPORTED,
    UNKNOWN_RPC,
    UNSUPPORTED_COMPRESSION,
    UNSUPPORTED_MEDIA_TYPE,
    InvalidArgument,
)
from gateway import observe
from gateway.calls import cancel_on_exit
from gateway.descriptors import Rpc, Shape
from gateway.errors import error_headers, http_status
from gateway.metadata import metadata_fields
from gateway.relay import relay
from gateway.rpc_wire import (
    CODECS,
    COMPRESSED,
    ENCODINGS,
    PROTO,
    Codec,
    WireError,
    b64decode_any,
    b64decode_chunks,
    connect_end_stream,
    connect_error,
    decompress,
    envelope,
    grpc_status_headers,
    grpc_web_trailers,
    malformed,
    split_envelopes,
)
from gateway.transcode import dumps_bytes
from gateway.web_errors import Dialect
from gateway.web_state import STATE, call_context
from gateway.web_stream import HttpStreamSink, answer_headers

_CONNECT_TIMEOUT = re.compile(r"\d{1,10}")
_ACCEPT_POST = ", ".join(
    (
        "application/json",
        "application/proto",
        "application/connect+json",
        "application/connect+proto",
        "application/grpc-web",
        "application/grpc-web+proto",
        "application/grpc-web+json",
        "application/grpc-web-text",
        "application/grpc-web-text+proto",
    )
)


@dataclass(frozen=True)
class Protocol:
    """What a request's Content-Type (or a Connect GET's query) says about the call's bytes."""

    grpc_web: bool
    codec: Codec
    enveloped: bool
    """Messages in envelopes: Connect streams and all of gRPC-Web."""
    text: bool = False
    """gRPC-Web text: the whole body base64."""

    @property
    def content_type(self) -> str:
        if self.grpc_web:
            return f"application/grpc-web{'-text' if self.text else ''}+{self.codec.name}"
        return f"application/{'connect+' if self.enveloped else ''}{self.codec.name}"

    @property
    def surface(self) -> str:
        return "grpc-web" if self.grpc_web else "connect"


def protocol_of(content_type: str) -> Protocol | None:
    """The protocol of a POST by its Content-Type (parameters such as charset ignored), or None."""
    media = content_type.split(";")[0].strip().lower()
    if media in ("application/json", "application/proto"):
        return Protocol(grpc_web=False, codec=CODECS[media[12:]], enveloped=False)
    if media in ("application/connect+json", "application/connect+proto"):
        return Protocol(grpc_web=False, codec=CODECS[media[20:]], enveloped=True)
    for prefix, text in (("application/grpc-web-text", True), ("application/grpc-web", False)):
        if media == prefix:
            return Protocol(grpc_web=True, codec=PROTO, enveloped=True, text=text)
        if media.startswith(prefix + "+") and media[len(prefix) + 1 :] in CODECS:
            return Protocol(grpc_web=True, codec=CODECS[media[len(prefix) + 1 :]], enveloped=True, text=text)
    return None


# --- errors, in the protocol of the request --------------------------------------------------------------


def _connect_answer(
    request: web.Request, status: status_pb2.Status, http: int | None, headers: dict[str, str]
) -> web.Response:
    protocol = protocol_of(request.headers.get("Content-Type", ""))
    if protocol is not None and protocol.enveloped and request.method == "POST" and http != 415:
        # A Connect stream says its error in its end-of-stream message, under 200.
        return web.Response(
            body=connect_end_stream(status, ()), content_type=protocol.content_type, headers=headers
        )
    return web.Response(
        status=http or http_status(status.code),
        body=dumps_bytes(connect_error(status)),
        content_type="application/json",
        headers=headers,
    )


def _grpc_web_answer(
    request: web.Request, status: status_pb2.Status, _http: int | None, headers: dict[str, str]
) -> web.Response:
    # Trailers-only: the status in the headers of an empty 200 answer, as gRPC-Web clients read it.
    protocol = protocol_of(request.headers.get("Content-Type", "")) or Protocol(True, PROTO, True)
    return web.Response(
        body=b"",
        content_type=protocol.content_type,
        headers={**headers, **grpc_status_headers(status)},
    )


def _error_body(status: status_pb2.Status, _http: int) -> dict[str, object]:
    return connect_error(status)


CONNECT = Dialect("connect", _error_body, "connect", answer=_connect_answer)
GRPC_WEB = Dialect("grpc-web", _error_body, "grpc-web", answer=_grpc_web_answer)


def _pick(request: web.Request) -> Dialect:
    protocol = protocol_of(request.headers.get("Content-Type", ""))
    return GRPC_WEB if protocol is not None and protocol.grpc_web else CONNECT


#: The dialect of every RPC path: Connect's or gRPC-Web's, by the request's Content-Type.
RPC = Dialect("rpc", _error_body, "connect", answer=_connect_answer, pick=_pick)


# --- the endpoints ------------------------------------------------------------------------------------------


def rpc_endpoints(files: Iterable[FileDescriptor]) -> list[tuple[str, str, Handler]]:
    """(method, path, handler) for every RPC of `files`: POST for all, GET for NO_SIDE_EFFECTS unary ones."""
    endpoints: list[tuple[str, str, Handler]] = []
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                rpc = Rpc.of(method)
                handler = _handler(rpc)
                endpoints.append(("POST", rpc.grpc_path, handler))
                if _cacheable(method) and rpc.shape is Shape.UNARY:
                    endpoints.append(("GET", rpc.grpc_path, handler))
    return endpoints


def unknown_method_endpoints(files: Iterable[FileDescriptor]) -> list[tuple[str, str, Handler]]:
    """Any other method of a served service is UNIMPLEMENTED, as a gRPC server answers it (Connect: 404).
    POST only: a preflight for a served RPC's path must not learn of a GET it does not take."""
    return [
        ("POST", f"/{service.full_name}/{{method}}", _unknown_method)
        for file in files
        for service in file.services_by_name.values()
    ]


async def _unknown_method(request: web.Request) -> web.StreamResponse:
    service, _, method = request.rel_url.raw_path.strip("/").partition("/")
    raise UNKNOWN_RPC.error(f"{service} has no method {method!r}")


def _cacheable(method: MethodDescriptor) -> bool:
    options = method.GetOptions()
    return bool(options.idempotency_level == MethodOptions.NO_SIDE_EFFECTS)


def _handler(rpc: Rpc) -> Handler:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _handle(request, rpc)

    return handle


async def _handle(request: web.Request, rpc: Rpc) -> web.StreamResponse:
    if rpc.shape.streams_requests:
        raise STREAMING_REQUESTS_UNSUPPORTED.error(
            f"{rpc.full_name} streams requests, which Connect and gRPC-Web over HTTP/1.1 cannot carry: "
            "call it over gRPC, or its WebSocket route"
        )
    state = request.app[STATE]
    if request.method == "GET":
        protocol, message = _from_query(request, rpc)
    else:
        protocol = _protocol(request, rpc)
        message = await _read_request(request, rpc, protocol)
    context = call_context(request)
    timeout = context.timeout if protocol.grpc_web else _connect_timeout(request)
    call = state.upstream.start(rpc, message, metadata=context.metadata, timeout=timeout)
    with cancel_on_exit(call):
        if not protocol.enveloped:
            return await _unary(call, protocol)
        sink = EnvelopeSink(request, protocol, call)
        try:
            await relay(call, sink, streaming=rpc.shape.streams_responses)
        finally:
            sink.open_stream.close()
        return sink.response or web.Response(status=499)


def _protocol(request: web.Request, rpc: Rpc) -> Protocol:
    protocol = protocol_of(request.headers.get("Content-Type", ""))
    if protocol is None or (not protocol.grpc_web and protocol.enveloped != rpc.shape.streams_responses):
        kind = "server-streaming" if rpc.shape.streams_responses else "unary"
        raise UNSUPPORTED_MEDIA_TYPE.error(
            f"Content-Type {request.headers.get('Content-Type', '')!r} is not served for {rpc.full_name} "
            f"({kind}); it takes {_expected(rpc)}",
            headers={"Accept-Post": _ACCEPT_POST},
        )
    version = request.headers.get("Connect-Protocol-Version")
    if not protocol.grpc_web and version is not None and version != "1":
        raise InvalidArgument(None, f"Connect-Protocol-Version {version!r} is not 1", reason=INVALID_HEADER)
    return protocol


def _expected(rpc: Rpc) -> str:
    connect = "application/connect+json|proto" if rpc.shape.streams_responses else "application/json|proto"
    return f"{connect} (Connect) or application/grpc-web[-text][+proto|+json] (gRPC-Web)"


async def _read_request(request: web.Request, rpc: Rpc, protocol: Protocol) -> Message:
    limit = request.app[STATE].options.max_body_bytes
    strict = request.app[STATE].options.strict
    body = await request.read()  # aiohttp undoes Content-Encoding and enforces max_body_bytes
    try:
        if not protocol.enveloped:
            return protocol.codec.decode(body, rpc.request_cls, strict=strict)
        if protocol.text:
            body = b64decode_chunks(body)
        frames = list(split_envelopes(body, limit=limit))
        if len(frames) != 1:
            raise WireError(f"{rpc.full_name} takes one request message, and the body holds {len(frames)}")
        flags, data = frames[0]
        if flags & ~COMPRESSED:
            raise WireError(f"the request envelope has flags {flags:#04x}; only 0x01 (compressed) is allowed")
        if flags & COMPRESSED:
            data = decompress(data, _message_encoding(request, protocol), limit=limit)
        return protocol.codec.decode(data, rpc.request_cls, strict=strict)
    except WireError as exc:
        raise malformed(exc) from None


def _message_encoding(request: web.Request, protocol: Protocol) -> str:
    """The compression of enveloped messages: Connect-Content-Encoding or grpc-encoding."""
    header = "grpc-encoding" if protocol.grpc_web else "Connect-Content-Encoding"
    encoding = request.headers.get(header, "identity").strip().lower()
    if encoding not in ENCODINGS:
        raise UNSUPPORTED_COMPRESSION.error(
            f"{header} {encoding!r} is not supported; use one of {', '.join(ENCODINGS)}",
            headers={"Connect-Accept-Encoding" if not protocol.grpc_web else "grpc-accept-encoding": "gzip"},
        )
    if encoding == "identity":
        raise WireError(f"a message is flagged compressed, but {header} names no compression")
    return encoding


def _from_query(request: web.Request, rpc: Rpc) -> tuple[Protocol, Message]:
    """A Connect GET: `?encoding=json|proto&message=…[&base64=1][&compression=gzip][&connect=v1]`."""
    query = request.query
    state = request.app[STATE]
    codec = CODECS.get(query.get("encoding", ""))
    if codec is None:
        raise UNSUPPORTED_MEDIA_TYPE.error(
            f"a Connect GET names its codec: encoding=json or encoding=proto, not {query.get('encoding')!r}"
        )
    if query.get("connect", "v1") != "v1":
        raise InvalidArgument("connect", f"connect={query['connect']!r} is not v1", reason=INVALID_HEADER)
    raw = request.rel_url.raw_query_string
    value = next((part[8:] for part in raw.split("&") if part.startswith("message=")), "")
    try:
        data = b64decode_any(value) if query.get("base64") == "1" else unquote_to_bytes(value)
        compression = query.get("compression", "identity")
        if compression not in ENCODINGS:
            raise UNSUPPORTED_COMPRESSION.error(f"compression {compression!r} is not supported; use gzip")
        data = decompress(data, compression, limit=state.options.max_body_bytes)
        message = codec.decode(data, rpc.request_cls, strict=state.options.strict, what="message parameter")
    except WireError as exc:
        raise malformed(exc) from None
    return Protocol(grpc_web=False, codec=codec, enveloped=False), message


def _connect_timeout(request: web.Request) -> float | None:
    value = request.headers.get("Connect-Timeout-Ms")
    if value is None:
        return None
    if not _CONNECT_TIMEOUT.fullmatch(value.strip()):
        raise InvalidArgument(
            None, f"Connect-Timeout-Ms {value!r} is not 1 to 10 digits", reason=INVALID_HEADER
        )
    return int(value) / 1000


async def _unary(call: Any, protocol: Protocol) -> web.Response:
    """A Connect unary answer: the message as the body, metadata as headers, trailers as `trailer-*`."""
    message = await call
    initial = await call.initial_metadata()
    trailing = await call.trailing_metadata()
    observe.note_upstream_of(initial, trailing)
    headers = dict(metadata_fields(initial))
    headers.update((f"trailer-{key}", value) for key, value in metadata_fields(trailing))
    headers.update(answer_headers(message))
    return web.Response(
        body=protocol.codec.encode(message), content_type=protocol.content_type, headers=headers
    )


class _Framing:
    """Envelopes of one protocol, for HttpStreamSink (see web_stream.Framing)."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol = protocol
        self.trailers: Sequence[tuple[str, str]] = ()

    @property
    def content_type(self) -> str:
        return self.protocol.content_type

    def _out(self, data: bytes) -> bytes:
        return base64.b64encode(data) if self.protocol.text else data

    def message(self, message: Message) -> bytes:
        return self._out(envelope(self.protocol.codec.encode(message)))

    def error(self, status: status_pb2.Status) -> bytes:
        if self.protocol.grpc_web:
            return self._out(grpc_web_trailers(status, self.trailers))
        return connect_end_stream(status, self.trailers)

    def end(self) -> bytes:
        return self.error(status_pb2.Status())

    def keepalive(self) -> bytes:
        return b""

    @property
    def empty_status(self) -> int:
        return 200


class EnvelopeSink(HttpStreamSink):
    """The relay's sink for Connect streams and gRPC-Web: envelopes, then the end with the trailers; a
    failure before the first message is still a 200 that says the status the protocol's way."""

    def __init__(self, request: web.Request, protocol: Protocol, call: Any) -> None:
        self._envelopes = _Framing(protocol)
        super().__init__(request, self._envelopes, transport=protocol.surface)
        self._call = call

    def head(self, initial_metadata: grpc.aio.Metadata | None, first: Message | None) -> dict[str, str]:
        return {**dict(metadata_fields(initial_metadata)), **answer_headers(first)}

    async def end(self) -> None:
        self._envelopes.trailers = metadata_fields(await self._call.trailing_metadata())
        await super().end()

    async def fail(self, status: status_pb2.Status, http: int | None, headers: dict[str, str]) -> None:
        if self.started:
            await super().fail(status, http, headers)
            return
        dialect = GRPC_WEB if self._envelopes.protocol.grpc_web else CONNECT
        assert dialect.answer is not None
        self.response = dialect.answer(self._request, status, http, {**error_headers(status), **headers})
