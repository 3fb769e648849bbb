"""N-LEEP (Li et al., CVPR'21): LEEP over a Gaussian mixture on PCA-reduced features.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.linalg import cho_factor, solve_triangular
from segotce_ray.metrics.leep import leep
from segotce_ray.metrics.peer_inputs import MetricInputError, one_hot, pca, prepare_features

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- N-LEEP


@dataclass
class _GaussianMixtureFit:
    """EM result: weights (K,), means (K, d), covariances (K, d) diag or (K, d, d) full."""

    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    covariance: str
    responsibilities: np.ndarray  # (N, K) posteriors under the returned parameters
    log_likelihood: list[float] = field(default_factory=list)  # mean per-sample, per E-step
    converged: bool = False


def _kmeans_init(x: np.ndarray, k: int, rng: np.random.Generator, iters: int = 10) -> np.ndarray:
    """k-means++ seeding then Lloyd iterations -> hard assignment (N,) in 0..k-1."""
    n = x.shape[0]
    x2 = np.sum(x**2, axis=1)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    d2 = np.sum((x - centers[0]) ** 2, axis=1)
    for j in range(1, k):
        total = d2.sum()
        idx = rng.choice(n, p=d2 / total) if total > 0 else int(rng.integers(n))
        centers[j] = x[idx]
        d2 = np.minimum(d2, np.sum((x - centers[j]) ** 2, axis=1))
    assign = np.full(n, -1)
    for _ in range(iters):
        dist = x2[:, None] - 2.0 * x @ centers.T + np.sum(centers**2, axis=1)[None, :]
        new = dist.argmin(axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = one_hot(assign, k).T @ x
        filled = counts > 0  # an empty cluster keeps its previous centre
        centers[filled] = sums[filled] / counts[filled, None]
    return assign


def _gmm_log_prob(x: np.ndarray, x_sq: np.ndarray, weights: np.ndarray, means: np.ndarray,
                  covs: np.ndarray, covariance: str) -> np.ndarray:
    """log(w_k N(x_i; μ_k, Σ_k)) -> (N, K); ``x_sq`` = x**2 (reused across iterations)."""
    n, d = x.shape
    if covariance == "diag":
        prec = 1.0 / covs
        maha = (x_sq @ prec.T - 2.0 * x @ (means * prec).T
                + np.sum(means**2 * prec, axis=1)[None, :])
        log_det = np.sum(np.log(covs), axis=1)
    else:
        maha = np.empty((n, means.shape[0]))
        log_det = np.empty(means.shape[0])
        for j in range(means.shape[0]):
            chol, _ = cho_factor(covs[j], lower=True)
            sol = solve_triangular(chol, (x - means[j]).T, lower=True)
            maha[:, j] = np.sum(sol**2, axis=0)
            log_det[j] = 2.0 * np.sum(np.log(np.diag(chol)))
    return -0.5 * (d * math.log(2.0 * math.pi) + log_det[None, :] + maha) + np.log(weights)[None, :]


def _gmm_e_step(x: np.ndarray, x_sq: np.ndarray, weights: np.ndarray, means: np.ndarray,
                covs: np.ndarray, covariance: str) -> tuple[np.ndarray, float]:
    """Posteriors P(k | x_i) (N, K) and the mean per-sample log-likelihood.

    Posteriors below e^-300 are flushed to 0: they carry no mass, and subnormal numbers
    would make the BLAS products of the M-step orders of magnitude slower.
    """
    lp = _gmm_log_prob(x, x_sq, weights, means, covs, covariance)
    row_max = lp.max(axis=1)
    lp -= row_max[:, None]  # log-sum-exp shift: each row's max is now 0
    tiny = lp < -300.0
    np.maximum(lp, -300.0, out=lp)
    resp = np.exp(lp, out=lp)
    resp[tiny] = 0.0
    total = resp.sum(axis=1)
    resp /= total[:, None]
    return resp, float(np.mean(row_max + np.log(total)))


def _gmm_m_step(x: np.ndarray, x_sq: np.ndarray, resp: np.ndarray, covariance: str,
                reg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    nk = resp.sum(axis=0) + 10.0 * np.finfo(float).eps
    resp_t = np.ascontiguousarray(resp.T)
    means = resp_t @ x / nk[:, None]
    if covariance == "diag":
        covs = resp_t @ x_sq / nk[:, None] - means**2
        covs = np.clip(covs, 0.0, None) + reg
    else:
        d = x.shape[1]
        covs = np.empty((means.shape[0], d, d))
        for j in range(means.shape[0]):
            diff = x - means[j]
            covs[j] = (resp[:, j, None] * diff).T @ diff / nk[j] + reg * np.eye(d)
    return nk / nk.sum(), means, covs


def _fit_gaussian_mixture(x: np.ndarray, n_components: int, *, covariance: str = "diag",
                          seed: int = 0, max_iter: int = 100, tol: float = 1e-3,
                          reg_covar: float = 1e-6) -> _GaussianMixtureFit:
    """EM for a Gaussian mixture (k-means++ / Lloyd initialisation, seeded).

    ``reg_covar`` is relative: ``reg_covar × mean per-dimension variance of x`` is added to
    every variance (scale-invariant version of sklearn's absolute 1e-6).  Stops when the mean
    per-sample log-likelihood changes by less than ``tol`` (sklearn's default 1e-3).
    """
    if covariance not in ("diag", "full"):
        raise MetricInputError(f"nleep: covariance must be 'diag' or 'full', got {covariance!r}")
    rng = np.random.default_rng(seed)
    scale = float(np.mean(np.var(x, axis=0)))
    reg = reg_covar * (scale if scale > 0 else 1.0)
    x_sq = x**2
    assign = _kmeans_init(x, n_components, rng)
    weights, means, covs = _gmm_m_step(x, x_sq, one_hot(assign, n_components), covariance, reg)
    history: list[float] = []
    converged = False
    for it in range(max_iter + 1):
        resp, mean_ll = _gmm_e_step(x, x_sq, weights, means, covs, covariance)
        history.append(mean_ll)
        if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
            converged = True
            break
        if it < max_iter:  # the last E-step only refreshes the posteriors
            weights, means, covs = _gmm_m_step(x, x_sq, resp, covariance, reg)
    if not converged:
        log.warning("nleep: Gaussian mixture EM did not converge in %d iterations", max_iter)
    return _GaussianMixtureFit(weights, means, covs, covariance, resp, history, converged)


def nleep(features: Any, target_labels: Any, *, variance: float = 0.8,
          components_per_class: int = 5, covariance: Literal["diag", "full"] = "diag",
          seed: int = 0, max_iter: int = 100, ignore_index: int | None = 255) -> float:
    r"""N-LEEP (Li et al., "Ranking Neural Checkpoints", CVPR 2021).

    1. PCA of the centred features, keeping the fewest axes with >= ``variance`` (80 %) of
       the variance.
    2. Gaussian mixture fitted by EM (own numpy implementation; **diagonal covariances** by
       default, ``covariance="full"`` for full ones; k-means++ initialisation with ``seed``)
       with K = min(``components_per_class`` · C_t, ⌊N/2⌋) components.
    3. LEEP (:func:`leep`, *with* the log — unlike code that averages the probabilities)
       using the mixture posteriors θ(xᵢ)_k = P(k | xᵢ) as the "source" prediction:

    .. math:: \mathrm{NLEEP} = \frac1N \sum_i \log \sum_k \hat P(y_i \mid k)\, P(k \mid x_i) \le 0.

    Args:
        features: (N, D) per-pixel features.
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
    Returns:
        The LEEP score of the mixture posteriors.  Constant features (zero variance) give
        the uninformative value Σ_y P̂(y) log P̂(y) = −H(Y).
    Raises:
        MetricInputError: shapes, NaN, fewer than 2 target classes, bad ``covariance``.
    """
    x, y, n_classes = prepare_features("nleep", features, target_labels, ignore_index)
    if not 0.0 < variance <= 1.0:
        raise MetricInputError(f"nleep: variance must be in (0, 1], got {variance}")
    reduced = pca(x, variance=variance)
    if reduced.shape[1] == 0:
        posteriors = np.ones((y.size, 1))
    else:
        k = max(1, min(components_per_class * n_classes, y.size // 2))
        fit = _fit_gaussian_mixture(reduced, k, covariance=covariance, seed=seed,
                                    max_iter=max_iter)
        posteriors = fit.responsibilities
    return leep(posteriors, y, ignore_index=None)
