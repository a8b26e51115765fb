"""The configured models and the providers that run them."""

from __future__ import annotations

import importlib
import logging
import os

from common.errors import NotFound
from server.config import Config, ModelConfig
from server.providers.base import Provider
from server.providers.http.base import HttpClient
from server.providers.resilience import Circuits
from server.providers.scripted import ScriptedProvider
from server.security import context
from server.security.metering import MeteredProvider

log = logging.getLogger(__name__)


class ProviderStartError(RuntimeError):
    """A configured provider could not start (missing package, unreadable weights, bad endpoint)."""


class ModelRegistry:
    """Looks models up by id and owns one provider instance per provider kind in use."""

    def __init__(self, config: Config) -> None:
        self._models = {m.id: m for m in sorted(config.models, key=lambda m: m.id)}
        self._http = HttpClient()
        self._providers: dict[str, Provider] = {}
        for kind in sorted({m.provider for m in config.models}):
            self._providers[kind] = _make_provider(kind, config, self._http)
        # What model calls go through: hard limits, then the caller's token rate and budget.
        self._metered = {
            kind: MeteredProvider(provider, max_prompt_chars=config.server.max_prompt_chars)
            for kind, provider in self._providers.items()
        }
        self.circuits = Circuits()

    @property
    def providers(self) -> dict[str, Provider]:
        return dict(self._providers)

    def models(self) -> list[ModelConfig]:
        """The models the caller may use, ordered by id."""
        return [m for m in self._models.values() if context.may_use(m.id)]

    def get(self, model_id: str) -> tuple[ModelConfig, Provider]:
        """The model and its provider; NotFound names the id, PermissionDenied a model the caller's key
        may not use (whether or not it exists: a restricted key learns nothing of other models)."""
        context.check_model(model_id)
        model = self._models.get(model_id)
        if model is None:
            raise NotFound("model", model_id)
        return model, self._providers[model.provider]

    def chain(self, model: ModelConfig) -> list[tuple[ModelConfig, Provider]]:
        """The model, then those of its fallbacks the caller may use, in order, each behind the metering
        of every model call (configuration guarantees they exist)."""
        ids = [model.id, *(f for f in model.fallbacks if context.may_use(f))]
        return [(m, self._metered[m.provider]) for m in (self.get(i)[0] for i in ids)]

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


def _make_provider(kind: str, config: Config, http: HttpClient) -> Provider:
    if kind == "scripted":
        return ScriptedProvider()
    if kind == "local":
        # Imported here so a deployment without the local model never loads llama.cpp.
        from server.providers.local import LocalProvider

        return LocalProvider(config.local)
    module, cls = HTTP_ADAPTERS[kind]
    adapter: Provider = getattr(importlib.import_module(f"server.providers.http.{module}"), cls)(http)
    return adapter
