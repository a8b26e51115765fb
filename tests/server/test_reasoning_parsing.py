"""The lenient readers of what models write back: verdicts, focus areas, corrections, answers."""

from __future__ import annotations

import pytest

from aibattle.v1 import reasoning_pb2
from server.orchestration.lifecycle import THINKING, TOKEN, Deltas
from server.orchestration.reasoning import parsing

T = reasoning_pb2.ReasoningEventType


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Good.\nVERDICT: APPROVE", "approve"),
        ("**Verdict:** Approved.", "approve"),
        ("- verdict = revise", "revise"),
        ("Verdict:\nRevise", "revise"),
        ("> VERDICT: accept", "accept"),
        ("VERDICT: CORRECT\nCORRECTED ANSWER: 4", "correct"),
        # The instructions quoted first, the model's own verdict last: the last one counts.
        ("VERDICT: APPROVE or VERDICT: REVISE\nIt has gaps.\nVERDICT: REVISE", "revise"),
        ("I approve of this answer.", None),
        ("VERDICT: maybe", None),
        ("", None),
    ],
)
def test_verdict(text: str, expected: str | None) -> None:
    assert parsing.verdict(text) == expected


def test_only_an_explicit_approval_approves() -> None:
    assert parsing.approves("VERDICT: APPROVE")
    assert not parsing.approves("Looks approved to me, well done.")  # no verdict line: keep refining
    assert not parsing.approves("VERDICT: REVISE")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "FOCUS: mathematical foundation; implementation details",
            ["mathematical_foundation", "implementation_details"],
        ),
        ("Focus areas: Edge cases, PROOF", ["edge_cases", "proof"]),
        ("**Focus areas:**\n- Security proof\n* key sizes\n\nOther text", ["security_proof", "key_sizes"]),
        ("FOCUS: none", []),
        ("No focus line at all.", []),
        ("FOCUS: a; a; b", ["a", "b"]),
    ],
)
def test_focus_areas(text: str, expected: list[str]) -> None:
    assert parsing.focus_areas(text) == expected


def test_corrections() -> None:
    assert parsing.correction("Wrong.\nVERDICT: CORRECT\nCORRECTED ANSWER:\nCanberra.") == "Canberra."
    assert parsing.correction("VERDICT: CORRECT\nIt is Canberra.") == "It is Canberra."  # no marker
    assert parsing.correction("VERDICT: CORRECT") is None  # nothing to replace the answer with
    assert parsing.correction("Looks fine.") is None


def test_final_answers_winners_and_agreement() -> None:
    assert parsing.final_answer("Reasons.\nFinal answer: 42") == "42"
    assert parsing.final_answer("Reasons.\nSo it is 42.") == "So it is 42."
    assert parsing.winner("B argues better.\nWINNER: [B]", 2) == 1
    assert parsing.winner("WINNER: C", 2) is None
    assert parsing.winner("No pick.", 2) is None
    assert parsing.agree(["**42.**", "42"])
    assert parsing.agree(["Canberra", "canberra"])
    assert not parsing.agree(["Canberra", "Sydney"])
    assert not parsing.agree(["", ""])


def test_without_tail_keeps_the_prose() -> None:
    assert parsing.without_tail("Needs work.\nVERDICT: REVISE\nFOCUS: depth") == "Needs work."


def test_a_token_batch_is_one_event_per_kind_and_model() -> None:
    batch = Deltas()
    for kind, text, model in [
        (THINKING, "hm ", "m"),
        (TOKEN, "Can", "m"),
        (THINKING, "ok", "m"),
        (TOKEN, "", "m"),  # nothing to send
        (TOKEN, "berra", "m"),
        (TOKEN, ".", "fallback"),
    ]:
        batch.add(kind, text, model)
    assert [(e.kind, e.text, e.model) for e in batch.take()] == [
        (THINKING, "hm ok", "m"),
        (TOKEN, "Canberra", "m"),
        (TOKEN, ".", "fallback"),
    ]
    assert batch.take() == [] and batch.wait() is None
