"""TransRate (Huang et al., ICML'22): coding-rate difference of features and per-class features.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import cholesky
from segotce_ray.metrics.peer_inputs import MetricInputError, prepare_features

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
    x, y, n_classes = prepare_features("transrate", features, target_labels, ignore_index)
    if not eps > 0:
        raise MetricInputError(f"transrate: eps must be > 0, got {eps}")
    xc = x - x.mean(axis=0)
    per_class = [_coding_rate(xc[y == c], eps) for c in range(n_classes)]
    return _coding_rate(xc, eps) - float(np.mean(per_class))
