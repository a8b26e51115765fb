"""Which models can call tools ("tools") and answer in JSON ("json"): one rule, which request
validation (`server.providers.convert`) enforces and ListModels shows.

* openai, ollama, anthropic, gemini: both; their upstream decides per model, and refuses what the
  model behind it cannot do.
* local: JSON (llama.cpp constrains sampling with a grammar built from the schema), not tools.
* scripted: tools when its script declares tool calls (see `server.providers.scripted`), JSON never.
* Any model: what its configured `capabilities` list adds ("tools", "json").

The request's own model is checked with errors naming the field (`require`); a fallback that cannot
take the request is passed over (`takes`, in `server.providers.resilience`) rather than sent tools or a
format it would drop.
"""

from __future__ import annotations

from common.errors import CAPABILITY_MISSING, InvalidArgument
from server.providers.base import ChatRequest, Role
from server.scripts import declares_tool_calls
from server.settings import ModelConfig

TOOLS = "tools"
JSON = "json"

_BY_PROVIDER: dict[str, tuple[str, ...]] = {
    "openai": (TOOLS, JSON),
    "ollama": (TOOLS, JSON),
    "anthropic": (TOOLS, JSON),
    "gemini": (TOOLS, JSON),
    "local": (JSON,),
    "scripted": (),
}


def capabilities(model: ModelConfig) -> tuple[str, ...]:
    """The model's capabilities in effect: its configured ones, then those its provider (or script)
    gives it."""
    given = list(_BY_PROVIDER.get(model.provider, ()))
    if model.provider == "scripted" and declares_tool_calls(model.script):
        given.append(TOOLS)
    return (*model.capabilities, *(c for c in given if c not in model.capabilities))


def require(model: ModelConfig, capability: str, field: str) -> None:
    """INVALID_ARGUMENT (CAPABILITY_MISSING) naming `field` unless the model has `capability`."""
    if capability not in capabilities(model):
        what = {TOOLS: "cannot call tools", JSON: "cannot give structured (JSON) output"}.get(
            capability, f"lacks the {capability!r} capability"
        )
        raise InvalidArgument(
            field,
            f"model {model.id!r} (provider {model.provider}) {what}: it lacks the {capability!r} capability",
            reason=CAPABILITY_MISSING,
        )


def needs(request: ChatRequest) -> tuple[str, ...]:
    """The capabilities any model answering `request` must have: "tools" for tools offered or a
    history holding tool calls or results, "json" for structured output."""
    tools = bool(request.tools) or any(m.tool_calls or m.role == Role.TOOL for m in request.messages)
    return (*((TOOLS,) if tools else ()), *((JSON,) if request.response_format is not None else ()))


def takes(model: ModelConfig, request: ChatRequest) -> bool:
    """Whether `model` can answer `request` (see `needs`)."""
    have = capabilities(model)
    return all(c in have for c in needs(request))
