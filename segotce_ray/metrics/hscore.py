"""H-score (Bao et al., ICIP'19) and its shrinkage version (Ibrahim et al., ICLR'23).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from segotce_ray.metrics.peer_inputs import class_means, pinv_quadratic_trace, prepare_features

# --------------------------------------------------------------------------- H-score


def hscore(features: Any, target_labels: Any, *, rcond: float | None = None,
           ignore_index: int | None = 255) -> float:
    r"""H-score (Bao, Li, Huang, Zhang, Zheng, ICIP 2019).

    .. math:: H(f) = \operatorname{tr}\!\big(\operatorname{cov}(f)^{+}\,
              \operatorname{cov}(\mathbb E[f \mid y])\big)

    a **matrix product** inside the trace (not an element-wise one), where cov(E[f|y]) is the
    covariance of gᵢ = mean feature of pixel i's class (the between-class covariance).  The
    pseudo-inverse cuts eigenvalues below ``rcond``·λ_max; the default ``rcond=None`` means
    D·machine-ε (numpy's default for Hermitian matrices; tllib uses 1e-15, the SEG-OTCE
    ICIP'23 code 1e-5).  The covariance normalisation (1/N vs 1/(N−1)) cancels.

    Args:
        features: (N, D) per-pixel features.
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
    Returns:
        H ∈ [0, min(C_t − 1, D)].  Constant features give 0.
    Raises:
        MetricInputError: shapes, NaN, fewer than 2 target classes.
    """
    x, y, n_classes = prepare_features("hscore", features, target_labels, ignore_index)
    n, d = x.shape
    xc = x - x.mean(axis=0)
    means, counts = class_means(xc, y, n_classes)
    b = np.sqrt(counts / n)[:, None] * means  # cov(E[f|y]) = bᵀb
    return pinv_quadratic_trace(xc.T @ xc / n, b,
                                 d * np.finfo(float).eps if rcond is None else rcond)


def _ledoit_wolf(xc: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Ledoit & Wolf (2004) shrinkage for centred xc (N, D) -> (S = xcᵀxc/N, shrinkage, μ).

    Σ_LW = (1 − s) S + s μ I with μ = tr(S)/D, δ² = ‖S − μI‖²_F / D,
    b̄² = (Σ_k ‖x_k‖⁴ − N ‖S‖²_F) / (N² D), s = min(b̄², δ²) / δ² (s = 0 when δ² = 0).
    """
    n, d = xc.shape
    s = xc.T @ xc / n
    mu = float(np.trace(s)) / d
    delta2 = (float(np.sum(s**2)) - 2.0 * mu * float(np.trace(s)) + d * mu**2) / d
    b2_bar = (float(np.sum(np.sum(xc**2, axis=1) ** 2)) - n * float(np.sum(s**2))) / (n**2 * d)
    shrink = 0.0 if delta2 <= 0.0 else min(max(b2_bar, 0.0), delta2) / delta2
    return s, shrink, mu


def hscore_shrinkage(features: Any, target_labels: Any, *,
                     ignore_index: int | None = 255) -> float:
    r"""Shrinkage-based H-score (Ibrahim, Ponomareva, Mazumder, arXiv 2110.06893).

    Features are centred; cov(f) is replaced by the Ledoit–Wolf estimate
    Σ_s = (1 − s) S + s μ I (S = empirical covariance, μ = tr S / D, s = LW shrinkage), and
    the between-class covariance is shrunk by the same factor:

    .. math:: H_s(f) = \operatorname{tr}\!\big(\Sigma_s^{-1}\,(1 - s)\,
              \operatorname{cov}(\mathbb E[f \mid y])\big).

    Both covariances use 1/N.  Σ_s is positive definite when s > 0 and μ > 0 (a
    pseudo-inverse cut at D·ε·λ_max is used otherwise).

    Args:
        features: (N, D) per-pixel features.
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
    Returns:
        H_s >= 0.  Constant features give 0.
    Raises:
        MetricInputError: shapes, NaN, fewer than 2 target classes.
    """
    x, y, n_classes = prepare_features("hscore_shrinkage", features, target_labels, ignore_index)
    n, d = x.shape
    xc = x - x.mean(axis=0)
    s, shrink, mu = _ledoit_wolf(xc)
    shrunk = (1.0 - shrink) * s
    shrunk[np.diag_indices(d)] += shrink * mu
    means, counts = class_means(xc, y, n_classes)
    b = np.sqrt((1.0 - shrink) * counts / n)[:, None] * means
    return pinv_quadratic_trace(shrunk, b, d * np.finfo(float).eps)
