"""What every peer metric shares: input checks (labels, features, probabilities) and small linear algebra.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import LinAlgError, cholesky, lapack, solve_triangular
from scipy.linalg import eigh as scipy_eigh

PROB_ROW_SUM_ATOL = 1e-2  # float16 softmax rows are only ~1e-3 accurate; rows are renormalised


class MetricInputError(ValueError):
    """Invalid input to a peer metric; the message names the metric and the argument at fault."""


# --------------------------------------------------------------------------- validation


def prepare_labels(metric: str, target_labels: Any, n_rows: int,
                   ignore_index: int | None, rows_of: str = "features"
                   ) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate labels -> (keep mask (N,), codes (N',) int64 in 0..C-1, C); ``rows_of``
    names the array the labels must match (``features`` or ``source_probs``)."""
    y = np.asarray(target_labels)
    if y.ndim != 1:
        raise MetricInputError(f"{metric}: target_labels must be 1-D (N,), got shape {y.shape}")
    if y.shape[0] != n_rows:
        raise MetricInputError(
            f"{metric}: target_labels has {y.shape[0]} entries but the "
            f"{rows_of} have {n_rows} rows")
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


def prepare_features(metric: str, features: Any, target_labels: Any,
                      ignore_index: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate -> (features (N', D) float64, label codes (N',), number of classes C)."""
    x = np.asarray(features)
    if x.ndim != 2:
        raise MetricInputError(f"{metric}: features must be 2-D (N, D), got shape {x.shape}")
    if x.shape[1] == 0:
        raise MetricInputError(f"{metric}: features have zero dimensions (shape {x.shape})")
    if x.dtype.kind not in "fiub":
        raise MetricInputError(f"{metric}: features must be numeric, got dtype {x.dtype}")
    keep, y, n_classes = prepare_labels(metric, target_labels, x.shape[0], ignore_index)
    x = np.asarray(x[keep], dtype=np.float64)
    bad = ~np.isfinite(x)
    if bad.any():
        rows = int(bad.any(axis=1).sum())
        raise MetricInputError(f"{metric}: features contain NaN/inf in {rows} of {x.shape[0]} rows")
    return x, y, n_classes


def prepare_probs(metric: str, source_probs: Any, target_labels: Any,
                   ignore_index: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate -> (probabilities (N', C_s) float64, rows renormalised, label codes, C)."""
    p = np.asarray(source_probs)
    if p.ndim != 2:
        raise MetricInputError(f"{metric}: source_probs must be 2-D (N, C_s), got shape {p.shape}")
    if p.shape[1] == 0:
        raise MetricInputError(f"{metric}: source_probs have zero source classes (shape {p.shape})")
    if p.dtype.kind not in "fiub":
        raise MetricInputError(f"{metric}: source_probs must be numeric, got dtype {p.dtype}")
    keep, y, n_classes = prepare_labels(metric, target_labels, p.shape[0], ignore_index,
                                        rows_of="source_probs")
    p = np.asarray(p[keep], dtype=np.float64)
    if not np.all(np.isfinite(p)):
        raise MetricInputError(f"{metric}: source_probs contain NaN/inf")
    if p.min() < -1e-6:
        raise MetricInputError(f"{metric}: source_probs has negative entries (min {p.min():.3g}); "
                               "pass softmax probabilities, not logits")
    p = np.clip(p, 0.0, None)
    sums = p.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > PROB_ROW_SUM_ATOL:
        raise MetricInputError(f"{metric}: source_probs rows must sum to 1 (a row deviates by "
                               f"{worst:.3g}); pass softmax probabilities, not logits")
    return p / sums[:, None], y, n_classes


def one_hot(codes: np.ndarray, n_classes: int) -> np.ndarray:
    out = np.zeros((codes.size, n_classes))
    out[np.arange(codes.size), codes] = 1.0
    return out


def class_means(x: np.ndarray, y: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class means (C, D) and counts (C,)."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    sums = np.zeros((n_classes, x.shape[1]))
    np.add.at(sums, y, x)
    return sums / counts[:, None], counts


def pca(x: np.ndarray, *, n_components: int | None = None,
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


def pinv_quadratic_trace(a: np.ndarray, b: np.ndarray, rcond: float) -> float:
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
