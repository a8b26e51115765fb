"""The WebSocket routes' two frame dialects, and how a connection picks one.

* **native** (`aibattle.proto.v1`): a frame is the RPC's request in proto-JSON, an answer frame is
  `{"result": response}`, a failure `{"error": Status}` — the same frames as NDJSON.
* **flat** (`aibattle.flat.v1`), seed 000 §4.1's: a client frame is `{"type": T, …}` and an answer frame is
  one flat object `{"type": …, "role", "model", "content", "sequence", …}`.

  - `{"type": "auth", "token": "…"}` carries the caller's credential; it becomes the call's
    `authorization: Bearer …` metadata and is answered `{"type": "auth_ok"}`.
  - Any other `T` names a message field of the request (`message`, `run`, `cancel` on Converse), and the
    other keys are that field's JSON: `{"type": "message", "content": "hi"}` is
    `{"message": {"content": "hi", "role": "human"}}` (a flat sender is a person, so `role` defaults to
    "human" where the field has one).
  - An event (gateway.events) becomes its fields at the top level: `type` is its enum value without
    the enum's prefix, lower-cased (`CONVERSATION_EVENT_TYPE_TURN_STARTED` → `"turn_started"`), its
    message fields (`message`, `iteration`) are lifted into it (so a message event has `role`, `model`,
    `content`), a text `delta` is also its `content`, and `sequence` is a number. A stream that
    fails ends with `{"type": "error", "error": Status}`.

Choosing: a `Sec-WebSocket-Protocol` offer of either name picks it (and is echoed, as RFC 6455 wants).
Without one, a connection whose call waits for a first frame anyway (bidi Converse; a server stream
whose URL lacks a required field) is flat if that frame is a JSON object with a string `"type"` and the
request has no field named `type`, native otherwise. A server stream that starts from its URL starts at
once, so it is native unless the subprotocol says flat. A browser, which cannot set headers, may send
its token as an offered subprotocol `bearer.<token>` (beside a dialect name, which is what is echoed).

A flat connection without credentials (no `Authorization`/`X-API-Key` header, no `bearer.` offer):

* a call whose request the URL completes starts at once, so a server without keys streams to a
  client that never sends a frame (the README's `new WebSocket(url, ['aibattle.flat.v1'])`). If the
  server refuses it for want of credentials (UNAUTHENTICATED before any event), the client has
  `ws_auth_timeout` seconds (5) to send its auth frame — an auth frame sent on open counts too — and
  the request is sent again with the token; without one the refusal is sent: an error frame and close
  code 4016 (4000 + UNAUTHENTICATED);
* a call that needs the client's frames (Converse) starts at the first frame, an auth frame being
  taken first; a watcher that sends nothing gets its call started after `ws_auth_timeout` without
  credentials, and the server decides (serves it, or refuses it: 4016).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, cast

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.rpc import status_pb2

from common.errors import INVALID_FRAME, INVALID_HEADER, InvalidArgument
from gateway.descriptors import message_type
from gateway.errors import status_to_json
from gateway.events import SEQUENCE_FIELD, enum_short_name
from gateway.routes import Route
from gateway.transcode import dumps, message_to_json, parse_json

FLAT_PROTOCOL = "aibattle.flat.v1"
NATIVE_PROTOCOL = "aibattle.proto.v1"
BEARER_PREFIX = "bearer."
PROTOCOL_HEADER = "Sec-WebSocket-Protocol"
AUTH = "auth"
AUTH_OK = dumps({"type": "auth_ok"})
#: The role a flat sender speaks as, where the request's field has a role and the frame sets none.
FLAT_SENDER_ROLE = "human"


class WsDialect(enum.Enum):
    NATIVE = NATIVE_PROTOCOL
    FLAT = FLAT_PROTOCOL


@dataclass(frozen=True)
class Negotiation:
    """What the upgrade request's subprotocol offer says: dialect, the protocol to echo, a bearer token."""

    dialect: WsDialect | None = None
    protocol: str | None = None
    token: str | None = None


def negotiate(header: str | None) -> Negotiation:
    """Read a `Sec-WebSocket-Protocol` offer; raises INVALID_ARGUMENT (a 400 before the upgrade)."""
    offered = [p.strip() for p in (header or "").split(",") if p.strip()]
    protocol = next((p for p in offered if p in (FLAT_PROTOCOL, NATIVE_PROTOCOL)), None)
    tokens = [p[len(BEARER_PREFIX) :] for p in offered if p.lower().startswith(BEARER_PREFIX)]
    if tokens:
        if protocol is None:
            # The server must echo one offered protocol or browsers drop the connection, and echoing a
            # credential into response headers (and proxy logs) is not something to do by default.
            raise InvalidArgument(
                PROTOCOL_HEADER,
                f"offer {FLAT_PROTOCOL} or {NATIVE_PROTOCOL} beside {BEARER_PREFIX}<token>",
                reason=INVALID_HEADER,
                prefix=False,
            )
        if len(tokens) > 1 or not tokens[0]:
            raise InvalidArgument(
                PROTOCOL_HEADER,
                f"offer one non-empty {BEARER_PREFIX}<token>",
                reason=INVALID_HEADER,
                prefix=False,
            )
    return Negotiation(
        dialect=WsDialect(protocol) if protocol else None,
        protocol=protocol,
        token=tokens[0] if tokens else None,
    )


def looks_flat(route: Route, text: str) -> bool:
    """Whether a first frame is in the flat dialect: `{"type": "<string>", …}` on a request without `type`."""
    try:
        obj = parse_json(text, what="WebSocket frame")
    except Exception:
        return False  # the native decoder reports it
    fields = route.rpc.method.input_type
    has_type = "type" in fields.fields_by_name or any(f.json_name == "type" for f in fields.fields)
    return isinstance(obj, dict) and isinstance(obj.get("type"), str) and not has_type


def flat_frame(text: str) -> dict[str, Any]:
    """A flat client frame as an object with its `type`; INVALID_ARGUMENT otherwise."""
    obj = parse_json(text, what="WebSocket frame")
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise InvalidArgument(
            "type",
            'a frame of the flat dialect is a JSON object with a string "type"',
            reason=INVALID_FRAME,
            prefix=False,
        )
    return obj


def auth_token(frame: dict[str, Any]) -> str:
    """The token of an auth frame: a string that can travel as metadata."""
    token = frame.get("token", "")
    if not isinstance(token, str) or not (token.isascii() and (token.isprintable() or not token)):
        raise InvalidArgument(
            "token", "auth frame's token must be a printable ASCII string", reason=INVALID_FRAME, prefix=False
        )
    return token


def flat_request_body(route: Route, frame: dict[str, Any]) -> dict[str, Any]:
    """The request JSON for a flat frame `{"type": T, …}`: `{T: {…}}`, T a message field of the request."""
    kind = frame["type"]
    request: Descriptor = route.rpc.method.input_type
    target = request.fields_by_name.get(kind)
    sub = message_type(target) if target is not None else None
    if target is None or sub is None or target.is_repeated or kind in route.path_fields:
        choices = sorted(
            f.name
            for f in request.fields
            if message_type(f) is not None and not f.is_repeated and f.name not in route.path_fields
        )
        raise InvalidArgument(
            "type",
            f"unknown frame type {kind!r}: expected {AUTH!r} or one of {choices}",
            reason=INVALID_FRAME,
            prefix=False,
        )
    body = {k: v for k, v in frame.items() if k != "type"}
    role = sub.fields_by_name.get("role")
    if role is not None and role.type == FieldDescriptor.TYPE_STRING and not body.get("role"):
        body["role"] = FLAT_SENDER_ROLE
    return {kind: body}


def flat_event(route: Route, response: Message, *, emit_unpopulated: bool) -> dict[str, Any]:
    """One response as a flat frame (see the module docstring)."""
    events = route.events
    if events is None:
        return {"type": "result", **message_to_json(response, emit_unpopulated=emit_unpopulated)}
    event = events.event(response)
    descriptor = cast(Descriptor, event.DESCRIPTOR)
    body = message_to_json(event, emit_unpopulated=emit_unpopulated)
    frame: dict[str, Any] = {}
    type_field = descriptor.fields_by_name.get("type")
    if type_field is not None and type_field.enum_type is not None:
        frame["type"] = enum_short_name(type_field.enum_type, getattr(event, type_field.name))
        body.pop("type", None)
    lifted: dict[str, Any] = {}
    for field in descriptor.fields:
        sub = message_type(field)
        if sub is None or field.is_repeated or sub.full_name.startswith("google."):
            continue
        nested = body.pop(field.name, None)
        if isinstance(nested, dict):
            lifted.update(nested)
    frame.update(body)
    for key, value in lifted.items():
        if _empty(frame.get(key)):
            frame[key] = value
    if not _empty(frame.get("delta")) and _empty(frame.get("content")):
        frame["content"] = frame["delta"]
    frame[SEQUENCE_FIELD] = events.sequence(response)
    return frame


def flat_error(status: status_pb2.Status) -> str:
    return dumps({"type": "error", "error": status_to_json(status)})


def _empty(value: Any) -> bool:
    return value is None or value in ("", 0, "0", [], {})
