"""The layering rules of /work/shared/ARCHITECTURE.md, read from the source with ``ast`` (no torch needed).

- ``export/`` and ``kernels/`` (installed as ``augkd_edge.export`` / ``augkd_edge.kernels``)
  are leaf libraries: of augkd_edge they import only ``augkd_edge.errors``, besides their
  own modules (the atomic-write helper lives in ``export/atomic.py``, and
  ``augkd_edge.checkpoint`` re-exports it to the package);
- ``export/trt_runner.py`` and everything it imports within the repository never import torch
  (it runs on Jetson boards without PyTorch);
- nothing under ``augkd_edge/`` imports ``benchmarks``;
- no import cycles between the modules of the package, counting imports inside functions
  too (``if TYPE_CHECKING:`` imports are left out: they never run).
"""

from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# installed name prefix -> source folder (pyproject.toml's package-dir)
PACKAGE_DIRS = {"augkd_edge.export": ROOT / "export", "augkd_edge.kernels": ROOT / "kernels",
                "augkd_edge": ROOT / "augkd_edge"}
LEAF_ALLOWED = ("augkd_edge.errors",)


def module_name(path: Path) -> str:
    for prefix, folder in PACKAGE_DIRS.items():
        if folder in path.parents:
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            return ".".join([prefix, *parts])
    raise ValueError(path)


@lru_cache(maxsize=None)
def modules() -> dict[str, Path]:
    found = {}
    for folder in PACKAGE_DIRS.values():
        for path in folder.rglob("*.py"):
            found[module_name(path)] = path
    return found


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: module level and inside functions, not under ``if TYPE_CHECKING:``."""
    out: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit_one(sub)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        visit(node)

    visit(tree)
    return out


@lru_cache(maxsize=None)
def imports_of(name: str, module_level: bool = False) -> frozenset[str]:
    """Full names this module imports (``from a import b`` gives ``a.b`` when that is a module, else ``a``).

    ``module_level``: only the imports that run when the module is imported (not those inside functions).
    """
    path = modules()[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = _import_nodes(tree)
    if module_level:
        nodes = [n for n in nodes if n in _import_nodes(ast.Module(body=[s for s in tree.body if not isinstance(
            s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))], type_ignores=[]))]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            full = f"{base}.{alias.name}"
            found.add(full if full in modules() else base)
    return frozenset(found)


def internal_imports(name: str, module_level: bool = False) -> set[str]:
    return {target for target in imports_of(name, module_level) if target in modules()}


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


@pytest.mark.parametrize("leaf", ["augkd_edge.export", "augkd_edge.kernels"])
def test_leaf_libraries_import_only_errors_and_atomic_writes(leaf: str) -> None:
    bad = []
    for name in modules():
        if not _in(name, leaf):
            continue
        for target in imports_of(name):
            if _in(target, "augkd_edge") and not _in(target, leaf) and target not in LEAF_ALLOWED:
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_trt_runner_never_imports_torch() -> None:
    """trt_runner and what it imports (in functions too), and the module-level imports of the packages above them."""
    seen, todo, bad = set(), [("augkd_edge.export.trt_runner", False)], []
    while todo:
        name, module_level = todo.pop()
        if (name, module_level) in seen:
            continue
        seen.add((name, module_level))
        for target in imports_of(name, module_level):
            if _in(target, "torch") or _in(target, "torchvision"):
                bad.append(f"{name} imports {target}")
        todo.extend((target, module_level) for target in internal_imports(name, module_level))
        # importing a module runs the module-level code of its packages' __init__ first
        parent = name.rpartition(".")[0]
        if parent in modules():
            todo.append((parent, True))
    assert not bad, "\n".join(sorted(set(bad)))


def test_package_never_imports_benchmarks() -> None:
    bad = [f"{name} imports {target}" for name in modules() for target in imports_of(name)
           if _in(target, "benchmarks")]
    assert not bad, "\n".join(bad)


def _cycle() -> list[str] | None:
    graph = {name: sorted(internal_imports(name) - {name}) for name in modules()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycles() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checker_sees_imports_inside_functions_and_skips_type_checking() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import hidden\n"
        "def f():\n    import inner\n"
    )
    names = {alias.name for node in _import_nodes(tree) for alias in node.names}
    assert names == {"TYPE_CHECKING", "inner"}
