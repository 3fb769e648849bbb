"""Coarse corrections between groups during the scaling iterations: the coupling
aggregated over (source group, target group) is scaled exactly to the groups' masses and
the scalings are spread back to the points (an aggregation coarse-grid correction).
"""

from __future__ import annotations

import numpy as np
import torch


def scale_matrix(p: np.ndarray, a: np.ndarray, b: np.ndarray, iters: int = 1000,
                 rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal scalings ``x, y`` with ``diag(x) p diag(y)`` having marginals ``a``, ``b``.

    p: (m, m') non-negative float64 (the coupling aggregated over groups); plain Sinkhorn,
    m is small. Rows/columns of p without mass keep scale 1.
    """
    x, y = np.ones(p.shape[0]), np.ones(p.shape[1])
    rows, cols = p.sum(1) > 0, p.sum(0) > 0
    for it in range(iters):
        py = p @ y
        x = np.where(rows, a / np.where(rows, py, 1.0), 1.0)
        px = p.T @ x
        y = np.where(cols, b / np.where(cols, px, 1.0), 1.0)
        if it % 10 == 0 and np.abs(x * (p @ y) - a)[rows].sum() < rtol * a.sum():
            break
    return x, y


class CoarseCorrection:
    """Two-level acceleration of the scaling iterations.

    The slow modes of Sinkhorn on clustered points are per-group shifts of the potentials.
    Given group labels of both sides, the current coupling is aggregated to a small matrix
    ``P̄_cd = Σ_{i∈c, j∈d} u_i K_ij v_j``, which is scaled exactly to the groups' masses; the
    scalings multiply ``u`` and ``v`` group-wise (an aggregation coarse-grid correction). A
    correction that has not lowered the error ``settle`` iterations later is undone and the
    interval doubles; after three such misses the stage goes on without.
    """

    def __init__(self, groups, a: torch.Tensor, b: torch.Tensor, every: int = 50,
                 settle: int = 30):
        ls, lt = groups
        self.ls, self.lt = ls.long().cpu(), lt.long().cpu()
        self.m, self.mt = int(self.ls.max()) + 1, int(self.lt.max()) + 1
        self.a_c = np.bincount(self.ls.numpy(), weights=a.cpu().numpy(), minlength=self.m)
        self.b_c = np.bincount(self.lt.numpy(), weights=b.cpu().numpy(), minlength=self.mt)
        self.every, self.active, self.settle, self.misses = every, True, settle, 0
        self.pending = None  # (u, v, err) before the last correction
        self.last = -every // 2  # first correction after every/2 iterations

    def due(self, it: int) -> bool:
        return self.active and self.pending is None and it - self.last >= self.every

    def judge(self, err: float, it: int):
        """``settle`` iterations after a correction: the saved (u, v) to restore if the error
        did not fall, else None."""
        if self.pending is None or it - self.last < self.settle:
            return None
        u, v, before = self.pending
        self.pending = None
        if not err < before:
            self.misses += 1
            self.every *= 2
            self.active = self.misses < 3
            return u, v
        return None

    def apply(self, op, u, v, err: float, it: int):
        """Corrected ``(u, v)`` on a kernel operator (dense or sparse)."""
        pbar = op.aggregate(u, v, self.ls, self.lt, self.m, self.mt)
        # group marginals to 1% of the current error: enough for a correction
        x, y = scale_matrix(pbar, self.a_c, self.b_c, rtol=max(1e-9, 0.01 * err))
        self.pending, self.last = (u, v, err), it
        return op.scale(u, v, x, y, self.ls, self.lt)
