"""One SEG-OTCE repetition: ours against POT's exact ``ot.emd`` on the same pixels.

Inputs (``--cases``):

- ``real``: the demo's pools (``segotce-ray demo`` builds them; ``--workdir``), in each
  feature space — ``penultimate`` and ``probs`` read from the store, ``logits`` extracted in
  process with the same models — for ``--models`` (source pool = the model on its source
  dataset, target pool = the model on ``--target``);
- ``synthetic``: two shifted 19-class Gaussian mixtures, D = 256 and D = 19.

For each input and N, the same N pixels per side go to our solver (``--solvers``, default
``auto``, each in a fresh process for its peak memory) and to POT's ``ot.emd`` (cost in
float64 + network simplex), in alternating order. It prints wall seconds, the speed-up
(POT / ours), the path ``auto`` took, iterations, passes (kernel or cost entries touched /
N²), peak RSS against the 3·N²·4-byte goal, the score, and |Δscore| against the exact
coupling (ot.emd) and, with ``--reference``, against the plain ε-scaling Sinkhorn at
``tol=1e-4`` (the definition's entropic coupling; slow on near-exact problems).

    python benchmarks/bench_otce.py --workdir segotce-demo                 # real + synthetic
    python benchmarks/bench_otce.py --cases synthetic --sizes 2500 10000
    python benchmarks/bench_otce.py --solvers auto emd --sizes 5000 --reference
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import resource
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


def real_pools(workdir: Path, models: list[str], target: str, spaces: list[str]) -> dict:
    """{(model, space): (source (X, y), target (X, y))} from the demo's store and models."""
    from segotce_ray.spec.build import load_spec
    from segotce_ray.pools.store import PoolStore

    spec = load_spec(workdir / "demo.yaml")
    store = PoolStore(spec.store)
    keys = {}
    for key in store.keys():
        m = store.manifest(key)
        keys[(m["model"]["name"], m["dataset"])] = key
    out = {}
    for name in models:
        source = spec.models[name].source
        pools = [store.load(keys[(name, d)]) for d in (source, target)]
        for space in set(spaces) & {"penultimate", "probs"}:
            out[(name, space)] = tuple(
                ((p.probs if space == "probs" else p.features).astype(np.float32),
                 p.labels.astype(np.int64)) for p in pools)
    if "logits" in spaces:
        from bench_quality import extract

        sub = dataclasses.replace(spec, models={m: spec.models[m] for m in models}, targets=[target])
        pools = extract(sub, "cpu", 1000, spec.seed)
        for name in models:
            out[(name, "logits")] = tuple(
                (pools[(name, d)]["logits"].astype(np.float32), pools[(name, d)]["labels"].astype(np.int64))
                for d in (spec.models[name].source, target))
    return out


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


def _ours(args, queue):
    import torch

    from segotce_ray.metrics.otce import otce_repetition

    fs, ys, ft, yt, solver, tol, threads = args
    torch.set_num_threads(threads)
    base = _peak_rss()
    t0 = time.perf_counter()
    r = otce_repetition(torch.from_numpy(fs), ys, torch.from_numpy(ft), yt, solver=solver, tol=tol)
    dt = time.perf_counter() - t0
    queue.put((dt, r, _peak_rss() - base))


def run_ours(fs, ys, ft, yt, solver: str, tol: float, threads: int):
    """Our repetition in a fresh process (its peak RSS is ours alone)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_ours, args=((fs, ys, ft, yt, solver, tol, threads), q))
    p.start()
    out = q.get()
    p.join()
    return out


def run_emd(fs, ys, ft, yt):
    import ot

    from segotce_ray.metrics.otce import conditional_entropy

    t0 = time.perf_counter()
    c = ot.dist(fs.astype(np.float64), ft.astype(np.float64))
    p = ot.emd(ot.unif(len(ys)), ot.unif(len(yt)), c, numItermax=100_000_000)
    dt = time.perf_counter() - t0
    sc, tc = np.unique(ys), np.unique(yt)
    j = np.eye(len(sc))[np.searchsorted(sc, ys)].T @ p @ np.eye(len(tc))[np.searchsorted(tc, yt)]
    return dt, -conditional_entropy(j / j.sum())


def bench_case(label: str, fs, ys, ft, yt, args, flip: bool) -> None:
    n = len(ys)
    ref = None
    if args.reference:
        _, r, _ = run_ours(fs, ys, ft, yt, "sinkhorn", 1e-4, args.threads)
        ref = r["score"]
    order = ["emd", *args.solvers] if flip else [*args.solvers, "emd"]
    res = {}
    for what in order:
        res[what] = run_emd(fs, ys, ft, yt) if what == "emd" else run_ours(
            fs, ys, ft, yt, what, 1e-3, args.threads)
    t_emd, s_emd = res["emd"]
    for solver in args.solvers:
        dt, r, peak = res[solver]
        line = (f"{label:<28} {n:>6} {solver:>8} {r['solver']:>13} {dt:>8.2f} {t_emd:>8.2f} "
                f"{t_emd / dt:>7.2f}× {r['iterations']:>6} {r['passes']:>7.1f} "
                f"{peak / (3 * n * n * 4):>6.2f} {r['score']:>9.5f} {abs(r['score'] - s_emd):>9.2e}")
        if ref is not None:
            line += f" {abs(r['score'] - ref):>9.2e}"
        print(line + ("" if r["converged"] else "  NOT CONVERGED"), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["real", "synthetic"], choices=["real", "synthetic"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2500, 5000, 10000])
    ap.add_argument("--solvers", nargs="+", default=["auto"])
    ap.add_argument("--workdir", type=Path, default=Path("segotce-demo"))
    ap.add_argument("--models", nargs="+", default=["tiny_alderbrook", "lraspp_alderbrook"])
    ap.add_argument("--target", default="kestrel")
    ap.add_argument("--spaces", nargs="+", default=["penultimate", "logits", "probs"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", action="store_true",
                    help="also |Δscore| against the plain ε-scaling Sinkhorn at tol=1e-4 (slow)")
    args = ap.parse_args()
    import torch

    print(f"# torch {torch.__version__}, {args.threads} threads; ours: {', '.join(args.solvers)}; "
          f"reference: POT ot.emd, same pixels")
    inputs = []
    if "real" in args.cases:
        pools = real_pools(args.workdir, args.models, args.target, args.spaces)
        for (model, space), (src, tgt) in sorted(pools.items()):
            inputs.append((f"{model}:{space} D={src[0].shape[1]}", src, tgt))
    if "synthetic" in args.cases:
        for d in (256, 19):
            big = max(args.sizes)
            inputs.append((f"synthetic D={d}", mixture(big, d, 0.0, 1), mixture(big, d, 0.5, 2)))
    print(f"{'input':<28} {'N':>6} {'solver':>8} {'path':>13} {'ours s':>8} {'emd s':>8} "
          f"{'speed-up':>8} {'iters':>6} {'passes':>7} {'peak':>6} {'score':>9} {'|Δ emd|':>9}"
          + (f" {'|Δ def|':>9}" if args.reference else ""))
    flip = False
    for n in args.sizes:
        for label, src, tgt in inputs:
            fs, ys = draw(src, n, 1)
            ft, yt = draw(tgt, n, 2)
            bench_case(label, fs, ys, ft, yt, args, flip)
            flip = not flip


if __name__ == "__main__":
    main()
