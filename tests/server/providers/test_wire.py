"""The incremental stream parsers: any chunking gives the same frames, and nothing waits for the end."""

from __future__ import annotations

import pytest

from server.providers.http.wire import FrameError, NdjsonParser, SseEvent, SseParser

SSE = (
    ": keep-alive\r\n"
    'event: delta\r\ndata: {"text": "h\u00e9llo"}\r\nid: 1\r\n\r\n'
    "data: line one\ndata: line two\n\n"
    "data: last"
).encode()
EXPECTED = [
    SseEvent("delta", '{"text": "h\u00e9llo"}', "1"),
    SseEvent("message", "line one\nline two", "1"),
    SseEvent("message", "last", "1"),
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_sse_any_chunking_gives_the_same_events(size: int) -> None:
    parser = SseParser()
    events = [e for i in range(0, len(SSE), size) for e in parser.feed(SSE[i : i + size])]
    assert events + parser.close() == EXPECTED


def test_sse_events_come_as_soon_as_they_are_complete() -> None:
    parser = SseParser()
    assert parser.feed(b"data: one\n") == []
    assert parser.feed(b"\n") == [SseEvent("message", "one")]


def test_sse_refuses_an_endless_line_and_broken_utf8() -> None:
    with pytest.raises(FrameError):
        SseParser(max_line=16).feed(b"data: " + b"x" * 32)
    with pytest.raises(FrameError):
        SseParser().feed(b"data: \xff\xfe\n\n")


@pytest.mark.parametrize("size", [1, 5, 1000])
def test_ndjson_any_chunking(size: int) -> None:
    body = b'{"a": 1}\r\n\n{"b": "\xc3\xa9"}\n{"c": 3}'
    parser = NdjsonParser()
    frames = [f for i in range(0, len(body), size) for f in parser.feed(body[i : i + size])]
    assert frames + parser.close() == [{"a": 1}, {"b": "\u00e9"}, {"c": 3}]


def test_ndjson_delivers_the_good_lines_before_failing_on_a_bad_one() -> None:
    parser = NdjsonParser()
    assert parser.feed(b'{"a": 1}\nnot json\n{"b": 2}\n') == [{"a": 1}]
    with pytest.raises(FrameError):
        parser.feed(b"")
