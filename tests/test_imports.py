"""Imports point one way, down the data flow, and never in a circle (ARCHITECTURE.md).

Every `import` and `from ... import` in lmforge/ counts, at module level and inside functions alike.
Each module belongs to a layer; a module may import its own layer and the layers below, never above,
and the import graph has no cycle (`import lmforge.a.b` is an edge to lmforge.a.b, not to the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lmforge"

LAYERS = [
    ("lmforge", "lmforge.errors", "lmforge.atomic", "lmforge.extras", "lmforge.config"),
    ("lmforge.corpus",),
    ("lmforge.tokenizer",),
    ("lmforge.data",),
    ("lmforge.models",),
    ("lmforge.objectives", "lmforge.optim", "lmforge.runtime", "lmforge.runtime_auto", "lmforge.checkpoint",
     "lmforge.launch", "lmforge.metrics_log"),
    ("lmforge.train",),
    ("lmforge.runs", "lmforge.plan", "lmforge.plan_memory", "lmforge.plan_activations"),
    ("lmforge.evaluate", "lmforge.generate", "lmforge.generate_seq2seq"),
    ("lmforge.tasks",),
    ("lmforge.pipeline", "lmforge.plan_timing"),
    ("lmforge.quickstart", "lmforge.plot", "lmforge.interop", "lmforge.compress", "lmforge.serve",
     "lmforge.probe", "lmforge.probe_lm", "lmforge.probe_exposure", "lmforge.probe_extraction", "lmforge.probe_pii"),
    ("lmforge.cli", "lmforge.__main__"),
]
"""The documented order, lowest first (ARCHITECTURE.md)."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The lmforge modules a file imports, anywhere in it."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return imports_in(path.read_text(encoding="utf-8"), name, package, known)


def imports_in(source: str, name: str, package: str, known: set[str]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, up level - 1
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # `from lmforge import runs` imports the module lmforge.runs
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in found if m in known and m != name}


def layer_of(module: str) -> int:
    best, depth = None, -1
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    return best


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` (a list of nodes, first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_imports_point_down_the_documented_order():
    upward = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
              for a, targets in graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert upward == []


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_look_for():
    """The checker itself: a cycle and an upward import in a made-up graph are found."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("lmforge.runs") > layer_of("lmforge.train") > layer_of("lmforge.models")
    assert layer_of("lmforge.tasks.classify") == layer_of("lmforge.tasks")
    source = "def f():\n    from lmforge.pipeline import train_run\nimport lmforge.runs\nfrom .. import cli\n"
    found = imports_in(source, "lmforge.models.gpt", "lmforge.models", set(modules()))
    assert found == {"lmforge.pipeline", "lmforge.runs", "lmforge.cli"}
