"""One entry point for a transport problem: ``solve(cost, ε, solver)``.

- ``sinkhorn``: the ε-scaling Sinkhorn (:func:`~segotce_ray.ot.sinkhorn.sinkhorn_potentials`),
  with the multiscale start and coarse corrections when the features are given;
- ``emd``: the exact (ε = 0) coupling (:func:`~segotce_ray.ot.exact.network_simplex`);
- ``exact+polish``: the entropic coupling started from the exact duals: the network simplex
  gives the ε → 0 limit of the entropic potentials, and a short ε schedule (from
  ``POLISH_START``·ε, by default straight at ε) runs
  on the sparse supports of small reduced costs around them — no long ε ladder from the cost
  scale down, and no dense kernel while the support stays sparse;
- ``auto``: per problem, ``exact+polish`` when the coupling at ε is nearly exact (the cost
  spread is many times ε) on CPU with at least ``POLISH_MIN_POINTS`` per side, ``sinkhorn``
  otherwise (a blurred coupling converges in a
  few dense iterations; on a GPU the dense kernel is the fast path).

Every entropic solve is verified on the full coupling; ``exact+polish`` falls back to
``sinkhorn`` when its verification fails.
"""

from __future__ import annotations

import logging

import torch

from segotce_ray.ot.exact import network_simplex
from segotce_ray.ot.multiscale import coarse_potentials, kmeans
from segotce_ray.ot.result import Coupling
from segotce_ray.ot.sinkhorn import sinkhorn_potentials
from segotce_ray.ot.support import c_transform_start

log = logging.getLogger(__name__)

SOLVERS = ("auto", "sinkhorn", "emd", "exact+polish")
# a coupling whose cost spread exceeds this many ε is "nearly exact" for ``auto``
NEAR_EXACT_SPREAD = 100.0
# below this many points per side the ε-scaling Sinkhorn is faster even when nearly exact
POLISH_MIN_POINTS = 2000
# exact+polish's first ε, in units of ε
POLISH_START = 1.0


def choose_solver(cost: torch.Tensor, epsilon: float) -> str:
    """``auto``'s choice for this problem (see the module docstring)."""
    if cost.device.type != "cpu" or min(cost.shape) < POLISH_MIN_POINTS:
        return "sinkhorn"
    spread = c_transform_start(cost)[2]
    return "exact+polish" if spread > NEAR_EXACT_SPREAD * epsilon else "sinkhorn"


def feature_groups(fs: torch.Tensor, ft: torch.Tensor, groups: int = 64):
    """Group labels of both sides (k-means on the joint-centred features) for the coarse
    corrections (at most ``groups``, about 25 points each), or None below 200 points."""
    n = min(fs.shape[0], ft.shape[0])
    if n < 200:
        return None
    m = min(groups, n // 25)
    x, y = fs.float(), ft.float()
    mean = torch.cat([x, y]).mean(0, keepdim=True)
    return kmeans(x - mean, m)[0], kmeans(y - mean, m)[0]


def polish(cost: torch.Tensor, epsilon: float, *, tol: float = 1e-3, max_iter: int = 20_000,
           features=None, sparse_fraction: float = 0.1) -> Coupling:
    """Entropic coupling at ``epsilon`` from the exact duals (``exact+polish``): the ε
    schedule from ``POLISH_START``·ε down, each stage on the support of reduced costs within
    θε of the current potentials (kept while it holds at most ``sparse_fraction`` of the
    entries: a support costs ~60 bytes an entry, so beyond ~N²/8 entries it would not fit
    the 3·N²·4-byte working set beside C, where the dense kernel does), with coarse corrections between feature groups when ``features`` are given."""
    plan = network_simplex(cost)
    groups = feature_groups(*features) if features is not None else None
    # straight at ε from the exact duals (POLISH_START = 1): a stage at 4ε first cost more
    # than it saved on real pools (the support at 4ε is several times larger)
    pot = sinkhorn_potentials(cost, epsilon, tol=tol, max_iter=max_iter, eps_scaling=4.0,
                              init=(plan.alpha, plan.beta, POLISH_START * epsilon),
                              init_fitted=True,
                              clusters=groups, sparse_fraction=sparse_fraction)
    pot.passes += plan.passes
    pot.solver = "exact+polish"
    return pot


def solve(cost: torch.Tensor, epsilon: float, solver: str = "auto", *, tol: float = 1e-3,
          max_iter: int = 20_000, eps_scaling: float = 4.0, features=None, scale: float = 1.0,
          multiscale: bool = True) -> Coupling:
    """The coupling of ``cost: (N_s, N_t)`` (uniform marginals) by ``solver``.

    ``features`` = ``(fs, ft)`` (the points behind the cost, which ``scale`` multiplied)
    enables the multiscale start and coarse corrections. Returns a :class:`Coupling` whatever
    the path (``solver`` says which produced it; ``epsilon == 0`` for ``emd``, the exact one).
    """
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if solver == "emd":
        return network_simplex(cost).coupling()
    if solver == "auto":
        solver = choose_solver(cost, epsilon)
    if solver == "exact+polish":
        pot = polish(cost, epsilon, tol=tol, max_iter=max_iter, features=features)
        if pot.converged:
            return pot
        log.warning("exact+polish did not verify (marginal error %.2e); running sinkhorn",
                    pot.marginal_error)
    init = None
    if multiscale and features is not None:
        init = coarse_potentials(features[0], features[1], epsilon, scale=scale)
    pot = sinkhorn_potentials(cost, epsilon, tol=tol, max_iter=max_iter, eps_scaling=eps_scaling,
                              init=init, clusters=None if init is None else
                              (init.source_groups, init.target_groups))
    pot.solver = "sinkhorn"
    return pot
