"""schemathesis against the live gateway's /openapi.json: every check, every phase, a fixed seed.

The real server (`python -m server`, gateway in-process, scripted models) runs as a subprocess on
free loopback ports; the schemathesis CLI runs against it with `--checks all`, the examples,
coverage, fuzzing and stateful phases, seed SEED and MAX_EXAMPLES examples per operation (the
settings issue 14's run used; about 3,000 requests over every operation of the document).
The run must end with 0 failures and must have tested every operation it selected.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.e2e.process import server_process

SEED = 20261123
MAX_EXAMPLES = 40

#: The server under test: scripted models (as tests/conftest.py's), deterministic, no real model needed.
#: None fails on purpose: schemathesis finds model ids (the model lists link to them), and a model that
#: fails is a 503 by design, which its server-error check would report. Failing upstreams are tested in
#: tests/gateway and tests/server.
#: Keys are on, and schemathesis calls as the admin: every operation answers for real (KeyService too)
#: rather than 401. Missing and bad keys are tested in tests/gateway/test_gateway_auth.py.
ADMIN_KEY = "schemathesis-admin-key-0123456789"

SERVER_CONFIG = f"""
[server]
shutdown_grace_seconds = 1

[security]
admin_key = "{ADMIN_KEY}"

[[models]]
id = "scripted-echo"
provider = "scripted"
capabilities = ["text", "conversation"]
script = ["Hello there, friend. This is a scripted reply."]

[[models]]
id = "scripted-vision"
provider = "scripted"
capabilities = ["text", "image"]
script = ["I see."]
"""

# What schemathesis can't learn from the document, each with its reason. The document says each of
# these too; they are rules a JSON Schema can't state.
SCHEMATHESIS_CONFIG = """
# A page_token is opaque (AIP-158): only a next_page_token the server issued, for the same filters, is
# valid; any other value is a 400, however well-formed, and the document says so (each List operation's
# documented 400). The only token a client can make up is the empty one: the first page.
[parameters]
"query.page_token" = ""

# WebSocket operations are documented as GET operations (OpenAPI has no WebSocket): 101 with an
# `Upgrade: websocket` handshake, and the documented 426 Upgrade Required to a plain HTTP client such
# as schemathesis, before the URL is read. The WebSocket surface itself is tested in
# tests/gateway/test_gateway_websocket.py and test_gateway_events.py.
[[operations]]
include-path-regex = "^/api/v1/ws/"
checks.positive_data_acceptance.expected-statuses = [
    "2xx", "3xx", "401", "403", "404", "409", "426", "429", "5xx",
]
checks.negative_data_rejection.expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "415", "422", "426", "428", "429", "5xx",
]

# Creating a conversation or a reasoning session has rules across fields: a mode's roles (human-ai
# needs a human seat and a model seat, ai-ai exactly two models and an initial prompt), which strategies
# take additional_models, what attachment every model can read. A key's expire_time must be in the
# future: a rule relative to now. A schema-valid body can break one of them; its 400 names the rule
# (tests/server test each one).
[[operations]]
include-path-regex = "^/api/v1/(conversations|collaborative-reasoning|keys)$"
include-method = "POST"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "429"]
"""


def schemathesis_cli() -> str:
    beside = Path(sys.executable).with_name("schemathesis")
    found = str(beside) if beside.is_file() else shutil.which("schemathesis")
    assert found, "the schemathesis CLI is not installed (pip install -e '.[dev]')"
    return found


def selected_operations(base_url: str) -> set[str]:
    with urllib.request.urlopen(f"{base_url}/openapi.json", timeout=10) as resp:
        doc = json.load(resp)
    return {f"{method.upper()} {path}" for path, item in doc["paths"].items() for method in item}


@pytest.mark.timeout(300)
def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    config = tmp_path / "schemathesis.toml"
    config.write_text(SCHEMATHESIS_CONFIG)
    junit = tmp_path / "junit.xml"
    with server_process(SERVER_CONFIG, tmp_path, AIBATTLE_HTTP_ADDR="127.0.0.1:0") as server:
        base_url = server.http_url
        expected = selected_operations(base_url)
        command = [
            schemathesis_cli(),
            "--config-file",
            str(config),
            "run",
            f"{base_url}/openapi.json",
            "--checks",
            "all",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--header",
            f"Authorization: Bearer {ADMIN_KEY}",
            "--seed",
            str(SEED),
            "--max-examples",
            str(MAX_EXAMPLES),
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--no-color",
            "--output-sanitize",
            "false",
            "--report",
            "junit",
            "--report-junit-path",
            str(junit),
        ]
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    output = f"{run.stdout}\n{run.stderr}"
    assert run.returncode == 0, output
    suite = ET.parse(junit).getroot()
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0"), output
    cases = [case for case in suite.iter("testcase") if case.find("skipped") is None]
    # schemathesis does not test the operation it read the document from.
    assert {case.get("name") for case in cases} == expected - {"GET /openapi.json"} | {"Stateful tests"}, (
        output
    )
