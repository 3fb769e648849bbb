"""LEEP (Nguyen et al., ICML'20): log expected empirical prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from segotce_ray.metrics.peer_inputs import one_hot, prepare_probs

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
    p, y, n_classes = prepare_probs("leep", source_probs, target_labels, ignore_index)
    joint = p.T @ one_hot(y, n_classes) / y.size  # (C_s, C_t)
    pz = joint.sum(axis=1, keepdims=True)
    cond = np.divide(joint, pz, out=np.zeros_like(joint), where=pz > 0)  # P(y | z)
    eep = np.einsum("nz,zn->n", p, cond[:, y])  # Σ_z θ_iz P(y_i | z), > 0 by construction
    return float(np.mean(np.log(eep)))
