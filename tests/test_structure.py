"""The package's shape (README, "Architecture"): no import circle between modules (imports
inside functions count), no function over 80 lines, folders that import only downward."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segotce_ray"
MAX_FUNCTION_LINES = 80

#: Folders (and top modules) from top to bottom: a module may import its own folder and
#: anything listed after it, never before it.
LAYERS = ["cli", "demo", "job", "results", "spec", "scoring", "extract", "pools", "inputs",
          "cluster", "metrics", "ot", "seeds", "io"]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}


def _edges(mods: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Every import of a package module by another, at any depth (functions included)."""
    out: dict[str, set[str]] = {m: set() for m in mods}
    for name, tree in mods.items():
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("segotce_ray"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    targets.append(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                targets += [a.name for a in node.names if a.name.startswith("segotce_ray")]
            for t in targets:
                if t in mods and t != name and not name.startswith(t + "."):
                    out[name].add(t)
    return out


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else None


def test_no_import_circle_between_modules():
    assert _cycles(_edges(_modules())) == []


def test_folders_import_only_downward():
    upward = []
    for src, targets in _edges(_modules()).items():
        for dst in targets:
            a, b = _layer(src), _layer(dst)
            if a is not None and b is not None and b < a:
                upward.append(f"{src} -> {dst}")
    assert upward == []


def test_no_function_over_80_lines():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert long == []


def test_the_checks_see_a_circle_and_a_long_function(tmp_path):
    """The checkers themselves: a planted circle and a planted long function are found."""
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    tree = ast.parse(f"def f():\n{body}\n")
    fn = tree.body[0]
    assert fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES


def test_a_peer_metric_is_spelled_in_its_file_and_its_registry_entry_only():
    from segotce_ray.metrics import registry

    mods = _modules()
    for name, rec in registry.METRICS.items():
        if rec.runner != "peer":
            continue
        where = sorted(m for m, tree in mods.items()
                       if any(isinstance(x, ast.Constant) and x.value == name for x in ast.walk(tree)))
        assert len(where) <= 2 and "segotce_ray.metrics.registry" in where, (name, where)
