"""Parity: every RPC of the protos has its SDK method (sync and async), the SDK's routes are exactly the
protos' RPCs, and the public surface is snapshotted (public_api.txt; UPDATE_SNAPSHOT=1 rewrites it)."""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from google.protobuf import descriptor_pb2

import aibattle_client
import aibattle_sdk
from aibattle_sdk import AsyncClient, Client, _requests
from aibattle_sdk._rpcs import Rpc, all_rpcs

ROOT = Path(__file__).resolve().parents[2]
DESCRIPTORS = ROOT / "gen" / "aibattle" / "aibattle_descriptors.binpb"
SNAPSHOT = Path(__file__).with_name("public_api.txt")

NAMESPACES = {
    "ModelService": "models",
    "CompletionService": "completions",
    "EmbeddingService": "embeddings",
    "ConversationService": "conversations",
    "ReasoningService": "reasoning",
    "KeyService": "keys",
}
"""Service → namespace of Client/AsyncClient. A new service fails the test below until it has one."""

METHODS = {
    "ListModels": "list",
    "GetModel": "get",
    "CreateCompletion": "create",
    "StreamCompletion": "create",  # create(..., stream=True)
    "CountTokens": "count_tokens",
    "CreateEmbeddings": "create",
    "CreateConversation": "create",
    "GetConversation": "get",
    "ListConversations": "list",
    "DeleteConversation": "delete",
    "AddMessage": "add_message",
    "RunConversation": "run",
    "CancelConversation": "cancel",
    "StreamConversationEvents": "events",
    "Converse": "converse",
    "CreateReasoning": "create",
    "GetReasoning": "get",
    "ListReasonings": "list",
    "CancelReasoning": "cancel",
    "StreamReasoningEvents": "events",
    "ResumeReasoning": "resume",
    "CreateKey": "create",
    "ListKeys": "list",
    "RevokeKey": "revoke",
}
"""RPC → namespace method."""


def proto_rpcs() -> set[str]:
    """Every RPC route of package aibattle.v1, from the descriptor set codegen writes."""
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTORS.read_bytes()).file
    return {
        f"/{f.package}.{service.name}/{method.name}"
        for f in files
        if f.package == "aibattle.v1"
        for service in f.service
        for method in service.method
    }


def test_every_rpc_has_its_sdk_method() -> None:
    missing = []
    for route in sorted(proto_rpcs()):
        _, service, method = route.split("/")
        service = service.removeprefix("aibattle.v1.")
        namespace, name = NAMESPACES.get(service), METHODS.get(method)
        if namespace is None or name is None:
            missing.append(f"{route}: no namespace/method mapped")
            continue
        for client in (Client, AsyncClient):
            instance_ns = getattr(client(target="127.0.0.1:1"), namespace, None)
            if instance_ns is None or not callable(getattr(instance_ns, name, None)):
                missing.append(f"{route}: {client.__name__}.{namespace}.{name} is missing")
    assert missing == []


def test_the_sdk_routes_are_the_protos_rpcs() -> None:
    used = {value.route for value in vars(_requests).values() if isinstance(value, Rpc)}
    assert used == proto_rpcs()
    assert set(all_rpcs()) == proto_rpcs()  # the generated stubs agree with the descriptors


def test_options_are_keyword_only() -> None:
    for client in (Client(target="127.0.0.1:1"), AsyncClient(target="127.0.0.1:1")):
        for namespace in NAMESPACES.values():
            for name, method in inspect.getmembers(getattr(client, namespace), inspect.ismethod):
                if name.startswith("_"):
                    continue
                positional = [
                    p.name
                    for p in inspect.signature(method).parameters.values()
                    if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
                ]
                assert len(positional) <= 1, f"{namespace}.{name}: {positional}"  # at most the resource id


def public_api() -> str:
    lines = [f"aibattle_sdk: {name}" for name in sorted(aibattle_sdk.__all__)]
    lines += [f"aibattle_client: {name}" for name in sorted(aibattle_client.__all__)]
    for client in (Client, AsyncClient):
        lines.append(f"{client.__name__}{inspect.signature(client)}")
        instance = client(target="127.0.0.1:1")
        for namespace in NAMESPACES.values():
            for name, method in sorted(inspect.getmembers(getattr(instance, namespace), inspect.ismethod)):
                if not name.startswith("_"):
                    lines.append(f"{client.__name__}.{namespace}.{name}{inspect.signature(method)}")
    for name, method in sorted(inspect.getmembers(aibattle_client.AIBattleClient, inspect.isfunction)):
        if not name.startswith("_"):
            lines.append(f"AIBattleClient.{name}{inspect.signature(method)}")
    return "\n".join(lines) + "\n"


def test_public_exports_snapshot() -> None:
    current = public_api()
    if os.environ.get("UPDATE_SNAPSHOT"):
        SNAPSHOT.write_text(current)
    assert current == SNAPSHOT.read_text(), "public API changed; review, then rerun with UPDATE_SNAPSHOT=1"


def test_public_api_has_docstrings() -> None:
    for client in (Client(target="127.0.0.1:1"), AsyncClient(target="127.0.0.1:1")):
        for namespace in NAMESPACES.values():
            for name, method in inspect.getmembers(getattr(client, namespace), inspect.ismethod):
                if not name.startswith("_"):
                    assert inspect.getdoc(method), f"{namespace}.{name}"
    for name in aibattle_sdk.__all__:
        obj = getattr(aibattle_sdk, name)
        if inspect.isclass(obj):
            assert inspect.getdoc(obj), name
