"""How trustworthy a ground truth with repeats is: seed spread and split-half noise ceiling.

Pure numpy on ground-truth rows ``(model, target, seed, value)`` (see
:mod:`segotce_ray.demo.ground_truth`); no torch, so benchmarks and tests can use it on
the shipped CSVs.

Noise ceiling of one target: split the fine-tuning seeds into two halves (sizes
⌊S/2⌋ and ⌈S/2⌉), average each model's mIoU within each half, take the Pearson
correlation r_half of the two halves' values across models, correct it to the full set of
seeds with Spearman–Brown, r_full = 2 r_half / (1 + r_half), and average r_full over the
splits (every distinct split when there are at most ``max_splits``, else that many random
ones, seeded). It estimates how well the seed-mean ground truth would correlate with
another, independent run of the same fine-tuning: no score can be expected to correlate
with the ground truth much better than that.
"""

from __future__ import annotations

import itertools

import numpy as np


def value_table(rows, target: str) -> tuple[list[str], list[int], np.ndarray]:
    """(models, seeds, values (models x seeds)) of one target; NaN where a seed is missing."""
    sub = [r for r in rows if r[1] == target]
    models = sorted({r[0] for r in sub})
    seeds = sorted({int(r[2]) for r in sub})
    v = np.full((len(models), len(seeds)), np.nan)
    for m, _, s, x in sub:
        v[models.index(m), seeds.index(int(s))] = float(x)
    return models, seeds, v


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def seed_splits(n_seeds: int, max_splits: int = 64, rng_seed: int = 0) -> list[np.ndarray]:
    """Index sets of the first half of each split of ``n_seeds`` seeds (size ⌊n/2⌋); a
    split and its mirror image count once when the halves have equal size."""
    k = n_seeds // 2
    every = [np.array(c) for c in itertools.combinations(range(n_seeds), k)]
    if 2 * k == n_seeds:  # {A, B} and {B, A} are the same split
        every = [c for c in every if 0 in c]
    if len(every) <= max_splits:
        return every
    rng = np.random.default_rng(rng_seed)
    return [np.sort(rng.choice(n_seeds, k, replace=False)) for _ in range(max_splits)]


def noise_ceiling(values: np.ndarray, max_splits: int = 64) -> float:
    """Split-half reliability (Spearman–Brown corrected, mean over splits) of a
    (models x seeds) table; NaN with fewer than 2 seeds or 3 models."""
    values = np.asarray(values, np.float64)
    n_models, n_seeds = values.shape
    if n_seeds < 2 or n_models < 3:
        return float("nan")
    out = []
    for first in seed_splits(n_seeds, max_splits):
        second = np.setdiff1d(np.arange(n_seeds), first)
        r = _pearson(values[:, first].mean(1), values[:, second].mean(1))
        out.append(2 * r / (1 + r) if r > -1 else float("nan"))
    return float(np.nanmean(out))


def seed_spread(values: np.ndarray) -> float:
    """Mean over models of the standard deviation (ddof 1) of their values over seeds."""
    return float(np.nanmean(np.nanstd(np.asarray(values, np.float64), axis=1, ddof=1)))


def target_summary(rows, scratch: dict | None = None) -> dict[str, dict]:
    """Per target: best model and its seed-mean mIoU, the from-scratch mean (from the
    metadata's ``{target: {seed: mIoU}}``), their gap, the seed spread, the noise ceiling
    and the number of seeds."""
    out = {}
    for t in sorted({r[1] for r in rows}):
        models, seeds, v = value_table(rows, t)
        mean = np.nanmean(v, axis=1)
        best = int(np.argmax(mean))
        ref = (scratch or {}).get(t)
        s_mean = float(np.mean([float(x) for x in ref.values()])) if ref else float("nan")
        out[t] = {"best_model": models[best], "best": float(mean[best]), "scratch": s_mean,
                  "gap": float(mean[best] - s_mean), "spread": seed_spread(v),
                  "ceiling": noise_ceiling(v), "seeds": len(seeds), "models": len(models)}
    return out


def format_summary(summary: dict[str, dict]) -> str:
    """One line per target: best/scratch/gap/spread/ceiling."""
    lines = [f"{'target':<12} {'best model':<20} {'best':>6} {'scratch':>7} {'gap':>6} "
             f"{'spread':>6} {'ceiling':>7} seeds"]
    for t, s in summary.items():
        lines.append(f"{t:<12} {s['best_model']:<20} {s['best']:6.1f} {s['scratch']:7.1f} "
                     f"{s['gap']:6.1f} {s['spread']:6.2f} {s['ceiling']:7.3f} {s['seeds']}")
    return "\n".join(lines)
