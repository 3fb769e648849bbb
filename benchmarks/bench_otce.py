"""One SEG-OTCE repetition: ours against POT's exact ``ot.emd`` on the same pixels.

Inputs (``--cases``):

- ``real``: the demo's pools (``segotce-ray demo`` builds them; ``--workdir``, read only),
  every (model, target) pair of its spec unless ``--models`` / ``--targets`` narrow it, in
  each feature space — ``penultimate`` and ``probs`` read from the store, ``logits``
  extracted with the same models (cached under ``--cache``; the source pool = the model on
  its source dataset, the target pool = the model on the target);
- ``synthetic``: two shifted 19-class Gaussian mixtures, D = 256 and D = 19.

For each case (input, N) the same N pixels per side go to POT's ``ot.emd`` (cost in float64
plus network simplex; single-threaded) and to our solver (``--solvers``, default ``auto``)
at each of ``--threads`` (default 1 and 2), every run in a fresh process (its peak memory,
VmHWM, is its own), in alternating order. One thread is compared in CPU time (load on the
machine barely moves it), more threads in wall time. Each finished case is one JSON line
in ``--out`` (a rerun skips the cases already there: resumable); ``--summary FILE`` prints
min / median / max of the ratio ot.emd / ours per solver and thread count, and the peak
memory against the 3·N²·4-byte goal, over the cases in FILE.

    python benchmarks/bench_otce.py --workdir segotce-demo --out /tmp/bench.jsonl
    python benchmarks/bench_otce.py --workdir segotce-demo --models tiny_alderbrook \\
        --targets ironvale --spaces penultimate --threads 1 --out /tmp/one.jsonl
    python benchmarks/bench_otce.py --summary /tmp/bench.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def mixture(n: int, d: int, shift: float, seed: int, classes: int = 19):
    means = np.random.default_rng(1234 + d).normal(size=(classes, d)) * 2.0
    r = np.random.default_rng(seed)
    y = r.integers(0, classes, n)
    x = means[y] + r.normal(size=(n, d)) + shift
    return x.astype(np.float32), y


def demo_spec(workdir: Path):
    from segotce_ray.spec.build import load_spec

    return load_spec(workdir / "demo.yaml")


def logit_pools(spec, models: list[str], targets: list[str], cache: Path) -> dict:
    """{(model, dataset): (logits, labels)}, extracted once and cached as .npz in ``cache``."""
    from bench_quality import extract

    out, todo = {}, []
    for name in models:
        f = cache / f"logits_{name}.npz"
        if f.exists():
            z = np.load(f)
            out.update({(name, d): (z[f"{d}_x"], z[f"{d}_y"]) for d in z["datasets"]})
        if any((name, d) not in out for d in [spec.models[name].source, *targets]):
            todo.append(name)
    if todo:
        sub = dataclasses.replace(spec, models={m: spec.models[m] for m in todo},
                                  targets=list(spec.targets))
        pools = extract(sub, "cpu", 1000, spec.seed)
        cache.mkdir(parents=True, exist_ok=True)
        for name in todo:
            ds = [spec.models[name].source, *spec.targets]
            arrays = {f"{d}_x": pools[(name, d)]["logits"] for d in ds}
            arrays.update({f"{d}_y": pools[(name, d)]["labels"] for d in ds})
            np.savez(cache / f"logits_{name}.npz", datasets=np.array(ds), **arrays)
            out.update({(name, d): (pools[(name, d)]["logits"], pools[(name, d)]["labels"])
                        for d in ds})
    return out


def real_inputs(workdir: Path, models, targets, spaces, cache: Path):
    """Yield ``(label, key, source (X, y), target (X, y))`` for every (model, target, space)."""
    from segotce_ray.pools.store import PoolStore

    spec = demo_spec(workdir)
    models = models or list(spec.models)
    targets = targets or list(spec.targets)
    store = PoolStore(spec.store)
    keys = {}
    for key in store.keys():
        m = store.manifest(key)
        keys[(m["model"]["name"], m["dataset"])] = key
    logits = logit_pools(spec, models, targets, cache) if "logits" in spaces else {}
    for name in models:
        for target in targets:
            pair = (spec.models[name].source, target)
            for space in spaces:
                if space == "logits":
                    sides = [logits[(name, d)] for d in pair]
                else:
                    pools = [store.load(keys[(name, d)]) for d in pair]
                    sides = [(p.probs if space == "probs" else p.features, p.labels) for p in pools]
                sides = [(x.astype(np.float32), y.astype(np.int64)) for x, y in sides]
                yield (f"{name}>{target}:{space}", {"model": name, "target": target, "space": space},
                       sides[0], sides[1])


def draw(side, n: int, seed: int, ignore: int = 255):
    x, y = side
    keep = y != ignore
    x, y = x[keep], y[keep]
    i = np.sort(np.random.default_rng(seed).choice(len(y), size=min(n, len(y)), replace=False))
    return x[i], y[i]


def _peak_rss() -> int:
    """Peak resident bytes of this process: VmHWM (reset by exec, unlike ru_maxrss, which a
    spawned child inherits from its parent), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _child(what, fs, ys, ft, yt, solver, threads, queue):
    import torch

    torch.set_num_threads(threads)
    base = _peak_rss()
    c0, t0 = time.process_time(), time.perf_counter()
    if what == "emd":
        r = _emd(fs, ys, ft, yt)
    else:
        from segotce_ray.metrics.otce import otce_repetition

        r = otce_repetition(torch.from_numpy(fs), ys, torch.from_numpy(ft), yt, solver=solver,
                            tol=1e-3)
    queue.put({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - t0,
               "peak": _peak_rss() - base, **{k: r[k] for k in r if k != "profile"},
               "profile": r.get("profile")})


def run_fresh(what: str, fs, ys, ft, yt, solver: str = "", threads: int = 1) -> dict:
    """One run in a fresh process (its peak RSS is its own) with ``threads`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(what, fs, ys, ft, yt, solver, threads, q))
    p.start()
    out = q.get()
    p.join()
    return out


def _emd(fs, ys, ft, yt) -> dict:
    import ot

    from segotce_ray.metrics.otce import conditional_entropy

    c = ot.dist(fs.astype(np.float64), ft.astype(np.float64))
    p = ot.emd(ot.unif(len(ys)), ot.unif(len(yt)), c, numItermax=100_000_000)
    sc, tc = np.unique(ys), np.unique(yt)
    j = np.eye(len(sc))[np.searchsorted(sc, ys)].T @ p @ np.eye(len(tc))[np.searchsorted(tc, yt)]
    w_t = conditional_entropy(j / j.sum())
    return {"score": -w_t, "w_t": w_t}


def bench_case(key: dict, fs, ys, ft, yt, args, flip: bool) -> dict:
    runs = [("emd", "", 1)] + [("ours", s, t) for s in args.solvers for t in args.threads]
    res = {}
    for what, solver, threads in (runs[::-1] if flip else runs):
        res[(what, solver, threads)] = run_fresh(what, fs, ys, ft, yt, solver, threads)
    emd = res[("emd", "", 1)]
    out = {**key, "n": len(ys), "emd": emd, "ours": []}
    for (what, solver, threads), r in res.items():
        if what == "ours":
            clock = "cpu_s" if threads == 1 else "wall_s"
            out["ours"].append({**r, "solver_arg": solver, "threads": threads,
                                "ratio": emd[clock] / r[clock],
                                "mem_ratio": r["peak"] / (3 * len(ys) * len(yt) * 4),
                                "d_score_emd": abs(r["score"] - emd["score"])})
    return out


def print_case(label: str, case: dict) -> None:
    for r in case["ours"]:
        clock = "cpu" if r["threads"] == 1 else "wall"
        print(f"{label:<38} {case['n']:>6} {r['solver_arg']:>8} {r['solver']:>13} "
              f"{r['threads']}t {clock:>4} {r[clock + '_s']:>8.2f} {case['emd'][clock + '_s']:>8.2f} "
              f"{r['ratio']:>6.2f}x {r['iterations']:>6} {r['passes']:>6.1f} "
              f"{r['mem_ratio']:>5.2f} {case['emd']['peak'] / (3 * case['n'] ** 2 * 4):>5.2f} "
              f"{r['score']:>9.5f} {r['d_score_emd']:>8.1e}"
              + ("" if r["converged"] else "  NOT CONVERGED"), flush=True)


def summary(path: Path) -> None:
    """min / median / max of the ratio to ot.emd and of peak memory / (3·N²·4 bytes)."""
    groups: dict = {}
    cases = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for c in cases:
        for r in c["ours"]:
            groups.setdefault((c["n"], r["solver_arg"], r["threads"]), []).append(
                (r["ratio"], r["mem_ratio"], c.get("label", "")))
    print(f"# {len(cases)} cases from {path}")
    print(f"{'N':>6} {'solver':>8} {'thr':>3} {'cases':>5} {'min':>6} {'median':>6} {'max':>6}"
          f"   {'mem min':>7} {'median':>6} {'max':>6}  slowest")
    for (n, solver, threads), rows in sorted(groups.items()):
        ratio, mem = [r[0] for r in rows], [r[1] for r in rows]
        worst = min(rows)[2]
        print(f"{n:>6} {solver:>8} {threads:>3} {len(rows):>5} {min(ratio):>6.2f} "
              f"{statistics.median(ratio):>6.2f} {max(ratio):>6.2f}   {min(mem):>7.2f} "
              f"{statistics.median(mem):>6.2f} {max(mem):>6.2f}  {worst}")


def inputs(args):
    if "real" in args.cases:
        yield from real_inputs(args.workdir, args.models, args.targets, args.spaces, args.cache)
    if "synthetic" in args.cases:
        big = max(args.sizes)
        for d in (256, 19):
            yield (f"synthetic D={d}", {"model": "synthetic", "target": f"D={d}", "space": "-"},
                   mixture(big, d, 0.0, 1), mixture(big, d, 0.5, 2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["real"], choices=["real", "synthetic"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000])
    ap.add_argument("--solvers", nargs="+", default=["auto"])
    ap.add_argument("--workdir", type=Path, default=Path("segotce-demo"))
    ap.add_argument("--models", nargs="+", help="default: every model of the demo spec")
    ap.add_argument("--targets", nargs="+", help="default: every target of the demo spec")
    ap.add_argument("--spaces", nargs="+", default=["penultimate", "logits", "probs"])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--out", type=Path, default=Path("bench_otce.jsonl"),
                    help="one JSON line per finished case; cases already there are skipped")
    ap.add_argument("--cache", type=Path, default=Path("/tmp/bench_otce_cache"),
                    help="where extracted logits are cached (never inside --workdir)")
    ap.add_argument("--summary", type=Path, help="print the summary of a results file and exit")
    args = ap.parse_args()
    if args.summary:
        summary(args.summary)
        return
    import torch

    done = set()
    if args.out.exists():
        done = {(c["label"], c["n"]) for c in map(json.loads, args.out.read_text().splitlines()) if c}
    print(f"# torch {torch.__version__}; ours: {', '.join(args.solvers)} at {args.threads} threads "
          f"(1 thread: CPU time, more: wall); reference: POT ot.emd, same pixels; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"{'case':<38} {'N':>6} {'solver':>8} {'path':>13} thr clock {'ours s':>8} {'emd s':>8} "
          f"{'ratio':>7} {'iters':>6} {'passes':>6} {'mem':>5} {'emdmem':>5} {'score':>9} {'|Δ emd|':>8}")
    flip = False
    for label, key, src, tgt in inputs(args):
        for n in args.sizes:
            if (label, n) in done:
                continue
            fs, ys = draw(src, n, 1)
            ft, yt = draw(tgt, n, 2)
            case = bench_case({"label": label, **key}, fs, ys, ft, yt, args, flip)
            case["load"] = os.getloadavg()[0]
            with args.out.open("a") as fh:
                fh.write(json.dumps(case, default=float) + "\n")
            print_case(label, case)
            flip = not flip


if __name__ == "__main__":
    main()
