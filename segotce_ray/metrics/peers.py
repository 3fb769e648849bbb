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

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from scipy.linalg import LinAlgError, cho_factor, cholesky, lapack, solve_triangular
from scipy.linalg import eigh as scipy_eigh

__all__ = [
    "MetricInfo",
    "MetricInputError",
    "PEER_METRICS",
    "compute_metric",
    "gbc",
    "hscore",
    "hscore_shrinkage",
    "leep",
    "logme",
    "metrics_for_inputs",
    "nce",
    "nleep",
    "transrate",
]

log = logging.getLogger(__name__)

_PROB_ROW_SUM_ATOL = 1e-2  # float16 softmax rows are only ~1e-3 accurate; rows are renormalised


class MetricInputError(ValueError):
    """Invalid input to a peer metric; the message names the metric and the argument at fault."""


# --------------------------------------------------------------------------- validation


def _prepare_labels(metric: str, target_labels: Any, n_rows: int,
                    ignore_index: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate labels -> (keep mask (N,), codes (N',) int64 in 0..C-1, C)."""
    y = np.asarray(target_labels)
    if y.ndim != 1:
        raise MetricInputError(f"{metric}: target_labels must be 1-D (N,), got shape {y.shape}")
    if y.shape[0] != n_rows:
        raise MetricInputError(
            f"{metric}: target_labels has {y.shape[0]} entries but the "
            f"{'source_probs' if metric in ('nce', 'leep') else 'features'} have {n_rows} rows")
    if y.dtype.kind == "b":
        y = y.astype(np.int64)
    elif y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise MetricInputError(f"{metric}: target_labels must be integer class ids "
                                   "(found non-integral or non-finite values)")
        y = y.astype(np.int64)
    elif y.dtype.kind not in "iu":
        raise MetricInputError(f"{metric}: target_labels must be integers, got dtype {y.dtype}")
    keep = np.ones(n_rows, dtype=bool) if ignore_index is None else (y != ignore_index)
    y = y[keep]
    classes, codes = np.unique(y, return_inverse=True)
    n_classes = int(classes.size)
    if y.size < 2 or n_classes < 2:
        raise MetricInputError(
            f"{metric}: target_labels hold {n_classes} class(es) in {y.size} pixel(s)"
            f"{'' if ignore_index is None else f' after dropping ignore_index={ignore_index}'}; "
            "at least 2 classes are needed (a single-class target cannot rank models)")
    return keep, codes.astype(np.int64).reshape(-1), n_classes


def _prepare_features(metric: str, features: Any, target_labels: Any,
                      ignore_index: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate -> (features (N', D) float64, label codes (N',), number of classes C)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise MetricInputError(f"{metric}: features must be 2-D (N, D), got shape {x.shape}")
    if x.shape[1] == 0:
        raise MetricInputError(f"{metric}: features have zero dimensions (shape {x.shape})")
    if x.dtype.kind not in "fiub":
        raise MetricInputError(f"{metric}: features must be numeric, got dtype {x.dtype}")
    keep, y, n_classes = _prepare_labels(metric, target_labels, x.shape[0], ignore_index)
    x = np.asarray(x[keep], dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise MetricInputError(f"{metric}: features contain NaN/inf in {rows} of {x.shape[0]} rows")
    return x, y, n_classes


def _prepare_probs(metric: str, source_probs: Any, target_labels: Any,
                   ignore_index: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate -> (probabilities (N', C_s) float64, rows renormalised, label codes, C)."""
    p = np.asarray(source_probs)
    if p.ndim != 2:
        raise MetricInputError(f"{metric}: source_probs must be 2-D (N, C_s), got shape {p.shape}")
    if p.shape[1] == 0:
        raise MetricInputError(f"{metric}: source_probs have zero source classes (shape {p.shape})")
    if p.dtype.kind not in "fiub":
        raise MetricInputError(f"{metric}: source_probs must be numeric, got dtype {p.dtype}")
    keep, y, n_classes = _prepare_labels(metric, target_labels, p.shape[0], ignore_index)
    p = np.asarray(p[keep], dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise MetricInputError(f"{metric}: source_probs contain NaN/inf")
    if p.min() < -1e-6:
        raise MetricInputError(f"{metric}: source_probs has negative entries (min {p.min():.3g}); "
                               "pass softmax probabilities, not logits")
    p = np.clip(p, 0.0, None)
    sums = p.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > _PROB_ROW_SUM_ATOL:
        raise MetricInputError(f"{metric}: source_probs rows must sum to 1 (a row deviates by "
                               f"{worst:.3g}); pass softmax probabilities, not logits")
    return p / sums[:, None], y, n_classes


def _one_hot(codes: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((codes.size, n_classes))
    out[np.arange(codes.size), codes] = 1.0
    return out


def _class_means(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means (C, D) and counts (C,)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, y, x)
    return sums / counts[:, None], counts


def _pca(x: np.ndarray, *, n_components: int | None = None,
         variance: float | None = None) -> np.ndarray:
    """Project centred ``x`` (N, D) on its leading principal axes -> (N, k).

    Keep ``n_components`` axes, or the fewest whose explained variance is >= ``variance``
    (a fraction).  Zero-variance input gives an (N, 0) array.
    """
    xc = x - x.mean(axis=0)
    n, d = xc.shape
    if n >= d:
        gram = xc.T @ xc
        total = float(np.trace(gram))
        if variance is None and n_components is not None and n_components < d:
            # only the leading axes are needed: partial eigendecomposition
            w, v = scipy_eigh(gram, subset_by_index=[d - n_components, d - 1])
        else:
            w, v = np.linalg.eigh(gram)
        w, v = w[::-1], v[:, ::-1]
    else:
        _, s, vt = np.linalg.svd(xc, full_matrices=False)
        w, v = s**2, vt.T
        total = float(np.sum(w))
    w = np.clip(w, 0.0, None)
    if total <= 0.0:
        return np.zeros((n, 0))
    positive = int(np.sum(w > total * max(n, d) * np.finfo(float).eps))
    if variance is not None:
        k = int(np.searchsorted(np.cumsum(w) / total, variance - 1e-12) + 1)
    else:
        k = int(n_components if n_components is not None else d)
    k = max(1, min(k, positive))
    return xc @ v[:, :k]


def _pinv_quadratic_trace(a: np.ndarray, b: np.ndarray, rcond: float) -> float:
    """tr(A⁺ BᵀB) for a symmetric PSD A (D, D) and rows ``b`` (C, D).

    A⁺ cuts eigenvalues below ``rcond``·λ_max.  Fast path: when the Cholesky factor exists
    and LAPACK's reciprocal 1-norm condition estimate exceeds 10·D·rcond (so, with
    κ₂ <= D·κ₁, no eigenvalue would be cut and A⁺ = A⁻¹), use ‖L⁻¹Bᵀ‖²_F; otherwise an
    eigendecomposition.
    """
    d = a.shape[0]
    try:
        upper = cholesky(a, lower=False, check_finite=False)
        rc, info = lapack.dpocon(upper, float(np.abs(a).sum(axis=0).max()))
        if info == 0 and rc > 10.0 * d * rcond:
            return float(np.sum(solve_triangular(upper, b.T, trans="T", check_finite=False) ** 2))
    except LinAlgError:
        pass
    w, v = np.linalg.eigh(a)
    w_max = float(w.max(initial=0.0))
    if w_max <= 0.0:
        return 0.0
    keep = w > rcond * w_max
    proj = b @ v[:, keep]  # (C, k)
    return float(np.sum(proj**2 / w[keep]))


# --------------------------------------------------------------------------- NCE / LEEP


def nce(source_probs: Any, target_labels: Any, *, ignore_index: int | None = 255) -> float:
    r"""Negative conditional entropy NCE = −H(Y | Z) (Tran, Nguyen, Hassner, ICCV 2019).

    Z = argmax of the source head's prediction (a hard source class), Y = target class.
    With the empirical joint P̂(z, y) = #{i : zᵢ = z, yᵢ = y} / N,

    .. math:: \mathrm{NCE} = \sum_{z, y} \hat P(z, y)\, \log \frac{\hat P(z, y)}{\hat P(z)}
              \in [-\log C_t, 0].

    Args:
        source_probs: (N, C_s) source-class probabilities, rows summing to 1.
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
    Returns:
        −H(Y|Z) in nats; 0 when the source class determines the target class.
    Raises:
        MetricInputError: shapes, NaN, rows not summing to 1, fewer than 2 target classes.
    """
    p, y, n_classes = _prepare_probs("nce", source_probs, target_labels, ignore_index)
    _, z = np.unique(p.argmax(axis=1), return_inverse=True)
    z = z.reshape(-1)
    n_z = int(z.max()) + 1
    joint = np.bincount(z * n_classes + y, minlength=n_z * n_classes).reshape(n_z, n_classes)
    joint = joint / y.size
    cond = joint / joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(cond[nz])))


def leep(source_probs: Any, target_labels: Any, *, ignore_index: int | None = 255) -> float:
    r"""Log expected empirical prediction (Nguyen, Hassner, Seeger, Archambeau, ICML 2020).

    With θ(xᵢ) ∈ Δ^{C_s} the source prediction of pixel i,
    P̂(y, z) = (1/N) Σᵢ θ(xᵢ)_z 1[yᵢ = y], P̂(z) = Σ_y P̂(y, z), P̂(y | z) = P̂(y, z) / P̂(z):

    .. math:: \mathrm{LEEP} = \frac1N \sum_i \log \sum_z \hat P(y_i \mid z)\, \theta(x_i)_z \le 0.

    Args:
        source_probs: (N, C_s) source-class probabilities, rows summing to 1 (rows within
            1e-2 of 1 are renormalised, for float16 pools).
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
    Returns:
        Mean log-likelihood of the target labels under the expected empirical predictor.
    Raises:
        MetricInputError: shapes, NaN, negative entries / rows not summing to 1, < 2 classes.
    """
    p, y, n_classes = _prepare_probs("leep", source_probs, target_labels, ignore_index)
    joint = p.T @ _one_hot(y, n_classes) / y.size  # (C_s, C_t)
    pz = joint.sum(axis=1, keepdims=True)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = np.einsum("nz,zn->n", p, cond[:, y])  # Σ_z θ_iz P(y_i | z), > 0 by construction
    return float(np.mean(np.log(eep)))


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
        sums = _one_hot(assign, k).T @ x
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
    weights, means, covs = _gmm_m_step(x, x_sq, _one_hot(assign, n_components), covariance, reg)
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
    x, y, n_classes = _prepare_features("nleep", features, target_labels, ignore_index)
    if not 0.0 < variance <= 1.0:
        raise MetricInputError(f"nleep: variance must be in (0, 1], got {variance}")
    reduced = _pca(x, variance=variance)
    if reduced.shape[1] == 0:
        posteriors = np.ones((y.size, 1))
    else:
        k = max(1, min(components_per_class * n_classes, y.size // 2))
        fit = _fit_gaussian_mixture(reduced, k, covariance=covariance, seed=seed,
                                    max_iter=max_iter)
        posteriors = fit.responsibilities
    return leep(posteriors, y, ignore_index=None)


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
    onehot = _one_hot(y, n_classes)
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
    x, y, n_classes = _prepare_features("logme", features, target_labels, ignore_index)
    _, _, evidences = _logme_per_class(x, y, n_classes)
    return float(np.mean(evidences) / y.size)


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
    x, y, n_classes = _prepare_features("hscore", features, target_labels, ignore_index)
    n, d = x.shape
    xc = x - x.mean(axis=0)
    means, counts = _class_means(xc, y, n_classes)
    b = np.sqrt(counts / n)[:, None] * means  # cov(E[f|y]) = bᵀb
    return _pinv_quadratic_trace(xc.T @ xc / n, b,
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
    x, y, n_classes = _prepare_features("hscore_shrinkage", features, target_labels, ignore_index)
    n, d = x.shape
    xc = x - x.mean(axis=0)
    s, shrink, mu = _ledoit_wolf(xc)
    shrunk = (1.0 - shrink) * s
    shrunk[np.diag_indices(d)] += shrink * mu
    means, counts = _class_means(xc, y, n_classes)
    b = np.sqrt((1.0 - shrink) * counts / n)[:, None] * means
    return _pinv_quadratic_trace(shrunk, b, d * np.finfo(float).eps)


# --------------------------------------------------------------------------- GBC


def gbc(features: Any, target_labels: Any, *, n_components: int = 64, var_floor: float = 1e-4,
        ignore_index: int | None = 255) -> float:
    r"""Gaussian Bhattacharyya Coefficient (Pándy, Agostinelli, Uijlings, Ferrari, Mensink, CVPR 2022).

    Features are PCA-projected to min(``n_components`` = 64, D) dimensions; each class c is
    a diagonal Gaussian N(μ_c, diag σ_c) (per-dimension biased variance, floored at
    ``var_floor`` × the mean per-dimension variance of the projected features — relative, so
    the score is invariant to feature scale; the reference code floors at an absolute 1e-4).
    With σ̄ = (σ_i + σ_j)/2,

    .. math:: D_B(i, j) = \tfrac18 \sum_d \frac{(\mu_{i,d} - \mu_{j,d})^2}{\bar\sigma_d}
              + \tfrac12 \sum_d \log \frac{\bar\sigma_d}{\sqrt{\sigma_{i,d}\,\sigma_{j,d}}},
              \qquad \mathrm{GBC} = -\sum_{i \ne j} e^{-D_B(i, j)}

    over ordered pairs of target classes.

    Args:
        features: (N, D) per-pixel features.
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
    Returns:
        GBC ∈ [−C_t(C_t − 1), 0]; 0 = perfectly separated classes.  Constant features give
        the fully overlapping value −C_t(C_t − 1).
    Raises:
        MetricInputError: shapes, NaN, fewer than 2 target classes.
    """
    x, y, n_classes = _prepare_features("gbc", features, target_labels, ignore_index)
    z = _pca(x, n_components=min(n_components, x.shape[1]))
    if z.shape[1] == 0:
        return -float(n_classes * (n_classes - 1))
    means, counts = _class_means(z, y, n_classes)
    sq, _ = _class_means(z**2, y, n_classes)
    floor = var_floor * float(np.mean(np.var(z, axis=0)))
    var = np.maximum(sq - means**2, floor)  # (C, k)
    log_var = np.log(var)
    total = 0.0
    for i in range(n_classes - 1):
        avg = 0.5 * (var[i][None, :] + var[i + 1:])  # (C-i-1, k)
        d_b = (0.125 * np.sum((means[i][None, :] - means[i + 1:]) ** 2 / avg, axis=1)
               + 0.5 * np.sum(np.log(avg) - 0.5 * (log_var[i][None, :] + log_var[i + 1:]), axis=1))
        total += float(np.sum(np.exp(-d_b)))
    return -2.0 * total


# --------------------------------------------------------------------------- TransRate


def _coding_rate(z: np.ndarray, eps: float) -> float:
    """R(Z, ε) = ½ logdet(I_D + ZᵀZ / (nε)) for Z (n, D), via the smaller Gram matrix.

    I + G/(nε) has eigenvalues >= 1, so its Cholesky factor is always well conditioned.
    """
    n, d = z.shape
    gram = z @ z.T if n < d else z.T @ z
    m = gram / (n * eps)
    m[np.diag_indices(m.shape[0])] += 1.0
    return float(np.sum(np.log(np.diag(cholesky(m, lower=True, check_finite=False)))))


def transrate(features: Any, target_labels: Any, eps: float = 1e-4, *,
              ignore_index: int | None = 255) -> float:
    r"""TransRate (Huang, Huang, Zhou, Xu, Zhou, Tsui, ICML 2022), coding-rate form.

    Features are centred per dimension (once, over all pixels; class subsets are not
    re-centred).  With R(Z, ε) = ½ log det(I_D + ZᵀZ / (n_Z ε)),

    .. math:: \mathrm{TrR}(f, y) = R(f, \varepsilon) - \frac1{C_t} \sum_c R(f_c, \varepsilon)

    where f_c are the rows of class c (unweighted mean over classes, as in tllib).  The score
    depends on the feature scale through ε (as published).

    Args:
        features: (N, D) per-pixel features.
        target_labels: (N,) int target class ids (``ignore_index`` pixels dropped).
        eps: distortion ε > 0.
    Returns:
        TransRate in nats (higher = more transferable).  Constant features give 0.
    Raises:
        MetricInputError: shapes, NaN, fewer than 2 target classes, ε <= 0.
    """
    x, y, n_classes = _prepare_features("transrate", features, target_labels, ignore_index)
    if not eps > 0:
        raise MetricInputError(f"transrate: eps must be > 0, got {eps}")
    xc = x - x.mean(axis=0)
    per_class = [_coding_rate(xc[y == c], eps) for c in range(n_classes)]
    return _coding_rate(xc, eps) - float(np.mean(per_class))


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
