"""The scripted models' script syntax (`[[models]] script`): text lines, and `tool:<name> <JSON object>`
lines that are tool calls (see `server.providers.scripted`). Here, below the configuration, so that a
malformed line is a configuration error naming it, before any provider exists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import cache

TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a tool may be called (OpenAI's rule; Anthropic's and Gemini's admit it)."""
TOOL_PREFIX = "tool:"


@cache
def parse_entry(entry: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A script entry's text and its tool calls, (name, arguments JSON text) each; ValueError names
    what is wrong with a `tool:` line (the configuration reports it with the entry). Cached (the
    scripted model reads its entry per call, capabilities its whole script per lookup): the answer
    is immutable, and a ValueError is not cached, so it is raised again each time."""
    if TOOL_PREFIX not in entry:
        return entry, ()
    text: list[str] = []
    calls: list[tuple[str, str]] = []
    for line in entry.split("\n"):
        if not line.startswith(TOOL_PREFIX):
            text.append(line)
            continue
        name, _, arguments = line[len(TOOL_PREFIX) :].strip().partition(" ")
        arguments = arguments.strip() or "{}"
        if not TOOL_NAME.fullmatch(name):
            raise ValueError(f"{line!r}: a tool name is 1 to 64 letters, digits, '_' or '-'")
        try:
            value = json.loads(arguments)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise ValueError(f"{line!r}: the arguments must be a JSON object, e.g. tool:{name} {{}}")
        calls.append((name, arguments))
    return "\n".join(text), tuple(calls)


def declares_tool_calls(script: Sequence[str]) -> bool:
    """Whether a script ever calls a tool (which gives its model the "tools" capability)."""
    return _declares_tool_calls(tuple(script))


@cache
def _declares_tool_calls(script: tuple[str, ...]) -> bool:
    return any(parse_entry(entry)[1] for entry in script)
