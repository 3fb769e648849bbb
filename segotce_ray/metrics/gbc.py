"""GBC (Pandy et al., CVPR'22): negated Bhattacharyya overlap of per-class Gaussians.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from segotce_ray.metrics.peer_inputs import class_means, pca, prepare_features

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
    x, y, n_classes = prepare_features("gbc", features, target_labels, ignore_index)
    z = pca(x, n_components=min(n_components, x.shape[1]))
    if z.shape[1] == 0:
        return -float(n_classes * (n_classes - 1))
    means, counts = class_means(z, y, n_classes)
    sq, _ = class_means(z**2, y, n_classes)
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
