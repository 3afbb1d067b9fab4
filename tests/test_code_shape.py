"""Sizes that keep the code readable: no module over 400 lines, no function body over 60 lines.

Checked under ``augkd_edge/``, ``export/``, ``kernels/`` and ``benchmarks/`` with ``ast``
(no torch needed). A function's size is its body, from the first statement (the
docstring included) to the last line: decorators and the signature do not count,
so click commands' option lists are exempt. Triton kernels are exempt (decorated
``@triton.jit``, or handed to ``jit(...)`` as ``kernels/`` builds them lazily): a
kernel is one unit for the compiler and splitting it costs registers.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("augkd_edge", "export", "kernels", "benchmarks")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
FILES = sorted(str(p.relative_to(ROOT)) for folder in FOLDERS for p in (ROOT / folder).rglob("*.py"))


def _is_jit(node: ast.expr) -> bool:
    target = node.func if isinstance(node, ast.Call) else node
    return (isinstance(target, ast.Attribute) and target.attr == "jit") or (
        isinstance(target, ast.Name) and target.id == "jit")


def _jitted_names(tree: ast.AST) -> set[str]:
    """Functions handed to ``jit(f)`` / ``triton.jit(f)`` somewhere in the module."""
    return {node.args[0].id for node in ast.walk(tree) if isinstance(node, ast.Call) and _is_jit(node.func)
            and node.args and isinstance(node.args[0], ast.Name)}


def long_functions(source: str) -> list[str]:
    out = []
    tree = ast.parse(source)
    jitted = _jitted_names(tree)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if node.name in jitted or any(_is_jit(dec) for dec in node.decorator_list):
            continue
        lines = node.end_lineno - node.body[0].lineno + 1
        if lines > MAX_FUNCTION_LINES:
            out.append(f"{node.name} (line {node.lineno}): {lines} lines")
    return out


@pytest.mark.parametrize("path", FILES)
def test_module_size(path: str) -> None:
    lines = len((ROOT / path).read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path}: {lines} lines (split it by concern)"


@pytest.mark.parametrize("path", FILES)
def test_function_size(path: str) -> None:
    found = long_functions((ROOT / path).read_text(encoding="utf-8"))
    assert not found, f"{path}: " + "; ".join(found)


def test_the_rule_counts_bodies_and_exempts_triton_kernels() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(61))
    assert long_functions(f"def f(\n    a,\n):\n{body}\n")
    assert not long_functions(f"@triton.jit\ndef k():\n{body}\n")
    assert not long_functions(f"def k():\n{body}\n\ndef build():\n    return jit(k)\n")
    assert not long_functions("@click.option('--a')\ndef g():\n    return 1\n")
