"""The layers point one way (core <- adapters <- experiments) and install under ddplug names."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ("ddplug_avalanche", "ddplug_flower")
FRAMEWORKS = ("avalanche", "flwr", "flwr_datasets", "ray")


def imported_modules(path: Path, *, typing_only: bool = True) -> set[str]:
    """Every module ``path`` imports anywhere (top level, inside functions, by
    ``importlib.import_module``/``__import__`` with a literal name); ``from a import b`` names
    ``a.b`` too, in case ``b`` is a module. Without ``typing_only``, imports under ``if
    TYPE_CHECKING:`` are left out (they never run)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = set()
    if not typing_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    modules = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
            modules.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None))
              in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)):
            modules.add(str(node.args[0].value))
    return modules


def offenders(folder: Path, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        for module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


def test_the_core_imports_no_adapter_experiment_or_framework() -> None:
    assert offenders(ROOT / "ddplug", ("strategies", "simulations", *ADAPTERS, *FRAMEWORKS)) == []


def test_the_adapters_import_no_experiment() -> None:
    assert offenders(ROOT / "strategies", ("strategies", "simulations")) == []


def module_graph(*packages: str) -> dict[str, set[str]]:
    """Each module of ``packages`` (a package by its ``__init__``) and the modules of theirs it imports when run."""
    names = {}
    for package in packages:
        folder = ROOT / package if (ROOT / package).is_dir() else ROOT / "strategies" / package
        for path in folder.rglob("*.py"):
            parts = (package, *path.relative_to(folder).with_suffix("").parts)
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return {name: {module for module in imported_modules(path, typing_only=False) if module in names} - {name}
            for name, path in names.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_round_a_circle() -> None:
    graph = module_graph("ddplug", *ADAPTERS)
    assert "ddplug.methods.base" in graph and "ddplug_flower.server" in graph
    assert cycles(graph) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from flwr.app import Message\n    import importlib\n"
                      "    importlib.import_module('simulations.x')\n")
    assert imported_modules(module) >= {"flwr.app", "simulations.x"}


@pytest.mark.subprocess
def test_the_wheel_installs_no_generic_top_level_package(tmp_path: Path) -> None:
    completed = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                                "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    (wheel,) = tmp_path.glob("ddplug-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        declared = archive.read(entry_points).decode()
    assert top_level == {"ddplug", *ADAPTERS}
    assert "cl = ddplug_avalanche.command:COMMAND" in declared and "fl = ddplug_flower.simulation:COMMAND" in declared
