"""What every strategy module shares: the registry entry it exports, the stop reasons, and the vote.

A strategy module defines `STRATEGY = Strategy(...)`: its name as clients send it, the coroutine that
runs a session to its `Outcome`, which seats it uses, and its worst-case number of model calls (what a
budget must reserve before the run starts).

The vote (`ballot`, `tally`) is shared by the voting strategies (`self_consistency`, `vote`):

* each answer is a recorded iteration, checked for stalls on its own (hedging, repetition, refusal: an
  answer is compared with no earlier one, since independent answers that repeat each other agree
  rather than loop); a stalled answer casts no vote, unless every answer stalled (then all count, as a
  mixture aggregates stalled proposals rather than none);
* its vote is its final answer (`parsing.final_answer`: the FINAL ANSWER line, else the last line),
  grouped by `parsing.normalize` (exact after normalization, as Wang et al. compare parsed answers);
  an answer that normalizes to nothing casts no vote;
* the tally lists the answers most votes first; answers with as many votes keep the order in which
  they were first given, so the first of the tied is the earliest given.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aibattle.v1 import reasoning_pb2
from server.orchestration import stuck
from server.orchestration.reasoning import parsing, prompts
from server.orchestration.reasoning.session import Outcome, Reply, Seat, Session

DEFAULT_ITERATIONS = 5
"""`max_iterations` when the request leaves it 0."""
DEFAULT_SAMPLES = 5
"""`samples` when a self_consistency request leaves it unset."""

# Why a session stopped (`Reasoning.stop_reason`).
CONSENSUS = "consensus"
"""The answers agreed (debate: no judge was needed; mixture: no further layer was added)."""
APPROVED = "approved"
ACCEPTED = "accepted"
MAX_ITERATIONS = "max_iterations"
MAJORITY = "majority"
TIE_BROKEN = "tie_broken"
ESCALATED = "escalated"
NOT_ESCALATED = "not_escalated"
STALLED = "stalled"
"""Stalls ended it before its rounds ran out (debate: one debater or none left standing; critique: a
stalled correction was not adopted)."""
NO_ANSWER = "no_answer"
"""A vote in which no answer had anything to count (every one empty)."""


class Models(enum.Enum):
    """The seats a strategy uses."""

    PRIMARY = "the primary"
    PAIR = "the primary and the secondary"
    ALL = "the primary, the secondary and the additional models"


WorstCase = Callable[[int, int, int], int]
"""(max_iterations, samples, model_count) → the most model calls a run can make."""


@dataclass(frozen=True)
class Strategy:
    """A collaboration strategy as the registry knows it."""

    name: str
    """As clients send it (`collaboration_strategy`)."""
    run: Callable[[Session], Awaitable[Outcome]]
    models: Models
    """Which seats it uses; only `Models.ALL` takes `additional_models`."""
    calls: WorstCase
    takes_samples: bool = False
    """Whether it takes `samples` (only self_consistency draws samples)."""

    def worst_case_calls(self, *, max_iterations: int, samples: int, model_count: int) -> int:
        """The most model calls one run can make; 0 for max_iterations or samples means the default.

        `model_count` is the seats: 2 + len(additional_models) (an unset secondary is the primary
        again, still a seat)."""
        return self.calls(max_iterations or DEFAULT_ITERATIONS, samples or DEFAULT_SAMPLES, model_count)


# ---- the vote


@dataclass(frozen=True)
class Ballot:
    """One recorded answer and what it votes for."""

    seat: Seat
    reply: Reply
    answer: str
    """Its final answer as written (`parsing.final_answer`)."""
    stalled: bool


async def ballot(s: Session, seat: Seat, kind: str, *, temperature: float | None = None) -> Ballot:
    """One independent answer to the problem (`prompts.SOLVE`), recorded as a `kind` iteration."""
    reply = await s.generate(seat, prompts.SOLVE.format(problem=s.problem), temperature=temperature)
    signals = [signal.name for signal in stuck.detect(reply.text)]
    await s.record(seat, kind, reply, stuck_indicators=signals)
    return Ballot(seat, reply, parsing.final_answer(reply.text), bool(signals))


@dataclass
class Group:
    """The ballots for one answer (after normalization), in the order given."""

    ballots: list[Ballot] = field(default_factory=list)

    @property
    def first(self) -> Ballot:
        return self.ballots[0]

    @property
    def votes(self) -> int:
        return len(self.ballots)


@dataclass(frozen=True)
class Tally:
    """The groups, most votes first (ties in the order first given)."""

    groups: list[Group]

    @property
    def leaders(self) -> list[Group]:
        """The groups with the most votes (more than one: a tie)."""
        return [g for g in self.groups if g.votes == self.groups[0].votes] if self.groups else []

    @property
    def tie(self) -> bool:
        return len(self.leaders) > 1

    def proto(self) -> reasoning_pb2.Vote:
        vote = reasoning_pb2.Vote(tie=self.tie)
        for group in self.groups:
            vote.tallies.add(
                answer=group.first.answer,
                votes=group.votes,
                models=[b.reply.model for b in group.ballots],
            )
        return vote


def tally(ballots: list[Ballot]) -> Tally:
    """The vote over `ballots` (see the module docstring for who votes and how answers are grouped)."""
    voting = [b for b in ballots if not b.stalled] or ballots
    groups: dict[str, Group] = {}
    for b in voting:
        key = parsing.normalize(b.answer)
        if key:
            groups.setdefault(key, Group()).ballots.append(b)
    # sorted is stable: equal counts keep the dict's order, the order in which answers were first given.
    return Tally(sorted(groups.values(), key=lambda g: -g.votes))
