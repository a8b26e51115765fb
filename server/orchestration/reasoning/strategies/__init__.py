"""The collaboration strategies: a registry of modules, one per strategy, its prompts beside it.

| strategy | module | seats | worst-case model calls (N max_iterations, m seats, S samples) |
|---|---|---|---|
| `iterative_refinement` (default) | `iterative_refinement.py` | primary, secondary | 2 + 3N |
| `debate` | `debate.py` | all | N·m + 1 |
| `mixture` | `mixture.py` | all | N·m + 1 |
| `critique` | `critique.py` | primary, secondary | N + 2 |
| `cascade` | `cascade.py` | primary, secondary | 3 |
| `self_consistency` | `self_consistency.py` | primary | S |
| `vote` | `vote.py` | all | m + 1 |

Each module's docstring says how it runs, when it stops (`Reasoning.stop_reason`) and what a stall
does. Every draft-like step goes through stuck detection; a stall is recorded on its iteration, emits
STUCK_DETECTED and triggers the strategy's handoff. `base.py` holds what they share: the `Strategy`
entry, the stop reasons and the vote of the voting strategies.

A new strategy is a new module exporting `STRATEGY = base.Strategy(...)`, listed in `_MODULES` below;
no other strategy changes. The order of `_MODULES` is the order clients see (the schema's allowed
values, pinned by a test); the first is the default.
"""

from __future__ import annotations

from server.orchestration.reasoning.strategies import (
    cascade,
    critique,
    debate,
    iterative_refinement,
    mixture,
    self_consistency,
    vote,
)
from server.orchestration.reasoning.strategies.base import (
    DEFAULT_ITERATIONS,
    DEFAULT_SAMPLES,
    Models,
    Strategy,
)

_MODULES = (iterative_refinement, debate, mixture, critique, cascade, self_consistency, vote)

STRATEGIES: dict[str, Strategy] = {m.STRATEGY.name: m.STRATEGY for m in _MODULES}
"""Strategy names as clients send them (`collaboration_strategy`); the first is the default."""

MULTI_MODEL = frozenset(name for name, s in STRATEGIES.items() if s.models is Models.ALL)
"""Strategies that use `additional_models`; the others take a primary and a secondary at most."""

SAMPLED = frozenset(name for name, s in STRATEGIES.items() if s.takes_samples)
"""Strategies that take `samples`."""


def worst_case_calls(strategy: str, max_iterations: int, samples: int, model_count: int) -> int:
    """The most model calls one run of `strategy` can make (see `Strategy.worst_case_calls`); what a
    budget reserves before the run starts. KeyError for an unknown strategy."""
    return STRATEGIES[strategy].worst_case_calls(
        max_iterations=max_iterations, samples=samples, model_count=model_count
    )


__all__ = [
    "DEFAULT_ITERATIONS",
    "DEFAULT_SAMPLES",
    "MULTI_MODEL",
    "SAMPLED",
    "STRATEGIES",
    "Models",
    "Strategy",
    "worst_case_calls",
]
