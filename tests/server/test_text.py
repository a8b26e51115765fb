"""Stop sequences split across deltas, as a token stream delivers them."""

from __future__ import annotations

import pytest

from server.providers.text import StopMatcher


def run(stops: tuple[str, ...], pieces: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces) + matcher.flush()
    return out, matcher.stopped


@pytest.mark.parametrize(
    ("stops", "pieces", "expected"),
    [
        ((), ["Hello", " world"], ("Hello world", False)),
        (("END",), ["abc E", "N", "D tail"], ("abc ", True)),
        (("END",), ["abc E", "N", "x"], ("abc ENx", False)),
        (("\n\n", "###"), ["a\n", "b#", "##c"], ("a\nb", True)),
        (("ab",), ["xa"], ("xa", False)),
    ],
)
def test_stop_matcher(stops: tuple[str, ...], pieces: list[str], expected: tuple[str, bool]) -> None:
    assert run(stops, pieces) == expected


def test_nothing_is_emitted_after_a_stop() -> None:
    matcher = StopMatcher(("STOP",))
    assert matcher.feed("one STOP two") == "one "
    assert matcher.feed("three") == ""
    assert matcher.flush() == ""
