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
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "MEAN_ROW",
    "MEASURES",
    "best_in_top_n",
    "correlation_table",
    "kendall_tau",
    "measures_for_target",
    "pearson",
    "regret",
    "rel_at_k",
    "relative_regret",
    "relative_top1",
    "spearman",
    "weighted_kendall_tau",
]

#: The ``target`` value of the per-metric mean-over-targets row in :func:`correlation_table`.
MEAN_ROW = "__mean__"
#: Minimum number of models for any measure to be reported.
MIN_MODELS = 3
#: Columns of the per-target measures, in report order.
MEASURES = ("pearson", "spearman", "kendall_tau", "weighted_tau", "relative_top1", "regret",
            "relative_regret", "best_in_top3", "rel_at_3")


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
        reasons.append("scores are constant")
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


def correlation_table(scores: pd.DataFrame, truth: pd.DataFrame,
                      score_column: str = "score", metric_column: str | None = "metric",
                      higher_is_better: dict[str, bool] | None = None,
                      metric_order: Sequence[str] = ()) -> pd.DataFrame:
    """Per-target measures and their mean over targets.

    scores: long table with columns ``model``, ``target``, ``score_column`` and optionally
    ``metric_column``; several rows per (metric, model, target) (repetitions) are reduced to
    the mean of their finite scores, and rows whose ``status`` (if present) is not ``"ok"``
    count as missing. truth: columns ``model``, ``target``, ``value``. A metric listed as
    ``higher_is_better[metric] = False`` is negated before correlating.

    Returns columns ``metric, target, n_models, <MEASURES...>, reason``: one row per
    (metric, target), metrics in ``metric_order`` first (in that order, then the others
    sorted), targets sorted, then per metric a row with ``target == MEAN_ROW``
    holding the NaN-ignoring mean of each measure over targets (``n_models`` = number of
    targets with a defined Pearson r; ``reason`` lists targets left out).
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
    gt = truth[["model", "target", "value"]].copy()
    gt["model"] = gt["model"].astype(str)
    gt["target"] = gt["target"].astype(str)
    if gt.duplicated(["model", "target"]).any():
        dup = gt[gt.duplicated(["model", "target"], keep=False)].iloc[0]
        raise ValueError(f"ground truth has more than one value for model {dup['model']!r}, "
                         f"target {dup['target']!r}")
    gt["value"] = pd.to_numeric(gt["value"], errors="coerce")
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
    for metric in present:
        per_metric = sc[sc[metric_column].astype(str) == metric]
        sign = 1.0 if higher_is_better.get(metric, True) else -1.0
        targets = sorted(set(per_metric["target"].astype(str)) | set(gt["target"]))
        metric_rows: list[dict[str, object]] = []
        for target in targets:
            left = per_metric[per_metric["target"].astype(str) == target][["model", score_column]]
            left = left.assign(model=left["model"].astype(str))
            merged = left.merge(gt[gt["target"] == target][["model", "value"]], on="model",
                                how="inner").sort_values("model", kind="stable")
            if merged.empty and (left.empty or gt[gt["target"] == target].empty):
                continue  # a target on one side only: nothing to compare
            row = {"metric": metric, "target": target}
            row.update(measures_for_target(sign * merged[score_column].to_numpy(np.float64),
                                           merged["value"].to_numpy(np.float64)))
            metric_rows.append(row)
        rows.extend(metric_rows)
        if metric_rows:
            frame = pd.DataFrame(metric_rows)
            mean_row: dict[str, object] = {"metric": metric, "target": MEAN_ROW}
            for m in MEASURES:
                vals = frame[m].to_numpy(np.float64)
                mean_row[m] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
            defined = frame["pearson"].notna()
            mean_row["n_models"] = int(defined.sum())
            left_out = frame.loc[~defined, "target"].tolist()
            mean_row["reason"] = (f"target(s) without correlations: {', '.join(left_out)}"
                                  if left_out else "")
            rows.append(mean_row)
    columns = ["metric", "target", "n_models", *MEASURES, "reason"]
    out = pd.DataFrame(rows, columns=columns)
    out["n_models"] = out["n_models"].astype("int64")
    return out
