"""prunekit's modules import each other without a cycle: every import, at module level or inside a function,
is an edge of the graph (a lazy import hides a cycle from Python, not from the reader)."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Every module of src/prunekit by dotted name (a package by the name of its ``__init__``)."""
    out = {}
    for path in sorted((root / "prunekit").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The prunekit modules that ``name`` imports (``from pkg import sub`` names the submodule when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            targets = [(target, [a.name for a in node.names])]
        else:
            continue
        for target, names in targets:
            if not target.startswith("prunekit"):
                continue
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in modules]
            found.update(subs)
            if len(subs) < len(names) or not names:
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                found.add(target)
    found.discard(name)
    return found


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, set[str]]:
    """The import graph of src/prunekit, parsed once per test process (the tests below only read it)."""
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in order, the first repeated at the end), or None."""
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
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_finder_sees_a_cycle_and_a_clean_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_relative_and_lazy_imports_are_edges(tmp_path):
    pkg = tmp_path / "prunekit" / "sub"
    pkg.mkdir(parents=True)
    (tmp_path / "prunekit" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("from .a import f\n")
    (pkg / "a.py").write_text("def f():\n    from . import b\n    from ..sub.b import g\n")
    (pkg / "b.py").write_text("from prunekit.sub import a\n")
    modules = module_files(tmp_path)
    graph = {n: imports_of(n, p, modules) for n, p in modules.items()}
    assert graph["prunekit.sub"] == {"prunekit.sub.a"}
    assert graph["prunekit.sub.a"] == {"prunekit.sub.b"}
    assert find_cycle(graph) == ["prunekit.sub.a", "prunekit.sub.b", "prunekit.sub.a"]


def test_src_prunekit_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_structured_graph_engine_knows_no_model_family():
    graph = import_graph()
    engine = [n for n in graph if n.startswith("prunekit.structured.graph")]
    above = [(n, m) for n in engine for m in graph[n]
             if m.startswith("prunekit.structured") and not m.startswith("prunekit.structured.graph")]
    assert engine and not above, f"structured/graph imports upwards: {above}"


def test_infra_and_core_import_only_downwards():
    # issue 21: infra (files, locks, timing) knows nothing else of prunekit; core knows infra and no method
    graph = import_graph()
    layers = {"prunekit.infra": ("prunekit.infra",), "prunekit.core": ("prunekit.infra", "prunekit.core")}
    wrong = [(n, m) for low, allowed in layers.items() for n in graph if n.startswith(low + ".")
             for m in graph[n] if m.startswith("prunekit.") and m != "prunekit" and not m.startswith(allowed)]
    assert any(n.startswith("prunekit.infra.") for n in graph) and not wrong, f"imports pointing up: {wrong}"
