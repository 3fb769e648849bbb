"""A recommended ranking learned from the team's own ground truth (pure: frames in, numbers out).

Inputs: a per-pair frame (one row per (model, target): ``model``, ``target``, ``family``,
``capacity`` (parameter count), one column per metric's mean score, and SEG-OTCE's ``w_d`` /
``w_t`` means where present) and the ground truth per pair (``model``, ``target``, ``value``).

Candidates
----------
``<metric>``                  the metric's own score, oriented higher-is-better (no fit).
``<metric>+family+capacity``  least squares of g − mean_t(g) on
                              [z_t(metric), one-hot(family), log10(capacity) − its mean],
                              z_t = per-target z-score (ddof 0; 0 where the target's scores
                              are constant); min-norm solution when columns are collinear.
``otce_form``                 the CVPR'21 form λ1·W_D + λ2·W_T + b: least squares of
                              g − mean_t(g) on the per-target centred W_D and W_T (b is the
                              per-target mean, irrelevant to a ranking within a target).
``rank_average``              the mean over metrics of each metric's per-target average rank
                              (oriented, scaled to [0, 1]); no fit.

Judging: leave-one-target-out (LOTO). For each target t, fit on the pairs of the other targets,
score t's models, and measure Pearson r, weighted τ (Vigna, scipy defaults) and top-1 regret
(max g − g[argmax score], ground-truth units) against t's ground truth; report the mean over
the held-out targets (NaN-ignoring).

Selection rule (fixed before any real score was looked at)
----------------------------------------------------------
For each candidate and each held-out target t, its **utility** is

    u_t = ½ · weighted_τ_t + ½ · clip(1 − regret_t / random_regret_t, −1, 1)

where random_regret_t = mean over t's models of (max g − g) is the expected top-1 regret of
a random ranking (a target where it is 0, all models equal, contributes its weighted τ term
only; an undefined weighted τ contributes its regret term only: u_t is then that one term,
the mean of the defined halves). Both halves are 0 for a random ranking and 1 for a perfect
one, so neither top-1 regret nor the ranking quality as a
whole can be ignored, and Pearson (sensitive to one outlier model) does not enter the choice.
The **chosen** candidate has the highest mean utility over the held-out targets (NaN-ignoring;
a candidate with no defined utility is not eligible). Ties (within 1e-9) go to the lower mean
regret, then the higher mean weighted τ, then the candidate with fewer fitted parameters
(no fit < otce_form < metric+family+capacity), then the name.

The chosen candidate's evidence is **nested**: for each held-out target t, the rule above is
applied again using only the other targets (an inner LOTO on them), and t is scored by the
candidate chosen there, refitted on all the other targets. These nested figures (``loto``'s
``recommended`` entry) are the honest ones; the chosen candidate's own LOTO figures are
flattered by having been picked on the same folds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from segotce_ray.metrics.correlation import (
    MIN_MODELS,
    ground_truth_means,
    regret,
    weighted_kendall_tau,
)

__all__ = [
    "FIT_SUFFIX",
    "OTCE_FORM",
    "RANK_AVERAGE",
    "RULE",
    "apply_recommendation",
    "recommend",
    "utility",
]

#: Suffix of a metric's fitted candidate (metric + family offsets + log capacity).
FIT_SUFFIX = "+family+capacity"
RANK_AVERAGE = "rank_average"
OTCE_FORM = "otce_form"
#: The selection rule in one line (the module docstring has it in full).
RULE = ("highest mean over held-out targets of u_t = 1/2 weighted_tau_t + 1/2 clip(1 - "
        "regret_t / random_regret_t, -1, 1) (mean of the defined halves); ties: lower mean "
        "regret, higher mean weighted_tau, fewer fitted parameters, name; evidence nested "
        "(the choice is repeated on the other targets for each held-out one)")
#: The figures reported per candidate and per held-out target.
FIGURES = ("pearson", "weighted_tau", "regret")
_TIE = 1e-9


# --------------------------------------------------------------------------------------------
# Data: one block of arrays per target
# --------------------------------------------------------------------------------------------

@dataclass
class _Target:
    g: np.ndarray                      # (M,) ground truth
    family: np.ndarray                 # (M,) str
    log_capacity: np.ndarray           # (M,) log10 params, NaN when unknown
    columns: dict[str, np.ndarray] = field(default_factory=dict)  # oriented metric, w_d, w_t


def _zscore(x: np.ndarray) -> np.ndarray:
    """Per-target standardisation: (x − mean) / std (ddof 0) over finite entries; 0 where the
    target's values are constant; NaN stays NaN."""
    ok = np.isfinite(x)
    out = np.full_like(x, np.nan)
    if ok.any():
        mu, sd = x[ok].mean(), x[ok].std()
        out[ok] = (x[ok] - mu) / sd if sd > 0 else 0.0
    return out


def _centre(x: np.ndarray) -> np.ndarray:
    ok = np.isfinite(x)
    return x - x[ok].mean() if ok.any() else x


def _scaled_ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks of the finite entries scaled to [0, 1] (1 = highest); NaN stays NaN."""
    ok = np.isfinite(x)
    out = np.full_like(x, np.nan)
    n = int(ok.sum())
    if n == 1:
        out[ok] = 0.5
    elif n > 1:
        out[ok] = (pd.Series(x[ok]).rank(method="average").to_numpy() - 1) / (n - 1)
    return out


def _log_capacity(values: pd.Series) -> np.ndarray:
    n = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, np.log10(np.where(n > 0, n, 1.0)), np.nan)


def _blocks(frame: pd.DataFrame, columns: Sequence[str], signs: Mapping[str, float],
            family_column: str, capacity_column: str) -> dict[str, _Target]:
    """One :class:`_Target` per target of ``frame`` (sorted by model within a target)."""
    out: dict[str, _Target] = {}
    for target, per in frame.sort_values(["target", "model"], kind="stable").groupby(
            "target", sort=True):
        fam = (per[family_column].astype(str).to_numpy() if family_column in per.columns
               else np.full(len(per), "", dtype=object))
        cap = (_log_capacity(per[capacity_column]) if capacity_column in per.columns
               else np.full(len(per), np.nan))
        g = (per["value"].to_numpy(np.float64) if "value" in per.columns
             else np.full(len(per), np.nan))
        cols = {c: signs.get(c, 1.0) * pd.to_numeric(per[c], errors="coerce").to_numpy(np.float64)
                for c in columns if c in per.columns}
        out[str(target)] = _Target(g=g, family=fam, log_capacity=cap, columns=cols)
    return out


# --------------------------------------------------------------------------------------------
# Candidates: fit on some targets, score any target
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Candidate:
    name: str
    kind: str          # "metric" | "metric_fit" | "otce_form" | "rank_average"
    metric: str = ""
    rank: int = 0      # fitted-parameter order for the tie-break: 0 no fit, 1 otce, 2 fit


def _fit(c: _Candidate, train: Sequence[_Target], metrics: Sequence[str],
         w_d: str, w_t: str) -> dict[str, object]:
    """The JSON-ready fitted form of candidate ``c`` on the ``train`` targets."""
    if c.kind == "metric":
        return {"kind": "metric", "metric": c.metric}
    if c.kind == "rank_average":
        return {"kind": "rank_average", "metrics": list(metrics),
                "standardise": "per-target average ranks scaled to [0, 1], NaN-ignoring mean"}
    if c.kind == "otce_form":
        xs, ys = [], []
        for t in train:
            d, w = _centre(t.columns[w_d]), _centre(t.columns[w_t])
            ok = np.isfinite(d) & np.isfinite(w) & np.isfinite(t.g)
            if ok.sum():
                xs.append(np.column_stack([d[ok], w[ok]]))
                ys.append(t.g[ok] - t.g[ok].mean())
        if not xs:
            return {"kind": "otce_form", "coef": {w_d: math.nan, w_t: math.nan}}
        beta = np.linalg.lstsq(np.vstack(xs), np.concatenate(ys), rcond=None)[0]
        return {"kind": "otce_form", "w_d_column": w_d, "w_t_column": w_t,
                "coef": {w_d: float(beta[0]), w_t: float(beta[1])},
                "standardise": "W_D and W_T centred per target; intercept b = per-target mean"}
    # metric_fit: g − mean_t g on [z_t(metric), one-hot(family), log10 capacity − centre]
    rows_z, rows_f, rows_c, ys = [], [], [], []
    for t in train:
        z = _zscore(t.columns[c.metric])
        ok = np.isfinite(z) & np.isfinite(t.g)
        if ok.sum() == 0:
            continue
        rows_z.append(z[ok])
        rows_f.append(t.family[ok])
        rows_c.append(t.log_capacity[ok])
        ys.append(t.g[ok] - t.g[ok].mean())
    if not ys:
        return {"kind": "metric_fit", "metric": c.metric, "coef": math.nan,
                "family_offsets": {}, "log_capacity_coef": 0.0, "log_capacity_centre": 0.0}
    z, fam, cap, y = (np.concatenate(rows_z), np.concatenate(rows_f), np.concatenate(rows_c),
                      np.concatenate(ys))
    families = sorted(set(fam.tolist()))
    centre = float(np.nanmean(cap)) if np.isfinite(cap).any() else 0.0
    capc = np.where(np.isfinite(cap), cap - centre, 0.0)
    x = np.column_stack([z, (fam[:, None] == np.array(families)[None, :]).astype(np.float64),
                         capc])
    beta = np.linalg.lstsq(x, y, rcond=None)[0]  # min-norm when columns are collinear
    return {"kind": "metric_fit", "metric": c.metric, "coef": float(beta[0]),
            "family_offsets": {f: float(b) for f, b in zip(families, beta[1:-1])},
            "log_capacity_coef": float(beta[-1]), "log_capacity_centre": centre,
            "standardise": "metric z-scored per target (ddof 0, 0 if constant); log10 "
                           "capacity minus log_capacity_centre (0 if unknown); family offset "
                           "0 for a family not seen in the fit"}


def _predict(fit: Mapping[str, object], t: _Target, warn_unknown: bool = False) -> np.ndarray:
    """Scores (M,) of one target's models under a fitted candidate (higher = better)."""
    kind = fit["kind"]
    if kind == "metric":
        return t.columns[str(fit["metric"])].copy()
    if kind == "rank_average":
        present = [_scaled_ranks(t.columns[m]) for m in fit["metrics"]  # type: ignore[union-attr]
                   if m in t.columns]
        if not present:
            return np.full(t.g.shape, np.nan)
        ranks = np.vstack(present)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(ranks, axis=0)
    if kind == "otce_form":
        coef: Mapping[str, float] = fit["coef"]  # type: ignore[assignment]
        return sum(b * _centre(t.columns[col]) for col, b in coef.items())  # type: ignore[return-value]
    offsets: Mapping[str, float] = fit["family_offsets"]  # type: ignore[assignment]
    unknown = sorted(set(t.family.tolist()) - set(offsets))
    if unknown and warn_unknown:
        warnings.warn(f"recommended ranking: family(ies) {', '.join(map(repr, unknown))} not "
                      "seen in the fit: family offset 0", stacklevel=3)
    off = np.array([offsets.get(f, 0.0) for f in t.family], dtype=np.float64)
    capc = np.where(np.isfinite(t.log_capacity),
                    t.log_capacity - float(fit["log_capacity_centre"]), 0.0)  # type: ignore[arg-type]
    return (float(fit["coef"]) * _zscore(t.columns[str(fit["metric"])]) + off  # type: ignore[arg-type]
            + float(fit["log_capacity_coef"]) * capc)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Judging and choosing
# --------------------------------------------------------------------------------------------

def utility(weighted_tau: float, regret: float, random_regret: float) -> float:
    """u_t of the selection rule: the mean of the defined halves among ½·(weighted τ) and
    ½·clip(1 − regret / random_regret, −1, 1) (each half scaled so both halves count
    equally); NaN when neither is defined."""
    terms = []
    if np.isfinite(weighted_tau):
        terms.append(float(weighted_tau))
    if np.isfinite(regret) and np.isfinite(random_regret) and random_regret > 0:
        terms.append(float(np.clip(1.0 - regret / random_regret, -1.0, 1.0)))
    return float(np.mean(terms)) if terms else math.nan


def _score(pred: np.ndarray, t: _Target) -> dict[str, float]:
    """Pearson, weighted τ, regret and utility of one held-out target: the same values and
    NaN rules as :func:`~segotce_ray.metrics.correlation.measures_for_target` (pairs without
    a finite score dropped; fewer than 3 models or constant scores: all NaN; constant ground
    truth: correlations NaN), computed without its other measures."""
    ok = np.isfinite(pred) & np.isfinite(t.g)
    s, g = pred[ok], t.g[ok]
    out = {k: math.nan for k in (*FIGURES, "utility")}
    if s.size < MIN_MODELS or np.ptp(s) == 0:
        return out
    out["regret"] = regret(s, g)
    if np.ptp(g) > 0:
        sc, gc = s - s.mean(), g - g.mean()
        out["pearson"] = float(np.clip((sc @ gc) / math.sqrt((sc @ sc) * (gc @ gc)), -1, 1))
        out["weighted_tau"] = weighted_kendall_tau(s, g)
    out["utility"] = utility(out["weighted_tau"], out["regret"], float(np.mean(g.max() - g)))
    return out


class _Judge:
    """LOTO fits and scores, cached by (candidate, training targets, held-out target)."""

    def __init__(self, blocks: Mapping[str, _Target], candidates: Sequence[_Candidate],
                 metrics: Sequence[str], w_d: str, w_t: str) -> None:
        self.blocks, self.candidates = blocks, list(candidates)
        self.metrics, self.w_d, self.w_t = list(metrics), w_d, w_t
        self._fits: dict[tuple[str, frozenset[str]], dict[str, object]] = {}
        self._scores: dict[tuple[str, frozenset[str], str], dict[str, float]] = {}

    def fit(self, c: _Candidate, train: frozenset[str]) -> dict[str, object]:
        key = (c.name, train)
        if key not in self._fits:
            self._fits[key] = _fit(c, [self.blocks[t] for t in sorted(train)], self.metrics,
                                   self.w_d, self.w_t)
        return self._fits[key]

    def score(self, c: _Candidate, train: frozenset[str], held_out: str) -> dict[str, float]:
        key = (c.name, train, held_out)
        if key not in self._scores:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pred = _predict(self.fit(c, train), self.blocks[held_out])
            self._scores[key] = _score(pred, self.blocks[held_out])
        return self._scores[key]

    def loto(self, c: _Candidate, targets: Sequence[str]) -> dict[str, object]:
        """Per held-out target figures (fit on the rest of ``targets``) and their means."""
        per = {t: self.score(c, frozenset(targets) - {t}, t) for t in targets}
        return {**_means(per), "per_target": per}

    def choose(self, targets: Sequence[str]) -> tuple[str, dict[str, dict[str, object]]]:
        """The rule applied to a LOTO over ``targets``: (chosen name, figures per candidate)."""
        table = {c.name: self.loto(c, targets) for c in self.candidates}
        eligible = [c for c in self.candidates if np.isfinite(table[c.name]["utility"])]  # type: ignore[arg-type]
        if not eligible:
            return "", table
        best_u = max(float(table[c.name]["utility"]) for c in eligible)  # type: ignore[arg-type]
        near = [c for c in eligible if float(table[c.name]["utility"]) >= best_u - _TIE]  # type: ignore[arg-type]

        def key(c: _Candidate) -> tuple:
            fig = table[c.name]
            reg, wt = float(fig["regret"]), float(fig["weighted_tau"])  # type: ignore[arg-type]
            return (reg if np.isfinite(reg) else math.inf,
                    -wt if np.isfinite(wt) else math.inf, c.rank, c.name)
        return min(near, key=key).name, table


def _means(per: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    out = {}
    for k in (*FIGURES, "utility"):
        vals = np.array([p[k] for p in per.values()], dtype=np.float64)
        out[k] = float(np.nanmean(vals)) if np.isfinite(vals).any() else math.nan
    return out


def _clean(x: object) -> object:
    """JSON-ready: NaN/inf → None, numpy scalars → Python."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


# --------------------------------------------------------------------------------------------
# Public: learn a recommendation, apply it to a new run
# --------------------------------------------------------------------------------------------

_RESERVED = {"model", "target", "value", "n_seeds", "seed_std"}


def recommend(pairs: pd.DataFrame, truth: pd.DataFrame, metrics: Sequence[str] | None = None,
              higher_is_better: Mapping[str, bool] | None = None, w_d_column: str = "w_d",
              w_t_column: str = "w_t", family_column: str = "family",
              capacity_column: str = "capacity") -> dict[str, object]:
    """Learn a recommended ranking from ground truth and judge it leave-one-target-out.

    pairs: one row per (model, target) with ``model``, ``target``, ``family_column``,
    ``capacity_column`` (parameter count), one column per metric's mean score (``metrics``;
    default: every other numeric column except the W_D / W_T ones) and, where present, the
    SEG-OTCE W_D / W_T means. A metric with ``higher_is_better[m] = False`` is negated first
    (W_D / W_T are used as they are: their sign is learned). truth: ``model, target, value
    [, seed]`` (seeds averaged by :func:`ground_truth_means`); pairs without a finite ground
    truth are left out.

    Returns a JSON-serialisable dict (NaN written as ``None``)::

        {"rule": RULE, "targets": [...], "candidates": [...],
         "loto": {candidate: {"pearson", "weighted_tau", "regret", "utility",
                              "per_target": {target: {...same...}}},
                  ...,
                  "recommended": {"pearson", "weighted_tau", "regret", "utility",
                                  "per_target": {target: {..., "chosen": name}}, "reason"}},
         "chosen": name,
         "fit": the chosen candidate fitted on every target (see :func:`apply_recommendation`)}

    ``loto["recommended"]`` is the nested evidence (module docstring); with 2 targets no inner
    LOTO is possible, so it is all ``None`` with a ``reason``. Raises ``ValueError`` with
    ground truth on fewer than 2 targets, or when no metric column is given or found.
    """
    hib = higher_is_better or {}
    gt = ground_truth_means(truth)[["model", "target", "value"]]
    frame = pairs.copy()
    frame["model"], frame["target"] = frame["model"].astype(str), frame["target"].astype(str)
    frame = frame.merge(gt, on=["model", "target"], how="inner")
    frame = frame[np.isfinite(frame["value"].to_numpy(np.float64))]
    targets = sorted(frame["target"].unique())
    if len(targets) < 2:
        raise ValueError("a recommended ranking needs ground truth on at least 2 targets "
                         f"(leave-one-target-out); got {len(targets)}"
                         + (f" ({targets[0]!r})" if targets else ""))
    if metrics is None:
        skip = _RESERVED | {family_column, capacity_column, w_d_column, w_t_column}
        metrics = [c for c in pairs.columns if c not in skip
                   and pd.api.types.is_numeric_dtype(pairs[c])]
    metrics = [m for m in metrics if m in frame.columns]
    if not metrics:
        raise ValueError("no metric column to learn from (pass metrics=[...])")
    has_otce = {w_d_column, w_t_column} <= set(frame.columns) and all(
        np.isfinite(pd.to_numeric(frame[c], errors="coerce")).any()
        for c in (w_d_column, w_t_column))
    signs = {m: (1.0 if hib.get(m, True) else -1.0) for m in metrics}
    cols = list(metrics) + ([w_d_column, w_t_column] if has_otce else [])
    blocks = _blocks(frame, cols, signs, family_column, capacity_column)
    candidates = [_Candidate(m, "metric", m, 0) for m in metrics]
    candidates += [_Candidate(m + FIT_SUFFIX, "metric_fit", m, 2) for m in metrics]
    if has_otce:
        candidates.append(_Candidate(OTCE_FORM, "otce_form", "", 1))
    if len(metrics) > 1:
        candidates.append(_Candidate(RANK_AVERAGE, "rank_average", "", 0))
    judge = _Judge(blocks, candidates, metrics, w_d_column, w_t_column)

    chosen, table = judge.choose(targets)
    by_name = {c.name: c for c in candidates}
    nested = _nested(judge, by_name, targets)
    fit = (judge.fit(by_name[chosen], frozenset(targets)) if chosen else {})
    if fit:
        fit = {**fit, "name": chosen, "signs": {m: signs[m] for m in metrics},
               "family_column": family_column, "capacity_column": capacity_column}
    out = {"rule": RULE, "targets": targets, "candidates": [c.name for c in candidates],
           "loto": {**table, "recommended": nested}, "chosen": chosen, "fit": fit}
    return _clean(out)  # type: ignore[return-value]


def _nested(judge: "_Judge", by_name: Mapping[str, "_Candidate"],
            targets: list[str]) -> dict[str, object]:
    """The chosen ranker's honest evidence: for each held-out target, the rule applied again
    on the other targets only, and the held-out target scored by the candidate chosen there."""
    if len(targets) < 3:
        return {**{k: math.nan for k in (*FIGURES, "utility")}, "per_target": {},
                "reason": "2 targets: no inner leave-one-target-out, no nested evidence"}
    per: dict[str, dict[str, object]] = {}
    for t in targets:
        inner = [u for u in targets if u != t]
        pick, _ = judge.choose(inner)
        fig: dict[str, object] = ({**judge.score(by_name[pick], frozenset(inner), t)}
                                  if pick else {k: math.nan for k in (*FIGURES, "utility")})
        fig["chosen"] = pick
        per[t] = fig
    return {**_means(per), "per_target": per, "reason": ""}  # type: ignore[arg-type]


def apply_recommendation(recommendation: Mapping[str, object],
                         pairs: pd.DataFrame) -> pd.Series:
    """Score a run's pairs with a fitted recommendation (:func:`recommend`'s output, or its
    ``fit``): a ``float64`` Series aligned with ``pairs``' index, named ``"recommended"``,
    higher = better, NaN where an input the fit needs is missing. Per-target standardisation
    uses the new run's own values (the rule, not the training statistics). A family not seen
    in the fit gets offset 0, with a warning. Add it as metric ``recommended``:
    ``pairs.assign(metric="recommended", score=apply_recommendation(rec, pairs))``.
    """
    fit = recommendation.get("fit", recommendation)
    if not isinstance(fit, Mapping) or "kind" not in fit:
        raise ValueError("not a fitted recommendation: no 'fit' with a 'kind'")
    kind = fit["kind"]
    needed = ([str(fit["metric"])] if kind in ("metric", "metric_fit")
              else list(fit["metrics"]) if kind == "rank_average"  # type: ignore[call-overload]
              else list(fit["coef"]))  # type: ignore[call-overload]
    if missing := [c for c in needed if c not in pairs.columns] if kind != "rank_average" else []:
        raise ValueError(f"the recommendation needs column(s) {missing}, absent from the run")
    signs: Mapping[str, float] = fit.get("signs") or {}  # type: ignore[assignment]
    family_column = str(fit.get("family_column", "family"))
    capacity_column = str(fit.get("capacity_column", "capacity"))
    frame = pairs.assign(model=pairs["model"].astype(str), target=pairs["target"].astype(str),
                         _row=np.arange(len(pairs)))
    out = np.full(len(pairs), np.nan)
    for target, per in frame.groupby("target", sort=True):
        block = _blocks(per.drop(columns=["value"], errors="ignore"),
                        needed, signs, family_column, capacity_column)[str(target)]
        ordered = per.sort_values(["target", "model"], kind="stable")["_row"].to_numpy()
        out[ordered] = _predict(fit, block, warn_unknown=True)
    return pd.Series(out, index=pairs.index, name="recommended", dtype=np.float64)
