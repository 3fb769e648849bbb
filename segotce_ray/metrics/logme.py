"""LogME (You et al., ICML'21): log marginal evidence of a Bayesian linear model on the features.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from segotce_ray.metrics.peer_inputs import one_hot, prepare_features

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- LogME


def _logme_fixed_point(sigma: np.ndarray, x2: np.ndarray, y_norm2: float, n: int,
                       max_iter: int = 1000, tol: float = 1e-8) -> tuple[float, float, float, bool]:
    """Maximise the evidence over (α, β) for one target column.

    ``sigma`` (k,) are the non-zero eigenvalues of FᵀF, ``x2`` (k,) the squared coordinates
    of y on the matching left singular vectors, ``y_norm2`` = ‖y‖².  Returns
    (α, β, log-evidence, converged).
    """
    residual_out = max(y_norm2 - float(x2.sum()), 0.0)  # part of y outside span(F)
    res_floor = 1e-12 * y_norm2
    if sigma.size == 0 or float(x2.sum()) <= 1e-300:
        # No feature direction explains y: the evidence is maximal as α → ∞ (w = 0).
        beta = n / max(y_norm2, res_floor)
        ev = 0.5 * n * math.log(beta) - 0.5 * n * math.log(2 * math.pi) - 0.5 * beta * y_norm2
        return math.inf, beta, ev, True
    alpha, beta = 1.0, 1.0
    converged = False
    for _ in range(max_iter):
        denom = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / denom))
        m2 = float(np.sum(beta**2 * sigma * x2 / denom**2))
        res2 = float(np.sum(alpha**2 * x2 / denom**2)) + residual_out
        new_alpha = gamma / max(m2, 1e-300)
        new_beta = (n - gamma) / max(res2, res_floor)
        t_old, t_new = alpha / beta, new_alpha / new_beta
        alpha, beta = new_alpha, new_beta
        if abs(t_new - t_old) <= tol * t_old:
            converged = True
            break
    denom = alpha + beta * sigma
    m2 = float(np.sum(beta**2 * sigma * x2 / denom**2))
    res2 = float(np.sum(alpha**2 * x2 / denom**2)) + residual_out
    # k/2 log α − ½ Σ log(α + βσ) written as −½ Σ log1p(βσ/α) for stability.
    ev = (0.5 * n * math.log(beta) - 0.5 * n * math.log(2 * math.pi) - 0.5 * beta * res2
          - 0.5 * alpha * m2 - 0.5 * float(np.sum(np.log1p(beta * sigma / alpha))))
    return alpha, beta, ev, converged


def _logme_per_class(x: np.ndarray, y: np.ndarray,
                     n_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(α (C,), β (C,), log-evidence (C,)) for each one-hot target column."""
    n, d = x.shape
    onehot = one_hot(y, n_classes)
    if n >= d:
        w, v = np.linalg.eigh(x.T @ x)
        keep = w > max(float(w.max()), 0.0) * max(n, d) * np.finfo(float).eps
        w, v = w[keep], v[:, keep]
        coords = (v.T @ (x.T @ onehot)) / np.sqrt(w)[:, None]  # Uᵀ Y, (k, C)
    else:
        w, u = np.linalg.eigh(x @ x.T)
        keep = w > max(float(w.max()), 0.0) * max(n, d) * np.finfo(float).eps
        w, u = w[keep], u[:, keep]
        coords = u.T @ onehot
    alphas, betas, evidences = (np.empty(n_classes) for _ in range(3))
    for c in range(n_classes):
        a, b, ev, ok = _logme_fixed_point(w, coords[:, c] ** 2, float(onehot[:, c].sum()), n)
        if not ok:
            log.warning("logme: fixed point for class %d did not converge", c)
        alphas[c], betas[c], evidences[c] = a, b, ev
    return alphas, betas, evidences


def logme(features: Any, target_labels: Any, *, ignore_index: int | None = 255) -> float:
    r"""LogME (You, Liu, Wang, Long, ICML 2021; JMLR 2022).

    For each target class c, y_c ∈ {0,1}^N (one-hot column) is modelled by Bayesian linear
    regression y_c = F w + ε with prior w ~ N(0, α⁻¹ I_D) and noise ε ~ N(0, β⁻¹ I_N); the
    log-evidence with A = αI + βFᵀF, m = βA⁻¹Fᵀy_c is

    .. math:: \mathcal L(\alpha, \beta) = \tfrac D2 \log\alpha + \tfrac N2 \log\beta
              - \tfrac N2 \log 2\pi - \tfrac\beta2 \lVert Fm - y_c\rVert^2
              - \tfrac\alpha2 m^\top m - \tfrac12 \log\lvert A\rvert .

    (α, β) are maximised by the fixed-point iteration γ = Σᵢ βσᵢ/(α + βσᵢ),
    α ← γ / mᵀm, β ← (N − γ) / ‖Fm − y_c‖² (σᵢ = eigenvalues of FᵀF, evaluated through its
    eigendecomposition / the SVD of F), and the score is the per-sample normalised mean over
    classes, (1/C) Σ_c L_c* / N.  Features are used raw (no centring), as in the paper's code.

    Args:
        features: (N, D) per-pixel features.
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
    Returns:
        Mean per-sample log-evidence (any real; higher is better).  All-zero features give
        the α → ∞ limit (w = 0); constant features act as a single intercept feature.
    Raises:
        MetricInputError: shapes, NaN, fewer than 2 target classes.
    """
    x, y, n_classes = prepare_features("logme", features, target_labels, ignore_index)
    _, _, evidences = _logme_per_class(x, y, n_classes)
    return float(np.mean(evidences) / y.size)
