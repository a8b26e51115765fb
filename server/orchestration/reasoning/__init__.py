"""Collaborative reasoning: two or more models on one prompt under a strategy.

`session` runs one session (model calls, stuck checks, each step committed with its events),
`strategies` holds the five strategies, `prompts` every prompt they send, `parsing` the lenient readers
of the verdicts and answers those prompts ask for.
"""

from server.orchestration.reasoning.session import KIND, Seat, Session, is_terminal
from server.orchestration.reasoning.strategies import MULTI_MODEL, STRATEGIES

__all__ = ["KIND", "MULTI_MODEL", "STRATEGIES", "Seat", "Session", "is_terminal"]
