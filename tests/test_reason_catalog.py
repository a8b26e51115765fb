"""The reason catalog (`common/errors.py`) is the one list of error reasons, and everything else agrees.

* README.md's error tables (errors, upstream failures, limits) name only declared reasons, each with
  its catalog code (and HTTP status where a row gives one), and every reason a client can receive is
  in one of them.
* The hand-written code names reasons only through the catalog: no reason literal at a raise site
  (the `reason` argument of `ApiError` and its kin, a `reason = …` assignment, a comparison with
  `error.reason`), and none that is not declared.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import grpc
import pytest

import common.errors as errors
from common.errors import REASONS, ApiError, Reason
from gateway.errors import http_status

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PACKAGES = ("server", "gateway", "common")

_CODES = {code.name: code for code in grpc.StatusCode}
_REASON_SHAPE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
_TICKED = re.compile(r"`([^`]*)`")


# --- the catalog itself ------------------------------------------------------------------------------


def test_each_reason_is_declared_once_under_its_own_name() -> None:
    constants = {name: value for name, value in vars(errors).items() if isinstance(value, Reason)}
    assert {name: value.name for name, value in constants.items()} == {name: name for name in constants}
    assert constants == REASONS
    for reason in REASONS.values():
        assert _REASON_SHAPE.fullmatch(reason.name), reason.name
        assert reason.doc and "\n" not in reason.doc, reason.name
        assert reason.code is not grpc.StatusCode.OK, reason.name
        assert not reason.retryable or reason.fallback, f"{reason.name}: retried but not a provider failure"


def test_errors_read_their_properties_from_the_catalog() -> None:
    error = errors.UPSTREAM_UNAVAILABLE.error("down")
    assert (error.code, error.reason, error.fallback, error.retryable) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_UNAVAILABLE",
        True,
        True,
    )
    assert errors.METHOD_NOT_ALLOWED.error("no").http_status == 405
    undeclared = ApiError(grpc.StatusCode.UNAVAILABLE, "SOME_REASON", "x")
    assert (undeclared.fallback, undeclared.retryable, undeclared.http_status) == (False, False, None)
    with pytest.raises(ValueError, match="QUEUE_FULL is a FAILED_PRECONDITION reason"):
        errors.InvalidArgument("x", "y", reason=errors.QUEUE_FULL)


# --- README.md ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    table: str
    line: int
    cells: list[str]


def _table(header: str) -> list[Row]:
    """The rows of the README table whose header line starts with `header`."""
    lines = README.read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"README.md should have one table headed {header!r}"
    rows = []
    for i in range(starts[0] + 2, len(lines)):
        if not lines[i].startswith("|"):
            break
        rows.append(Row(header, i + 1, [cell.strip() for cell in lines[i].strip("|").split(" | ")]))
    assert rows, f"the README table headed {header!r} is empty"
    return rows


ERRORS = "| situation | code | reason |"
UPSTREAM = "| upstream answer | gRPC code | reason | retried |"
LIMITS = "| limit | where | over it | HTTP |"


def _first_code(text: str) -> grpc.StatusCode:
    code = next((_CODES[word] for word in re.findall(r"[A-Z_]+", text) if word in _CODES), None)
    assert code is not None, f"no gRPC code in {text!r}"
    return code


def _reasons_in(text: str) -> list[str]:
    return [t for t in _TICKED.findall(text) if _REASON_SHAPE.fullmatch(t)]


def _http_of(reason: Reason) -> int:
    return reason.http_status or http_status(reason.code.value[0])


def _readme_reasons() -> Iterator[tuple[Row, str, grpc.StatusCode | None, int | None]]:
    """(row, reason, the code the row gives it, the HTTP status the row gives it) for every reason the
    README's error tables name."""
    for row in _table(ERRORS):
        _situation, code_cell, reason_cell = row.cells
        given = re.search(r"\((\d{3})\)", code_cell)
        for name in _reasons_in(reason_cell):
            yield row, name, _first_code(code_cell), int(given.group(1)) if given else None
    for row in _table(UPSTREAM):
        _answer, code_cell, reason_cell, _retried = row.cells
        for name in _reasons_in(reason_cell) or [reason_cell]:
            yield row, name, _first_code(code_cell), None
    for row in _table(LIMITS):
        _limit, _where, over, http = row.cells
        given = re.match(r"\d{3}", http)
        code: grpc.StatusCode | None = None
        for token in _reasons_in(over):
            if token in _CODES:  # a code here (the WebSocket idle frame and gRPC's own limit carry no reason)
                code = _CODES[token]
                continue
            yield row, token, code, int(given.group()) if given else None


def test_the_readme_names_only_declared_reasons_with_their_codes() -> None:
    problems = []
    for row, name, code, http in _readme_reasons():
        where = f"README.md:{row.line}"
        reason = REASONS.get(name)
        if reason is None:
            problems.append(f"{where}: {name} is not a declared reason (common/errors.py)")
            continue
        if code is not None and code is not reason.code:
            problems.append(f"{where}: {name} is {reason.code.name} in the catalog, {code.name} here")
        if http is not None and http != _http_of(reason):
            problems.append(f"{where}: {name} is HTTP {_http_of(reason)} in the catalog, {http} here")
    assert not problems, "\n".join(problems)


def test_the_readme_lists_every_reason_a_client_can_receive() -> None:
    listed = {name for _row, name, _code, _http in _readme_reasons()}
    missing = [r.name for r in REASONS.values() if r.visible and r.name not in listed]
    assert not missing, f"add these reasons to README.md's error tables: {missing}"


def test_the_upstream_table_says_what_is_retried_as_the_catalog_does() -> None:
    problems = []
    for row in _table(UPSTREAM):
        _answer, _code, reason_cell, retried = row.cells
        for name in _reasons_in(reason_cell):
            reason = REASONS.get(name)
            if reason is not None and (retried in ("yes", "before a token")) != reason.retryable:
                problems.append(
                    f"README.md:{row.line}: {name} is retried: {reason.retryable}, not {retried!r}"
                )
    assert not problems, "\n".join(problems)


# --- the code ---------------------------------------------------------------------------------------------


@cache  # parsed once for the tests that read it (read-only)
def _sources() -> dict[str, ast.Module]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[path.relative_to(ROOT).as_posix()] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _reason_parameters(trees: dict[str, ast.Module]) -> dict[str, int | None]:
    """Callables that take a reason, by name: the position of their `reason` parameter (None: keyword
    only). The ApiError family from its signatures, and any function of ours with a `reason` parameter."""
    takes: dict[str, int | None] = {}
    for name, value in vars(errors).items():
        if inspect.isclass(value) and issubclass(value, ApiError):
            parameters = [
                p for p in inspect.signature(value.__init__).parameters.values() if p.name != "self"
            ]
            for index, parameter in enumerate(parameters):
                if parameter.name == "reason":
                    positional = parameter.kind is not inspect.Parameter.KEYWORD_ONLY
                    takes[name] = index if positional else None
    for tree in trees.values():
        for node in ast.walk(tree):
            # Dunder methods are left out: `super().__init__(…)` says nothing about which __init__.
            function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if function and not node.name.startswith("__") and node.name not in takes:
                names = [
                    a.arg for a in node.args.posonlyargs + node.args.args if a.arg not in ("self", "cls")
                ]
                if "reason" in names:
                    takes[node.name] = names.index("reason")
    return takes


def _strings(node: ast.AST) -> Iterator[ast.Constant]:
    """The string constants of an expression, outside f-strings (a message, not a reason)."""
    if isinstance(node, ast.JoinedStr):
        return
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node
    for child in ast.iter_child_nodes(node):
        yield from _strings(child)


def _callee(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _named_reason(name: str) -> bool:
    lowered = name.lower()
    return lowered == "reason" or lowered.endswith(("_reason", "_reasons"))


def _reason_literals(tree: ast.Module, takes: dict[str, int | None]) -> Iterator[ast.Constant]:
    """String constants that stand for a reason: in a reason argument, a `reason = …` assignment, or a
    comparison with `….reason`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _callee(node)
            if name in takes and (index := takes[name]) is not None and index < len(node.args):
                yield from _strings(node.args[index])
            for keyword in node.keywords:
                if keyword.arg == "reason":
                    yield from _strings(keyword.value)
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and _named_reason(t.id) for t in targets):
                yield from (c for c in _strings(node.value) if _REASON_SHAPE.fullmatch(c.value))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(side, ast.Attribute) and side.attr == "reason" for side in sides):
                for side in sides:
                    yield from (c for c in _strings(side) if _REASON_SHAPE.fullmatch(c.value))


def _not_found_kinds(tree: ast.Module) -> Iterator[ast.Constant]:
    """`NotFound("model", …)`: the kind its reason is made of (MODEL_NOT_FOUND)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _callee(node) == "NotFound" and node.args:
            kind = node.args[0]
            if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                yield kind


@cache
def _literals() -> dict[str, list[tuple[int, str]]]:
    trees = _sources()
    takes = _reason_parameters(trees)
    found: dict[str, list[tuple[int, str]]] = {}
    for path, tree in trees.items():
        for constant in _reason_literals(tree, takes):
            found.setdefault(path, []).append((constant.lineno, constant.value))
    return found


def test_reason_literals_in_the_code_are_declared() -> None:
    problems = [
        f"{path}:{line}: {value!r} is not a declared reason (common/errors.py)"
        for path, literals in _literals().items()
        for line, value in literals
        if value not in REASONS
    ]
    for path, tree in _sources().items():
        for kind in _not_found_kinds(tree):
            reason = f"{kind.value.upper().replace(' ', '_')}_NOT_FOUND"
            if reason not in REASONS:
                problems.append(f"{path}:{kind.lineno}: NotFound({kind.value!r}) raises undeclared {reason}")
    assert not problems, "\n".join(problems)


def test_raise_sites_name_reasons_through_the_catalog() -> None:
    literals = _literals()
    problems = [
        f"{path}:{line}: {value!r}: use common.errors.{value} (or a typed error)"
        for path, found in literals.items()
        for line, value in found
    ]
    assert not problems, "\n".join(problems)
