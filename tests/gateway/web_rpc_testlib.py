"""Calling any RPC over Connect or gRPC-Web by hand, and reading any answer back as one `Outcome`.

The security suites (tests/server/test_keys_ownership.py, tests/gateway/test_gateway_rpc_security.py)
ask the same question over every protocol; this is the client side they share. The bytes are built from
the specs, with tests/gateway/test_gateway_rpc.py's helpers, never with gateway.rpc_wire (a mistake on
both sides would cancel out).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote

import grpc
from google.protobuf import any_pb2, json_format
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from tests.gateway.test_gateway_rpc import envelope, envelopes, trailer_fields

#: How a call is sent: Connect unary (JSON, binary or GET) and streams, gRPC-Web binary and text.
PROTOCOLS = ("connect", "connect-proto", "connect-get", "grpc-web", "grpc-web-text")

#: Connect's code names (connectrpc.com/docs/protocol#error-codes) as gRPC codes.
CONNECT_CODES = {
    ("canceled" if code is grpc.StatusCode.CANCELLED else code.name.lower()): code.value[0]
    for code in grpc.StatusCode
    if code is not grpc.StatusCode.OK
}
#: Connect's HTTP status of each code (the same table: connectrpc.com/docs/protocol#error-codes).
CONNECT_HTTP = {
    "canceled": 499,
    "unknown": 500,
    "invalid_argument": 400,
    "deadline_exceeded": 504,
    "not_found": 404,
    "already_exists": 409,
    "permission_denied": 403,
    "resource_exhausted": 429,
    "failed_precondition": 400,
    "aborted": 409,
    "out_of_range": 400,
    "unimplemented": 501,
    "internal": 500,
    "unavailable": 503,
    "data_loss": 500,
    "unauthenticated": 401,
}

#: HTTP's own answers where it has a more precise one than the table: a Content-Type that is not served
#: (Connect's spec asks for 415), a body over the limit, a verb the path does not take.
HTTP_OWN = {(415, "unimplemented"), (413, "resource_exhausted"), (405, "unimplemented")}


@dataclass
class Outcome:
    """One answer, whatever the protocol: the HTTP status, the gRPC code, the ErrorInfo reason, the
    message, the response messages before the end, and the answer's headers and raw body."""

    http: int
    code: int
    reason: str = ""
    message: str = ""
    messages: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    details: list[Any] = field(default_factory=list)

    def retry_delay(self) -> float | None:
        for detail in self.details:
            if isinstance(detail, error_details_pb2.RetryInfo):
                return detail.retry_delay.seconds + detail.retry_delay.nanos / 1e9
        return None

    def comparable(self, resource_id: str) -> tuple[Any, ...]:
        """What must not tell one id from another: all but the id itself."""
        return (
            self.http,
            self.code,
            self.reason,
            self.message.replace(resource_id, "ID"),
            len(self.messages),
        )


def _b64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def _unpack(details: list[Any]) -> tuple[str, list[Any]]:
    """The reason and the unpacked ErrorInfo / RetryInfo of a Status's details (Any messages)."""
    reason, out = "", []
    for detail in details:
        for cls in (error_details_pb2.ErrorInfo, error_details_pb2.RetryInfo):
            message = cls()
            if detail.Unpack(message):
                out.append(message)
                if isinstance(message, error_details_pb2.ErrorInfo):
                    reason = message.reason
    return reason, out


def _connect_error(error: dict[str, Any]) -> tuple[int, str, str, list[Any]]:
    """Code, reason, message and details of a Connect error object (details are type + base64 value)."""
    details = []
    for detail in error.get("details", []):
        details.append(
            any_pb2.Any(type_url=f"type.googleapis.com/{detail['type']}", value=_b64(detail["value"]))
        )
    reason, unpacked = _unpack(details)
    return CONNECT_CODES[error["code"]], reason, error.get("message", ""), unpacked


def connect_stream_outcome(http: int, headers: dict[str, str], body: bytes) -> Outcome:
    """A Connect stream's answer: messages flagged 0, then exactly one end-of-stream envelope (0x02)."""
    *frames, (flags, end) = envelopes(body)
    assert flags == 0x02, f"a Connect stream ends with its end-of-stream message, not flags {flags:#x}"
    assert all(f == 0 for f, _ in frames), [f for f, _ in frames]
    error = json.loads(end).get("error")
    outcome = Outcome(http, 0, messages=[data for _, data in frames], headers=headers, body=body)
    if error is not None:
        outcome.code, outcome.reason, outcome.message, outcome.details = _connect_error(error)
    return outcome


def grpc_web_outcome(http: int, headers: dict[str, str], body: bytes, *, text: bool) -> Outcome:
    """A gRPC-Web answer: trailers-only (the status in the headers, no body) or messages then one
    trailer frame (0x80)."""
    if text:
        body = b"".join(_b64(run.decode()) for run in body.split(b"=") if run)
    if not body:
        fields = {k.lower(): v for k, v in headers.items()}
        messages: list[bytes] = []
    else:
        *frames, (flags, block) = envelopes(body)
        assert flags == 0x80, f"a gRPC-Web answer ends with its trailer frame, not flags {flags:#x}"
        assert all(f == 0 for f, _ in frames), [f for f, _ in frames]
        fields, messages = trailer_fields(block), [data for _, data in frames]
    outcome = Outcome(http, int(fields["grpc-status"]), messages=messages, headers=headers, body=body)
    outcome.message = unquote(fields.get("grpc-message", ""))
    if "grpc-status-details-bin" in fields:
        status = status_pb2.Status.FromString(_b64(fields["grpc-status-details-bin"]))
        assert status.code == outcome.code, (status.code, outcome.code)
        outcome.reason, outcome.details = _unpack(list(status.details))
    return outcome


def connect_unary_outcome(http: int, headers: dict[str, str], body: bytes) -> Outcome:
    if http == 200:
        return Outcome(http, 0, messages=[body], headers=headers, body=body)
    error = json.loads(body)
    outcome = Outcome(http, 0, headers=headers, body=body)
    outcome.code, outcome.reason, outcome.message, outcome.details = _connect_error(error)
    assert http == CONNECT_HTTP[error["code"]] or (http, error["code"]) in HTTP_OWN, (http, error)
    return outcome


def decode(outcome: Outcome, protocol: str, cls: type[Message]) -> list[Message]:
    """The response messages of an outcome of `call(…, protocol, …)`."""
    if protocol == "connect":
        return [json_format.Parse(data, cls()) for data in outcome.messages]
    return [cls.FromString(data) for data in outcome.messages]


async def call(
    client: Any, protocol: str, method: MethodDescriptor, request: Message, headers: dict[str, str]
) -> Outcome:
    """Send `request` to `method` over `protocol` (one of PROTOCOLS) and read the whole answer.

    Connect's unary protocols call a server-streaming method as a Connect stream (JSON or binary, as
    asked); "connect-get" only serves NO_SIDE_EFFECTS unary methods.
    """
    path = f"/{method.containing_service.full_name}/{method.name}"
    proto = request.SerializeToString()
    as_json = json_format.MessageToJson(request).encode()
    if protocol == "connect-get":
        assert not method.server_streaming
        message = base64.urlsafe_b64encode(proto).decode().rstrip("=")
        url = f"{path}?connect=v1&encoding=proto&base64=1&message={quote(message)}"
        async with client.get(url, headers=headers) as resp:
            return connect_unary_outcome(resp.status, dict(resp.headers), await resp.read())
    if protocol.startswith("grpc-web"):
        text = protocol == "grpc-web-text"
        data = base64.b64encode(envelope(proto)) if text else envelope(proto)
        content_type = "application/grpc-web-text" if text else "application/grpc-web+proto"
        async with client.post(
            path, data=data, headers={**headers, "Content-Type": content_type, "X-Grpc-Web": "1"}
        ) as resp:
            assert resp.status == 200, resp.status
            return grpc_web_outcome(resp.status, dict(resp.headers), await resp.read(), text=text)
    binary = protocol == "connect-proto"
    codec = "proto" if binary else "json"
    payload = proto if binary else as_json
    if method.server_streaming:
        async with client.post(
            path,
            data=envelope(payload),
            headers={**headers, "Content-Type": f"application/connect+{codec}"},
        ) as resp:
            assert resp.status == 200, resp.status
            return connect_stream_outcome(resp.status, dict(resp.headers), await resp.read())
    async with client.post(
        path,
        data=payload,
        headers={**headers, "Content-Type": f"application/{codec}", "Connect-Protocol-Version": "1"},
    ) as resp:
        return connect_unary_outcome(resp.status, dict(resp.headers), await resp.read())
