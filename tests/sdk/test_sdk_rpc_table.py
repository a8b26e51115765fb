"""Whether an RPC may be retried is written once, in the RPC table (`_rpcs.RETRY_SAFE`), for every RPC;
the transports read `Rpc.safe` and no call site passes `safe=`."""

from __future__ import annotations

import ast
from pathlib import Path

from aibattle_sdk import _requests
from aibattle_sdk._rpcs import RETRY_SAFE, Rpc, all_rpcs

SDK = Path(__file__).resolve().parents[2] / "sdk" / "src" / "aibattle_sdk"


def test_every_rpc_says_whether_it_may_be_retried() -> None:
    assert set(RETRY_SAFE) == {route.removeprefix("/aibattle.v1.") for route in all_rpcs()}


def test_the_sdk_rpcs_carry_the_table() -> None:
    for value in vars(_requests).values():
        if isinstance(value, Rpc):
            assert value.safe is RETRY_SAFE[f"{value.service.removeprefix('aibattle.v1.')}/{value.method}"]
    assert _requests.GET_CONVERSATION.safe and _requests.STREAM_REASONING_EVENTS.safe
    assert not _requests.CREATE_CONVERSATION.safe and not _requests.CONVERSE.safe


def test_no_call_site_passes_safe() -> None:
    for path in SDK.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
                name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
                if name in {"unary", "stream", "Stream", "AsyncStream"}:
                    assert "safe" not in {k.arg for k in node.keywords}, f"{path.name}:{node.lineno}"
