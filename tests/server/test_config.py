"""Configuration loading: defaults, TOML, environment overrides, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.config import ConfigError, load_config


def test_defaults_serve_the_local_model_on_loopback() -> None:
    config = load_config(env={})
    assert config.server.grpc_addr == "127.0.0.1:50051"
    assert config.server.http_addr == "127.0.0.1:8080"
    assert [(m.id, m.provider) for m in config.models] == [("smollm2-135m", "local")]


def test_toml_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text(
        """
[server]
grpc_addr = "127.0.0.1:6000"
shutdown_grace_seconds = 3

[[models]]
id = "echo"
provider = "scripted"
script = ["hi"]
pricing = { input = 1, output = 2.5 }
"""
    )
    config = load_config(
        env={"AIBATTLE_CONFIG": str(path), "AIBATTLE_GRPC_ADDR": "127.0.0.1:7000", "AIBATTLE_DB": "x.db"}
    )
    assert config.server.grpc_addr == "127.0.0.1:7000"
    assert config.server.database == "x.db"
    assert config.server.shutdown_grace_seconds == 3.0
    (model,) = config.models
    assert (model.id, model.script, model.pricing_input, model.pricing_output) == ("echo", ("hi",), 1.0, 2.5)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[server]\ngrpc_port = 1", "unknown key(s): server.grpc_port"),
        ("[server]\nshutdown_grace_seconds = 'soon'", "server.shutdown_grace_seconds: expected float"),
        ("[[models]]\nid = 'x'\nprovider = 'openai-ish'", "provider: 'openai-ish' is not one of"),
        ("[[models]]\nid = 'x'\nprovider = 'scripted'", "script: a scripted model needs at least one reply"),
        ("[[models]]\nprovider = 'local'", "models[0].id: required string"),
        ("[[models]]\nid='a'\nprovider='local'\nfallbacks=['b']", "fallbacks: unknown model 'b'"),
        ("server = [", "config file"),
    ],
)
def test_bad_config_is_named(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=None) as caught:
        load_config(path, env={})
    assert message in str(caught.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", env={})


def test_gateway_table(tmp_path: Path) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text(
        '[gateway]\ncors_origins = ["http://localhost:3000"]\nmax_body_bytes = 1024\nstrict = false\n'
    )
    gateway = load_config(path, env={}).gateway
    assert gateway.cors_origins == ("http://localhost:3000",)
    assert (gateway.max_body_bytes, gateway.strict, gateway.compat_endpoints) == (1024, False, True)
