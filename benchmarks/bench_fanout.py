#!/usr/bin/env python
"""Repetitions/s of the Ray fan-out against serial ``otce_score`` in one process.

Same pairs, same seeds, same run: a synthetic zoo of Gaussian-mixture pools (P pixels,
D-dim features, C classes) is scored

1. serially in this process, one ``otce_score(repetitions=1, seed=repetition_seed(...))``
   per (pair, k) — exactly the work of one fan-out task (``serial/rep``);
2. by :func:`segotce_ray.scoring.schedules.score_pairs` on an embedded Ray with 1 worker, one task per
   (pair, k) and grouped (one task per pair), then with 2 workers.

Every timing is taken after a warm-up (worker processes started, imports done); Ray start-up
is reported separately. Serial and fan-out runs alternate (``--repeat`` rounds under the same
Ray instance) and the best time of each is compared, so a machine shared with other work
biases neither side. As a load-independent figure it also prints the 1-worker fan-out's wall
time outside the solves (wall − Σ in-task solve seconds) per task. BLAS/torch threads are pinned to 1 in this process, as Ray pins them
in a ``num_cpus=1`` worker, so each side computes on one core. The fan-out's scores are
checked to be identical to the serial ones. (Run it from a snapshot of the repository when
others edit the working tree: workers import the package when they start.)

Goal: overhead of the 1-worker fan-out ≤ 10 % (``serial/rep`` rate ÷ fan-out rate − 1);
the 2-worker speed-up is reported. ``--gpu-share P`` (no Ray needed) instead times P
processes sharing one GPU, which is what ``num_gpus=1/P`` tasks do.

    python benchmarks/bench_fanout.py                      # N=1000, 3×2 pairs, K=2, 3 rounds
    python benchmarks/bench_fanout.py --n-pixels 2000 --repeat 2
    python benchmarks/bench_fanout.py --gpu-share 1 2 4 --n-pixels 10000 --reps 8
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from segotce_ray.pools.pool import PixelPool  # noqa: E402


def make_zoo(models: int, targets: int, pool: int, dim: int, classes: int, seed: int = 0):
    """Pools of Gaussian mixtures: class centres of spread ``sep`` differ per model."""
    rng = np.random.default_rng(seed)
    pools, pairs = {}, []
    for m in range(models):
        name = f"model{m:02d}"
        centres = rng.normal(0, 1.0 + m, (classes, dim))
        for d in ["source"] + [f"target{t}" for t in range(targets)]:
            y = rng.integers(0, classes, pool)
            f = centres[y] + rng.normal(0, 1.0, (pool, dim))
            pools[(name, d)] = PixelPool(f.astype(np.float16), y.astype(np.int16),
                                         meta={"model": name, "dataset": d})
        pairs += [(name, "source", f"target{t}") for t in range(targets)]
    return pairs, pools


def serial_per_rep(pairs, pools, spec, seed):
    from segotce_ray.seeds import repetition_seed

    out = {}
    t0 = time.perf_counter()
    for model, source, target in pairs:
        for k in range(spec.repetitions):
            s = repetition_seed(seed, model, target, k)
            row = spec.repetition(pools[(model, source)], pools[(model, target)], s, **spec.params)
            out[(model, target, k)] = row["score"]
    return time.perf_counter() - t0, out


def fanout(pairs, pools, spec, seed, workers, reps_per_task):
    from segotce_ray.scoring.schedules import score_pairs

    t0 = time.perf_counter()
    df = score_pairs(pairs, pools, seed=seed, metrics=[spec], reps_per_task=reps_per_task,
                     progress=False)
    dt = time.perf_counter() - t0
    bad = df[df["status"] != "ok"]
    if len(bad):
        raise RuntimeError(f"fan-out failed rows: {bad['error'].iloc[0]}")
    scores = {(m, t, int(k)): s for m, t, k, s in zip(df["model"], df["target"], df["k"],
                                                       df["score"])}
    return dt, scores, float(df["seconds"].sum())


def measure_with_ray(pairs, pools, spec, seed, workers, modes, repeat, timings, results):
    """Start Ray with ``workers`` CPUs, warm it up, then alternate serial and fan-out runs.

    Alternating keeps the serial reference and the fan-out under the same machine load;
    each configuration's time is recorded for every round (``timings[label]`` is a list).
    """
    import ray

    from segotce_ray.cluster.runtime import init_ray

    t0 = time.perf_counter()
    init_ray(num_cpus=workers)
    timings.setdefault(f"ray_start/{workers}w", []).append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    fanout(pairs[:1], pools, spec, seed + 1, workers, 1)   # start the workers, import there
    timings.setdefault(f"warmup/{workers}w", []).append(time.perf_counter() - t0)
    for _ in range(repeat):
        dt, scores = serial_per_rep(pairs, pools, spec, seed)
        timings.setdefault(f"serial/rep@{workers}w", []).append(dt)
        results["serial/rep"] = scores
        for label, per_task in modes:
            dt, scores, solve = fanout(pairs, pools, spec, seed, workers, per_task)
            timings.setdefault(f"{label}/{workers}w", []).append(dt)
            timings.setdefault(f"solve:{label}/{workers}w", []).append(solve)
            results[f"{label}/{workers}w"] = scores
    ray.shutdown()


def gpu_share_worker(args):
    """One process of the GPU-sharing probe: ``reps`` repetitions on cuda."""
    n, dim, classes, pool, reps, seed = args
    import torch

    from segotce_ray import otce_score

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 2, (classes, dim))
    ys, yt = rng.integers(0, classes, pool), rng.integers(0, classes, pool)
    fs = (centres[ys] + rng.normal(0, 1, (pool, dim))).astype(np.float16)
    ft = (centres[yt] + rng.normal(0, 1, (pool, dim))).astype(np.float16)
    otce_score(fs, ys, ft, yt, n_pixels=min(n, 1000), repetitions=1, device="cuda")  # warm-up
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = otce_score(fs, ys, ft, yt, n_pixels=n, repetitions=reps, seed=seed, device="cuda")
    torch.cuda.synchronize()
    return time.perf_counter() - t0, int(np.sum(res.iterations)), bool(np.all(res.converged))


def gpu_share(args) -> None:
    import multiprocessing as mp

    total = args.reps
    print(f"GPU sharing probe: N={args.n_pixels}, D={args.dim}, C={args.classes}, "
          f"{total} repetitions split over P processes on one GPU")
    base = None
    ctx = mp.get_context("spawn")
    for procs in args.gpu_share:
        per = max(1, total // procs)
        with ctx.Pool(procs) as pool:
            t0 = time.perf_counter()
            outs = pool.map(gpu_share_worker, [(args.n_pixels, args.dim, args.classes, args.pool,
                                                per, 100 + i) for i in range(procs)])
            wall = time.perf_counter() - t0 - 0.0
        reps = per * procs
        rate = reps / max(o[0] for o in outs)
        base = base or rate
        print(f"  P={procs}: {reps} reps, slowest process {max(o[0] for o in outs):.2f} s -> "
              f"{rate:.2f} rep/s ({rate / base:.2f}x P=1; mean {np.mean([o[0] / per for o in outs]):.2f}"
              f" s/rep per process; converged={all(o[2] for o in outs)}; wall incl. spawn {wall:.1f} s)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=3)
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2, help="K repetitions per pair")
    ap.add_argument("--n-pixels", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=20_000, help="pixels per pool")
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--epsilon", type=float, default=0.1)
    ap.add_argument("--solver", default="sinkhorn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3,
                    help="alternating serial/fan-out rounds per worker count (best is reported)")
    ap.add_argument("--gpu-share", type=int, nargs="*", help="GPU sharing probe with P processes")
    ap.add_argument("--json", type=Path, help="also write the timings here")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.gpu_share:
        gpu_share(args)
        return 0

    import torch

    torch.set_num_threads(1)
    from segotce_ray.scoring.settings import OTCESettings
    from segotce_ray.scoring.adapters import otce_metric

    spec = otce_metric(OTCESettings(n_pixels=args.n_pixels, repetitions=args.reps,
                                    epsilon=args.epsilon, solver=args.solver))
    pairs, pools = make_zoo(args.models, args.targets, args.pool, args.dim, args.classes)
    n_reps = len(pairs) * args.reps
    print(f"bench_fanout: {len(pairs)} pairs x K={args.reps} = {n_reps} repetitions; "
          f"N={args.n_pixels}, pool={args.pool}, D={args.dim}, C={args.classes}, "
          f"eps={args.epsilon}, solver={args.solver}; {os.cpu_count()} CPU(s); threads/process=1")
    timings: dict[str, list[float]] = {}
    results: dict[str, dict] = {}
    serial_per_rep(pairs[:1], pools, spec, args.seed + 7)          # warm-up (imports, JIT)
    measure_with_ray(pairs, pools, spec, args.seed, 1, [("ray/rep", 1), ("ray/pair", args.reps)],
                     args.repeat, timings, results)
    measure_with_ray(pairs, pools, spec, args.seed, 2, [("ray/rep", 1)], args.repeat, timings,
                     results)
    best = {k: min(v) for k, v in timings.items()}
    rate = {k: n_reps / v for k, v in best.items()
            if not k.startswith(("ray_start", "warmup", "solve:"))}
    print(f"\nrepetitions/s, best of {args.repeat} alternating round(s) (higher is better)")
    for k, v in rate.items():
        runs = ", ".join(f"{t:.1f}" for t in timings[k])
        print(f"  {k:<16} {v:8.3f} rep/s  {best[k] / n_reps * 1e3:7.0f} ms/rep   (runs: {runs} s)")
    print(f"  Ray start {best['ray_start/1w']:.1f} s (1w) / {best['ray_start/2w']:.1f} s (2w); "
          f"first tasks (worker start + imports) {best['warmup/1w']:.1f} s / {best['warmup/2w']:.1f} s")
    overhead = rate["serial/rep@1w"] / rate["ray/rep/1w"] - 1
    overhead_grouped = rate["serial/rep@1w"] / rate["ray/pair/1w"] - 1
    speedup = rate["ray/rep/2w"] / rate["serial/rep@2w"]
    ref = results["serial/rep"]
    same = {k: v == ref for k, v in results.items() if k != "serial/rep"}
    diff = max(abs(v[key] - ref[key]) for k, v in results.items() for key in ref)
    print(f"  overhead, 1 worker, task per (pair,k): {overhead * 100:+6.1f} %  (goal <= 10 %)")
    print(f"  overhead, 1 worker, task per pair:     {overhead_grouped * 100:+6.1f} %")
    print(f"  speed-up, 2 workers vs serial:         {speedup:6.2f}x")
    # Robust to a busy machine: the fan-out's wall time not spent inside the solves (1 worker).
    outside = [w - sv for w, sv in zip(timings["ray/rep/1w"], timings["solve:ray/rep/1w"])]
    solve = timings["solve:ray/rep/1w"]
    frac = [o / sv for o, sv in zip(outside, solve)]
    print(f"  1 worker, time outside the solves:     {np.median(outside) / n_reps * 1e3:6.1f} ms/task "
          f"= {np.median(frac) * 100:+.1f} % of solve time (median of {len(frac)})")
    print(f"  fan-out scores identical to serial:    {all(same.values())} (max |diff| {diff:.3g}) {same}")
    run = {"timings": timings, "rates": rate, "overhead_1w": overhead,
           "overhead_1w_grouped": overhead_grouped, "speedup_2w": speedup, "identical": same, "max_abs_diff": diff,
           "outside_solve_fraction_1w": float(np.median(frac))}
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)},
                                         "run": run}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
