"""Configuration: a TOML file (AIBATTLE_CONFIG) overlaid by environment variables, checked by one schema.

Precedence, lowest first: built-in defaults, the TOML file, the environment (AIBATTLE_GRPC_ADDR,
AIBATTLE_HTTP_ADDR, AIBATTLE_DB, AIBATTLE_LOG_LEVEL, AIBATTLE_REDIS_URL, AIBATTLE_WORKERS,
AIBATTLE_ADMIN_KEY), the command line (`--workers`). With no `[[models]]` in the file, the embedded
local model is configured, so `make run` serves real text on a fresh machine. Every problem is reported
at once, one line each, naming the file (or variable, or flag) and the key path.

The top of the server: this composes the server's own tables (server/settings.py, where each key is
documented) with the in-process gateway's (`[gateway]`, gateway/options.py), so neither imports the
other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Self

from pydantic import (
    Field,
    SecretStr,
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
    read_toml,
    validate,
    validate_with,
    value_of,
)
from gateway.options import GatewaySettings
from server.settings import (
    HTTP_PROVIDERS,
    CollaborationConfig,
    DeploymentConfig,
    LocalProviderConfig,
    ModelConfig,
    ProvidersConfig,
    SecurityConfig,
    ServerConfig,
    UpstreamSettings,
    default_models,
    is_env_name,
    key_variable,
    url_host_port,
)

__all__ = [
    "Config",
    "ConfigError",
    "GatewaySettings",
    "LocalProviderConfig",
    "ModelConfig",
    "SecurityConfig",
    "load_config",
]


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
    models: Annotated[tuple[ModelConfig, ...], LAX] = Field(default_factory=default_models)
    """The served models; none given: the embedded smollm2-135m and smollm2-embed."""
    collaborations: Annotated[tuple[CollaborationConfig, ...], LAX] = ()
    """Collaboration models: strategies over the models above, callable as models."""

    @model_validator(mode="after")
    def _upstreams(self) -> Self:
        """Each HTTP model (and each of its deployments) gets its provider's [providers.<name>] settings,
        its own keys winning."""
        resolved = []
        for entry in self.models:
            model = self._resolved(entry) if entry.provider in HTTP_PROVIDERS else entry
            if entry.deployments:
                model = model.model_copy(update={"deployments": self._deployments(entry)})
            resolved.append(model)
        object.__setattr__(self, "models", tuple(resolved))
        return self

    def _resolved(self, model: ModelConfig) -> ModelConfig:
        defaults: UpstreamSettings = getattr(self.providers, model.provider)
        own = {k: getattr(model.upstream, k) for k in model.upstream.model_fields_set}
        # The table's own keys only ([providers.ollama] has `discover` besides).
        table = UpstreamSettings.model_construct(
            **{k: getattr(defaults, k) for k in UpstreamSettings.model_fields}
        )
        merged = table.model_copy(update=own)
        upstream = merged.model_copy(
            update={
                "base_url": model.base_url or merged.base_url or HTTP_PROVIDERS[model.provider],
                "api_key_env": key_variable(model, defaults)[1],
            }
        )
        return model.model_copy(update={"upstream": upstream})

    def _deployments(self, entry: ModelConfig) -> tuple[DeploymentConfig, ...]:
        """The entry's deployments with every key resolved: what a deployment leaves out is the entry's
        (as given; base_url, api_key_env and upstream only if it has the entry's provider), then its
        provider's; `api_key_env = ""` given is keyless; unnamed ones named (see DeploymentConfig.name)."""
        resolved = []
        for d in entry.deployments:
            provider = d.provider or entry.provider
            # The entry's upstream only for the entry's provider: another provider's comes from its table.
            own = provider == entry.provider
            upstream = (entry.upstream if own else UpstreamSettings()).model_copy(
                update={k: getattr(d.upstream, k) for k in d.upstream.model_fields_set}
            )
            keyed = "api_key_env" in d.model_fields_set
            if keyed:
                upstream = upstream.model_copy(update={"api_key_env": d.api_key_env})  # "": keyless
            model = self._resolved(
                entry.model_copy(
                    update={
                        "provider": provider,
                        "base_url": d.base_url or (entry.base_url if own else ""),
                        "api_key_env": d.api_key_env if keyed else entry.api_key_env if own else "",
                        "upstream": upstream,
                        "deployments": (),
                    }
                )
            )
            resolved.append(
                d.model_copy(
                    update={
                        "provider": model.provider,
                        "base_url": model.upstream.base_url,
                        "upstream_model": d.upstream_model or entry.upstream_model,
                        "api_key_env": model.upstream.api_key_env,
                        "upstream": model.upstream,
                    }
                )
            )
        names = [d.name or f"{d.provider}@{url_host_port(d.base_url)}" for d in resolved]
        return tuple(
            d.model_copy(
                update={"name": d.name or (name if names.count(name) == 1 else f"{entry.id}-{i + 1}")}
            )
            for i, (d, name) in enumerate(zip(resolved, names, strict=True))
        )

    @model_validator(mode="wrap")
    @classmethod
    def _across_tables(cls, data: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Self:
        """Checks across tables, on the tables as given, so that they are reported with every other
        problem (an after-validator would run only once all the rest is valid)."""
        env = (info.context or {}).get("env")
        problems = _exposed(data) + _collaboration_names(data)
        problems += [] if env is None else _unset_key_variables(data, env)
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
        problems: list[Problem] = _alias_clashes(entries, ids)
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


def _alias_clashes(entries: Sequence[object], ids: Sequence[object]) -> list[Problem]:
    """Every name (id or alias) names one model: an alias clashing with an id or another alias is
    reported where the alias is, naming the other model."""
    owners: dict[str, str] = {i: f"the id of model {i!r}" for i in ids if isinstance(i, str)}
    problems: list[Problem] = []
    for i, (entry, model_id) in enumerate(zip(entries, ids, strict=True)):
        aliases = value_of(entry, "aliases", ())
        for j, alias in enumerate(aliases if isinstance(aliases, list | tuple) else ()):
            if not isinstance(alias, str):
                continue
            if alias in owners:
                problems.append(
                    ((i, "aliases", j), "duplicate", f"alias {alias!r} is already {owners[alias]}")
                )
            else:
                owners[alias] = f"an alias of model {model_id!r}"
    return problems


def _collaboration_names(data: object) -> list[Problem]:
    """A collaboration's id names nothing else (a model's id or alias, another collaboration), and its
    members are models that exist (by id or alias)."""
    given_models = value_of(data, "models")
    entries = given_models if isinstance(given_models, list | tuple) else default_models()
    owners: dict[str, str] = {}
    for entry in entries:
        model_id = value_of(entry, "id")
        if isinstance(model_id, str):
            owners[model_id] = f"the id of model {model_id!r}"
            aliases = value_of(entry, "aliases", ())
            for alias in aliases if isinstance(aliases, list | tuple) else ():
                if isinstance(alias, str):
                    owners.setdefault(alias, f"an alias of model {model_id!r}")
    models = set(owners)
    collaborations = value_of(data, "collaborations", ())
    problems: list[Problem] = []
    for i, entry in enumerate(collaborations if isinstance(collaborations, list | tuple) else ()):
        name = value_of(entry, "id")
        if isinstance(name, str) and name:
            if name in owners:
                problems.append(
                    (("collaborations", i, "id"), "duplicate", f"{name!r} is already {owners[name]}")
                )
            else:
                owners[name] = f"the id of collaboration {name!r}"
        members: list[tuple[Loc, object]] = [
            (("collaborations", i, key), value_of(entry, key)) for key in ("primary", "secondary")
        ]
        extra = value_of(entry, "additional_models", ())
        members += [
            (("collaborations", i, "additional_models", j), m)
            for j, m in enumerate(extra if isinstance(extra, list | tuple) else ())
        ]
        for loc, member in members:
            if isinstance(member, str) and member and member not in models:
                problems.append((loc, "model", f"unknown model {member!r} (a [[models]] id or alias)"))
    return problems


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
        within, name = key_variable(model, defaults)
        if not isinstance(name, str) or not name or not is_env_name(name) or env.get(name):
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
    "AIBATTLE_REDIS_URL": "redis_url",
    "AIBATTLE_WORKERS": "workers",
}
#: The overrides of a key that is not a string: the variable's text as that key's type. Text that is not
#: one stays text, so the schema reports it against the variable.
ENV_INTEGERS = frozenset({"workers"})


def _from_env(key: str, text: str) -> str | int:
    if key in ENV_INTEGERS and text.strip().lstrip("+-").isdigit():
        return int(text)
    return text


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    *,
    workers: int | None = None,
) -> Config:
    """Read the TOML file (path, else AIBATTLE_CONFIG, else none) and apply environment overrides, then
    the command line's (`workers`: `--workers N`)."""
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
                server = {**server, key: _from_env(key, env[var])}
                names["server", key] = var
        if workers is not None:
            server = {**server, "workers": workers}
            names["server", "workers"] = "--workers"
        data["server"] = server
    source = "config" if path is None else f"config file {path}"
    # The environment reaches the check of api_key_env: a variable it names must be set.
    return validate(Config, data, source=source, names=names, context={"env": env})
