"""The Connect and gRPC-Web wire formats, without HTTP: envelopes, codecs, statuses and trailers.

Both protocols put a message in an *envelope* on a stream — one flags byte, a 4-byte big-endian length,
the bytes — and differ in how a call ends:

* **Connect** (connectrpc.com/docs/protocol): a unary call is a plain body (`application/json` or
  `application/proto`) and its error a JSON object with the HTTP status of the code; a stream
  (`application/connect+json|proto`) ends with an envelope flagged 0x02 holding `{"error"?, "metadata"?}`.
* **gRPC-Web** (github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md): every call is a stream of
  envelopes ending with one flagged 0x80 that holds the trailers as HTTP/1 header lines; the `-text`
  variants base64-encode the whole body.

Nothing here knows aiohttp: gateway.web_rpc carries these bytes over HTTP.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, status_pb2

from common.errors import MALFORMED_REQUEST, RequestTooLarge
from gateway.transcode import dumps_bytes, parse_json

COMPRESSED = 0x01
END_STREAM = 0x02
"""Connect's end-of-stream envelope."""
TRAILERS = 0x80
"""gRPC-Web's trailer frame."""
_HEADER = struct.Struct(">BI")

#: Connect's names of the gRPC codes (its error JSON and end-of-stream message carry these, not numbers).
CODE_NAMES = {
    code_pb2.CANCELLED: "canceled",
    code_pb2.UNKNOWN: "unknown",
    code_pb2.INVALID_ARGUMENT: "invalid_argument",
    code_pb2.DEADLINE_EXCEEDED: "deadline_exceeded",
    code_pb2.NOT_FOUND: "not_found",
    code_pb2.ALREADY_EXISTS: "already_exists",
    code_pb2.PERMISSION_DENIED: "permission_denied",
    code_pb2.RESOURCE_EXHAUSTED: "resource_exhausted",
    code_pb2.FAILED_PRECONDITION: "failed_precondition",
    code_pb2.ABORTED: "aborted",
    code_pb2.OUT_OF_RANGE: "out_of_range",
    code_pb2.UNIMPLEMENTED: "unimplemented",
    code_pb2.INTERNAL: "internal",
    code_pb2.UNAVAILABLE: "unavailable",
    code_pb2.DATA_LOSS: "data_loss",
    code_pb2.UNAUTHENTICATED: "unauthenticated",
}

#: Compression both protocols may name; responses are never compressed (identity is always allowed).
ENCODINGS = ("gzip", "identity")


class WireError(Exception):
    """Bytes that are not what the protocol says: the caller turns it into MALFORMED_REQUEST."""


def envelope(data: bytes, flags: int = 0) -> bytes:
    return _HEADER.pack(flags, len(data)) + data


def split_envelopes(body: bytes, *, limit: int) -> Iterator[tuple[int, bytes]]:
    """The (flags, data) of each envelope of a whole request body; a cut or oversized one raises."""
    offset = 0
    while offset < len(body):
        if len(body) - offset < _HEADER.size:
            raise WireError("the request ends inside an envelope's 5-byte prefix")
        flags, length = _HEADER.unpack_from(body, offset)
        if length > limit:
            raise RequestTooLarge(limit)
        offset += _HEADER.size
        if len(body) - offset < length:
            raise WireError(f"an envelope declares {length} bytes but the request has {len(body) - offset}")
        yield flags, body[offset : offset + length]
        offset += length


def decompress(data: bytes, encoding: str, *, limit: int) -> bytes:
    """`data` under `encoding` (gzip or identity), refusing output over `limit` (a small bomb stays small)."""
    if encoding in ("", "identity"):
        return data
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise WireError(f"the gzip data is corrupt: {exc}") from None
    if len(out) > limit:
        raise RequestTooLarge(limit)
    if not inflater.eof:
        raise WireError("the gzip data is cut off")
    return out


def b64decode_any(text: bytes | str) -> bytes:
    """Standard or URL-safe base64, padded or not (Connect GET and gRPC-Web text accept either)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip().replace(b"-", b"+").replace(b"_", b"/")
    try:
        return base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise WireError("not valid base64 (standard or URL-safe)") from None


def b64decode_chunks(body: bytes) -> bytes:
    """gRPC-Web text: base64, where a client may pad and restart between chunks."""
    out = bytearray()
    for piece in body.replace(b"\r", b"").replace(b"\n", b"").split(b"="):
        if piece:
            out += b64decode_any(piece)
    return bytes(out)


@dataclass(frozen=True)
class Codec:
    """How messages become bytes: binary protobuf, or proto-JSON with JSON (lowerCamelCase) names.

    JSON follows Connect's protojson: camelCase out, both spellings in, unknown fields refused when
    `strict` (the gateway's option; off, they are dropped as binary protobuf drops them).
    """

    name: str  # "proto" or "json"

    @property
    def is_json(self) -> bool:
        return self.name == "json"

    def decode(self, data: bytes, cls: type[Message], *, strict: bool, what: str = "request body") -> Message:
        message = cls()
        if self.is_json:
            obj = parse_json(data, what=what) if data.strip() else {}
            if not isinstance(obj, dict):
                raise WireError("a JSON request must be an object")
            try:
                json_format.ParseDict(obj, message, ignore_unknown_fields=not strict)
            except json_format.ParseError as exc:
                raise WireError(f"invalid JSON request: {str(exc).splitlines()[0]}") from None
            return message
        try:
            message.ParseFromString(data)
        except (DecodeError, RuntimeError):  # RuntimeError: recursion too deep in the C decoder
            raise WireError(f"the bytes are not a valid {cls.DESCRIPTOR.full_name} message") from None
        return message

    def encode(self, message: Message) -> bytes:
        if self.is_json:
            return dumps_bytes(json_format.MessageToDict(message))
        return message.SerializeToString()


PROTO = Codec("proto")
JSON = Codec("json")
CODECS = {"proto": PROTO, "json": JSON}


def malformed(error: WireError) -> Exception:
    return MALFORMED_REQUEST.error(str(error))


# --- Connect --------------------------------------------------------------------------------------------


def connect_error(status: status_pb2.Status) -> dict[str, Any]:
    """Connect's error JSON: `code` by name, `message`, and each detail as its type and base64 bytes."""
    error: dict[str, Any] = {"code": CODE_NAMES.get(status.code, "unknown")}
    if status.message:
        error["message"] = status.message
    if status.details:
        error["details"] = [
            {
                "type": detail.type_url.rpartition("/")[2],
                "value": base64.b64encode(detail.value).decode("ascii").rstrip("="),
            }
            for detail in status.details
        ]
    return error


def connect_end_stream(status: status_pb2.Status | None, trailers: Iterable[tuple[str, str]]) -> bytes:
    """The envelope that ends a Connect stream: its error (if any) and trailing metadata."""
    end: dict[str, Any] = {}
    if status is not None and status.code != code_pb2.OK:
        end["error"] = connect_error(status)
    metadata: dict[str, list[str]] = {}
    for key, value in trailers:
        metadata.setdefault(key, []).append(value)
    if metadata:
        end["metadata"] = metadata
    return envelope(json.dumps(end, separators=(",", ":")).encode(), END_STREAM)


# --- gRPC-Web -------------------------------------------------------------------------------------------


def grpc_status_headers(status: status_pb2.Status) -> dict[str, str]:
    """`grpc-status`, `grpc-message` (percent-encoded, as gRPC says) and the rich status, as HTTP fields."""
    headers = {"grpc-status": str(status.code)}
    if status.message:
        headers["grpc-message"] = quote(status.message, safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    if status.details:
        headers["grpc-status-details-bin"] = (
            base64.b64encode(status.SerializeToString()).decode("ascii").rstrip("=")
        )
    return headers


def grpc_web_trailers(status: status_pb2.Status, trailers: Iterable[tuple[str, str]]) -> bytes:
    """gRPC-Web's last frame: the status and trailing metadata as `key: value` lines."""
    fields = [*grpc_status_headers(status).items(), *trailers]
    block = "".join(f"{key}: {value}\r\n" for key, value in fields)
    return envelope(block.encode("utf-8"), TRAILERS)
