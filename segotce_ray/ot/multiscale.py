"""Multiscale help for Sinkhorn on clustered points: k-means and a coarse warm start (OT
between the centres of each side's clusters). The corrections between groups during the
iterations live in :mod:`.coarse` (the scaling loop's side, below this module).

Sinkhorn is slow when the points form well-separated groups (classes do): mass must move
between groups through exponentially small kernel entries (Schmitzer 2019, multiscale
ε-scaling).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from segotce_ray.ot.cost import squared_euclidean_cost
from segotce_ray.ot.sinkhorn import sinkhorn_potentials


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
