"""The README's Observability section agrees with the code, both ways: its table of series is exactly
`metrics.REGISTRY` (names, types, labels), and its `error_type` table is exactly the vocabulary, each code
and reason it lists mapping to that row's `error_type`."""

from __future__ import annotations

import re

import grpc

from common import errors
from common.observability import metrics
from tests.observability.dashboard import ROOT
from tests.observability.series import registry_series

CODE = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def section(title: str = "## Observability") -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def table(text: str, first_header: str) -> list[list[str]]:
    """The rows of the Markdown table whose first header cell is `first_header`, as cells."""
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[head + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_the_series_table_is_the_registry() -> None:
    documented = {}
    for name, kind, labels, meaning in table(section(), "series"):
        assert meaning, name
        documented[name.strip("`")] = (kind, tuple(CODE.findall(labels)))
    registered = {s.exposed: (s.type, s.labels) for s in registry_series().values()}
    assert documented.keys() - registered.keys() == set(), "in the README, not in metrics.REGISTRY"
    assert registered.keys() - documented.keys() == set(), "in metrics.REGISTRY, not in the README"
    assert documented == registered


def test_the_error_type_table_is_the_vocabulary_and_says_what_maps_to_each() -> None:
    codes = {code.name: code for code in grpc.StatusCode}
    rows = table(section(), "`error_type`")
    assert sorted(row[0].strip("`") for row in rows) == sorted(metrics.ERROR_TYPES)
    for cell, _fault, when in rows:
        error_type = cell.strip("`")
        named = CODE.findall(when)
        assert named, error_type
        for name in named:
            if name in errors.REASONS:
                assert metrics.error_type(errors.REASONS[name].code, name) == error_type, name
            else:
                assert name in codes, f"{error_type}: {name} is neither a reason nor a gRPC code"
                assert metrics.error_type(codes[name]) == error_type, name
    # Every reason that decides an error_type by itself (a key's limit, a provider's failure) is named.
    named_in = {row[0].strip("`"): set(CODE.findall(row[2])) for row in rows}
    for reason, entry in errors.REASONS.items():
        error_type = metrics.error_type(entry.code, reason)
        if error_type.startswith(("policy_", "provider_")):
            assert reason in named_in[error_type], f"{reason} ({error_type}) is not in the README's table"
