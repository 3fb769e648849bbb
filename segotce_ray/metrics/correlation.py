"""How well transferability scores predict real transfer results (pure: arrays in, numbers out).

Per target dataset t with M candidate models: scores ``s`` (M,) (higher = more transferable)
and ground truth ``g`` (M,) (e.g. mIoU after fine-tuning, higher = better). Measures:

================  ==========================================================================
pearson           r = cov(s, g) / (σ_s σ_g)                              (scipy ``pearsonr``)
spearman          Pearson on average ranks                               (scipy ``spearmanr``)
kendall_tau       τ_b = (P − Q) / √((P + Q + T_s)(P + Q + T_g))          (scipy ``kendalltau``)
weighted_tau      Vigna's τ_w, additive hyperbolic weights 1/(r+1) + 1/(s+1), averaged over
                  the rankings by (s, g) and (g, s)                      (scipy ``weightedtau``)
relative_top1     g[argmax s] / max g
regret            max g − g[argmax s]                  (absolute, in the units of g: "points")
relative_regret   (max g − g[argmax s]) / max g = 1 − relative_top1
best_in_top3      1 if argmax g is among the 3 best models by s, else 0
rel_at_k          max_{m ∈ top-k by s} g_m / max g                       (k = 3 in the table)
================  ==========================================================================

Ties in ``s`` are broken by input order (:func:`correlation_table` sorts models by name first,
so the result never depends on row order). Degenerate inputs (fewer than 3 models, constant
scores, constant ground truth, non-finite values) give NaN with a ``reason``, never an error.

How much a figure can be trusted (reference §4.1):

- ground truth with fine-tuning repeats (a ``seed`` column): :func:`ground_truth_means`,
  :func:`ground_truth_summary` (per-pair mean, per-target seed spread and split-half **noise
  ceiling**), :func:`ground_truth_problems` (what is wrong with a ground-truth table, by line);
- :func:`bootstrap_replicates` / :func:`bootstrap_intervals`: seeded percentile intervals
  over models for :data:`BOOTSTRAP_MEASURES` (``correlation_table`` adds ``<measure>_lo`` /
  ``<measure>_hi``);
- :func:`tied_at_top` / :func:`top_ties`: a top-1 pick within noise of the runner-up;
- :func:`random_baseline`, :func:`beats_baseline`, :func:`compare_with_baselines`: the random
  ranking's expected figures and whether a metric beats a baseline;
- :func:`family_agreement`, :func:`driving_family`: agreement per architecture family and a
  family that alone drives the overall figure.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "ALL_FAMILIES",
    "BOOTSTRAP_MEASURES",
    "INTERVAL_COLUMNS",
    "LOWER_IS_BETTER",
    "MEAN_ROW",
    "MEASURES",
    "MIN_MODELS",
    "RANDOM",
    "GroundTruthProblem",
    "GroundTruthSummary",
    "beats_baseline",
    "best_in_top_n",
    "bootstrap_intervals",
    "bootstrap_replicates",
    "capacity_score",
    "compare_with_baselines",
    "correlation_table",
    "driving_family",
    "family_agreement",
    "ground_truth_means",
    "ground_truth_problems",
    "ground_truth_summary",
    "kendall_tau",
    "measures_for_target",
    "pearson",
    "random_baseline",
    "regret",
    "rel_at_k",
    "relative_regret",
    "relative_top1",
    "spearman",
    "split_half_reliability",
    "tied_at_top",
    "top_ties",
    "weighted_kendall_tau",
]

#: The ``target`` value of the per-metric mean-over-targets row in :func:`correlation_table`.
MEAN_ROW = "__mean__"
#: Minimum number of models for any measure to be reported.
MIN_MODELS = 3
#: Columns of the per-target measures, in report order.
MEASURES = ("pearson", "spearman", "kendall_tau", "weighted_tau", "relative_top1", "regret",
            "relative_regret", "best_in_top3", "rel_at_3")
#: Measures that :func:`correlation_table` gives a bootstrap interval.
BOOTSTRAP_MEASURES = ("pearson", "spearman", "kendall_tau", "weighted_tau", "regret")
#: ``<measure>_lo, <measure>_hi`` for each of :data:`BOOTSTRAP_MEASURES`, in table order.
INTERVAL_COLUMNS = tuple(f"{m}_{end}" for m in BOOTSTRAP_MEASURES for end in ("lo", "hi"))
#: Measures where lower is better (the rest of :data:`MEASURES` are higher-is-better).
LOWER_IS_BETTER = frozenset({"regret", "relative_regret"})
#: The ``family`` value of the all-models rows in :func:`family_agreement`.
ALL_FAMILIES = "__all__"


def _pair(scores: Sequence[float], truth: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = np.asarray(truth, dtype=np.float64).reshape(-1)
    if s.shape != g.shape:
        raise ValueError(f"scores has {s.size} values, ground truth {g.size}")
    return s, g


def _quiet(fn, *args) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = fn(*args)
    value = float(res[0] if isinstance(res, tuple) else res.statistic)
    return value


def _association(fn, scores: Sequence[float], truth: Sequence[float]) -> float:
    """``fn(s, g)`` of a scipy association measure; NaN when either side is constant or M < 2."""
    s, g = _pair(scores, truth)
    if s.size < 2 or np.ptp(s) == 0 or np.ptp(g) == 0:
        return math.nan
    return _quiet(fn, s, g)


def pearson(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Pearson r of (M,) scores vs (M,) ground truth; NaN when either is constant or M < 2."""
    return _association(stats.pearsonr, scores, truth)


def spearman(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman ρ (average ranks for ties); NaN when either side is constant or M < 2."""
    return _association(stats.spearmanr, scores, truth)


def kendall_tau(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Kendall τ_b (tie-corrected); NaN when either side is constant or M < 2."""
    return _association(stats.kendalltau, scores, truth)


def weighted_kendall_tau(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Vigna's weighted τ (scipy ``weightedtau`` defaults: hyperbolic, additive, rank=True)."""
    return _association(stats.weightedtau, scores, truth)


def _order_by_score(s: np.ndarray) -> np.ndarray:
    """Indices of s from best to worst; ties keep input order (stable)."""
    return np.argsort(-s, kind="stable")


def relative_top1(scores: Sequence[float], truth: Sequence[float]) -> float:
    """g[argmax s] / max g (1 = the metric picked the best model); NaN if max g ≤ 0."""
    return rel_at_k(scores, truth, 1)


def regret(scores: Sequence[float], truth: Sequence[float]) -> float:
    """Absolute regret max g − g[argmax s], in the units of g (e.g. mIoU points)."""
    s, g = _pair(scores, truth)
    if s.size == 0:
        return math.nan
    return float(g.max() - g[_order_by_score(s)[0]])


def relative_regret(scores: Sequence[float], truth: Sequence[float]) -> float:
    """(max g − g[argmax s]) / max g; NaN if max g ≤ 0."""
    s, g = _pair(scores, truth)
    if s.size == 0 or g.max() <= 0:
        return math.nan
    return float((g.max() - g[_order_by_score(s)[0]]) / g.max())


def rel_at_k(scores: Sequence[float], truth: Sequence[float], k: int) -> float:
    """max over the top-k models by s of g, divided by max g; NaN if max g ≤ 0."""
    if k < 1:
        raise ValueError(f"rel@k needs k >= 1, got {k}")
    s, g = _pair(scores, truth)
    if s.size == 0 or g.max() <= 0:
        return math.nan
    return float(g[_order_by_score(s)[:k]].max() / g.max())


def best_in_top_n(scores: Sequence[float], truth: Sequence[float], n: int = 3) -> float:
    """1.0 if a best model by g (any of the tied best) is among the top-n by s, else 0.0."""
    if n < 1:
        raise ValueError(f"best-in-top-n needs n >= 1, got {n}")
    s, g = _pair(scores, truth)
    if s.size == 0:
        return math.nan
    return float(bool(np.any(g[_order_by_score(s)[:n]] == g.max())))


def measures_for_target(scores: Sequence[float], truth: Sequence[float]) -> dict[str, object]:
    """All :data:`MEASURES` for one target, plus ``n_models`` and ``reason``.

    Returns NaN for every measure that is undefined, and says why in ``reason``
    (``""`` when everything is defined): fewer than 3 models, constant scores (no ranking:
    every selection measure is NaN too), constant ground truth (correlations NaN), or
    max g ≤ 0 (relative measures NaN). Non-finite pairs are dropped first.
    """
    s, g = _pair(scores, truth)
    keep = np.isfinite(s) & np.isfinite(g)
    reasons: list[str] = []
    if not keep.all():
        reasons.append(f"{int((~keep).sum())} model(s) without a finite score or ground truth dropped")
    s, g = s[keep], g[keep]
    out: dict[str, object] = {m: math.nan for m in MEASURES}
    out["n_models"] = int(s.size)
    if s.size < MIN_MODELS:
        reasons.append(f"fewer than {MIN_MODELS} models (n={s.size})")
        out["reason"] = "; ".join(reasons)
        return out
    if np.ptp(s) == 0:
        reasons.append("scores are constant (no variation: nothing to rank, e.g. capacity "
                       "in a one-architecture zoo)")
        out["reason"] = "; ".join(reasons)
        return out
    if np.ptp(g) == 0:
        reasons.append("ground truth is constant")
    else:
        out["pearson"] = pearson(s, g)
        out["spearman"] = spearman(s, g)
        out["kendall_tau"] = kendall_tau(s, g)
        out["weighted_tau"] = weighted_kendall_tau(s, g)
    out["regret"] = regret(s, g)
    out["best_in_top3"] = best_in_top_n(s, g, 3)
    if g.max() <= 0:
        reasons.append("max ground truth <= 0: relative measures undefined")
    else:
        out["relative_top1"] = relative_top1(s, g)
        out["relative_regret"] = relative_regret(s, g)
        out["rel_at_3"] = rel_at_k(s, g, 3)
    out["reason"] = "; ".join(reasons)
    return out


def _target_row(metric: str, target: str, s_t: np.ndarray, g_t: np.ndarray,
                replicates: dict[str, list[np.ndarray | None]], n_resamples: int, level: float,
                seed: int) -> dict[str, object]:
    """One (metric, target) row: the measures and their bootstrap intervals; appends the
    bootstrap replicates (None where the measure is undefined) to ``replicates``."""
    row: dict[str, object] = {"metric": metric, "target": target}
    row.update(measures_for_target(s_t, g_t))
    reps = bootstrap_replicates(s_t, g_t, n_resamples=n_resamples, seed=seed)
    for m in BOOTSTRAP_MEASURES:
        defined = np.isfinite(float(row[m]))  # type: ignore[arg-type]
        row[f"{m}_lo"], row[f"{m}_hi"] = (_percentile_interval(reps[m], level)
                                          if defined else (math.nan, math.nan))
        replicates[m].append(reps[m] if defined else None)
    return row


def _mean_row(metric: str, metric_rows: list[dict[str, object]],
              replicates: dict[str, list[np.ndarray | None]], n_resamples: int,
              level: float) -> dict[str, object]:
    """The ``MEAN_ROW`` of a metric: NaN-ignoring means over targets; intervals from the
    per-resample means over targets."""
    frame = pd.DataFrame(metric_rows)
    mean_row: dict[str, object] = {"metric": metric, "target": MEAN_ROW}
    for m in MEASURES:
        vals = frame[m].to_numpy(np.float64)
        mean_row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    for m in BOOTSTRAP_MEASURES:
        per_target = [r for r in replicates[m] if r is not None]
        if per_target and n_resamples > 0:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                pooled = np.nanmean(np.vstack(per_target), axis=0)
            mean_row[f"{m}_lo"], mean_row[f"{m}_hi"] = _percentile_interval(pooled, level)
        else:
            mean_row[f"{m}_lo"] = mean_row[f"{m}_hi"] = math.nan
    defined = frame["pearson"].notna()
    mean_row["n_models"] = int(defined.sum())
    left_out = frame.loc[~defined, "target"].tolist()
    mean_row["reason"] = f"target(s) without correlations: {', '.join(left_out)}" if left_out else ""
    return mean_row


def correlation_table(scores: pd.DataFrame, truth: pd.DataFrame,
                      score_column: str = "score", metric_column: str | None = "metric",
                      higher_is_better: Mapping[str, bool] | None = None,
                      metric_order: Sequence[str] = (), n_resamples: int = 1000,
                      level: float = 0.90, seed: int = 0) -> pd.DataFrame:
    """Per-target measures, their bootstrap intervals, and their mean over targets.

    scores: long table with columns ``model``, ``target``, ``score_column`` and optionally
    ``metric_column``; several rows per (metric, model, target) (repetitions) are reduced to
    the mean of their finite scores, and rows whose ``status`` (if present) is not ``"ok"``
    count as missing. truth: columns ``model``, ``target``, ``value`` and optionally ``seed``
    (fine-tuning repeats, reduced to their per-pair mean by :func:`ground_truth_means`). A
    metric listed as ``higher_is_better[metric] = False`` is negated before correlating.

    Returns columns ``metric, target, n_models, <MEASURES...>, reason`` and then, for each
    of :data:`BOOTSTRAP_MEASURES`, ``<measure>_lo, <measure>_hi`` (a ``level`` percentile
    interval from ``n_resamples`` seeded bootstrap resamples of the models,
    :func:`bootstrap_replicates`; NaN where the point value is NaN, or all NaN with
    ``n_resamples=0``). One row per (metric, target), metrics in ``metric_order`` first (in
    that order, then the others sorted), targets sorted, then per metric a row with
    ``target == MEAN_ROW`` holding the NaN-ignoring mean of each measure over targets
    (``n_models`` = number of targets with a defined Pearson r; ``reason`` lists targets left
    out). The mean row's interval is the percentile interval of the per-resample mean over
    the targets with a defined point value (each target's models resampled independently):
    it covers model-sampling noise with the targets held fixed, not the variation one would
    see on other targets.
    """
    need = {"model", "target", score_column}
    if missing := need - set(scores.columns):
        raise ValueError(f"scores table lacks column(s) {sorted(missing)}")
    if missing := {"model", "target", "value"} - set(truth.columns):
        raise ValueError(f"ground-truth table lacks column(s) {sorted(missing)}")
    sc = scores.copy()
    if metric_column is None or metric_column not in sc.columns:
        sc["metric"] = "score"
        metric_column = "metric"
    gt = ground_truth_means(truth)[["model", "target", "value"]]
    key = [metric_column, "model", "target"]
    sc[score_column] = pd.to_numeric(sc[score_column], errors="coerce").astype(np.float64)
    if "status" in sc.columns:  # a results table: failed repetitions carry no score
        sc.loc[sc["status"].astype(str) != "ok", score_column] = np.nan
    if sc.duplicated(key).any():  # repetitions: reduce to their mean (NaN-ignoring)
        sc = sc.groupby(key, sort=True, as_index=False)[score_column].mean()
    higher_is_better = higher_is_better or {}
    rows: list[dict[str, object]] = []
    order = list(metric_order)
    present = sorted(sc[metric_column].astype(str).unique(),
                     key=lambda m: (order.index(m) if m in order else len(order), m))
    sc = sc.assign(**{metric_column: sc[metric_column].astype(str),
                      "target": sc["target"].astype(str), "model": sc["model"].astype(str)})
    gt_by_target = {t: per[["model", "value"]] for t, per in gt.groupby("target", sort=False)}
    no_truth = pd.DataFrame({"model": pd.Series(dtype=str), "value": pd.Series(dtype=float)})
    by_metric = dict(iter(sc.groupby(metric_column, sort=False)))
    for metric in present:
        per_metric = by_metric[metric]
        sign = 1.0 if higher_is_better.get(metric, True) else -1.0
        by_target = dict(iter(per_metric.groupby("target", sort=False)))
        metric_rows: list[dict[str, object]] = []
        replicates: dict[str, list[np.ndarray | None]] = {m: [] for m in BOOTSTRAP_MEASURES}
        for target in sorted(set(per_metric["target"]) | set(gt_by_target)):
            left = by_target.get(target, per_metric.iloc[:0])[["model", score_column]]
            right = gt_by_target.get(target, no_truth)
            merged = left.merge(right, on="model", how="inner").sort_values("model",
                                                                            kind="stable")
            if merged.empty and (left.empty or right.empty):
                continue  # a target on one side only: nothing to compare
            row = _target_row(metric, target, sign * merged[score_column].to_numpy(np.float64),
                              merged["value"].to_numpy(np.float64), replicates,
                              n_resamples, level, seed)
            metric_rows.append(row)
        rows.extend(metric_rows)
        if metric_rows:
            rows.append(_mean_row(metric, metric_rows, replicates, n_resamples, level))
    columns = ["metric", "target", "n_models", *MEASURES, "reason", *INTERVAL_COLUMNS]
    out = pd.DataFrame(rows, columns=columns)
    out["n_models"] = out["n_models"].astype("int64")
    return out


# --------------------------------------------------------------------------------------------
# Ground truth with fine-tuning repeats
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroundTruthProblem:
    """One problem in a ground-truth table: ``level`` is ``"error"`` or ``"warning"``;
    ``line`` is the file line of the offending row (``None`` for a table-wide problem)."""

    level: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{self.level}: {where}{self.message}"


def ground_truth_problems(truth: pd.DataFrame, first_line: int = 2) -> list[GroundTruthProblem]:
    """What is wrong with a ground-truth table (empty list: nothing).

    truth: columns ``model``, ``target``, ``value`` and optionally ``seed``; row i (by
    position) is reported as line ``first_line + i`` (2 = a CSV whose header is line 1).
    Errors: a missing column, a value that is empty or not a number, two rows for one
    (model, target) without a ``seed`` column, two rows for one (model, target, seed).
    Warning: a single target (leave-one-target-out is impossible).
    """
    problems: list[GroundTruthProblem] = []
    if missing := {"model", "target", "value"} - set(truth.columns):
        return [GroundTruthProblem("error", f"ground truth lacks column(s) {sorted(missing)}")]
    gt = truth.reset_index(drop=True)
    raw = gt["value"]
    num = pd.to_numeric(raw, errors="coerce")
    for i in np.flatnonzero(num.isna().to_numpy()):
        what = "has no value" if pd.isna(raw.iloc[i]) or str(raw.iloc[i]).strip() == "" \
            else f"value {raw.iloc[i]!r} is not a number"
        problems.append(GroundTruthProblem(
            "error", f"model {gt['model'].iloc[i]!r}, target {gt['target'].iloc[i]!r}: {what}",
            first_line + int(i)))
    key = ["model", "target"] + (["seed"] if "seed" in gt.columns else [])
    keyed = gt[key].astype(str)
    first_of: dict[tuple[str, ...], int] = {}
    for i, k in enumerate(map(tuple, keyed.to_numpy())):
        if k in first_of:
            desc = f"model {k[0]!r}, target {k[1]!r}" + (f", seed {k[2]!r}" if len(k) > 2 else "")
            hint = "" if len(k) > 2 else " (fine-tuning repeats need a 'seed' column)"
            problems.append(GroundTruthProblem(
                "error", f"{desc} repeats line {first_line + first_of[k]}{hint}", first_line + i))
        else:
            first_of[k] = i
    targets = gt["target"].astype(str).unique()
    if len(targets) == 1:
        problems.append(GroundTruthProblem(
            "warning", f"only one target ({targets[0]!r}): leave-one-target-out is impossible"))
    return problems


def ground_truth_means(truth: pd.DataFrame) -> pd.DataFrame:
    """Per-pair ground truth: columns ``model, target, value, n_seeds, seed_std``.

    truth: ``model``, ``target``, ``value`` and optionally ``seed``. ``value`` is the mean
    over seeds (non-numeric values count as missing), ``seed_std`` the standard deviation
    over seeds (ddof 1; NaN with fewer than 2 finite seeds). Raises ``ValueError`` naming the
    pair when a (model, target) repeats without a ``seed`` column or a (model, target, seed)
    repeats. Sorted by target, then model.
    """
    if missing := {"model", "target", "value"} - set(truth.columns):
        raise ValueError(f"ground-truth table lacks column(s) {sorted(missing)}")
    cols = ["model", "target", "value"] + (["seed"] if "seed" in truth.columns else [])
    gt = truth[cols].copy()
    gt["model"] = gt["model"].astype(str)
    gt["target"] = gt["target"].astype(str)
    key = ["model", "target"] + (["seed"] if "seed" in gt.columns else [])
    if gt.duplicated(key).any():
        dup = gt[gt.duplicated(key, keep=False)].iloc[0]
        extra = f", seed {str(dup['seed'])!r}" if "seed" in gt.columns else ""
        raise ValueError(f"ground truth has more than one value for model {dup['model']!r}, "
                         f"target {dup['target']!r}{extra}")
    gt["value"] = pd.to_numeric(gt["value"], errors="coerce").astype(np.float64)
    grouped = gt.groupby(["target", "model"], sort=True)["value"]
    out = pd.DataFrame({"value": grouped.mean(), "n_seeds": grouped.count(),
                        "seed_std": grouped.std(ddof=1)}).reset_index()
    out["n_seeds"] = out["n_seeds"].astype("int64")
    return out[["model", "target", "value", "n_seeds", "seed_std"]]


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row of (B, M) a against the same row of b; NaN for a constant row."""
    ac = a - a.mean(axis=1, keepdims=True)
    bc = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((ac * ac).sum(axis=1) * (bc * bc).sum(axis=1))
    flat = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (ac * bc).sum(axis=1) / den
    r[flat | ~np.isfinite(r)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _half_splits(n_seeds: int, n_splits: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Seed-column subsets forming half A (size n_seeds // 2): every distinct split when there
    are at most ``n_splits`` of them, else ``n_splits`` random ones."""
    half = n_seeds // 2
    combos = (c for c in itertools.combinations(range(n_seeds), half)
              if n_seeds % 2 or 0 in c)  # even: (A, B) and (B, A) are the same split
    distinct = math.comb(n_seeds, half) // (1 if n_seeds % 2 else 2)
    if distinct <= n_splits:
        return [np.array(c) for c in combos]
    return [np.sort(rng.permutation(n_seeds)[:half]) for _ in range(n_splits)]


def split_half_reliability(values: np.ndarray, n_splits: int = 100,
                           seed: int = 0) -> dict[str, object]:
    """Split-half reliability of the per-model mean over R repeats (noise ceiling).

    values: (M, R) ground truth of M models over R seeds (NaN = missing). Each split puts
    R // 2 seeds in half A and the rest in half B; per model the mean of each half (a model
    without a finite value in either half is left out of that split), r_half = Pearson across
    models between the halves. r_half is averaged over every distinct split when there are at
    most ``n_splits`` (R = 2: the one split; R = 4: three), else over ``n_splits`` seeded random
    ones; then Spearman–Brown r_full = 2·r_half / (1 + r_half) is the reliability of the
    R-seed mean and √r_full (0 when r_full ≤ 0) bounds the Pearson r any score can reach
    against it. With odd R the halves differ by one seed (Spearman–Brown then slightly
    understates r_full).

    Returns ``{r_half, r_full, pearson_bound, n_splits, reason}``; NaN with a reason (never
    an error) with fewer than 2 seeds, fewer than 3 models, or constant half means.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2:
        raise ValueError(f"values must be (models, seeds), got shape {v.shape}")
    out: dict[str, object] = {"r_half": math.nan, "r_full": math.nan,
                              "pearson_bound": math.nan, "n_splits": 0, "reason": ""}
    m, r = v.shape
    if r < 2:
        out["reason"] = f"fewer than 2 seeds (R={r}): no noise ceiling"
        return out
    if m < MIN_MODELS:
        out["reason"] = f"fewer than {MIN_MODELS} models (n={m}): no noise ceiling"
        return out
    rhalves = []
    for a_cols in _half_splits(r, n_splits, np.random.default_rng(seed)):
        in_a = np.zeros(r, dtype=bool)
        in_a[a_cols] = True
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ma, mb = np.nanmean(v[:, in_a], axis=1), np.nanmean(v[:, ~in_a], axis=1)
        keep = np.isfinite(ma) & np.isfinite(mb)
        if keep.sum() >= MIN_MODELS:
            rhalves.append(_rowwise_pearson(ma[keep][None], mb[keep][None])[0])
    rh = np.asarray(rhalves, dtype=np.float64)
    rh = rh[np.isfinite(rh)]
    out["n_splits"] = int(rh.size)
    if rh.size == 0:
        out["reason"] = "no split with 3 models and varying half means"
        return out
    r_half = float(rh.mean())
    r_full = 2 * r_half / (1 + r_half) if r_half > -1 else -1.0
    out.update(r_half=r_half, r_full=r_full, pearson_bound=math.sqrt(max(r_full, 0.0)))
    if r_full <= 0:
        out["reason"] = "seed means are not reliable (r_full <= 0): no score can track them"
    return out


@dataclass(frozen=True)
class GroundTruthSummary:
    """``pairs``: :func:`ground_truth_means`. ``targets``: one row per target with columns
    ``target, n_models, n_seeds, seed_spread, r_half, noise_ceiling, pearson_bound, reason``:
    seed_spread = mean over models of the per-pair seed std (ground-truth units),
    noise_ceiling = Spearman–Brown r_full, pearson_bound = √r_full
    (:func:`split_half_reliability`)."""

    pairs: pd.DataFrame
    targets: pd.DataFrame


def ground_truth_summary(truth: pd.DataFrame, n_splits: int = 100,
                         seed: int = 0) -> GroundTruthSummary:
    """Per-pair means, per-target seed spread and noise ceiling of a long ground-truth table
    (``model, target, value[, seed]``). Without a ``seed`` column, or with one seed per pair,
    the spread and ceiling are NaN with a reason."""
    pairs = ground_truth_means(truth)
    rows = []
    for target, per in pairs.groupby("target", sort=True):
        row: dict[str, object] = {"target": target, "n_models": len(per)}
        spread = per["seed_std"].to_numpy(np.float64)
        row["seed_spread"] = float(np.nanmean(spread)) if np.isfinite(spread).any() else math.nan
        if "seed" not in truth.columns:
            row["n_seeds"] = 1
            rel = split_half_reliability(np.zeros((len(per), 1)))
            rel["reason"] = "no 'seed' column: one value per pair, no noise ceiling"
        else:
            t = truth[truth["target"].astype(str) == target]
            wide = (t.assign(value=pd.to_numeric(t["value"], errors="coerce"),
                             model=t["model"].astype(str))
                    .pivot(index="model", columns="seed", values="value"))
            row["n_seeds"] = int(wide.shape[1])
            rel = split_half_reliability(wide.to_numpy(np.float64), n_splits=n_splits, seed=seed)
        row.update(r_half=rel["r_half"], noise_ceiling=rel["r_full"],
                   pearson_bound=rel["pearson_bound"], reason=rel["reason"])
        rows.append(row)
    columns = ["target", "n_models", "n_seeds", "seed_spread", "r_half", "noise_ceiling",
               "pearson_bound", "reason"]
    return GroundTruthSummary(pairs=pairs, targets=pd.DataFrame(rows, columns=columns))


# --------------------------------------------------------------------------------------------
# Bootstrap intervals over models
# --------------------------------------------------------------------------------------------

#: Largest B·M·M block of the pairwise (Kendall, weighted τ) computations held at once.
_PAIR_BLOCK = 2_000_000


def _ratio(num: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = num / np.sqrt(a * b)
    tau[~np.isfinite(tau)] = np.nan
    return np.clip(tau, -1.0, 1.0)


def _hyperbolic_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """1 / (1 + rank) per row, rank 0 = largest (x, y) lexicographically; joint ties ranked as
    scipy's ``weightedtau`` does (later index first)."""
    b, m = x.shape
    perm = np.lexsort((y, x), axis=-1)[:, ::-1]
    rank = np.empty_like(perm)
    np.put_along_axis(rank, perm, np.broadcast_to(np.arange(m), (b, m)), axis=1)
    return 1.0 / (1.0 + rank)


def _tau_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ_b and weighted τ (scipy ``weightedtau`` defaults) of each row of (B, M) x, y.

    With sx_ij = sgn(x_i − x_j), sy_ij likewise and pair weights w_i + w_j (w = 1 for τ_b,
    1/(1 + rank) for τ_w), both are Σ_ij w_ij sx sy / √(Σ_ij w_ij sx² · Σ_ij w_ij sy²); by
    symmetry Σ_ij (w_i + w_j) a_ij = 2 Σ_i w_i Σ_j a_ij, so only the (B, M) row sums of
    sx·sy, |sx|, |sy| are needed. Weighted τ is the mean of the one-way values with ranks by
    (x, y) and by (y, x) (``rank=True``). Returns (B, 2): [τ_b, τ_w].
    """
    sx = np.sign(x[:, :, None] - x[:, None, :])
    sy = np.sign(y[:, :, None] - y[:, None, :])
    p, ax, ay = (sx * sy).sum(axis=2), np.abs(sx).sum(axis=2), np.abs(sy).sum(axis=2)
    kendall = _ratio(p.sum(axis=1), ax.sum(axis=1), ay.sum(axis=1))
    one_way = [_ratio((w * p).sum(axis=1), (w * ax).sum(axis=1), (w * ay).sum(axis=1))
               for w in (_hyperbolic_weights(x, y), _hyperbolic_weights(y, x))]
    return np.column_stack([kendall, (one_way[0] + one_way[1]) / 2])


def _blocked_tau_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    step = max(1, _PAIR_BLOCK // max(1, x.shape[1] ** 2))
    return np.concatenate([_tau_rows(x[i:i + step], y[i:i + step])
                           for i in range(0, len(x), step)])


def _average_ranks(a: np.ndarray) -> np.ndarray:
    return stats.rankdata(a, method="average", axis=1)


def bootstrap_replicates(scores: Sequence[float], truth: Sequence[float],
                         n_resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Bootstrap replicates over models of each of :data:`BOOTSTRAP_MEASURES`.

    Draws ``n_resamples`` resamples of the M models with replacement from
    ``numpy.random.default_rng(seed)`` (so the same M and seed give the same resamples for
    every metric: paired), and recomputes each measure on each resample exactly as the
    point functions do (scipy's definitions; ties from duplicated models included; regret
    picks the first-drawn of models tied on score). Resamples with fewer than 3 distinct
    models, and those where a measure is undefined (constant side), are NaN. Non-finite pairs
    are dropped first; fewer than 3 models left gives all-NaN replicates.

    Returns ``{measure: (n_resamples,) float64}``.
    """
    s, g = _pair(scores, truth)
    keep = np.isfinite(s) & np.isfinite(g)
    s, g = s[keep], g[keep]
    m = s.size
    if m < MIN_MODELS or n_resamples <= 0:
        return {k: np.full(max(n_resamples, 0), np.nan) for k in BOOTSTRAP_MEASURES}
    idx = np.random.default_rng(seed).integers(0, m, size=(n_resamples, m))
    srt = np.sort(idx, axis=1)
    valid = (np.diff(srt, axis=1) != 0).sum(axis=1) + 1 >= MIN_MODELS
    x, y = s[idx[valid]], g[idx[valid]]
    out = {k: np.full(n_resamples, np.nan) for k in BOOTSTRAP_MEASURES}
    if x.shape[0]:
        out["pearson"][valid] = _rowwise_pearson(x, y)
        out["spearman"][valid] = _rowwise_pearson(_average_ranks(x), _average_ranks(y))
        taus = _blocked_tau_rows(x, y)
        out["kendall_tau"][valid], out["weighted_tau"][valid] = taus[:, 0], taus[:, 1]
        out["regret"][valid] = y.max(axis=1) - y[np.arange(len(y)), x.argmax(axis=1)]
    return out


def _percentile_interval(replicates: np.ndarray, level: float) -> tuple[float, float]:
    r = np.asarray(replicates, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(r, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_intervals(scores: Sequence[float], truth: Sequence[float],
                        n_resamples: int = 1000, level: float = 0.90,
                        seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over models: ``{measure: (lo, hi)}`` for each of
    :data:`BOOTSTRAP_MEASURES` (default: the 5th and 95th percentiles of 1000 seeded
    resamples, :func:`bootstrap_replicates`); ``(nan, nan)`` when no resample defines it."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    reps = bootstrap_replicates(scores, truth, n_resamples=n_resamples, seed=seed)
    return {k: _percentile_interval(v, level) for k, v in reps.items()}


# --------------------------------------------------------------------------------------------
# Ties at the top
# --------------------------------------------------------------------------------------------

def tied_at_top(mean: Mapping[str, float] | pd.Series, std: Mapping[str, float] | pd.Series,
                k: int | Mapping[str, int] | pd.Series) -> list[str]:
    """Models tied for the top-1 pick, best first (higher mean = better).

    mean, std: per-model mean score and its standard deviation over the K repetitions;
    k: K (one number, or one per model). A model m is tied with the top model 1 when
    mean_1 − mean_m < √(σ_1²/K_1 + σ_m²/K_m). Returns ``[top]`` when the pick is clear, the
    top and every model within noise of it otherwise (``len >= 2`` is a tie), ``[]`` when no
    model has a finite mean. A model whose std is unknown (K < 2: NaN) cannot be shown tied.
    """
    mu = pd.Series(mean, dtype=np.float64).dropna()
    if mu.empty:
        return []
    sd = pd.Series(std, dtype=np.float64).reindex(mu.index)
    kk = (pd.Series(k, dtype=np.float64).reindex(mu.index)
          if isinstance(k, (Mapping, pd.Series)) else pd.Series(float(k), index=mu.index))
    order = sorted(mu.index, key=lambda name: (-mu[name], str(name)))
    top = order[0]
    tied = [top]
    for name in order[1:]:
        threshold = math.sqrt(sd[top] ** 2 / kk[top] + sd[name] ** 2 / kk[name])
        if mu[top] - mu[name] < threshold:  # False when threshold is NaN
            tied.append(name)
    return [str(n) for n in tied]


def top_ties(scores: pd.DataFrame, score_column: str = "score",
             metric_column: str | None = "metric",
             higher_is_better: Mapping[str, bool] | None = None) -> pd.DataFrame:
    """Per (metric, target): the top-1 model from repeated scores and whether it is a tie.

    scores: the long results table of :func:`correlation_table` (rows whose ``status`` is
    not ``"ok"`` ignored). Returns columns ``metric, target, top, lead, threshold, tied,
    n_tied`` where lead = mean_1 − mean_2 (oriented), threshold = √(σ_1²/K_1 + σ_2²/K_2) for
    the two best, and ``tied`` the ``;``-joined names from :func:`tied_at_top` (the top
    alone when clear).
    """
    sc = scores.copy()
    if metric_column is None or metric_column not in sc.columns:
        sc["metric"] = "score"
        metric_column = "metric"
    sc[score_column] = pd.to_numeric(sc[score_column], errors="coerce")
    if "status" in sc.columns:
        sc = sc[sc["status"].astype(str) == "ok"]
    sc = sc.dropna(subset=[score_column])
    hib = higher_is_better or {}
    rows = []
    for (metric, target), per in sc.groupby([metric_column, "target"], sort=True):
        sign = 1.0 if hib.get(str(metric), True) else -1.0
        grp = (sign * per[score_column]).groupby(per["model"].astype(str))
        mu, sd, kk = grp.mean(), grp.std(ddof=1), grp.count()
        tied = tied_at_top(mu, sd, kk)
        ordered = mu.sort_values(ascending=False, kind="stable")
        lead = threshold = math.nan
        if len(ordered) >= 2:
            a, b = ordered.index[0], ordered.index[1]
            lead = float(ordered.iloc[0] - ordered.iloc[1])
            threshold = math.sqrt(sd[a] ** 2 / kk[a] + sd[b] ** 2 / kk[b])
        rows.append({"metric": str(metric), "target": str(target),
                     "top": tied[0] if tied else "", "lead": lead, "threshold": threshold,
                     "tied": ";".join(tied), "n_tied": len(tied)})
    return pd.DataFrame(rows, columns=["metric", "target", "top", "lead", "threshold", "tied",
                                       "n_tied"])


# --------------------------------------------------------------------------------------------
# Baselines
# --------------------------------------------------------------------------------------------

#: The baseline row's metric name in :func:`random_baseline` / :func:`compare_with_baselines`.
RANDOM = "random"


def capacity_score(n_params: Sequence[float] | np.ndarray) -> np.ndarray:
    """The capacity baseline's score: log10(parameter count) (higher = bigger model =
    predicted better); NaN for a count ≤ 0. Score it like any metric; a zoo of one
    architecture has constant capacity, which :func:`measures_for_target` reports as
    "no variation"."""
    n = np.asarray(n_params, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.log10(np.where(n > 0, n, 1.0)), np.nan)


def random_baseline(truth: pd.DataFrame) -> pd.DataFrame:
    """Expected figures of a uniformly random ranking, per target and their mean.

    Pearson, Spearman, Kendall τ and weighted τ: 0 (for every pair, a random order is as
    likely concordant as discordant, whatever the weights); regret: mean over models of
    (max g − g), i.e. the expected top-1 regret of a random pick; relative_regret that over
    max g (NaN if max g ≤ 0). truth: as in :func:`ground_truth_means`. Columns
    ``metric ("random"), target, n_models, pearson, spearman, kendall_tau, weighted_tau,
    regret, relative_regret``; last row ``target == MEAN_ROW``. Targets with fewer than 3
    models are NaN, like any metric's.
    """
    gt = ground_truth_means(truth)
    rows = []
    for target, per in gt.groupby("target", sort=True):
        g = per["value"].to_numpy(np.float64)
        g = g[np.isfinite(g)]
        row: dict[str, object] = {"metric": RANDOM, "target": target, "n_models": int(g.size)}
        ok = g.size >= MIN_MODELS
        for m in ("pearson", "spearman", "kendall_tau", "weighted_tau"):
            row[m] = 0.0 if ok and np.ptp(g) > 0 else math.nan
        row["regret"] = float(np.mean(g.max() - g)) if ok else math.nan
        row["relative_regret"] = (float(row["regret"]) / g.max()
                                  if ok and g.max() > 0 else math.nan)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["metric", "target", "n_models", "pearson", "spearman",
                                        "kendall_tau", "weighted_tau", "regret",
                                        "relative_regret"])
    mean = {"metric": RANDOM, "target": MEAN_ROW,
            "n_models": int(frame["pearson"].notna().sum())}
    for m in frame.columns[3:]:
        vals = frame[m].to_numpy(np.float64)
        mean[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return pd.concat([frame, pd.DataFrame([mean])], ignore_index=True)


def beats_baseline(measure: str, lo: float, hi: float, baseline: float) -> bool | None:
    """Whether a metric beats a baseline on one measure (the rule used in reports).

    The metric beats the baseline when its whole bootstrap interval is on the better side of
    the baseline's value: ``lo > baseline`` for the higher-is-better measures, ``hi <
    baseline`` for regret / relative_regret. A point estimate above the baseline with an
    interval that straddles it does not count: "beats" must survive resampling the models.
    Returns ``None`` (undetermined) when the interval or the baseline is NaN.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown measure {measure!r}; known: {', '.join(MEASURES)}")
    if any(v is None or not np.isfinite(v) for v in (lo, hi, baseline)):
        return None
    return bool(hi < baseline) if measure in LOWER_IS_BETTER else bool(lo > baseline)


def compare_with_baselines(table: pd.DataFrame, truth: pd.DataFrame,
                           capacity_metric: str | None = "capacity") -> pd.DataFrame:
    """Each metric of a :func:`correlation_table` against the random ranking and capacity.

    For every (metric, target) row (the mean row included) and each of
    :data:`BOOTSTRAP_MEASURES`: the random ranking's expected value
    (:func:`random_baseline`) and, when ``capacity_metric`` is a metric of the table, the
    capacity row's point value for the same target, with :func:`beats_baseline`'s verdict.
    Columns ``metric, target, measure, value, lo, hi, baseline, baseline_value, beats,
    reason``; ``reason`` says "no variation" where the capacity baseline is constant and
    "no interval" where the verdict is undetermined.
    """
    rand = random_baseline(truth).set_index("target")
    cap = (table[table["metric"] == capacity_metric].set_index("target")
           if capacity_metric else pd.DataFrame())
    rows = []
    for _, r in table.iterrows():
        if capacity_metric is not None and r["metric"] == capacity_metric:
            versus = [(RANDOM, rand)]
        else:
            versus = [(RANDOM, rand)] + ([("capacity", cap)] if not cap.empty else [])
        for m in BOOTSTRAP_MEASURES:
            for name, base in versus:
                bval = (float(base.loc[r["target"], m]) if r["target"] in base.index
                        else math.nan)
                verdict = beats_baseline(m, r[f"{m}_lo"], r[f"{m}_hi"], bval)
                reason = ""
                if name == "capacity" and r["target"] in base.index and \
                        "no variation" in str(base.loc[r["target"], "reason"]):
                    reason = "capacity has no variation"
                elif verdict is None:
                    reason = "no interval or no baseline value"
                rows.append({"metric": r["metric"], "target": r["target"], "measure": m,
                             "value": r[m], "lo": r[f"{m}_lo"], "hi": r[f"{m}_hi"],
                             "baseline": name, "baseline_value": bval, "beats": verdict,
                             "reason": reason})
    return pd.DataFrame(rows, columns=["metric", "target", "measure", "value", "lo", "hi",
                                       "baseline", "baseline_value", "beats", "reason"])


# --------------------------------------------------------------------------------------------
# Architecture families
# --------------------------------------------------------------------------------------------

def _restrict(scores: pd.DataFrame, truth: pd.DataFrame,
              models: set[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (scores[scores["model"].astype(str).isin(models)],
            truth[truth["model"].astype(str).isin(models)])


def family_agreement(scores: pd.DataFrame, truth: pd.DataFrame, families: Mapping[str, str],
                     min_models: int = MIN_MODELS, **table_kwargs) -> pd.DataFrame:
    """:func:`correlation_table` over all models and within each architecture family.

    families: model → family name (models absent from it form no family). A family enters
    only with at least ``min_models`` of its models scored; within it, a target with fewer
    than 3 of its models gives NaN with a reason, like any table row. Returns the table's
    columns with ``family`` first: the rows of ``family == ALL_FAMILIES`` (every model)
    then each family in name order. ``table_kwargs`` go to :func:`correlation_table`.
    """
    parts = [correlation_table(scores, truth, **table_kwargs).assign(family=ALL_FAMILIES)]
    scored = set(scores["model"].astype(str))
    by_family: dict[str, set[str]] = {}
    for model, fam in families.items():
        if str(model) in scored:
            by_family.setdefault(str(fam), set()).add(str(model))
    for fam in sorted(by_family):
        if len(by_family[fam]) < min_models:
            continue
        sub_s, sub_g = _restrict(scores, truth, by_family[fam])
        parts.append(correlation_table(sub_s, sub_g, **table_kwargs).assign(family=fam))
    out = pd.concat(parts, ignore_index=True)
    return out[["family", *[c for c in out.columns if c != "family"]]]


def driving_family(scores: pd.DataFrame, truth: pd.DataFrame, families: Mapping[str, str],
                   measure: str = "pearson", threshold: float = 0.2,
                   higher_is_better: Mapping[str, bool] | None = None,
                   score_column: str = "score",
                   metric_column: str | None = "metric") -> pd.DataFrame:
    """Per metric, the family whose models alone move the overall figure most.

    For each metric and family F: ``overall`` = the mean over targets of ``measure`` on all
    models, ``without`` = the same with F's models removed (targets keeping fewer than 3
    models drop out of that mean). F **drives** the overall figure when
    |overall − without| > ``threshold`` (default 0.2 in correlation units: larger than the
    gap between "weak" and "none", and well beyond the rounding of any reported figure; with
    M ≈ 8 a bootstrap interval is wider, so this flags a family to look at, not a proof).
    Returns one row per metric: ``metric, family, overall, without, difference, drives``,
    the family with the largest |difference| (``""`` and NaN when no family can be removed
    leaving 3 models).
    """
    kw: dict[str, object] = {"higher_is_better": higher_is_better, "score_column": score_column,
                             "metric_column": metric_column, "n_resamples": 0}
    full = correlation_table(scores, truth, **kw)
    overall = full[full["target"] == MEAN_ROW].set_index("metric")[measure]
    fam_models: dict[str, set[str]] = {}
    for model, fam in families.items():
        fam_models.setdefault(str(fam), set()).add(str(model))
    everyone = set(scores["model"].astype(str))
    best: dict[str, dict[str, object]] = {
        str(m): {"metric": str(m), "family": "", "overall": float(v), "without": math.nan,
                 "difference": math.nan, "drives": False} for m, v in overall.items()}
    for fam in sorted(fam_models):
        rest = everyone - fam_models[fam]
        if len(rest) < MIN_MODELS or len(rest) == len(everyone):
            continue
        sub_s, sub_g = _restrict(scores, truth, rest)
        sub = correlation_table(sub_s, sub_g, **kw)
        without = sub[sub["target"] == MEAN_ROW].set_index("metric")[measure]
        for metric, value in without.items():
            if str(metric) not in best or not np.isfinite(value):
                continue
            row = best[str(metric)]
            diff = float(row["overall"]) - float(value)  # type: ignore[arg-type]
            if not np.isfinite(row["difference"]) or abs(diff) > abs(row["difference"]):  # type: ignore[arg-type]
                row.update(family=fam, without=float(value), difference=diff,
                           drives=bool(abs(diff) > threshold))
    return pd.DataFrame(list(best.values()),
                        columns=["metric", "family", "overall", "without", "difference", "drives"])
