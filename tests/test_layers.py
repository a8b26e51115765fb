"""The imports of the hand-written packages follow the layers the folders show (ARCHITECTURE.md).

The server is layered top to bottom; a module may import its own layer and the layers below it,
never one above. `common/` is beneath both the server and the gateway, which never import each other
(the server composes the in-process gateway at its top: server/__main__.py and server/config.py). The
SDK stands alone. And no package has an import cycle, counting every import that runs (those under
`if TYPE_CHECKING:` only describe types and are left out of the cycle check).
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Top to bottom. A module belongs to the first layer one of whose prefixes it starts with.
SERVER_LAYERS: tuple[tuple[str, ...], ...] = (
    (
        "server.__main__",
        "server.app",
        "server.config",
        "server.workers",
    ),  # composition: the process, the config file
    (
        "server.services",
        "server.interceptors",
        "server.admission",
        "server.reflection",
    ),  # the gRPC API's edge
    ("server.orchestration",),  # conversations and reasoning sessions: durable runs of model calls
    ("server.security",),  # callers, keys, limits, metering around model calls
    ("server.providers",),  # models and the providers that run them
    ("server.storage",),  # resources, event logs, keys
    ("server.settings", "server.scripts", "server.pagination", "server.logs"),  # what every layer may use
    ("common",),  # shared with the gateway
)
PACKAGES = {
    "server": ROOT / "server",
    "gateway": ROOT / "gateway",
    "common": ROOT / "common",
    "aibattle_sdk": ROOT / "sdk" / "src" / "aibattle_sdk",
    "aibattle_client": ROOT / "sdk" / "src" / "aibattle_client",
}
#: What each top-level package may import of the others (besides itself).
MAY_IMPORT = {
    "server": {"common", "gateway"},  # gateway: only from the composition layer, checked below
    "gateway": {"common"},
    "common": set(),
    "aibattle_sdk": set(),
    "aibattle_client": {"aibattle_sdk"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            if "_gen" in path.parts:  # generated code is not layered by hand
                continue
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module: str, path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, only for type checking) for every import of our packages."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.body:
                    visit_stmt(stmt, True)
                for stmt in child.orelse:
                    visit_stmt(stmt, typing_only)
            else:
                visit_stmt(child, typing_only)

    def visit_stmt(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, node.lineno, typing_only))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from pkg import module` imports a module
                candidate = f"{base}.{alias.name}"
                found.append((candidate if candidate in MODULES else base, node.lineno, typing_only))
        else:
            visit(node, typing_only)

    visit(tree, False)
    return [(name, line, t) for name, line, t in found if name.split(".")[0] in PACKAGES]


def _target(name: str) -> str | None:
    """The module of ours an import names (a name imported from a package is the package); None for
    generated code."""
    if "._gen" in name:
        return None
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


GRAPH = {
    m: [(target, line, t) for n, line, t in _imports(m, p) if (target := _target(n))]
    for m, p in MODULES.items()
}


def _layer(module: str) -> int | None:
    for rank, prefixes in enumerate(SERVER_LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def test_every_server_module_has_a_layer() -> None:
    unplaced = [m for m in MODULES if m.startswith("server.") and _layer(m) is None]
    assert not unplaced, f"add these modules to a layer in SERVER_LAYERS: {unplaced}"


def test_imports_go_down_the_layers() -> None:
    upward = []
    for module, imports in GRAPH.items():
        top = module.split(".")[0]
        for target, line, _ in imports:
            other = target.split(".")[0]
            where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {target}"
            if other != top and other not in MAY_IMPORT[top]:
                upward.append(f"{where} ({top} may not import {other})")
            elif top == "server" and other == "gateway" and _layer(module) != 0:
                upward.append(f"{where} (only the composition layer may compose the gateway)")
            elif top == "server":
                mine, theirs = _layer(module), _layer(target)
                if mine is not None and theirs is not None and theirs < mine:
                    upward.append(
                        f"{where} (layer {SERVER_LAYERS[theirs][0]} is above {SERVER_LAYERS[mine][0]})"
                    )
    assert not upward, "imports that go up the layers:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = {
        m: sorted({t for t, _, typing_only in imports if not typing_only and t != m})
        for m, imports in GRAPH.items()
    }
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in edges.get(module, []):
            if state.get(target) == 1:
                # A package importing its own submodules is how packages work, not a cycle.
                loop = [*path[path.index(target) :], target]
                if not all(b.startswith(a + ".") for a, b in itertools.pairwise(loop)):
                    cycles.append(" -> ".join(loop))
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", ["server.services.completions", "server.orchestration.lifecycle"])
def test_the_walk_sees_imports(module: str) -> None:
    """The checks above would pass vacuously if the walk found nothing."""
    assert any(t.startswith("server.providers") for t, _, _ in GRAPH[module])
