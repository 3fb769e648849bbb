"""Large candidate pools: the full schedule against the adaptive one, same zoo, same run.

A simulated zoo of ``--models`` candidates (≥ 200) per target. Every pool is a class-conditional
Gaussian mixture (C classes in D dims, class c centred at ``sep · e_c``, unit noise); the
separation of model m on target t sets how well its features split the target's classes, so
its true SEG-OTCE score. Two zoo shapes, both spread and partly close (a cluster of
``--close`` candidates sits just above the rest, within 3 % of each other in separation):

- ``uniform``: the other separations uniform over [0.2, 3.0] — a crowded top (about a third
  of the zoo within two N=256 confidence half-widths of the 5th best): the hard case;
- ``skewed``: 0.2 + 2.8·Beta(1.2, 3) — most candidates weak, a thin tail of strong ones, as
  in a nightly sweep of checkpoints from many unrelated sources.

The savings of any error-controlled schedule are bounded by K / k₀ (every candidate needs
k₀ repetitions) and shrink with the number of candidates whose score is within a few noise
standard deviations of the k-th best; the two shapes show both ends.

Both schedules run on the same embedded Ray (``--cpus`` workers) with the same job seed. The
adaptive runs' repetitions are a subset of the full run's (same seeds), checked bit-for-bit.
Printed per schedule: repetitions spent, wall time, the ratio to the full schedule, and per
target the top-5 overlap with the full ranking and the regret of the chosen top-1 (full-schedule
mean of the full top-1 minus that of the adaptive top-1; 0 = same model).

Run: ``PYTHONPATH=. python benchmarks/bench_large_pool.py`` (about 3–4 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import pandas as pd

from segotce_ray.scoring.adaptive import AdaptiveSettings, score_pairs_adaptive
from segotce_ray.results.matrix import TransferabilityMatrix
from segotce_ray.pools.pool import PixelPool
from segotce_ray.cluster.runtime import init_ray
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.schedules import score_pairs


def mixture_pool(sep: float, seed: int, rows: int, dim: int, classes: int) -> PixelPool:
    """``rows`` pixels: labels uniform over C classes, features sep·e_label + N(0, I_D)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, rows)
    feats = sep * np.eye(classes, dim)[labels] + rng.normal(0.0, 1.0, (rows, dim))
    return PixelPool(feats.astype(np.float16), labels.astype(np.int16))


def make_zoo(shape: str, models: int, targets: int, close: int, rows: int, dim: int,
             classes: int, seed: int) -> tuple[list[tuple[str, str, str]], dict[tuple[str, str], PixelPool]]:
    rng = np.random.default_rng(seed)
    pools: dict[tuple[str, str], PixelPool] = {}
    pairs = []
    for i in range(models):
        m = f"model{i:04d}"
        pools[(m, "source")] = mixture_pool(3.0, seed * 7919 + i, rows, dim, classes)
    for j in range(targets):
        t = f"target{j}"
        seps = rng.uniform(0.2, 3.0, models) if shape == "uniform" else \
            0.2 + 2.8 * rng.beta(1.2, 3.0, models)
        top = rng.choice(models, close, replace=False)
        seps[top] = 3.1 * (1.0 + rng.uniform(0.0, 0.03, close))   # the close contenders
        for i in range(models):
            m = f"model{i:04d}"
            pools[(m, t)] = mixture_pool(float(seps[i]), seed * 104729 + j * 10007 + i, rows, dim,
                                         classes)
            pairs.append((m, "source", t))
    return pairs, pools


def top(table: pd.DataFrame, k: int) -> dict[str, list[str]]:
    r = TransferabilityMatrix(table).rankings("otce")
    return {t: list(g.sort_values("rank")["model"][:k]) for t, g in r.groupby("target")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", choices=["uniform", "skewed", "both"], default="both")
    ap.add_argument("--models", type=int, default=200)
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--close", type=int, default=8)
    ap.add_argument("--rows", type=int, default=1024, help="pixels per pool")
    ap.add_argument("--n-pixels", type=int, default=256)
    ap.add_argument("--dim", type=int, default=8)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--repetitions", type=int, default=10, help="K")
    ap.add_argument("--epsilon", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=5)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    settings = OTCESettings(n_pixels=args.n_pixels, repetitions=args.repetitions,
                            epsilon=args.epsilon)
    init_ray(num_cpus=args.cpus)
    print(f"zoo: {args.models} candidates × {args.targets} target(s), pools of {args.rows} px, "
          f"D={args.dim}, C={args.classes}; N={args.n_pixels}, K={args.repetitions}, "
          f"ε={args.epsilon}; top_k={args.top_k}, α={args.alpha}; {args.cpus} Ray CPU(s)")
    for shape in (["uniform", "skewed"] if args.zoo == "both" else [args.zoo]):
        pairs, pools = make_zoo(shape, args.models, args.targets, args.close, args.rows,
                                args.dim, args.classes, args.seed)
        run_zoo(shape, pairs, pools, settings, args)


def run_zoo(shape: str, pairs: list, pools: dict, settings: OTCESettings,
            args: argparse.Namespace) -> None:
    """Full schedule, then the adaptive ones, on one zoo; prints one table."""
    print(f"\n== zoo {shape!r}")

    t0 = time.perf_counter()
    full = score_pairs(pairs, pools, settings, seed=args.seed, progress=False)
    t_full = time.perf_counter() - t0
    assert (full["status"] == "ok").all(), full[full["status"] != "ok"].head()
    per_rep = float(full["seconds"].mean())
    full_top = top(full, 5)
    means = TransferabilityMatrix(full).summary().set_index(["model", "target"])["mean"]
    print(f"{'schedule':<26}{'reps':>7}{'× fewer':>9}{'wall s':>9}{'pruned':>8}"
          f"{'top-5 ∩':>9}{'top-1 regret':>14}")
    print(f"{'full':<26}{len(full):>7}{1.0:>9.2f}{t_full:>9.1f}{0:>8}{'5/5':>9}{0.0:>14.4f}")

    configs = [("adaptive k0=2", AdaptiveSettings(min_repetitions=2, top_k=args.top_k,
                                                  alpha=args.alpha)),
               ("adaptive k0=1 (probes)", AdaptiveSettings(min_repetitions=1, top_k=args.top_k,
                                                           alpha=args.alpha))]
    for name, sched in configs:
        t0 = time.perf_counter()
        run = score_pairs_adaptive(pairs, pools, settings, schedule=sched, seed=args.seed,
                                   progress=False)
        wall = time.perf_counter() - t0
        both = run.table.merge(full, on=["model", "target", "k"], suffixes=("", "_full"))
        assert len(both) == len(run.table), "adaptive computed a repetition the full run lacks"
        assert (both["score"] == both["score_full"]).all(), "a shared repetition differs"
        a_top = top(run.table, 5)
        overlaps, regrets = [], []
        for t, ref in full_top.items():
            overlaps.append(len(set(ref) & set(a_top[t])))
            regrets.append(float(means[(ref[0], t)] - means[(a_top[t][0], t)]))
        pruned = int((run.decisions["schedule_status"] == "pruned").sum())
        print(f"{name:<26}{run.repetitions:>7}{run.savings:>9.2f}{wall:>9.1f}{pruned:>8}"
              f"{'/'.join(map(str, overlaps)):>9}{max(regrets):>14.4f}")
        same_top1 = all(r == 0 for r in regrets)
        goal = run.savings >= 5 and same_top1 and min(overlaps) >= 4
        print(f"  per target top-5 overlap {overlaps}, same top-1: {same_top1}, "
              f"wall-time ratio full/adaptive {t_full / wall:.2f}; goal (≥5×, same top-1, "
              f"≥4/5): {'met' if goal else 'NOT met'}")
    print(f"\nmeasured: {per_rep * 1e3:.1f} ms per repetition (mean task body, N={args.n_pixels}, "
          f"{args.cpus} shared cores); all shared repetitions identical to the full run's")


if __name__ == "__main__":
    main()
