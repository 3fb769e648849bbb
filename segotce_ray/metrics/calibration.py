r"""Calibrated SEG-OTCE: the CVPR'21 OTCE combination fitted to measured transfer.

SEG-OTCE records, per (model, target) pair, the transport cost ``W_D = <P, C>`` and the
conditional entropy ``W_T = H(Y_t | Y_s)``; the plain score is ``-W_T``. OTCE (Tan, Li,
Huang, CVPR 2021) predicts transfer accuracy as ``λ1·W_D + λ2·W_T + b``, with the weights
learnt from pairs whose transfer result is known. This module fits that combination (and
two per-target variants), judges it by leave-one-target-out (LOTO) validation, and applies
it to new results. Pure: tables in, numbers out; the only I/O is the calibration file.

Forms (x_D, x_T are the features the weights multiply; y the values fitted):

==============  ================================================================  ===========
form            x_D, x_T                                                          y
==============  ================================================================  ===========
linear          W_D, W_T (the CVPR'21 form)                                       g
standardised    per target: (W − mean) / std over the target's models (0 if std=0)  g − mean_t g
rank            per target: average rank / (M − 1) − ½ (0 for a single model)      g − mean_t g
==============  ================================================================  ===========

The weights ``(λ1, λ2, b)`` are the least-squares solution of ``y ≈ λ1·x_D + λ2·x_T + b``
over every pair with ground truth (:func:`segotce_ray.metrics.otce.fit_otce_weights`).
The per-target forms only compare models within a target, which is all a ranking needs.

**LOTO.** For each target t with ground truth: fit on the pairs of the other targets,
score t's models, and measure Pearson r and top-1 regret (max g − g of the top-scored model)
against t's ground truth (:func:`segotce_ray.metrics.correlation.measures_for_target`);
report the mean over targets. The raw SEG-OTCE (score ``-W_T``, nothing fitted) gets the same
figures. :func:`calibrate` keeps ``linear`` unless another form has a strictly higher LOTO
mean Pearson r, then refits the chosen form on all pairs.

**Applying** (:func:`calibrated_rows`): each repetition k of a pair gets the score
``λ1·x_D + λ2·x_T + b`` from its own ``W_D``, ``W_T``; for the per-target forms the
standardisation/ranks are taken over the models of (target, k) with an ok repetition.

**The file** (:func:`write_calibration` / :func:`read_calibration`) is JSON: ``format``,
``version``, ``form``, ``coefficients`` {w_d, w_t, intercept}, ``settings`` (the layer,
cost scale, ε and solver whose W_D/W_T it was fitted on — W_D and W_T change meaning with
each), ``loto`` (raw and calibrated figures, per form), ``pairs`` (model, target, w_d, w_t,
value) and ``fingerprint`` (SHA-256 of the canonical JSON of form, coefficients, settings
and pairs; a file whose content does not match it is refused).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segotce_ray.io import write_text
from segotce_ray.metrics.correlation import measures_for_target
from segotce_ray.metrics.otce import fit_otce_weights

__all__ = [
    "CALIBRATED_METRIC", "CHECKED_SETTINGS", "FORMS", "Calibration", "CalibrationError",
    "calibrate", "calibrated_rows", "loto", "pair_features", "predict",
    "read_calibration", "settings_mismatch", "write_calibration",
]

#: Name of the calibrated metric in a job's results (higher = predicted better transfer).
CALIBRATED_METRIC = "otce_calibrated"
FORMS = ("linear", "standardised", "rank")
#: Settings a calibration file must share with the job that applies it.
CHECKED_SETTINGS = ("layer", "cost_scale", "epsilon", "solver")
FILE_FORMAT = "segotce-ray calibration"
FILE_VERSION = 1
_PER_TARGET = ("standardised", "rank")


class CalibrationError(ValueError):
    """Input a calibration cannot be fitted from, or a calibration file that is not usable."""


@dataclass
class Calibration:
    """A fitted combination ``score = w_d·x_D + w_t·x_T + intercept`` (see the module doc)."""

    form: str
    w_d: float
    w_t: float
    intercept: float
    settings: dict[str, Any] = field(default_factory=dict)
    loto: dict[str, Any] = field(default_factory=dict)
    pairs: list[dict[str, Any]] = field(default_factory=list)
    fingerprint: str = ""

    def content_fingerprint(self) -> str:
        blob = json.dumps({"form": self.form, "coefficients": self.coefficients(),
                           "settings": self.settings, "pairs": self.pairs},
                          sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def coefficients(self) -> dict[str, float]:
        return {"w_d": self.w_d, "w_t": self.w_t, "intercept": self.intercept}

    def to_dict(self) -> dict[str, Any]:
        return {"format": FILE_FORMAT, "version": FILE_VERSION, "form": self.form,
                "coefficients": self.coefficients(), "settings": dict(self.settings),
                "loto": self.loto, "pairs": list(self.pairs),
                "fingerprint": self.fingerprint or self.content_fingerprint()}


# ---------------------------------------------------------------------------- features


def pair_features(long: pd.DataFrame, metric: str = "otce") -> pd.DataFrame:
    """Mean W_D and W_T per (model, target) over ``metric``'s ok repetitions with both finite.

    Returns columns model, target, w_d, w_t (sorted; pairs without such a repetition left out).
    """
    need = {"model", "target", "metric", "status", "w_d", "w_t"}
    if missing := need - set(long.columns):
        raise CalibrationError(f"results table lacks column(s) {sorted(missing)}")
    df = long[(long["metric"].astype(str) == metric) & (long["status"].astype(str) == "ok")]
    wd = pd.to_numeric(df["w_d"], errors="coerce")
    wt = pd.to_numeric(df["w_t"], errors="coerce")
    df = df.assign(w_d=wd, w_t=wt)[np.isfinite(wd) & np.isfinite(wt)]
    out = df.groupby(["model", "target"], sort=True)[["w_d", "w_t"]].mean().reset_index()
    out["model"] = out["model"].astype(str)
    out["target"] = out["target"].astype(str)
    return out


def _per_target(values: np.ndarray, form: str) -> np.ndarray:
    """One target's values (M,) transformed by a per-target form."""
    v = np.asarray(values, dtype=np.float64)
    if form == "standardised":
        sd = v.std()
        return (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)
    if v.size < 2:
        return np.zeros_like(v)
    return (pd.Series(v).rank(method="average").to_numpy() - 1.0) / (v.size - 1) - 0.5


def _design(frame: pd.DataFrame, form: str, groups: Sequence[str] = ("target",)
            ) -> tuple[np.ndarray, np.ndarray]:
    """(x_D, x_T) of every row of ``frame`` under ``form`` (grouped by ``groups``)."""
    if form not in FORMS:
        raise CalibrationError(f"unknown calibration form {form!r}; known: {', '.join(FORMS)}")
    wd = frame["w_d"].to_numpy(np.float64)
    wt = frame["w_t"].to_numpy(np.float64)
    if form == "linear":
        return wd, wt
    xd, xt = np.empty_like(wd), np.empty_like(wt)
    for idx in frame.groupby(list(groups), sort=False).indices.values():
        xd[idx] = _per_target(wd[idx], form)
        xt[idx] = _per_target(wt[idx], form)
    return xd, xt


def _targets_of(frame: pd.DataFrame, form: str) -> np.ndarray:
    """The values fitted: g (linear) or g minus its target's mean (per-target forms)."""
    g = frame["value"].to_numpy(np.float64)
    if form == "linear":
        return g
    return g - frame.groupby("target", sort=False)["value"].transform("mean").to_numpy(np.float64)


def fit(frame: pd.DataFrame, form: str) -> tuple[float, float, float]:
    """``(λ1, λ2, b)`` of ``form`` fitted on ``frame`` (columns target, w_d, w_t, value)."""
    xd, xt = _design(frame, form)
    try:
        return fit_otce_weights(xd, xt, _targets_of(frame, form))
    except ValueError as exc:
        raise CalibrationError(f"cannot fit the {form} form: {exc}") from exc


def predict(frame: pd.DataFrame, form: str, coefficients: Sequence[float],
            groups: Sequence[str] = ("target",)) -> np.ndarray:
    """Calibrated scores of the rows of ``frame`` (columns w_d, w_t and ``groups``)."""
    l1, l2, b = (float(c) for c in coefficients)
    xd, xt = _design(frame, form, groups)
    return l1 * xd + l2 * xt + b


# ---------------------------------------------------------------------------- validation


def _summarise(per_target: dict[str, dict[str, Any]]) -> dict[str, Any]:
    def mean(key: str) -> float | None:
        vals = [v[key] for v in per_target.values() if v[key] is not None]
        return float(np.mean(vals)) if vals else None

    return {"pearson": mean("pearson"), "regret": mean("regret"), "per_target": per_target}


def _measures(scores: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    m = measures_for_target(scores, truth)

    def num(x: Any) -> float | None:
        return None if x is None or not math.isfinite(float(x)) else float(x)

    return {"pearson": num(m["pearson"]), "regret": num(m["regret"]),
            "n_models": int(m["n_models"]), "reason": str(m["reason"])}


def loto(frame: pd.DataFrame, form: str | None) -> dict[str, Any]:
    """Leave-one-target-out figures of ``form`` (``None``: the raw score ``-W_T``, no fit).

    frame: columns model, target, w_d, w_t, value. Returns {pearson, regret (means over
    targets, None when undefined everywhere), per_target: {t: {pearson, regret, n_models,
    reason}}}.
    """
    per_target: dict[str, dict[str, Any]] = {}
    for target in sorted(frame["target"].unique()):
        held = frame[frame["target"] == target].sort_values("model", kind="stable")
        if form is None:
            scores = -held["w_t"].to_numpy(np.float64)
        else:
            coefs = fit(frame[frame["target"] != target], form)
            scores = predict(held, form, coefs)
        per_target[str(target)] = _measures(scores, held["value"].to_numpy(np.float64))
    return _summarise(per_target)


def _better(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """True when LOTO figures ``a`` beat ``b`` (higher mean Pearson r; NaN never wins)."""
    pa_, pb = a["pearson"], b["pearson"]
    if pa_ is None:
        return False
    return pb is None or pa_ > pb + 1e-12


# ---------------------------------------------------------------------------- fitting


def _check_ground_truth(features: pd.DataFrame, truth: pd.DataFrame, models: set[str],
                        targets: set[str]) -> pd.DataFrame:
    """Ground truth joined to the pair features; errors list unknown names, too few targets."""
    unknown = [f"{r.model} → {r.target}" + (" (unknown model)" if r.model not in models else "")
               + (" (unknown target)" if r.target not in targets else "")
               for r in truth.itertuples(index=False)
               if r.model not in models or r.target not in targets]
    if unknown:
        raise CalibrationError(f"{len(unknown)} ground-truth row(s) name models or targets the "
                               f"run does not have: " + "; ".join(unknown))
    frame = features.merge(truth[["model", "target", "value"]], on=["model", "target"])
    have = sorted(frame["target"].unique())
    if len(have) < 2:
        raise CalibrationError(
            f"need at least two targets with ground truth and SEG-OTCE results to validate a "
            f"calibration (leave-one-target-out); found {len(have)}: {', '.join(have) or 'none'}")
    return frame.sort_values(["target", "model"], kind="stable").reset_index(drop=True)


def calibrate(long: pd.DataFrame, truth: pd.DataFrame, settings: Mapping[str, Any] | None = None,
              forms: Sequence[str] = FORMS) -> Calibration:
    """Fit a :class:`Calibration` from a run's long table and ground truth (model, target, value).

    Raises :class:`CalibrationError` naming the problem: no SEG-OTCE W_D/W_T in the run,
    ground-truth rows naming models or targets the run lacks (all listed), fewer than two
    targets with both ground truth and results, or too few pairs to fit.
    """
    features = pair_features(long)
    if features.empty:
        raise CalibrationError("the run has no SEG-OTCE repetition with finite W_D and W_T "
                               "(metric 'otce', status ok): nothing to calibrate")
    models = set(long["model"].astype(str))
    targets = set(long["target"].astype(str))
    gt = truth.assign(model=truth["model"].astype(str), target=truth["target"].astype(str))
    frame = _check_ground_truth(features, gt, models, targets)
    figures = {form: loto(frame, form) for form in forms}
    chosen = forms[0]
    for form in forms[1:]:
        if _better(figures[form], figures[chosen]):
            chosen = form
    l1, l2, b = fit(frame, chosen)
    pairs = [{"model": r.model, "target": r.target, "w_d": float(r.w_d), "w_t": float(r.w_t),
              "value": float(r.value)} for r in frame.itertuples(index=False)]
    cal = Calibration(chosen, l1, l2, b, settings=dict(settings or {}),
                      loto={"raw": loto(frame, None), "calibrated": figures[chosen],
                            "forms": figures},
                      pairs=pairs)
    cal.fingerprint = cal.content_fingerprint()
    return cal


def calibrated_rows(long: pd.DataFrame, cal: Calibration, metric: str = "otce") -> pd.DataFrame:
    """The ``otce_calibrated`` rows of a long table: one per repetition of ``metric``.

    An ok repetition with finite W_D and W_T gets ``score`` from :func:`predict` (per-target
    forms: over the models of its (target, k)); any other repetition becomes a failed row
    that keeps the original error. Every other column is copied.
    """
    rows = long[long["metric"].astype(str) == metric].copy()
    rows["metric"] = CALIBRATED_METRIC
    if "joint" in rows.columns:    # the SEG-OTCE row keeps the label joint; no copy of it
        rows["joint"] = None
    if rows.empty:
        return rows
    wd = pd.to_numeric(rows["w_d"], errors="coerce").to_numpy(np.float64)
    wt = pd.to_numeric(rows["w_t"], errors="coerce").to_numpy(np.float64)
    ok = (rows["status"].astype(str) == "ok").to_numpy() & np.isfinite(wd) & np.isfinite(wt)
    score = np.full(len(rows), np.nan)
    if ok.any():
        score[ok] = predict(rows[ok], cal.form, cal.coefficients().values(),
                            groups=("target", "k"))
    rows["score"] = score
    was_ok = (rows["status"].astype(str) == "ok").to_numpy()
    lost = was_ok & ~ok
    rows.loc[lost, "status"] = "failed"
    rows.loc[lost, "error"] = f"{CALIBRATED_METRIC}: the repetition has no finite W_D/W_T"
    return rows.reset_index(drop=True)


# ---------------------------------------------------------------------------- settings


def settings_mismatch(calibrated: Mapping[str, Any], job: Mapping[str, Any]) -> list[str]:
    """One line per :data:`CHECKED_SETTINGS` key on which a calibration and a job differ."""
    out = []
    for key in CHECKED_SETTINGS:
        a, b = calibrated.get(key), job.get(key)
        same = (a == b) or (isinstance(a, (int, float)) and isinstance(b, (int, float))
                            and math.isclose(float(a), float(b), rel_tol=1e-12))
        if not same:
            out.append(f"{key}: the calibration was fitted for {a!r}, the job uses {b!r}")
    return out


# ---------------------------------------------------------------------------- file I/O


def write_calibration(path: str | Path, cal: Calibration) -> Path:
    """Write ``cal`` as JSON to ``path`` (atomically); returns the path."""
    return write_text(path, json.dumps(cal.to_dict(), indent=2, allow_nan=False) + "\n")


def _number(data: Mapping[str, Any], key: str, where: str) -> float:
    v = data.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(float(v)):
        raise CalibrationError(f"{where}: {key} must be a finite number, got {v!r}")
    return float(v)


def read_calibration(path: str | Path) -> Calibration:
    """Read and check a calibration file; :class:`CalibrationError` names the file and fault."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CalibrationError(f"calibration file {path}: cannot read it: {exc}") from exc
    except ValueError as exc:
        raise CalibrationError(f"calibration file {path}: not valid JSON: {exc}") from exc
    where = f"calibration file {path}"
    if not isinstance(data, dict) or data.get("format") != FILE_FORMAT:
        raise CalibrationError(f"{where}: not a segotce-ray calibration file "
                               f"(expected \"format\": \"{FILE_FORMAT}\")")
    if data.get("version") != FILE_VERSION:
        raise CalibrationError(f"{where}: version {data.get('version')!r} is not supported "
                               f"(this version reads {FILE_VERSION})")
    if data.get("form") not in FORMS:
        raise CalibrationError(f"{where}: form must be one of {', '.join(FORMS)}, "
                               f"got {data.get('form')!r}")
    coefs = data.get("coefficients")
    if not isinstance(coefs, dict):
        raise CalibrationError(f"{where}: coefficients must be a mapping {{w_d, w_t, intercept}}")
    for key in ("settings", "loto"):
        if not isinstance(data.get(key), dict):
            raise CalibrationError(f"{where}: {key} must be a mapping")
    if not isinstance(data.get("pairs"), list):
        raise CalibrationError(f"{where}: pairs must be a list")
    cal = Calibration(data["form"], _number(coefs, "w_d", where), _number(coefs, "w_t", where),
                      _number(coefs, "intercept", where), settings=data["settings"],
                      loto=data["loto"], pairs=data["pairs"],
                      fingerprint=str(data.get("fingerprint", "")))
    if cal.fingerprint != cal.content_fingerprint():
        raise CalibrationError(f"{where}: fingerprint does not match the content (the file was "
                               f"edited or damaged); fit it again with segotce-ray calibrate")
    return cal
