"""Every RPC of the protos as data (route, message types, shape), read from the generated stubs, and
whether a call may be repeated (RETRY_SAFE, the one table written here).

The hand-written clients never spell a route or pair a request with its response themselves: they
take an `Rpc` from here, which betterproto2's generated stub produced. A stub method is called once
with a recording channel that notes what it would have sent.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import betterproto2

from aibattle_sdk._gen.aibattle import v1

Shape = Literal["unary_unary", "unary_stream", "stream_unary", "stream_stream"]

RETRY_SAFE: dict[str, bool] = {
    "ModelService/ListModels": True,
    "ModelService/GetModel": True,
    "CompletionService/CreateCompletion": True,  # nothing is stored
    "CompletionService/StreamCompletion": True,  # until its first chunk (see Stream)
    "CompletionService/CountTokens": True,  # nothing is stored
    "EmbeddingService/CreateEmbeddings": True,  # nothing is stored
    "ConversationService/CreateConversation": False,
    "ConversationService/GetConversation": True,
    "ConversationService/ListConversations": True,
    "ConversationService/DeleteConversation": False,
    "ConversationService/AddMessage": False,
    "ConversationService/RunConversation": False,
    "ConversationService/CancelConversation": True,
    "ConversationService/StreamConversationEvents": True,  # resumed from the last event yielded
    "ConversationService/Converse": False,  # its actions are not idempotent
    "ReasoningService/CreateReasoning": False,
    "ReasoningService/GetReasoning": True,
    "ReasoningService/ListReasonings": True,
    "ReasoningService/CancelReasoning": True,
    "ReasoningService/StreamReasoningEvents": True,  # resumed from the last event yielded
    "ReasoningService/ResumeReasoning": False,
    "KeyService/CreateKey": False,
    "KeyService/ListKeys": True,
    "KeyService/RevokeKey": True,
}
"""Whether each RPC (`Service/Method` of aibattle.v1) may be repeated after UNAVAILABLE (see
`RetryPolicy`): the transports read `Rpc.safe`, call sites never say. An RPC missing here is never
retried; tests/sdk/test_sdk_rpc_table.py wants every RPC listed."""


@dataclass(frozen=True)
class Rpc:
    """One RPC: `/package.Service/Method`, its request and response classes, and its streaming shape."""

    route: str
    request_type: type[betterproto2.Message]
    response_type: type[betterproto2.Message]
    shape: Shape
    safe: bool = False
    """Whether a call may be repeated after UNAVAILABLE (RETRY_SAFE)."""

    @property
    def service(self) -> str:
        """Full service name, e.g. "aibattle.v1.ModelService"."""
        return self.route.split("/")[1]

    @property
    def method(self) -> str:
        """Method name, e.g. "ListModels"."""
        return self.route.split("/")[2]


class _Recorder:
    """Plays `grpc.Channel` for one stub call: notes the route and shape, sends nothing."""

    def __init__(self) -> None:
        self.seen: tuple[Shape, str] | None = None

    def __getattr__(self, shape: str) -> Callable[..., Callable[..., Iterator[Any]]]:
        def multicallable(route: str, *_: Any, **__: Any) -> Callable[..., Iterator[Any]]:
            self.seen = (typing.cast(Shape, shape), route)
            return lambda *_a, **_k: iter(())

        return multicallable


def describe(stub_class: type, name: str) -> Rpc:
    """The Rpc behind a generated stub method, e.g. describe(v1.ModelServiceStub, "list_models")."""
    recorder = _Recorder()
    method = getattr(stub_class(recorder), name)
    hints = typing.get_type_hints(getattr(stub_class, name), vars(v1))
    request = next(h for k, h in hints.items() if k != "return")
    if typing.get_origin(request) is not None:  # Iterable[Req] for client streaming
        request = typing.get_args(request)[0]
    response = hints["return"]
    if typing.get_origin(response) is not None:  # Iterator[Resp] for server streaming
        response = typing.get_args(response)[0]
    result = method(iter(()))
    if isinstance(result, Iterator):  # server-streaming stub methods are generators: run them
        list(result)
    assert recorder.seen is not None, f"{stub_class.__name__}.{name} made no call"
    shape, route = recorder.seen
    safe = RETRY_SAFE.get(route.removeprefix("/aibattle.v1."), False)
    return Rpc(route=route, request_type=request, response_type=response, shape=shape, safe=safe)


def all_rpcs() -> dict[str, Rpc]:
    """Every RPC the generated stubs know, by route."""
    found: dict[str, Rpc] = {}
    for name in dir(v1):
        if name.endswith("ServiceStub"):
            stub = getattr(v1, name)
            for attr in vars(stub):
                if not attr.startswith("_"):
                    rpc = describe(stub, attr)
                    found[rpc.route] = rpc
    return found


_ALL = all_rpcs()


def rpc(service: str, method: str) -> Rpc:
    """The Rpc of `aibattle.v1.<service>/<method>`; fails at import time if the protos lost it."""
    return _ALL[f"/aibattle.v1.{service}/{method}"]
