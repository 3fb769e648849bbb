"""NCE (Tran et al., ICCV'19): negative conditional entropy of target labels given source predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from segotce_ray.metrics.peer_inputs import prepare_probs

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
    p, y, n_classes = prepare_probs("nce", source_probs, target_labels, ignore_index)
    _, z = np.unique(p.argmax(axis=1), return_inverse=True)
    z = z.reshape(-1)
    n_z = int(z.max()) + 1
    joint = np.bincount(z * n_classes + y, minlength=n_z * n_classes).reshape(n_z, n_classes)
    joint = joint / y.size
    cond = joint / joint.sum(axis=1, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(cond[nz])))
