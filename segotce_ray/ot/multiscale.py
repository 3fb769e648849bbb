"""Multiscale help for Sinkhorn on clustered points: a coarse warm start (k-means on each
side, OT between the centres) and coarse corrections between groups during the iterations.

Sinkhorn is slow when the points form well-separated groups (classes do): mass must move
between groups through exponentially small kernel entries (Schmitzer 2019, multiscale
ε-scaling).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from segotce_ray.ot.cost import squared_euclidean_cost


def kmeans(x: torch.Tensor, m: int, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd's k-means, deterministic start (every (n/m)-th point). -> labels, counts, centres."""
    n = x.shape[0]
    centres = x[torch.linspace(0, n - 1, m, device=x.device).long()].clone()
    for _ in range(iters):
        lab = squared_euclidean_cost(x, centres, center=False).argmin(1)
        counts = torch.bincount(lab, minlength=m).to(x.dtype)
        sums = torch.zeros_like(centres).index_add_(0, lab, x)
        nz = counts > 0
        centres[nz] = sums[nz] / counts[nz, None]
    lab = squared_euclidean_cost(x, centres, center=False).argmin(1)
    return lab, torch.bincount(lab, minlength=m), centres


class CoarseStart(NamedTuple):
    """A multiscale warm start: per-point potentials, the ε to start at, and the groups
    (labels in 0..m-1 per point) that the solver corrects between."""
    f: torch.Tensor
    g: torch.Tensor
    epsilon: float
    source_groups: torch.Tensor
    target_groups: torch.Tensor


def coarse_potentials(fs: torch.Tensor, ft: torch.Tensor, epsilon: float, *, scale: float = 1.0,
                      clusters: int | None = None, min_points: int = 2048,
                      groups: int = 64) -> CoarseStart | None:
    """Multiscale warm start for :func:`~segotce_ray.ot.sinkhorn.sinkhorn_potentials`.

    Each side is clustered (k-means, ``clusters`` centres, default min(256, N/25)), the OT
    problem between the centres (cost ``scale``·||μ_a - μ_b||², weights = cluster sizes) is
    solved down to ``ε_start`` = an eighth of the mean within-cluster squared distance
    (scaled), and every point inherits its cluster's potential. None when the pools are
    smaller than ``min_points`` or the coarse solve does not converge. The clusters, merged
    into at most ``groups`` groups (k-means of the centres), also serve the solver's coarse
    corrections. fs: (N_s, D), ft: (N_t, D) — the sampled features of one repetition.
    """
    from segotce_ray.ot.sinkhorn import sinkhorn_potentials

    ns, nt = fs.shape[0], ft.shape[0]
    if min(ns, nt) < min_points:
        return None
    m = clusters or min(256, min(ns, nt) // 25)
    x, y = fs.float(), ft.float()
    mean = torch.cat([x, y]).mean(0, keepdim=True)
    x, y = x - mean, y - mean
    ls, cs, ms = kmeans(x, m)
    lt, ct, mt = kmeans(y, m)
    within = 0.5 * (float(((x - ms[ls]) ** 2).sum(1).mean()) + float(((y - mt[lt]) ** 2).sum(1).mean()))
    eps_start = max(4.0 * float(epsilon), scale * within / 8.0)
    ks, kt = cs > 0, ct > 0
    coarse = squared_euclidean_cost(ms[ks], mt[kt], center=False) * scale
    a = cs[ks].double() / ns
    b = ct[kt].double() / nt
    pot = sinkhorn_potentials(coarse, eps_start, a=a, b=b, tol=1e-4, sparse=False, omega=1.0)
    if not pot.converged:
        return None
    fc = torch.zeros(m, dtype=torch.float64, device=pot.f.device)
    gc = torch.zeros(m, dtype=torch.float64, device=pot.g.device)
    fc[ks], gc[kt] = pot.f, pot.g
    q = min(groups, m)
    gs = kmeans(ms, q)[0][ls]
    gt = kmeans(mt, q)[0][lt]
    return CoarseStart(fc[ls], gc[lt], eps_start, gs, gt)


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
