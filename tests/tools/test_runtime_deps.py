"""The runtime packages import only what `pip install .` installs: codegen tools stay in the `dev` extra.

Every import in server/, gateway/ and common/ (lazy ones inside functions included; `if TYPE_CHECKING:`
blocks excluded) must be the standard library, our own packages, or a module installed by a
distribution in the closure of [project].dependencies plus the optional runtime extras (all but `dev`),
following the installed distributions' own requirements. Which distribution a module comes from is
read from the installed files (RECORD), not guessed from its name.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("server", "gateway", "common")
FIRST_PARTY = {*RUNTIME_PACKAGES, "aibattle"}
DEV_ONLY_EXTRA = "dev"
CODEGEN_ONLY = {"grpcio-tools": "grpc_tools", "mypy-protobuf": "mypy_protobuf"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pyproject() -> dict[str, Any]:
    """The [project] table."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        project: dict[str, Any] = tomllib.load(f)["project"]
    return project


def runtime_requirements() -> list[Requirement]:
    project = pyproject()
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra, deps in project["optional-dependencies"].items():
        if extra != DEV_ONLY_EXTRA:  # e.g. `local`: optional at run time, imported lazily when used
            reqs += [Requirement(r) for r in deps]
    return reqs


def closure(reqs: list[Requirement]) -> set[str]:
    """Normalized names of reqs and everything they require when installed without extras."""
    seen: set[str] = set()
    todo = [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    while todo:
        name = normalize(todo.pop().name)
        if name in seen:
            continue
        seen.add(name)
        for spec in metadata.requires(name) or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req)
    return seen


@cache
def file_owners() -> dict[Path, str]:
    """Installed file → normalized name of the distribution that installed it."""
    owners: dict[Path, str] = {}
    for dist in metadata.distributions():
        # Resolve (symlinks: .venv may be one) once per distribution, not per file: 15k resolves take seconds.
        base = Path(str(dist.locate_file(""))).resolve()
        name = normalize(dist.metadata["Name"])
        for f in dist.files or []:
            owners[Path(os.path.normpath(base / f))] = name
    return owners


def providers(module: str) -> set[str]:
    """Distributions that installed module: the owner of the first regular package on its dotted path.

    Only namespace packages (no code) are imported on the way, so a heavy dependency (llama_cpp) is
    located without being loaded. A namespace package itself is owned by whoever has files directly in it.
    """
    owners = file_owners()
    parts = module.split(".")
    namespace_dirs: list[str] = []
    for depth in range(1, len(parts) + 1):
        spec = importlib.util.find_spec(".".join(parts[:depth]))
        assert spec is not None, f"{module} is not importable here: is the full `make install` done?"
        if spec.origin and Path(spec.origin).is_file():
            origin = Path(spec.origin).resolve()
            return {owners[origin]} if origin in owners else set()
        namespace_dirs = list(spec.submodule_search_locations or [])
    return {
        owners[p.resolve()]
        for location in namespace_dirs
        for p in Path(location).iterdir()
        if p.resolve() in owners
    }


def runtime_imports() -> Iterator[tuple[str, str]]:
    """(module, "file:line") for each absolute import in the runtime packages, outside TYPE_CHECKING."""
    for package in RUNTIME_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            skipped = {
                id(n)
                for node in ast.walk(tree)
                if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                for n in ast.walk(node)
            }
            where = path.relative_to(ROOT)
            for node in ast.walk(tree):
                if id(node) in skipped:
                    continue
                if isinstance(node, ast.Import):
                    yield from ((a.name, f"{where}:{node.lineno}") for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    yield node.module, f"{where}:{node.lineno}"


def third_party(module: str) -> bool:
    top = module.partition(".")[0]
    return top not in sys.stdlib_module_names and top not in FIRST_PARTY and top != "__future__"


def test_codegen_tools_are_not_runtime_dependencies() -> None:
    installed_at_run_time = closure(runtime_requirements())
    assert "grpcio" in installed_at_run_time  # the closure is computed at all
    leaked = set(CODEGEN_ONLY) & installed_at_run_time
    assert not leaked, f"{leaked} would be installed by `pip install .`: keep them in the `dev` extra"


def test_runtime_packages_import_only_runtime_dependencies() -> None:
    allowed = closure(runtime_requirements())
    imports = list(runtime_imports())
    assert len(imports) > 50  # the scan found the packages' imports
    problems = []
    for module, where in imports:
        if module.partition(".")[0] in CODEGEN_ONLY.values():
            problems.append(f"{where}: imports {module}, a codegen-only tool")
        elif third_party(module) and not (found := providers(module)) & allowed:
            problems.append(f"{where}: imports {module}, from {found or 'nowhere'}, not a runtime dep")
    assert not problems, "\n".join(problems)
