"""Demo package structure (no import cycles, short functions), the worker runner's
allow-list, and the reliability arithmetic of ground truths with repeats."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest

from segotce_ray.demo import reliability as rel
from segotce_ray.demo import workers

DEMO = Path(__file__).resolve().parents[1] / "segotce_ray" / "demo"
PKG = "segotce_ray.demo"


def _module_name(path: Path) -> str:
    return PKG if path.stem == "__init__" else f"{PKG}.{path.stem}"


def _imports(path: Path) -> set[str]:
    """Demo modules ``path`` imports anywhere in it (function-level imports included)."""
    names = {_module_name(p) for p in DEMO.glob("*.py")}
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name in names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if node.level == 0 else f"{PKG}.{node.module}"
            out |= {base} & names
            out |= {f"{base}.{a.name}" for a in node.names} & names
    return out - {_module_name(path)}


def test_demo_modules_import_no_cycle():
    graph = {_module_name(p): _imports(p) for p in DEMO.glob("*.py")}
    assert graph[f"{PKG}.workers"] == set()   # the runner knows no job module
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(path + [nxt])
            if nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])


def test_demo_functions_are_at_most_80_lines():
    long = [f"{p.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)"
            for p in DEMO.glob("*.py") for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            and n.end_lineno - n.lineno + 1 > 80]
    assert not long


def test_workers_run_only_the_listed_job_functions():
    def sneaky() -> None:
        raise AssertionError("must not run")

    with pytest.raises(ValueError, match="not a job function"):
        workers.run_jobs([(sneaky, {})], workers=1)
    with pytest.raises(ValueError, match="not a job function"):
        workers._resolve("os:system")
    from segotce_ray.demo.ground_truth import pair_job

    assert workers.job_name(pair_job) == "segotce_ray.demo.ground_truth:pair_job"


def test_seed_splits_count_each_split_once():
    assert [list(s) for s in rel.seed_splits(3)] == [[0], [1], [2]]
    four = rel.seed_splits(4)
    assert len(four) == 3 and all(0 in s and len(s) == 2 for s in four)
    assert len(rel.seed_splits(12, max_splits=10)) == 10


def test_noise_ceiling_by_hand():
    # seeds agree up to a per-seed offset: reliability 1
    v = np.array([[1.0, 11.0], [2.0, 12.0], [3.0, 13.0]])
    assert rel.noise_ceiling(v) == pytest.approx(1.0)
    # two seeds, r_half = pearson([1,2,3],[2,1,3]) = 0.5 -> 2*0.5/1.5
    v = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 3.0]])
    assert rel.noise_ceiling(v) == pytest.approx(2 / 3)
    # three seeds: the mean over the splits {0|12}, {1|02}, {2|01}
    v = np.array([[1.0, 2.0, 1.0], [2.0, 1.0, 3.0], [3.0, 3.0, 2.0], [4.0, 5.0, 5.0]])
    want = []
    for k in range(3):
        rest = [j for j in range(3) if j != k]
        r = np.corrcoef(v[:, k], v[:, rest].mean(1))[0, 1]
        want.append(2 * r / (1 + r))
    assert rel.noise_ceiling(v) == pytest.approx(np.mean(want))
    assert math.isnan(rel.noise_ceiling(v[:, :1])) and math.isnan(rel.noise_ceiling(v[:2]))


def test_noise_ceiling_falls_with_seed_noise():
    rng = np.random.default_rng(0)
    effect = np.linspace(0, 10, 8)[:, None]
    quiet = rel.noise_ceiling(effect + rng.normal(0, 0.5, (8, 4)))
    loud = rel.noise_ceiling(effect + rng.normal(0, 8.0, (8, 4)))
    assert quiet > 0.95 > loud


def test_target_summary_reads_rows_and_scratch():
    rows = [("a", "t", 0, 50.0), ("a", "t", 1, 52.0), ("b", "t", 0, 40.0), ("b", "t", 1, 40.0),
            ("c", "t", 0, 30.0), ("c", "t", 1, 31.0)]
    s = rel.target_summary(rows, {"t": {0: 10.0, 1: 20.0}})["t"]
    assert s["best_model"] == "a" and s["best"] == 51.0 and s["scratch"] == 15.0
    assert s["gap"] == 36.0 and s["seeds"] == 2 and s["models"] == 3
    assert s["spread"] == pytest.approx(np.mean([np.std([50, 52], ddof=1), 0.0,
                                                 np.std([30, 31], ddof=1)]))
    assert "a" in rel.format_summary({"t": s})
