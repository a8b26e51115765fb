"""A second gRPC runtime (Node @grpc/grpc-js, protos loaded at run time) against the real server."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import google.api.annotations_pb2
import pytest
from google.rpc import error_details_pb2, status_pb2

from tests.e2e.process import ROOT, SETUPS, served
from tests.postgres_testlib import postgres_server

__all__ = ["postgres_server"]  # a fixture: `served` runs 2 workers on it

CONFIG = '[[models]]\nid = "echo"\nprovider = "scripted"\nscript = ["Hello from Python."]\n'
CLIENT = Path(__file__).with_name("grpc_js_client.mjs")


@pytest.mark.parametrize("setup", SETUPS)
def test_grpc_js_client(setup: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    googleapis_root = Path(google.api.annotations_pb2.__file__).parents[2]
    with served(setup, request, CONFIG, tmp_path) as (_, target, _):
        result = subprocess.run(
            ["node", str(CLIENT), target, str(ROOT / "proto"), str(googleapis_root)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen["models"] == ["echo"]
    assert "".join(c["content"] for c in seen["chunks"] if "content" in c) == "Hello from Python."
    final = seen["chunks"][-1]
    assert final["is_final"] is True
    assert final["finish_reason"] == "FINISH_REASON_STOP"
    assert final["usage"]["completion_tokens"] == 3
    assert seen["not_found"]["code"] == 5  # NOT_FOUND
    assert "no-such-model" in seen["not_found"]["details"]
    status = status_pb2.Status.FromString(base64.b64decode(seen["not_found"]["status_details_b64"]))
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info) and info.reason == "MODEL_NOT_FOUND"
