"""The configured models and the providers that run them.

A model with `deployments` is served by each of them in turn: `chain()` orders its deployments by the
model's `routing` (weighted shuffle, least in flight, lowest recent time to first token; see
`resilience.Load`), those in cooldown last (resilient_stream skips them), then its fallbacks' the same
way. Aliases name models too; the model itself keeps its id.
"""

from __future__ import annotations

import importlib
import logging
import os
import random
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from common.errors import MODEL_NOT_ALLOWED, ApiError, NotFound, PermissionDenied, clip, shown
from server.providers.base import Provider
from server.providers.http.base import HttpClient
from server.providers.resilience import Circuits
from server.providers.scripted import ScriptedProvider
from server.settings import HTTP_PROVIDERS, LocalProviderConfig, ModelConfig, OllamaSettings, UpstreamSettings

log = logging.getLogger(__name__)


class ProviderStartError(RuntimeError):
    """A configured provider could not start (missing package, unreadable weights, bad endpoint)."""


class Access(Protocol):
    """What the registry asks of a caller (server.security.context.Caller): the models it may use."""

    def may_use(self, model_id: str) -> bool: ...


#: Wraps a provider for one caller's model calls, given the caller a lookup named (the server composes
#: it: server.security.metering.Metering.bind).
Meter = Callable[[Provider, Any], Provider]


def unmetered(provider: Provider, caller: object) -> Provider:
    return provider


class ModelRegistry:
    """Looks models up by id and owns one provider instance per provider kind in use.

    Every lookup names its caller: None is the server's own work (every model), else the caller's key
    decides which models it sees and may use. Model calls go through `meter`, bound to the caller.
    """

    def __init__(
        self,
        models: Sequence[ModelConfig],
        local: LocalProviderConfig,
        *,
        meter: Meter = unmetered,
        discover: OllamaSettings | None = None,
    ) -> None:
        self._http = HttpClient()
        self._providers: dict[str, Provider] = {}
        self._local = local
        self._models: dict[str, ModelConfig] = {}
        self._aliases: dict[str, str] = {}
        self._deployments: dict[str, tuple[ModelConfig, ...]] = {}
        self._exponents: dict[str, tuple[float, ...]] = {}
        """1 / weight of each deployment, in order (the weighted shuffle's exponents)."""
        self._discover = discover
        self._add(models)
        self._meter = meter
        self.circuits = Circuits()

    def _add(self, models: Sequence[ModelConfig]) -> None:
        """Serve these models too (configuration checked their ids and aliases are unique)."""
        self._models = {m.id: m for m in sorted([*self._models.values(), *models], key=lambda m: m.id)}
        for model in models:
            self._aliases.update(dict.fromkeys(model.aliases, model.id))
            if model.deployments:
                self._deployments[model.id] = model.deployment_models()
                self._exponents[model.id] = tuple(1.0 / d.weight for d in model.deployments)
        kinds = {m.provider for m in models} | {d.provider for m in models for d in self.routes(m)}
        for kind in sorted(kinds - self._providers.keys()):
            self._providers[kind] = _make_provider(kind, self._local, self._http)

    @property
    def providers(self) -> dict[str, Provider]:
        return dict(self._providers)

    def models(self, caller: Access | None = None) -> list[ModelConfig]:
        """The models the caller may use (every one for the server itself), ordered by id."""
        return [m for m in self._models.values() if may_use(caller, m.id)]

    def routes(self, model: ModelConfig) -> tuple[ModelConfig, ...]:
        """The model's deployments, each a model of its id (`ModelConfig.deployment_models`), or the model."""
        return self._deployments.get(model.id, (model,))

    def get(self, model_id: str, caller: Access | None) -> tuple[ModelConfig, Provider]:
        """The model (by id or alias) and its provider; NotFound names the id, PermissionDenied a model the
        caller's key may not use (whether or not it exists: a restricted key learns nothing of other
        models). A key's allow-list names models by id: an alias is allowed when its model is."""
        canonical = self._aliases.get(model_id, model_id)
        if not may_use(caller, canonical):
            raise PermissionDenied(
                MODEL_NOT_ALLOWED,
                f"this API key may not use model {shown(model_id)}",
                metadata={"model": clip(model_id)},
            )
        model = self._models.get(canonical)
        if model is None:
            raise NotFound("model", model_id)
        return model, self._providers[model.provider]

    def chain(self, model: ModelConfig, caller: Access | None) -> list[tuple[ModelConfig, Provider]]:
        """The model's deployments in the order its routing picks (the model itself when it has none), then
        those of its fallbacks the caller may use, in order, each behind the metering of the caller's
        model calls (configuration guarantees they exist)."""
        ids = [model.id, *(f for f in model.fallbacks if may_use(caller, f))]
        return [
            (d, self._meter(self._providers[d.provider], caller))
            for m in (self.get(i, caller)[0] for i in ids)
            for d in self._ordered(m)
        ]

    def _ordered(self, model: ModelConfig) -> Sequence[ModelConfig]:
        routes = self._deployments.get(model.id)
        if routes is None:
            return (model,)
        # Weighted shuffle (Efraimidis-Spirakis): each deployment's key u^(1/w), highest first, is a
        # weighted random order without replacement; it also breaks the other strategies' ties.
        keys = [random.random() ** e for e in self._exponents[model.id]]
        keyed = [routes[i] for i in sorted(range(len(routes)), key=keys.__getitem__, reverse=True)]
        if model.routing == "least_in_flight":
            keyed.sort(key=self.circuits.load.in_flight)
        elif model.routing == "lowest_latency":
            keyed.sort(key=self.circuits.load.latency)
        if self.circuits.any_cooling:
            keyed.sort(key=lambda d: self.circuits.cooling(d) > 0)  # stable: in cooldown last
        return keyed

    async def start(self) -> None:
        if self._discover is not None:
            await self._discover_ollama(self._discover)
        every = [d for m in self._models.values() for d in self.routes(m)]
        missing = [
            f"{m.id} ({m.upstream.api_key_env})"
            for m in every
            if m.upstream.api_key_env and not os.environ.get(m.upstream.api_key_env)
        ]
        if missing:
            # Named, never shown: the variable, not its value.
            raise ProviderStartError(
                f"API key environment variable not set for model(s): {', '.join(sorted(set(missing)))}"
            )
        for kind, provider in self._providers.items():
            try:
                await provider.start()
            except Exception as exc:
                users = ", ".join(sorted({m.id for m in every if m.provider == kind}))
                raise ProviderStartError(
                    f"provider {kind!r} (models: {users}) failed to start: {exc}"
                ) from exc
        log.info("models ready", extra={"models": list(self._models)})

    async def _discover_ollama(self, settings: OllamaSettings) -> None:
        """[providers.ollama] discover: each model the server has pulled, unless a name already serves."""
        from server.providers.http.ollama import discover_models

        base_url = settings.base_url or HTTP_PROVIDERS["ollama"]
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        try:
            names = await discover_models(self._http, base_url, key=key)
        except ApiError as exc:
            log.warning("ollama discovery failed", extra={"base_url": base_url, "reason": exc.reason})
            return
        upstream = UpstreamSettings.model_construct(
            **{k: getattr(settings, k) for k in UpstreamSettings.model_fields}
        ).model_copy(update={"base_url": base_url})
        found = [
            ModelConfig(id=name, provider="ollama", upstream=upstream)
            for name in names
            if name not in self._models and name not in self._aliases
        ]
        self._add(found)
        log.info("ollama models discovered", extra={"base_url": base_url, "models": [m.id for m in found]})

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        await self._http.close()


#: HTTP adapters by provider name: module of server.providers.http, class.
HTTP_ADAPTERS = {
    "openai": ("openai", "OpenAIProvider"),
    "ollama": ("ollama", "OllamaProvider"),
    "anthropic": ("anthropic", "AnthropicProvider"),
    "gemini": ("gemini", "GeminiProvider"),
}


def may_use(caller: Access | None, model_id: str) -> bool:
    """Whether a caller may use a model (the server's own work may use any)."""
    return caller is None or caller.may_use(model_id)


def _make_provider(kind: str, local: LocalProviderConfig, http: HttpClient) -> Provider:
    if kind == "scripted":
        return ScriptedProvider()
    if kind == "local":
        # Imported here so a deployment without the local model never loads llama.cpp.
        from server.providers.local import LocalProvider

        return LocalProvider(local)
    module, cls = HTTP_ADAPTERS[kind]
    adapter: Provider = getattr(importlib.import_module(f"server.providers.http.{module}"), cls)(http)
    return adapter
