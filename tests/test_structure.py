"""The import graph: kws_export stands on its own (nothing from training, no cycle among its
modules) and runtime/ needs neither torch nor the other packages.

Every import statement counts, wherever it is (module level, inside a function, under
``TYPE_CHECKING``): a lazy import is still a dependency."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import ROOT, cli_env

PACKAGE = ROOT / "kws_export"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imported(path: Path) -> set[str]:
    """Absolute names of every module an import statement in ``path`` names (for
    ``from a import b``: ``a.b`` when that is a module of this repository, else ``a``)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if _is_module(sub) else base)
    return names


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in sorted(PACKAGE.glob("*.py"))}
    return {name: {m for m in imported(path) if m in modules and m != name} for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_kws_export_imports_nothing_from_training():
    offenders = {module_name(p): sorted(m for m in imported(p) if m.split(".")[0] == "training")
                 for p in sorted(PACKAGE.glob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_kws_export_modules_have_no_import_cycle():
    edges = graph()
    assert len(edges) >= 15 and "kws_export.export_onnx" in edges["kws_export.cli"]
    assert "kws_export.quantize" in edges["kws_export.export_onnx"]
    assert cycles(edges) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_importing_every_kws_export_module_loads_no_training_module():
    """In a fresh interpreter: the modules each kws_export module pulls in (their union,
    which contains each one's own) hold no training module."""
    names = sorted(graph())
    probe = (
        "import importlib, json, sys\n"
        f"for name in {names!r}:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.'))))\n"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=cli_env(),
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout.splitlines()[-1]) == []


def test_runtime_imports_neither_torch_nor_the_other_packages():
    forbidden = {"torch", "torchaudio", "kws_export", "training", "onnx"}
    found = {module_name(p): sorted(m for m in imported(p) if m.split(".")[0] in forbidden)
             for p in sorted((ROOT / "runtime").glob("*.py"))}
    assert found and {k: v for k, v in found.items() if v} == {}


def test_the_installed_kws_export_command_is_the_one_with_synthesized_speech():
    """pyproject's ``kws-export`` runs training.console (which gives kws_export's CLI the
    synthesized speech); kws_export.console.kws_export is the CLI on its own."""
    text = (ROOT / "pyproject.toml").read_text()
    assert 'kws-export = "training.console:kws_export"' in text
    assert 'kws-train = "training.console:kws_train"' in text
    from training import console, export_cli
    from training.speech import SYNTHESIZED

    assert callable(console.kws_export) and export_cli.SYNTHESIZED is SYNTHESIZED
