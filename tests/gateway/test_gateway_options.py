"""GatewayOptions from configuration: the `[gateway]` table, forward_headers, `python -m gateway`'s flags."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gateway import GatewayOptions, create_app
from gateway.__main__ import build_parser, parse_args
from gateway.options import GatewaySettings
from tests.gateway.gateway_testlib import ROOT, ProtoApi, RunningLibrary, dummy_options


def test_options_are_the_settings_plus_the_api() -> None:
    options = GatewayOptions(max_body_bytes=10, cors_origins=("http://a",), strict=False, descriptor_set=None)
    assert isinstance(options, GatewaySettings)
    assert options.files and (options.max_body_bytes, options.strict) == (10, False)
    assert options == GatewayOptions(
        max_body_bytes=10, cors_origins=("http://a",), strict=False, descriptor_set=None
    )
    # The API to serve is programmatic: no TOML key, no flag.
    assert "files" not in GatewaySettings.model_fields
    assert "--files" not in build_parser().format_help()


def test_header_matcher_is_configuration() -> None:
    default = GatewayOptions().header_matcher
    assert [default(h) for h in ("Authorization", "X-API-Key", "Grpc-Metadata-Tenant", "X-Tenant")] == [
        "authorization",
        "x-api-key",
        "tenant",
        None,
    ]
    extra = GatewayOptions(forward_headers=("X-Tenant",)).header_matcher
    assert [extra(h) for h in ("x-tenant", "X-TENANT", "Authorization", "X-Other")] == [
        "x-tenant",
        "x-tenant",
        "authorization",
        None,
    ]
    with pytest.raises(ValueError, match="header_matcher"):
        GatewayOptions(header_matcher=lambda header: header)  # type: ignore[call-arg]


async def test_forward_headers_reach_the_upstream(
    aiohttp_client: Any, library: RunningLibrary, dummy_api: ProtoApi
) -> None:
    app = create_app(library.target, dummy_options(dummy_api, forward_headers=("X-Tenant",)))
    client = await aiohttp_client(app)
    resp = await client.post(
        "/v1/sleep", json={}, headers={"X-Tenant": "acme", "X-Other": "no", "X-API-Key": "k"}
    )
    seen = (await resp.json())["metadata"]
    assert (seen["x-tenant"], seen["x-api-key"]) == ("acme", "k")
    assert "x-other" not in seen


def test_every_setting_is_a_flag() -> None:
    """A knob added to GatewaySettings becomes a flag with no CLI edit."""
    usage = build_parser().format_help()
    for name, field in GatewaySettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is tuple or str(field.annotation).startswith("tuple"):
            flag = flag.removesuffix("s")
        assert flag in usage, name


def test_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text(
        "[server]\nhttp_addr = '127.0.0.1:9999'\n[[models]]\nid = 'x'\nprovider = 'local'\n"
        "[gateway]\nmax_body_bytes = 100\ncors_origins = ['http://file']\nstrict = false\ntitle = 'File'\n"
    )
    launch = parse_args(["--grpc-target", "127.0.0.1:50051", "--config", str(path)])
    assert (launch.host, launch.port, launch.grpc_target) == ("127.0.0.1", 9999, "127.0.0.1:50051")
    options = launch.options
    assert (options.max_body_bytes, options.cors_origins, options.strict, options.title) == (
        100,
        ("http://file",),
        False,
        "File",
    )
    flags = ["--max-body-bytes", "200", "--strict", "--http-addr", "[::1]:0", "--ws-heartbeat", "0"]
    flags += ["--cors-origin", "http://a", "--cors-origin", "http://b", "--descriptor-set", ""]
    launch = parse_args(["--grpc-target", "x:1", "--config", str(path), *flags])
    options = launch.options
    assert (launch.host, launch.port) == ("::1", 0)
    assert (options.max_body_bytes, options.strict, options.cors_origins) == (
        200,
        True,
        ("http://a", "http://b"),
    )
    assert (options.ws_heartbeat, options.descriptor_set, options.title) == (None, None, "File")


def test_defaults_without_a_file() -> None:
    launch = parse_args(["--grpc-target", "x:1"])
    assert (launch.host, launch.port) == ("127.0.0.1", 8080)
    assert launch.options == GatewayOptions()


@pytest.mark.parametrize(
    ("argv", "toml", "lines"),
    [
        (
            ["--max-body-bytes", "-3", "--ws-heartbeat", "soon", "--forward-header", "Grpc-Timeout"],
            None,
            [
                "--max-body-bytes: Input should be greater than 0, got '-3'",
                "--forward-header: 'Grpc-Timeout' is owned by the gRPC runtime",
                "--ws-heartbeat: Input should be a valid number",
            ],
        ),
        (["--http-addr", "localhost"], None, ["--http-addr: 'localhost' is not HOST:PORT"]),
        (
            ["--title", "ok"],
            "[server]\nhttp_addr = 'nope'\n[gateway]\nstrict = 'yes'\nmax_body_bytes = '5'\nextra = 1\n",
            [
                "config file {path}: gateway.max_body_bytes: Input should be a valid integer, got '5'",
                "config file {path}: gateway.strict: Input should be a valid boolean, got 'yes'",
                "config file {path}: gateway.extra: Extra inputs are not permitted",
                "config file {path}: server.http_addr: 'nope' is not HOST:PORT",
            ],
        ),
        ([], "gateway = [", ["config file {path}: Invalid value"]),
    ],
)
def test_bad_input_exits_2_naming_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], toml: str | None, lines: list[str]
) -> None:
    path = tmp_path / "gateway.toml"
    if toml is not None:
        path.write_text(toml)
        argv = [*argv, "--config", str(path)]
    with pytest.raises(SystemExit) as caught:
        parse_args(["--grpc-target", "x:1", *argv])
    assert caught.value.code == 2
    errors = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("python -m gateway: error: ")
    ]
    for line in lines:
        expected = f"python -m gateway: error: {line.format(path=path)}"
        assert any(error.startswith(expected) for error in errors), (expected, errors)
    assert len(errors) == len(lines)


def test_standalone_gateway_runs_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text("[server]\nhttp_addr = '127.0.0.1:0'\n[gateway]\ntitle = 'From the file'\n")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway",
            "--grpc-target",
            "127.0.0.1:1",
            "--config",
            str(path),
            "--version",
            "v7",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "gateway on http://127.0.0.1:" in line, line
        url = line.split("gateway on ")[1].split()[0]
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as reply:
            info = json.load(reply)["info"]
        assert (info["title"], info["version"]) == ("From the file", "v7")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def test_standalone_gateway_bad_flag_is_a_message_not_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "--grpc-target", "x:1", "--shutdown-timeout", "-1"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert (
        "python -m gateway: error: --shutdown-timeout: Input should be greater than or equal to 0"
        in result.stderr
    )
    assert "Traceback" not in result.stderr
