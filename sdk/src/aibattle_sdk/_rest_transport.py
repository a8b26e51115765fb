"""The sync client's calls over the HTTP gateway (REST, NDJSON streams), for a target given as a URL.

Seed 000 §6.1's client takes `base_url="https://…"`: the URL of the REST API. The gateway derives every
route from the protos' `google.api.http` annotations and publishes them in `/openapi.json`, whose
operation ids are `Service_Method`; so the routes are read from there once, on the first call, never
spelled here. Request and response messages travel in protobuf's JSON mapping with proto field names,
which is what the gateway speaks; errors are its JSON `google.rpc.Status`, made into the same typed
errors as over gRPC (`errors.error_from_json`). Deadlines go out as `Grpc-Timeout`, the key as
`Authorization: Bearer`. Retries and event-stream resumption are the gRPC transport's own
(`retrying`, `Stream`). Converse is bidirectional and has only a WebSocket route: not offered here.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import typing
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import betterproto2
import grpc

from aibattle_sdk._config import NO_RETRY, ClientConfig, remaining
from aibattle_sdk._gen.aibattle import v1
from aibattle_sdk._rpcs import Rpc
from aibattle_sdk._sync_transport import ConverseSession, Streaming, retrying
from aibattle_sdk.errors import (
    DeadlineExceededError,
    UnavailableError,
    UnimplementedError,
    error_from_json,
)

_OPENAPI = "/openapi.json"
_MAX_ERROR_BODY = 64 * 1024


@dataclass(frozen=True)
class _Route:
    method: str
    """HTTP method, e.g. "POST"."""
    path: str
    """OpenAPI path template, e.g. "/api/v1/conversations/{conversation_id}/messages"."""
    body: bool
    """The request (less its path fields) is the JSON body; otherwise its fields are query parameters."""
    result: str
    """Component name of the answer's schema, e.g. "aibattle.v1.Conversation" (the route's
    `response_body`) or "aibattle.v1.CreateConversationResponse" (the whole response)."""


class RestTransport(Streaming):  # server streams read as NDJSON
    """Runs Rpcs against an AI Battle HTTP gateway, with the client's policy (see the module doc)."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        url = urllib.parse.urlsplit(config.target)
        if not url.hostname:
            raise ValueError("the target URL has no host (expected e.g. http://127.0.0.1:8080)")
        self._https = url.scheme.lower() == "https"
        self._host = url.hostname
        self._port = url.port
        self._prefix = url.path.rstrip("/")
        self._routes: dict[str, _Route] | None = None
        self._routes_lock = threading.Lock()

    # --- the transport interface

    def unary(self, rpc: Rpc, request: Any, *, timeout: float | None) -> Any:
        """One call; retried on UNAVAILABLE when `rpc.safe`, as over gRPC."""
        deadline = self.config.deadline(timeout)

        def once() -> Any:
            route = self._route(rpc, deadline)
            connection = self._connect(remaining(deadline))
            try:
                response = self._send(connection, route, rpc, request, remaining(deadline), stream=False)
                return self._result(rpc, route, _read_json(response))
            finally:
                connection.close()

        return retrying(self.config.retry if rpc.safe else NO_RETRY, deadline, once)

    def open_stream(self, rpc: Rpc, request: Any, timeout: float | None) -> _Call:
        return _Call(self, rpc, request, timeout)

    def converse(self, rpc: Rpc, first: Any, *, timeout: float | None) -> ConverseSession:
        raise UnimplementedError(
            grpc.StatusCode.UNIMPLEMENTED,
            "Converse is bidirectional: it has no REST route (the gateway offers it as a WebSocket). "
            "Over a URL, follow with conversations.events and speak with conversations.add_message; "
            "or give the gRPC target (host:port).",
        )

    # --- HTTP

    def _connect(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _headers(self, timeout: float | None) -> dict[str, str]:
        headers = {"Accept": "application/json, application/x-ndjson"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        if timeout is not None:
            # the server's deadline, as over gRPC (milliseconds, at least 1)
            headers["Grpc-Timeout"] = f"{max(1, int(timeout * 1000))}m"
        return headers

    def _exchange(
        self,
        connection: http.client.HTTPConnection,
        method: str,
        path: str,
        body: bytes | None,
        timeout: float | None,
    ) -> http.client.HTTPResponse:
        """Send one request and read the answer's head; any failure as the SDK's typed error."""
        headers = self._headers(timeout)
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, self._prefix + path, body=body, headers=headers)
            return connection.getresponse()
        except TimeoutError:
            raise DeadlineExceededError(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded waiting for the gateway"
            ) from None
        except (OSError, http.client.HTTPException) as exc:
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE, f"cannot reach the gateway at {self._origin()}: {_why(exc)}"
            ) from None

    def _send(
        self,
        connection: http.client.HTTPConnection,
        route: _Route,
        rpc: Rpc,
        request: Any,
        timeout: float | None,
        *,
        stream: bool,
    ) -> http.client.HTTPResponse:
        fields = request.to_dict(casing=betterproto2.Casing.SNAKE)
        path = _fill_path(route.path, fields)
        body: bytes | None = None
        if route.body:
            body = json.dumps(fields).encode()
        elif fields:
            path += "?" + urllib.parse.urlencode(_query(fields), doseq=True)
        response = self._exchange(connection, route.method, path, body, timeout)
        if response.status == 204 and stream:
            return response  # an event stream with nothing to send
        if response.status != 200:
            raise error_from_json(_json_or_none(response.read(_MAX_ERROR_BODY)), response.status)
        return response

    def _origin(self) -> str:
        return f"{'https' if self._https else 'http'}://{self._host}" + (
            f":{self._port}" if self._port else ""
        )

    # --- routes

    def _route(self, rpc: Rpc, deadline: float | None) -> _Route:
        with self._routes_lock:
            if self._routes is None:
                self._routes = self._discover(remaining(deadline))
        route = self._routes.get(f"{rpc.service.rsplit('.', 1)[-1]}_{rpc.method}")
        if route is None:
            raise UnimplementedError(
                grpc.StatusCode.UNIMPLEMENTED,
                f"the gateway at {self._origin()} has no HTTP route for {rpc.method}",
            )
        return route

    def _discover(self, timeout: float | None) -> dict[str, _Route]:
        connection = self._connect(timeout)
        try:
            response = self._exchange(connection, "GET", _OPENAPI, None, timeout)
            if response.status != 200:
                raise error_from_json(_json_or_none(response.read(_MAX_ERROR_BODY)), response.status)
            document = _read_json(response)
        finally:
            connection.close()
        if not isinstance(document, dict) or not isinstance(document.get("paths"), dict):
            raise UnavailableError(
                grpc.StatusCode.UNAVAILABLE,
                f"{self._origin()}{self._prefix}{_OPENAPI} is not an OpenAPI document",
            )
        return _routes(document["paths"])

    def _result(self, rpc: Rpc, route: _Route, body: Any) -> Any:
        """The response message from the answer's JSON; a `response_body` route answers only one field
        of it, which is put back in its place."""
        if route.result.rsplit(".", 1)[-1] != rpc.response_type.__name__:
            body = {_field_of_type(rpc.response_type, route.result.rsplit(".", 1)[-1]): body}
        return rpc.response_type.from_dict(body, ignore_unknown_fields=True)


class _Call:
    """One NDJSON server stream: iterate for the responses, `cancel()` from any thread.

    The request goes out on the first iteration, not at construction: `Stream` opens calls under its
    lock, which `cancel()` needs too.
    """

    def __init__(self, transport: RestTransport, rpc: Rpc, request: Any, timeout: float | None) -> None:
        self._transport = transport
        self._rpc = rpc
        self._request = request
        self._timeout = timeout
        self._lock = threading.Lock()
        self._connection: http.client.HTTPConnection | None = None
        self._cancelled = False

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            connection = self._connection
        if connection is not None and connection.sock is not None:
            try:  # wakes a read blocked on this socket in another thread; close() alone does not
                connection.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __iter__(self) -> Iterator[Any]:
        deadline = self._transport.config.deadline(self._timeout, default=False)
        route = self._transport._route(self._rpc, deadline)
        # no socket timeout on an open stream (events may be minutes apart); its deadline is the server's
        connection = self._transport._connect(remaining(deadline))
        with self._lock:
            if self._cancelled:
                return
            self._connection = connection
        try:
            response = self._transport._send(
                connection, route, self._rpc, self._request, remaining(deadline), stream=True
            )
            if response.status == 204:
                return
            if connection.sock is not None:
                connection.sock.settimeout(None)
            for line in self._lines(response):
                if not line.strip():
                    continue
                try:
                    frame = json.loads(line)
                except ValueError:
                    raise UnavailableError(
                        grpc.StatusCode.UNAVAILABLE, "the stream sent a line that is not JSON"
                    ) from None
                if "error" in frame:
                    raise error_from_json(frame["error"], 200)
                yield self._transport._result(self._rpc, route, frame.get("result", {}))
        finally:
            connection.close()

    def _lines(self, response: http.client.HTTPResponse) -> Iterator[bytes]:
        """The body's lines as they arrive. read1, not readline: http.client's readline takes a cut
        connection for the end of the body, and a stream cut short must resume, not end quietly."""
        pending = b""
        while True:
            try:
                data = response.read1(65536)
            except (OSError, http.client.HTTPException) as exc:
                if self._cancelled:
                    return
                raise UnavailableError(
                    grpc.StatusCode.UNAVAILABLE, f"the stream broke: {_why(exc)}"
                ) from None
            if not data:  # the terminating chunk: the server ended the stream
                if pending.strip() and not self._cancelled:
                    yield pending
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            yield from lines


# --- helpers


def _routes(paths: dict[str, Any]) -> dict[str, _Route]:
    """REST routes by operation id, from an OpenAPI document's `paths` (WebSocket and additional
    bindings left out: `Service_Method` is the primary binding)."""
    routes: dict[str, _Route] = {}
    for path, operations in paths.items():
        if not isinstance(operations, dict):
            continue
        for method, operation in operations.items():
            if not isinstance(operation, dict) or "x-websocket" in operation:
                continue
            operation_id = operation.get("operationId", "")
            ok = operation.get("responses", {}).get("200", {}).get("content", {})
            schema = (ok.get("application/json") or ok.get("application/x-ndjson") or {}).get("schema", {})
            if "application/x-ndjson" in ok:
                schema = schema.get("properties", {}).get("result", {})
            result = _ref(schema)
            if operation_id.count("_") != 1 or not result:
                continue
            routes[operation_id] = _Route(method.upper(), path, "requestBody" in operation, result)
    return routes


def _ref(schema: Any) -> str:
    """The component a schema refers to: `$ref` itself, or inside `allOf` (a ref with a description)."""
    if not isinstance(schema, dict):
        return ""
    if isinstance(schema.get("$ref"), str):
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    for part in schema.get("allOf") or ():
        if name := _ref(part):
            return name
    return ""


def _field_of_type(message: type[betterproto2.Message], type_name: str) -> str:
    """The field of `message` holding a `type_name` message (what a route's `response_body` names)."""
    for name, hint in typing.get_type_hints(message, vars(v1)).items():
        if any(getattr(arg, "__name__", "") == type_name for arg in (hint, *typing.get_args(hint))):
            return name
    raise UnimplementedError(
        grpc.StatusCode.UNIMPLEMENTED,
        f"the gateway answers a {type_name} where {message.__name__} was expected",
    )


def _fill_path(template: str, fields: dict[str, Any]) -> str:
    """The template with each `{field}` (or `{a.b}`) replaced by the request's value, which then leaves
    the body or query."""
    path = template
    while "{" in path:
        start = path.index("{")
        end = path.index("}", start)
        name = path[start + 1 : end]
        value = _pop_path(fields, name.split("."))
        path = path[:start] + urllib.parse.quote(str(value), safe="") + path[end + 1 :]
    return path


def _pop_path(fields: dict[str, Any], names: list[str]) -> Any:
    holder = fields
    for name in names[:-1]:
        holder = holder.get(name, {})
    return holder.pop(names[-1], "")


def _query(fields: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Query parameters as the gateway reads them: nested fields dotted, repeated ones repeated."""
    pairs: list[tuple[str, str]] = []
    for name, value in fields.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            pairs += _query(value, f"{key}.")
        else:
            for item in value if isinstance(value, list) else [value]:
                pairs.append((key, json.dumps(item) if isinstance(item, bool) else str(item)))
    return pairs


def _read_json(response: http.client.HTTPResponse) -> Any:
    try:
        return json.loads(response.read())
    except TimeoutError:
        raise DeadlineExceededError(
            grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded reading the gateway's answer"
        ) from None
    except (OSError, http.client.HTTPException) as exc:
        raise UnavailableError(grpc.StatusCode.UNAVAILABLE, f"the answer broke: {_why(exc)}") from None
    except ValueError:
        raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "the gateway's answer is not JSON") from None


def _json_or_none(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return None


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or type(exc).__name__
