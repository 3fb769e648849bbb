"""Peer transferability metrics on pixel pools (NCE, LEEP, N-LEEP, LogME, H-score, GBC, TransRate).

Every sampled pixel is one sample: ``features`` are the model's per-pixel vectors ``(N, D)``,
``source_probs`` the source head's per-pixel softmax ``(N, C_s)`` and ``target_labels`` the
target train ids ``(N,)``.  Each function returns one float and **higher = more
transferable for every metric** (NCE, LEEP and N-LEEP are log-likelihoods <= 0, GBC is a
negated class overlap <= 0; LogME, H-score and TransRate are used as published).

Shared conventions (all functions):

* ``target_labels`` are integers; pixels equal to ``ignore_index`` (default 255, the same
  convention as :func:`segotce_ray.metrics.otce.otce_score`) are dropped first; the remaining
  label values may be any integers (they are relabelled ``0..C-1`` in sorted order, so every
  score is invariant to renaming target classes).  Only classes present count.
* Fewer than two target classes (or fewer than two pixels) raises :class:`MetricInputError`
  (a ``ValueError``): a one-class target cannot rank models, and every score would be a
  constant.  Shape mismatches, NaN/inf values, empty arrays and non-probability rows raise
  the same error, naming the metric and the argument at fault.
* Features are computed in float64 (float16 pools are upcast).  Constant features (zero
  variance) are not an error; each docstring states the value returned, which is always the
  score of an uninformative representation.
* Pure numpy/scipy; deterministic for the same inputs (N-LEEP's mixture uses a fixed seed).
* Cost: NCE and LEEP O(N·C_s·C_t); LogME, H-scores, GBC and TransRate one or two D×D Gram
  matrices plus a D×D factorisation, O(N·D² + D³); N-LEEP adds EM,
  O(iterations · N · K · d) for K = 5·C_t components in d PCA dimensions (the slowest peer).

:data:`PEER_METRICS` describes each metric's input kind (``"probs"`` or ``"features"``) so
the pipeline can call them generically through :func:`compute_metric`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from segotce_ray.metrics.gbc import gbc
from segotce_ray.metrics.hscore import hscore, hscore_shrinkage
from segotce_ray.metrics.leep import leep
from segotce_ray.metrics.logme import logme
from segotce_ray.metrics.nce import nce
from segotce_ray.metrics.nleep import nleep
from segotce_ray.metrics.peer_inputs import MetricInputError
from segotce_ray.metrics.transrate import transrate

# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class MetricInfo:
    """How to call one peer metric generically.

    ``inputs`` is ``"probs"`` (source-head probabilities (N, C_s)) or ``"features"``
    (pixel features (N, D)); none of the peers needs source data.  ``higher_is_better`` is
    True for all of them.
    """

    name: str
    function: Callable[..., float]
    inputs: Literal["probs", "features"]
    paper: str
    summary: str
    higher_is_better: bool = True
    needs_source_data: bool = False


PEER_METRICS: dict[str, MetricInfo] = {
    info.name: info for info in (
        MetricInfo("nce", nce, "probs", "Tran et al., ICCV 2019",
                   "−H(target | argmax source class)"),
        MetricInfo("leep", leep, "probs", "Nguyen et al., ICML 2020",
                   "log expected empirical prediction"),
        MetricInfo("nleep", nleep, "features", "Li et al., CVPR 2021",
                   "LEEP on Gaussian-mixture posteriors of PCA(80%) features"),
        MetricInfo("logme", logme, "features", "You et al., ICML 2021",
                   "Bayesian linear-regression evidence per sample"),
        MetricInfo("hscore", hscore, "features", "Bao et al., ICIP 2019",
                   "tr(cov(f)⁺ cov(E[f|y]))"),
        MetricInfo("hscore_shrinkage", hscore_shrinkage, "features",
                   "Ibrahim et al., arXiv 2110.06893", "H-score with Ledoit–Wolf covariance"),
        MetricInfo("gbc", gbc, "features", "Pándy et al., CVPR 2022",
                   "−Σ pairwise Bhattacharyya coefficients of diagonal class Gaussians"),
        MetricInfo("transrate", transrate, "features", "Huang et al., ICML 2022",
                   "coding rate R(f) − mean_c R(f_c)"),
    )
}


def metrics_for_inputs(*, has_probs: bool, has_features: bool = True) -> list[str]:
    """Names of the peer metrics computable from a pool (registry order)."""
    ok = {"probs": has_probs, "features": has_features}
    return [name for name, info in PEER_METRICS.items() if ok[info.inputs]]


def compute_metric(name: str, *, labels: Any, features: Any = None, probs: Any = None,
                   ignore_index: int | None = 255, **options: Any) -> float:
    """Compute peer metric ``name`` from whichever pool arrays it needs.

    Args:
        name: a key of :data:`PEER_METRICS`.
        labels: (N,) int target labels.
        features: (N, D) pixel features (for ``inputs == "features"`` metrics).
        probs: (N, C_s) source-head probabilities (for ``inputs == "probs"`` metrics).
        options: metric-specific keyword arguments (e.g. ``eps`` for transrate).
    Raises:
        KeyError: unknown metric name (message lists the known ones).
        MetricInputError: the needed array is missing, or the metric rejects its input.
    """
    try:
        info = PEER_METRICS[name]
    except KeyError:
        raise KeyError(f"unknown peer metric {name!r}; known: {sorted(PEER_METRICS)}") from None
    data = probs if info.inputs == "probs" else features
    if data is None:
        what = "source probabilities (probs)" if info.inputs == "probs" else "features"
        raise MetricInputError(f"{name}: needs {what}, which were not given (the pool has none)")
    return info.function(data, labels, ignore_index=ignore_index, **options)
