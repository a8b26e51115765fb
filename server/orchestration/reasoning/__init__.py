"""Collaborative reasoning: two or more models on one prompt under a strategy.

`session` runs one session (model calls, stuck checks, each step committed with its events),
`strategies` is the registry of strategies (one module each, its prompts beside it), `prompts` the prompts
several of them send, `parsing` the lenient readers of the verdicts and answers the prompts ask for.
"""

from server.orchestration.reasoning.session import KIND, Seat, Session, is_terminal
from server.orchestration.reasoning.strategies import MULTI_MODEL, STRATEGIES, worst_case_calls

__all__ = ["KIND", "MULTI_MODEL", "STRATEGIES", "Seat", "Session", "is_terminal", "worst_case_calls"]
