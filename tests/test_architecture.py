"""The package's shape: data flows one way (no import circle), the library never imports the CLI, lines fit, and
no command imports torch to build its parser.

Every import counts, module-level or inside a function (a function-local import still ties the two modules
together), except those under ``if TYPE_CHECKING:``. The package root is left out: it only re-exports the public
functions lazily (``asr_transfer.train`` and friends), and every module may read its ``__version__``.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "asr_transfer"
MAX_LINE_CHARS = 120


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in ast.walk(node):
                if hasattr(child, "lineno"):
                    lines.add(child.lineno)
    return lines


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of the package it imports}``."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        if name == PACKAGE.name:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = _type_checking_lines(tree)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if node.lineno in skip if hasattr(node, "lineno") else False:
                continue
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{target}.{alias.name}" for alias in node.names] + [target]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name and target != PACKAGE.name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_imports_the_command_line():
    commands = f"{PACKAGE.name}.commands"
    offenders = {name: sorted(t for t in targets if t.startswith(commands))
                 for name, targets in import_graph().items()
                 if not name.startswith(commands) and name != f"{PACKAGE.name}.cli"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_module_lines_fit_in_120_characters():
    long = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in sorted(PACKAGE.rglob("*.py"))
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1) if len(line) > MAX_LINE_CHARS]
    assert long == []


# Importing torch and transformers costs 1-2 s; `--help`, `runs`, `report` and scoring an ONNX export need neither.
NO_TORCH_AT_START = """
import argparse, importlib, json, sys
from asr_transfer.cli import COMMANDS
out = {}
for name, (module, _) in COMMANDS.items():
    importlib.import_module(f"asr_transfer.commands.{module}").add_arguments(argparse.ArgumentParser())
    out[name] = "torch" in sys.modules
for module in ("config", "recipe", "curve", "evaluation", "report", "runs", "onnx_engine"):
    importlib.import_module(f"asr_transfer.{module}")
    out[module] = "torch" in sys.modules
print(json.dumps(out))
"""


def test_no_command_imports_torch_to_build_its_parser():
    """Every command's parser, and the modules that read configs, runs and exports, build without torch: it is
    imported by the work that needs it (training, a torch model), so start-up stays lean (docs/speed.md)."""
    done = subprocess.run([sys.executable, "-c", NO_TORCH_AT_START], capture_output=True, text=True, check=True)
    imported = json.loads(done.stdout)
    assert len(imported) > 20
    assert [name for name, torch in imported.items() if torch] == []
