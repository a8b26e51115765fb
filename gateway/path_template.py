"""google.api.http path templates: parsing, matching a request path, rendering for OpenAPI.

Grammar (google/api/http.proto):

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    FieldPath = IDENT { "." IDENT } ;
    Verb     = ":" LITERAL ;

A template compiles to one regular expression over the raw (still percent-encoded) request path, so
an encoded "/" inside a single-segment variable can't split it. As in grpc-gateway, a template without
a verb also matches a last segment that contains ":" (the colon is then part of the value).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LITERAL = re.compile(r"[^/{}:*=]+")
_ONE_SEGMENT = r"[^/]+"
_MANY_SEGMENTS = r"[^/]+(?:/[^/]+)*"


class TemplateError(ValueError):
    """A google.api.http path template that does not follow the grammar."""


@dataclass(frozen=True)
class Variable:
    """A `{field.path=pattern}` variable of a template."""

    field_path: tuple[str, ...]
    #: The segments the variable captures, e.g. ("shelves", "*", "books", "*"); ("*",) when omitted.
    pattern: tuple[str, ...]

    @property
    def name(self) -> str:
        return ".".join(self.field_path)

    @property
    def multi_segment(self) -> bool:
        return len(self.pattern) > 1 or "**" in self.pattern

    def regex(self) -> str:
        """The pattern alone, as a regular expression (also used as the OpenAPI parameter pattern)."""
        return "/".join(_segment_regex(s) for s in self.pattern)


@dataclass(frozen=True)
class PathTemplate:
    """A parsed template; `segments` holds literal strings, "*", "**" and Variables."""

    source: str
    segments: tuple[str | Variable, ...]
    verb: str | None
    _regex: re.Pattern[str]

    @property
    def variables(self) -> tuple[Variable, ...]:
        return tuple(s for s in self.segments if isinstance(s, Variable))

    def specificity(self) -> tuple[int, int, int]:
        """Sort key, most specific first: a verb, then more literal segments, then fewer `**`."""
        literals = sum(1 for s in self.segments if isinstance(s, str) and s not in ("*", "**"))
        deep = sum(1 for s in self.segments if s == "**" or (isinstance(s, Variable) and "**" in s.pattern))
        return (0 if self.verb else 1, -literals, deep)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """Variables by field path (dotted) if raw_path matches, percent-decoded; None otherwise."""
        m = self._regex.fullmatch(raw_path)
        if m is None:
            return None
        values: dict[str, str] = {}
        for i, var in enumerate(self.variables):
            raw = m.group(f"v{i}")
            if var.multi_segment:
                # "/" separates segments here; an encoded one stays encoded (as grpc-gateway does).
                values[var.name] = "/".join(unquote(p).replace("/", "%2F") for p in raw.split("/"))
            else:
                values[var.name] = unquote(raw)
        return values

    def example(self) -> str:
        """A concrete path this template matches (each wildcard one segment "x"), to test overlaps."""
        parts: list[str] = []
        for segment in self.segments:
            pattern = segment.pattern if isinstance(segment, Variable) else (segment,)
            parts.extend("x" if p in ("*", "**") else p for p in pattern)
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")

    def overlaps(self, other: PathTemplate) -> bool:
        """Whether some path could match both (checked on each one's example path)."""
        return self.match(other.example()) is not None or other.match(self.example()) is not None

    def openapi_path(self) -> str:
        """The template as an OpenAPI path: each variable becomes `{field.path}`."""
        parts = [f"{{{s.name}}}" if isinstance(s, Variable) else s for s in self.segments]
        return "/" + "/".join(parts) + (f":{self.verb}" if self.verb else "")


def _segment_regex(segment: str) -> str:
    if segment == "*":
        return _ONE_SEGMENT
    if segment == "**":
        return _MANY_SEGMENTS
    return re.escape(segment)


def parse_template(source: str) -> PathTemplate:
    """Parse a path template; raises TemplateError naming the problem."""
    if not source.startswith("/"):
        raise TemplateError(f"path template {source!r} must start with '/'")
    body, verb = _split_verb(source[1:], source)
    raw_segments = _split_outside_braces(body, "/")
    segments: list[str | Variable] = []
    for raw in raw_segments:
        if raw.startswith("{"):
            segments.append(_parse_variable(raw, source))
        elif raw in ("*", "**") or _LITERAL.fullmatch(raw):
            segments.append(raw)
        else:
            raise TemplateError(f"path template {source!r}: bad segment {raw!r}")
    if "**" in segments[:-1] or any(
        isinstance(s, Variable) and "**" in s.pattern and s is not segments[-1] for s in segments
    ):
        raise TemplateError(f"path template {source!r}: '**' may only be the last segment")
    names = [s.name for s in segments if isinstance(s, Variable)]
    if len(names) != len(set(names)):
        raise TemplateError(f"path template {source!r} binds a field twice")

    regex_parts: list[str] = []
    index = 0
    for seg in segments:
        if isinstance(seg, Variable):
            regex_parts.append(f"(?P<v{index}>{seg.regex()})")
            index += 1
        else:
            regex_parts.append(_segment_regex(seg))
    pattern = "/" + "/".join(regex_parts)
    if verb is not None:
        pattern += f"(?::|%3[aA]){re.escape(verb)}"
    return PathTemplate(source=source, segments=tuple(segments), verb=verb, _regex=re.compile(pattern))


def _split_verb(body: str, source: str) -> tuple[str, str | None]:
    depth = 0
    last_slash = -1
    colon = -1
    for i, ch in enumerate(body):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0 and ch == "/":
            last_slash = i
        elif depth == 0 and ch == ":" and i > last_slash:
            colon = i
    if depth != 0:
        raise TemplateError(f"path template {source!r} has unbalanced braces")
    if colon < 0:
        return body, None
    verb = body[colon + 1 :]
    if not _LITERAL.fullmatch(verb):
        raise TemplateError(f"path template {source!r}: bad verb {verb!r}")
    return body[:colon], verb


def _split_outside_braces(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    depth = 0
    current = ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == sep and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    parts.append(current)
    if any(p == "" for p in parts):
        raise TemplateError(f"empty segment in path template part {text!r}")
    return parts


def _parse_variable(raw: str, source: str) -> Variable:
    if not raw.endswith("}"):
        raise TemplateError(f"path template {source!r}: bad variable {raw!r}")
    inner = raw[1:-1]
    field, _, pattern = inner.partition("=")
    path = tuple(field.split("."))
    if not all(_IDENT.fullmatch(p) for p in path):
        raise TemplateError(f"path template {source!r}: bad field path {field!r}")
    segments = tuple(pattern.split("/")) if pattern else ("*",)
    for seg in segments:
        if not (seg in ("*", "**") or _LITERAL.fullmatch(seg)):
            raise TemplateError(f"path template {source!r}: bad segment {seg!r} in variable {field!r}")
    return Variable(field_path=path, pattern=segments)
