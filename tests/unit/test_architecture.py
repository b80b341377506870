"""The structure docs/ARCHITECTURE.md promises, read off the source (ast), and the static check.

* Imports point one way: the import graph of pdfnet_core and nodes has no cycle, counting the
  imports inside functions too (a deferred import must not be a way round a cycle).
* pdfnet_core knows nothing of ComfyUI; nodes/ uses only pdfnet_core's public API.
* An import inside a function is an optional extra or a heavy import deferred on purpose, and a
  comment beside it says so.
* ruff's pyflakes rules and mypy (pinned in requirements-test.txt, configured in pyproject.toml)
  pass: no import of a name that does not exist, no undefined name, no unused import.
"""
from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pdfnet_core", "nodes")
# What the node layer may import at function level without a comment: ComfyUI itself, absent
# when CI imports the node layer (nodes/host.py's docstring says so once for all of them).
COMFY_MODULES = re.compile(r"^(comfy(\..*)?|folder_paths|comfy_api(\..*)?)$")
DEFERRED = re.compile(r"deferred|optional", re.IGNORECASE)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules of ours that an import statement names (a submodule counts as itself)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    if node.level:
        base = package.split(".")
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    found = [target] if target in MODULES else []
    found += [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
    return found


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: top level, in try/with/if (not TYPE_CHECKING)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(body: list[ast.stmt]) -> None:
        for stmt in body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                found.append(stmt)
            elif isinstance(stmt, ast.If) and not _is_type_checking(stmt):
                visit(stmt.body)
                visit(stmt.orelse)
            elif isinstance(stmt, ast.Try):
                visit(stmt.body)
                for handler in stmt.handlers:
                    visit(handler.body)
                visit(stmt.orelse)
                visit(stmt.finalbody)
            elif isinstance(stmt, ast.With):
                visit(stmt.body)

    visit(tree.body)
    return found


def _all_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Module-level imports and those inside functions (not under TYPE_CHECKING)."""
    found = _module_level_imports(tree)
    for func in ast.walk(tree):
        if isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [n for n in ast.walk(func) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_graph(inside_functions: bool = True) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = _all_imports(tree) if inside_functions else _module_level_imports(tree)
        graph[module] = {t for node in nodes for t in _resolve(module, path, node)} - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_imports_point_one_way():
    graph = import_graph()
    assert len(graph) > 60 and graph["pdfnet_core.weights"] >= {"pdfnet_core.fingerprints", "pdfnet_core.precision"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_leaves_stay_leaves():
    graph = import_graph()
    ours = {m for m in graph if m.startswith("pdfnet_core")}
    # the registry knows the spec types only; fingerprints, precision and the options know nothing of ours
    assert graph["pdfnet_core.registry"] <= {"pdfnet_core.specs"}
    for leaf in ("pdfnet_core.fingerprints", "pdfnet_core.precision", "pdfnet_core.segment_options",
                 "pdfnet_core.exit_status", "pdfnet_core.atomic_files"):
        assert not graph[leaf] & ours, (leaf, graph[leaf] & ours)
    # the inference path never imports training code
    for module in ours - {m for m in ours if m.startswith(("pdfnet_core.train", "pdfnet_core.cli"))}:
        assert not {t for t in graph[module] if t.startswith("pdfnet_core.train")}, module


def _imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.append(node.module or "")
    return names


def test_pdfnet_core_knows_nothing_of_comfyui_and_nodes_use_only_its_public_api():
    for module, path in MODULES.items():
        imported = _imports_of(path)
        if module.startswith("pdfnet_core"):
            assert not [n for n in imported if COMFY_MODULES.match(n) or n.startswith("nodes")], module
        else:
            private = [n for n in imported if n.startswith("pdfnet_core.")]
            assert not private, f"{module} reaches past pdfnet_core's public API: {private}"


def test_function_level_imports_are_deferred_on_purpose_and_say_so():
    unexplained = []
    for module, path in MODULES.items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if module.startswith("nodes") and all(COMFY_MODULES.match(n) for n in names):
                    continue
                near = "\n".join(lines[max(0, node.lineno - 3):node.end_lineno])
                if not DEFERRED.search(near):
                    unexplained.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not unexplained, "imports inside functions without a comment saying why they are deferred:\n" + \
        "\n".join(unexplained)


# --------------------------------------------------------------------------------------------
# the static check


def _tool(name: str) -> list[str]:
    exe = Path(sys.executable).with_name(name)
    if exe.is_file():
        return [str(exe)]
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -r requirements-test.txt (it pins the static check)")
    return [found]


def test_ruff_pyflakes_rules_pass():
    result = subprocess.run(_tool("ruff") + ["check", "--no-cache", "--output-format", "concise", "pdfnet_core",
                                             "nodes", "tests", "benchmarks", "scripts", "__init__.py"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes():
    # the configuration (files, strictness) is pyproject.toml's [tool.mypy]
    result = subprocess.run(_tool("mypy"), cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
