"""Configuration loading: defaults, TOML, environment overrides, and one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import GatewayOptions
from server.config import Config, ConfigError, load_config


def write(tmp_path: Path, toml: str) -> Path:
    path = tmp_path / "aibattle.toml"
    path.write_text(toml)
    return path


def errors_of(path: Path, **env: str) -> list[str]:
    """The lines of the ConfigError loading `path` raises (fails the test if it loads)."""
    with pytest.raises(ConfigError) as caught:
        load_config(path, env=env)
    return str(caught.value).splitlines()


def test_defaults_serve_the_local_model_on_loopback() -> None:
    config = load_config(env={})
    assert config.server.grpc_addr == "127.0.0.1:50051"
    assert config.server.http_addr == "127.0.0.1:8080"
    assert [(m.id, m.provider, m.capabilities) for m in config.models] == [
        ("smollm2-135m", "local", ("text", "conversation")),
        ("smollm2-embed", "local", ("embedding",)),
    ]


def test_toml_then_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[server]
grpc_addr = "127.0.0.1:6000"
shutdown_grace_seconds = 3

[[models]]
id = "echo"
provider = "scripted"
script = ["hi"]
pricing = { input = 1, output = 2.5 }
""",
    )
    config = load_config(
        env={
            "AIBATTLE_CONFIG": str(path),
            "AIBATTLE_GRPC_ADDR": "127.0.0.1:7000",
            "AIBATTLE_DB": "x.db",
            "AIBATTLE_LOG_LEVEL": "DEBUG",
        }
    )
    assert config.server.grpc_addr == "127.0.0.1:7000"
    assert config.server.database == "x.db"
    assert config.server.log_level == "debug"
    assert config.server.shutdown_grace_seconds == 3.0
    (model,) = config.models
    assert (model.id, model.script, model.pricing_input, model.pricing_output) == ("echo", ("hi",), 1.0, 2.5)


MODEL = "[[models]]\nid = 'm'\nprovider = 'scripted'\nscript = ['hi']\n"


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        # Unknown keys, at every level.
        ("[server]\ngrpc_port = 1", "server.grpc_port: Extra inputs are not permitted"),
        ("[gatway]\nstrict = true", "gatway: Extra inputs are not permitted"),
        ("[providers.remote]\nx = 1", "providers.remote: Extra inputs are not permitted"),
        (MODEL + "temprature = 1", "models[0].temprature: Extra inputs are not permitted"),
        (
            MODEL + "pricing = { input = 1, inptu = 2 }",
            "models[0].pricing.inptu: Extra inputs are not permitted",
        ),
        # Types: strict, TOML's "1" is not 1, and 1 is not true.
        ("server = 1", "server: Input should be a valid dictionary or instance of ServerConfig, got 1"),
        ("models = { id = 'x' }", "models: Input should be a valid tuple"),
        (
            "[server]\nshutdown_grace_seconds = 'soon'",
            "server.shutdown_grace_seconds: Input should be a valid number",
        ),
        ("[server]\nmax_message_bytes = '1024'", "server.max_message_bytes: Input should be a valid integer"),
        ("[gateway]\nstrict = 1", "gateway.strict: Input should be a valid boolean, got 1"),
        (
            MODEL + "context_length = 1.5",
            "models[0].context_length: Input should be a valid integer, got 1.5",
        ),
        (
            MODEL + "pricing = { input = 'x' }",
            "models[0].pricing.input: Input should be a valid number, got 'x'",
        ),
        # Element types of arrays.
        (
            "[[models]]\nid = 'm'\nprovider = 'scripted'\nscript = [1]",
            "models[0].script[0]: Input should be a valid string, got 1",
        ),
        (
            "[gateway]\ncors_origins = ['http://a', 2]",
            "gateway.cors_origins[1]: Input should be a valid string",
        ),
        (
            MODEL + "capabilities = ['text', 'telepathy']",
            "models[0].capabilities[1]: Input should be 'text', 'conversation'",
        ),
        # Ranges.
        ("[server]\ngrpc_addr = '127.0.0.1:70000'", "server.grpc_addr: '127.0.0.1:70000' is not HOST:PORT"),
        ("[server]\ngrpc_addr = '127.0.0.1:-1'", "server.grpc_addr: '127.0.0.1:-1' is not HOST:PORT"),
        ("[server]\nhttp_addr = 'localhost'", "server.http_addr: 'localhost' is not HOST:PORT"),
        (
            "[server]\nshutdown_grace_seconds = -1",
            "server.shutdown_grace_seconds: Input should be greater than or equal to 0",
        ),
        ("[server]\nmax_message_bytes = 0", "server.max_message_bytes: Input should be greater than 0"),
        (
            "[server]\nlog_level = 'verbose'",
            "server.log_level: Input should be 'debug', 'info', 'warning' or 'error'",
        ),
        ("[server]\ndatabase = ''", "server.database: String should have at least 1 character"),
        ("[gateway]\nmax_body_bytes = -1", "gateway.max_body_bytes: Input should be greater than 0"),
        (
            "[gateway]\nshutdown_timeout = -0.5",
            "gateway.shutdown_timeout: Input should be greater than or equal to 0",
        ),
        ("[gateway]\nws_heartbeat = -1", "gateway.ws_heartbeat: Input should be greater than or equal to 0"),
        ("[gateway]\nforward_headers = ['X Bad']", "gateway.forward_headers[0]: String should match pattern"),
        (
            "[gateway]\ndescriptor_set = '/nonexistent.binpb'",
            "gateway.descriptor_set: Path does not point to a file",
        ),
        (
            "[providers.local]\ncontext_length = 0",
            "providers.local.context_length: Input should be greater than 0",
        ),
        (
            "[providers.local]\nthreads = -1",
            "providers.local.threads: Input should be greater than or equal to 0",
        ),
        (MODEL + "context_length = 0", "models[0].context_length: Input should be greater than 0"),
        (
            MODEL + "chunk_delay_ms = -5",
            "models[0].chunk_delay_ms: Input should be greater than or equal to 0",
        ),
        (
            MODEL + "error_after_chunks = -2",
            "models[0].error_after_chunks: Input should be greater than or equal to -1",
        ),
        (
            MODEL + "pricing = { output = -1 }",
            "models[0].pricing.output: Input should be greater than or equal to 0",
        ),
        (MODEL + "pricing = { output = nan }", "models[0].pricing.output: Input should be a finite number"),
        (MODEL + "context_length = 100", "models[0]: default_max_tokens 256 exceeds context_length 100"),
        # Providers and what they need.
        (
            "[[models]]\nid = 'x'\nprovider = 'openai-ish'",
            "models[0].provider: Input should be 'local', 'scripted', 'openai', 'ollama', 'anthropic' or"
            " 'gemini'",
        ),
        ("[[models]]\nid = 'x'\nprovider = 'scripted'", "models[0]: a scripted model needs a script"),
        (
            "[[models]]\nid = 'x'\nprovider = 'local'\nscript = ['a']",
            "models[0].script: only for provider 'scripted'",
        ),
        ("[[models]]\nprovider = 'local'", "models[0].id: Field required"),
        ("[[models]]\nid = ''\nprovider = 'local'", "models[0].id: String should have at least 1 character"),
        # Across models.
        (
            "[[models]]\nid='a'\nprovider='local'\nfallbacks=['b']",
            "models[0].fallbacks[0]: unknown model 'b'",
        ),
        (
            "[[models]]\nid='a'\nprovider='local'\nfallbacks=['a']",
            "models[0].fallbacks[0]: a model cannot fall back to itself",
        ),
        (
            "[[models]]\nid='a'\nprovider='local'\n[[models]]\nid='a'\nprovider='local'",
            "models[1].id: duplicate id 'a'",
        ),
    ],
)
def test_bad_config_is_one_line_naming_file_and_key(tmp_path: Path, toml: str, line: str) -> None:
    path = write(tmp_path, toml)
    (error,) = errors_of(path)
    assert error.startswith(f"config file {path}: {line}")


def test_every_error_at_once_one_line_each(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[server]\nlog_level = 'loud'\nmax_message_bytes = -1\n"
        "[gateway]\nstrict = 'yes'\n"
        "[[models]]\nid = 'a'\nprovider = 'scripted'\nscript = [1]\nfallbacks = ['zz']\n",
    )
    errors = errors_of(path)
    assert [e.split(": ")[1] for e in errors] == [
        "server.log_level",
        "server.max_message_bytes",
        "gateway.strict",
        "models[0].script[0]",
        "models[0].fallbacks[0]",
    ]
    assert all(e.startswith(f"config file {path}: ") for e in errors)


def test_checks_across_keys_come_with_every_other_problem(tmp_path: Path) -> None:
    # Each check across keys (an unknown fallback, a duplicate id, what a provider needs, an exposed
    # address) used to wait until every key was valid; all come in one run now.
    path = write(
        tmp_path,
        "[server]\ngrpc_addr = '0.0.0.0:50051'\nlog_level = 'loud'\n"
        "[[models]]\nid = 'a'\nprovider = 'scripted'\ncontext_length = 0\nfallbacks = ['zz', 7]\n"
        "[[models]]\nid = 'a'\nprovider = 'local'\nscript = ['x']\ndefault_max_tokens = 4096\n",
    )
    errors = errors_of(path)
    assert all(e.startswith(f"config file {path}: ") for e in errors)
    assert sorted(e.removeprefix(f"config file {path}: ") for e in errors) == sorted(
        [
            "server.log_level: Input should be 'debug', 'info', 'warning' or 'error', got 'loud'",
            "models[0].context_length: Input should be greater than 0, got 0",
            "models[0].fallbacks[1]: Input should be a valid string, got 7",
            "models[0]: a scripted model needs a script (at least one reply)",
            "models[1].script: only for provider 'scripted', not 'local'",
            "models[1]: default_max_tokens 4096 exceeds context_length 2048",
            "models[0].fallbacks[0]: unknown model 'zz'",
            "models[1].id: duplicate id 'a'",
            "server.grpc_addr: '0.0.0.0:50051' is reachable from other machines and no admin key is "
            "configured: set AIBATTLE_ADMIN_KEY (or [security].admin_key) to require API keys, or listen "
            "on 127.0.0.1",
        ]
    )


OPENAI = "[[models]]\nid = 'gpt'\nprovider = 'openai'\n"


@pytest.mark.parametrize(
    ("toml", "line"),
    [
        (
            OPENAI + "api_key_env = 'AIBATTLE_TEST_KEY'\n",
            "models[0].api_key_env: environment variable AIBATTLE_TEST_KEY is not set (the API key of gpt)",
        ),
        (
            OPENAI + "upstream = { api_key_env = 'AIBATTLE_TEST_KEY' }\n",
            "models[0].upstream.api_key_env: environment variable AIBATTLE_TEST_KEY is not set",
        ),
        (
            # Set once for the provider: one line, at that key, naming every model it keys.
            OPENAI + "[[models]]\nid = 'gpt-mini'\nprovider = 'openai'\n"
            "[providers.openai]\napi_key_env = 'AIBATTLE_TEST_KEY'\n",
            "providers.openai.api_key_env: environment variable AIBATTLE_TEST_KEY is not set (the API key "
            "of gpt, gpt-mini)",
        ),
    ],
)
def test_an_unset_key_variable_is_a_configuration_error(tmp_path: Path, toml: str, line: str) -> None:
    path = write(tmp_path, toml)
    (error,) = errors_of(path)
    assert error.startswith(f"config file {path}: {line}")
    (model, *_) = load_config(path, env={"AIBATTLE_TEST_KEY": "sk-test"}).models
    assert model.upstream.api_key_env == "AIBATTLE_TEST_KEY"


def test_an_unset_key_variable_comes_with_the_other_problems(tmp_path: Path) -> None:
    path = write(tmp_path, OPENAI + "api_key_env = 'AIBATTLE_TEST_KEY'\ncontext_length = 0\n")
    assert [e.split(": ")[1] for e in errors_of(path)] == [
        "models[0].context_length",
        "models[0].api_key_env",
    ]


def test_the_model_own_key_variable_wins_over_its_providers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        OPENAI
        + "api_key_env = 'AIBATTLE_TEST_KEY'\n[providers.openai]\napi_key_env = 'AIBATTLE_OTHER_KEY'\n",
    )
    (model,) = load_config(path, env={"AIBATTLE_TEST_KEY": "sk-test"}).models
    assert model.upstream.api_key_env == "AIBATTLE_TEST_KEY"


def test_orphaned_runs_settings(tmp_path: Path) -> None:
    defaults = load_config(env={}).server
    assert (defaults.resume_orphans, defaults.orphan_sweep_seconds, defaults.lease_seconds) == (
        True,
        5.0,
        30.0,
    )
    path = write(
        tmp_path, "[server]\nresume_orphans = false\norphan_sweep_seconds = 2.5\nlease_seconds = 5\n"
    )
    server = load_config(path, env={}).server
    assert (server.resume_orphans, server.orphan_sweep_seconds, server.lease_seconds) == (False, 2.5, 5.0)
    path = write(tmp_path, "[server]\nresume_orphans = 'no'\norphan_sweep_seconds = 0\nlease_seconds = 0.5\n")
    assert [e.split(": ", 2)[1:] for e in errors_of(path)] == [
        ["server.resume_orphans", "Input should be a valid boolean, got 'no'"],
        ["server.orphan_sweep_seconds", "Input should be greater than 0, got 0"],
        ["server.lease_seconds", "Input should be greater than or equal to 1, got 0.5"],
    ]


def test_cross_model_errors_come_with_the_rest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[server]\nlog_level = 'loud'\n"
        "[[models]]\nid = 'a'\nprovider = 'local'\nfallbacks = ['zz', 'a']\n"
        "[[models]]\nid = 'a'\nprovider = 'local'\n",
    )
    assert [e.split(": ", 2)[1] for e in errors_of(path)] == [
        "server.log_level",
        "models[0].fallbacks[0]",
        "models[0].fallbacks[1]",
        "models[1].id",
    ]


@pytest.mark.parametrize(
    ("var", "value", "line"),
    [
        ("AIBATTLE_GRPC_ADDR", "nope", "AIBATTLE_GRPC_ADDR: 'nope' is not HOST:PORT"),
        ("AIBATTLE_HTTP_ADDR", "127.0.0.1:99999", "AIBATTLE_HTTP_ADDR: '127.0.0.1:99999' is not HOST:PORT"),
        (
            "AIBATTLE_LOG_LEVEL",
            "chatty",
            "AIBATTLE_LOG_LEVEL: Input should be 'debug', 'info', 'warning' or 'error'",
        ),
        ("AIBATTLE_DB", "", "AIBATTLE_DB: String should have at least 1 character"),
    ],
)
def test_bad_environment_override_names_the_variable(tmp_path: Path, var: str, value: str, line: str) -> None:
    (error,) = errors_of(write(tmp_path, MODEL), **{var: value})
    assert error.startswith(line)


def test_empty_http_addr_disables_the_gateway() -> None:
    assert load_config(env={"AIBATTLE_HTTP_ADDR": ""}).server.http_addr == ""


def test_programmatic_config_names_no_file() -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_dict({"server": {"grpc_addr": 50051}})
    assert str(caught.value) == "config: server.grpc_addr: Input should be a valid string, got 50051"


@pytest.mark.parametrize(
    ("toml", "message"),
    [("server = [", "config file {path}: Invalid value"), ("\xff", "config file {path}: not UTF-8")],
)
def test_unreadable_toml_names_the_file(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(toml.encode("latin-1"))
    (error,) = errors_of(path)
    assert error.startswith(message.format(path=path))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", env={})


def test_gateway_table_sets_every_gateway_knob(tmp_path: Path) -> None:
    descriptors = tmp_path / "api.binpb"
    descriptors.write_bytes(b"")
    path = write(
        tmp_path,
        f"""
[gateway]
cors_origins = ["http://localhost:3000"]
max_body_bytes = 1024
strict = false
emit_unpopulated = false
compat_endpoints = false
ws_heartbeat = 0
shutdown_timeout = 1
title = "Battle"
version = "v9"
descriptor_set = "{descriptors}"
forward_headers = ["X-Tenant"]
""",
    )
    gateway = load_config(path, env={}).gateway
    assert gateway.cors_origins == ("http://localhost:3000",)
    assert (gateway.max_body_bytes, gateway.strict, gateway.emit_unpopulated, gateway.compat_endpoints) == (
        1024,
        False,
        False,
        False,
    )
    assert (gateway.ws_heartbeat, gateway.shutdown_timeout, gateway.title, gateway.version) == (
        None,
        1.0,
        "Battle",
        "v9",
    )
    assert (gateway.descriptor_set, gateway.forward_headers) == (descriptors, ("X-Tenant",))


def test_gateway_table_becomes_the_gateway_options(tmp_path: Path) -> None:
    path = tmp_path / "aibattle.toml"
    path.write_text("[gateway]\ntitle = 'Mine'\nforward_headers = ['X-Tenant']\nws_heartbeat = 0\n")
    options = GatewayOptions.from_settings(load_config(path, env={}).gateway)
    assert (options.title, options.ws_heartbeat, options.header_matcher("X-Tenant")) == (
        "Mine",
        None,
        "x-tenant",
    )


def test_config_is_frozen() -> None:
    config = load_config(env={})
    with pytest.raises(ValueError, match="frozen"):
        config.server.grpc_addr = "0.0.0.0:1"  # type: ignore[misc]
