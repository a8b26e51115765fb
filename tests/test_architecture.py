"""ARCHITECTURE.md stays true: every path it names exists, and every `path.py:Name.member` it names is
defined there (a bare `Class.member` must be defined by a class of that name in a file it names)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "ARCHITECTURE.md").read_text()
CODE = re.findall(r"`([^`\s]+)`", DOC)
PATH = re.compile(r"^(?:[\w.*-]+/)+(?:[\w.*-]+)?$|^[\w-]+\.(?:py|md|proto|toml)$")


@cache
def _definitions(path: Path) -> dict[str, set[str]]:
    """Top-level names of a module, each with the members a class defines (methods, attributes)."""
    names: dict[str, set[str]] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    members.add(item.name)
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.Assign):
                    members |= {t.id for t in item.targets if isinstance(t, ast.Name)}
            names[node.name] = members
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names[node.name] = set()
        elif isinstance(node, ast.Assign):
            names.update({t.id: set() for t in node.targets if isinstance(t, ast.Name)})
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = set()
    return names


def _defines(path: Path, dotted: str) -> bool:
    name, _, member = dotted.partition(".")
    names = _definitions(path)
    return name in names and (not member or member in names[name])


def _named_files() -> list[Path]:
    files = []
    for token in CODE:
        path = token.partition(":")[0]
        if path.endswith(".py") and (ROOT / path).is_file():
            files.append(ROOT / path)
    return files


def test_the_map_names_things() -> None:
    """The checks below would pass on an empty document."""
    assert sum(":" in t for t in CODE) >= 30 and len(_named_files()) >= 20


def test_every_path_exists() -> None:
    missing = []
    for token in CODE:
        path = token.partition(":")[0]
        if not PATH.match(path):
            continue
        if "*" in path:
            if not list(ROOT.glob(path)):
                missing.append(token)
        elif not (ROOT / path).exists():
            missing.append(token)
    assert not missing, f"ARCHITECTURE.md names paths that do not exist: {missing}"


def test_every_function_exists() -> None:
    missing = []
    for token in CODE:
        path, colon, dotted = token.partition(":")
        if colon and path.endswith(".py"):
            if not (ROOT / path).is_file() or not _defines(ROOT / path, dotted):
                missing.append(token)
    assert not missing, f"ARCHITECTURE.md names functions that do not exist: {missing}"


def test_every_bare_method_exists_in_a_named_file() -> None:
    """`Class.member` without a path: some file the document names defines it."""
    files = _named_files()
    missing = [
        token
        for token in CODE
        if re.fullmatch(r"[A-Z]\w*\.\w+", token) and not any(_defines(f, token) for f in files)
    ]
    assert not missing, f"ARCHITECTURE.md names methods no named file defines: {missing}"
