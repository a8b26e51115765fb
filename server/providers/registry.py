"""The configured models and the providers that run them."""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from common.errors import MODEL_NOT_ALLOWED, NotFound, PermissionDenied, clip, shown
from server.providers.base import Provider
from server.providers.http.base import HttpClient
from server.providers.resilience import Circuits
from server.providers.scripted import ScriptedProvider
from server.settings import LocalProviderConfig, ModelConfig

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
        self, models: Sequence[ModelConfig], local: LocalProviderConfig, *, meter: Meter = unmetered
    ) -> None:
        self._models = {m.id: m for m in sorted(models, key=lambda m: m.id)}
        self._http = HttpClient()
        self._providers: dict[str, Provider] = {}
        for kind in sorted({m.provider for m in models}):
            self._providers[kind] = _make_provider(kind, local, self._http)
        self._meter = meter
        self.circuits = Circuits()

    @property
    def providers(self) -> dict[str, Provider]:
        return dict(self._providers)

    def models(self, caller: Access | None = None) -> list[ModelConfig]:
        """The models the caller may use (every one for the server itself), ordered by id."""
        return [m for m in self._models.values() if may_use(caller, m.id)]

    def get(self, model_id: str, caller: Access | None) -> tuple[ModelConfig, Provider]:
        """The model and its provider; NotFound names the id, PermissionDenied a model the caller's key
        may not use (whether or not it exists: a restricted key learns nothing of other models)."""
        if not may_use(caller, model_id):
            raise PermissionDenied(
                MODEL_NOT_ALLOWED,
                f"this API key may not use model {shown(model_id)}",
                metadata={"model": clip(model_id)},
            )
        model = self._models.get(model_id)
        if model is None:
            raise NotFound("model", model_id)
        return model, self._providers[model.provider]

    def chain(self, model: ModelConfig, caller: Access | None) -> list[tuple[ModelConfig, Provider]]:
        """The model, then those of its fallbacks the caller may use, in order, each behind the metering
        of the caller's model calls (configuration guarantees they exist)."""
        ids = [model.id, *(f for f in model.fallbacks if may_use(caller, f))]
        return [
            (m, self._meter(self._providers[m.provider], caller))
            for m in (self.get(i, caller)[0] for i in ids)
        ]

    async def start(self) -> None:
        missing = [
            f"{m.id} ({m.upstream.api_key_env})"
            for m in self._models.values()
            if m.upstream.api_key_env and not os.environ.get(m.upstream.api_key_env)
        ]
        if missing:
            # Named, never shown: the variable, not its value.
            raise ProviderStartError(
                f"API key environment variable not set for model(s): {', '.join(missing)}"
            )
        for kind, provider in self._providers.items():
            try:
                await provider.start()
            except Exception as exc:
                users = ", ".join(m.id for m in self._models.values() if m.provider == kind)
                raise ProviderStartError(
                    f"provider {kind!r} (models: {users}) failed to start: {exc}"
                ) from exc
        log.info("models ready", extra={"models": list(self._models)})

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
