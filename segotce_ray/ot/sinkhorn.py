"""Entropic OT by stabilised Sinkhorn: the ε schedule as an outer loop around the one
scaling loop (:func:`~segotce_ray.ot.scaling.scaling_loop`).

Each stage runs the scaling loop at one ε on a dense kernel, or on a sparse support read
from reduced costs once the potentials come from a finished stage (CPU). The final stage is
verified on the full coupling (exact on the support plus a proven bound on the rest, or a
float64 chunked pass); the rules for what to do when a support stalls or the verification
fails live in :func:`sinkhorn_potentials` only.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from segotce_ray.ot.kernel import DenseKernel, SparseKernel
from segotce_ray.ot.coarse import CoarseCorrection
from segotce_ray.ot.result import Coupling
from segotce_ray.ot.scaling import scaling_loop
from segotce_ray.ot.support import (balance_gauge, c_transform, c_transform_start, full_marginals,
                                    reduced_cost_support, support_marginals)

log = logging.getLogger(__name__)

# the off-support mass a support may leave, as a fraction of tol (see _Schedule.theta)
SUPPORT_SLACK = 1e-3


def verify(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float, a: torch.Tensor,
           b: torch.Tensor, tol: float, supports: list | None = None, refit=None):
    """Marginal error of the full coupling ``exp((f+g-C)/ε)``: on ``support`` plus a proven
    bound on the rest when that bound is negligible, else a float64 pass over all entries.
    ``supports``: ``[support]``, taken out of the list (so that it is freed before a refit),
    or ``[]`` to start from ``refit``;
    ``refit(f, g)``: a support read from the final potentials, tried when the stage's own
    (read from the potentials it started from) leaves too much outside — two passes, where
    the dense fallback costs a float64 pass here and another for the joint.
    Returns ``(error, kept)`` with kept = ``(rows, cols, costs, bound)`` or None."""
    if supports:
        support = supports.pop()
    else:  # no stage support worth a try: read one from the final potentials at once
        support, refit = (refit(f, g) if refit is not None else None), None
    for _ in range(2):
        if support is None:
            break
        row, col, bound = support_marginals(cost, f, g, eps, support)
        if 2 * bound < 0.01 * tol:
            err = float((row - a.cpu()).abs().sum() + (col - b.cpu()).abs().sum()) + 2 * bound
            return err, (support[0], support[1], support[2], bound)
        support = None  # free it before the refit builds the next
        support, refit = (refit(f, g) if refit is not None else None), None
    row, col = full_marginals(cost, f, g, eps)
    return float((row - a).abs().sum() + (col - b).abs().sum()), None


def _start(cost: torch.Tensor, epsilon: float, eps_scaling: float, init):
    """c-transform start ``f_i = min_j C_ij, g_j = min_i (C_ij - f_i)`` and the first ε (the
    cost spread / ``eps_scaling``); with ``init`` = ``(f, g, ε_start, ...)`` the hard
    c-transforms of the given potentials (``f_i + g_j ≤ C_ij``: no overflow whatever the
    guess). Returns ``(f, g, ε, plain)`` where plain is the start without init."""
    f, g, spread = c_transform_start(cost)
    eps = float(epsilon)
    if eps_scaling and eps_scaling > 1:
        eps = max(eps, spread / eps_scaling)
    plain = (f.clone(), g.clone(), eps)
    if init is not None:
        f, g = balance_gauge(init[0], init[1])
        f = c_transform(cost, g, 1)
        g = c_transform(cost, f, 0)
        eps = max(float(epsilon), float(init[2]))
    return f, g, eps, plain


class _Schedule:
    """Mutable state of one solve: the stage's operator choice and the restart rules."""

    def __init__(self, cost, epsilon, tol, max_iter, sparse, sparse_fraction, fitted):
        ns, nt = cost.shape
        self.cost, self.epsilon, self.tol, self.max_iter = cost, float(epsilon), tol, max_iter
        self.allow_sparse = cost.device.type == "cpu" and sparse in ("auto", True)
        self.max_nnz = 1.0 * ns * nt if sparse is True else sparse_fraction * ns * nt
        # support: entries within θε of their row's/column's minimum. Outside it an entry
        # carries at most e^-θ of its row's largest mass (≤ 1/N_s), so a row at most
        # N_t·e^-θ/N_s and all of them N_t·e^-θ: θ = log(N/(SUPPORT_SLACK·tol)) keeps that
        # bound at SUPPORT_SLACK·tol, below the verification's 1% of tol
        self.theta = math.log(max(ns, nt) / (SUPPORT_SLACK * tol))
        self.fitted, self.dense_stage, self.stalls_here, self.checks = fitted, False, 0, 0
        self.iterations = self.sparse_iterations = self.stages = 0
        self.passes, self.buffer = 0.0, None

    def operator(self, f, g, eps, final):
        """Sparse operator on a reduced-cost support when allowed, else the dense kernel."""
        cost = self.cost
        self.last, self.eps = (f, g), eps
        if self.allow_sparse and not self.dense_stage and self.fitted:
            self.passes += 2
            support = reduced_cost_support(cost, f, g, eps, self.theta, self.max_nnz)
            if support is not None:
                # float32 in every stage: the values are formed in float64 from C's stored
                # values and only stored in float32 (relative rounding 6e-8, no exponent
                # error, unlike a float32 dense kernel); the final check is float64
                return SparseKernel(support, f, g, eps, np.float32), support
        # the final dense stage runs a float64 kernel: in float32 the exponent of costs ~10³
        # at ε = 0.1 is off by ~10⁻³ relative, a floor above the tolerance
        dtype = torch.float64 if final else cost.dtype
        if self.buffer is not None and self.buffer.dtype != dtype:
            self.buffer = None  # free the old kernel before the new one exists (memory budget)
        op = DenseKernel(cost, f, g, eps, dtype, self.buffer)
        self.buffer = op.kernel
        return op, None

    def restart(self, op, res, err: float):
        """``(f, g, ε)`` to redo the stage from when it stalled or broke, else None."""
        if op.sparse and res.status in ("stalled", "diverged") and self.iterations < self.max_iter:
            # first stall: refit the support to the progressed potentials; second: dense
            f, g = self.last
            if torch.isfinite(res.f).all() and torch.isfinite(res.g).all() and err < 1.0:
                f, g = res.f, res.g
            self.dense_stage, self.stalls_here = self.stalls_here >= 1, self.stalls_here + 1
            self.stages -= 1
            return f, g, self.eps
        finite = math.isfinite(err) and bool(torch.isfinite(res.f).all() and torch.isfinite(res.g).all())
        if not finite and not op.sparse and (self.init is not None or self.omega != 1.0):
            # a warm start (or over-relaxation) that broke the scaling: start over plainly
            self.init, self.omega, self.fitted = None, 1.0, False
            return self.plain[0].clone(), self.plain[1].clone(), self.plain[2]
        return None

    def judge_final(self, err: float):
        """After a final stage's verification: ``(converged, again)`` where again is False
        (stop), True (another final stage from the current potentials) or ``(f, g, ε)``."""
        self.checks += 1
        self.passes += 1
        converged = err < self.tol
        if converged or self.iterations >= self.max_iter or self.checks >= 4:
            return converged, False
        if not err < 1.0 and (self.allow_sparse or not math.isfinite(err)):
            # fitted on a support that missed most of the mass: start over dense
            self.allow_sparse, self.fitted = False, False
            return converged, (self.plain[0].clone(), self.plain[1].clone(), self.plain[2])
        if self.checks >= 2:
            self.allow_sparse = False  # a second miss: finish on the dense kernel
        return converged, True

    def account(self, op, done: int) -> None:
        self.iterations += done
        self.sparse_iterations += done if op.sparse else 0
        self.passes += op.entries / (self.cost.shape[0] * self.cost.shape[1])


def sinkhorn_potentials(cost: torch.Tensor, epsilon: float = 0.1, *, tol: float = 1e-3,
                        max_iter: int = 20_000, a: torch.Tensor | None = None,
                        b: torch.Tensor | None = None, eps_scaling: float = 4.0,
                        sparse: str | bool = "auto", check_every: int = 10,
                        sparse_fraction: float = 0.05, warmup_tol: float = 1e-2,
                        omega: float = 1.8, init=None, clusters=None,
                        init_fitted: bool = False) -> Coupling:
    r"""Entropic OT potentials for cost ``C: (N_s, N_t)`` with marginals ``a``, ``b``.

    Solves ``min <P,C> + ε Σ P(log P - 1)`` s.t. ``P1 = a, Pᵀ1 = b`` (uniform by default);
    the optimal coupling is ``P_ij = exp((f_i + g_j - C_ij)/ε)``. ε-scaling with ratio
    ``eps_scaling`` (≤ 1 disables it); each stage runs the scaling loop (over-relaxed by
    ``omega``) on the dense kernel or, on CPU, on a sparse support (``sparse`` True, False
    or "auto": when it keeps fewer than ``sparse_fraction`` of the entries). Warm-up stages
    stop at ``max(tol, 1e-3)`` (``warmup_tol`` for dense ones with ``clusters``).

    ``init`` = ``(f, g, ε_start, ...)`` starts the schedule at ``ε_start`` from the hard
    c-transforms of those potentials (``init_fitted``: they are accurate, e.g. exact OT
    duals, so the first stage may already run on a sparse support); ``clusters`` =
    ``(source groups (N_s,), target groups (N_t,))`` turns on coarse corrections between
    those groups. Stops when ``||P1-a||₁ + ||Pᵀ1-b||₁ < tol`` on the full kernel, or after
    ``max_iter`` scaling iterations.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    ns, nt = cost.shape
    dev = cost.device
    a = torch.full((ns,), 1.0 / ns, dtype=torch.float64, device=dev) if a is None else a.double()
    b = torch.full((nt,), 1.0 / nt, dtype=torch.float64, device=dev) if b is None else b.double()
    f, g, eps, plain = _start(cost, epsilon, eps_scaling, init)
    s = _Schedule(cost, epsilon, tol, max_iter, sparse, sparse_fraction,
                  fitted=init is not None and init_fitted)
    s.passes = 2.0 if init is None else 4.0
    s.plain, s.omega, s.init, s.init_given = plain, omega, init, init is not None
    err, kept, converged = math.inf, None, False
    while True:
        final = eps <= epsilon * (1 + 1e-9)
        s.stages += 1
        op, support = s.operator(f, g, eps, final)
        stage_tol = 0.5 * tol if final else max(tol, 1e-3)
        if not final and not op.sparse and clusters is not None:
            stage_tol = max(tol, warmup_tol)  # corrections make a loose dense warm-up safe
        # a warm-up stage gets at most half of the remaining budget
        cap = max_iter if final else s.iterations + max(1, (max_iter - s.iterations) // 2)
        corr = CoarseCorrection(clusters, a, b) if clusters is not None else None
        res = scaling_loop(op, a, b, stage_tol, max(1, cap - s.iterations),
                           check_every=check_every, omega=s.omega, correction=corr)
        s.account(op, res.iterations)
        err = res.error
        log.debug("stage ε=%.4g %s iterations=%d err=%.2e %s", eps,
                  "sparse" if op.sparse else "dense", res.iterations, err, res.status)
        restart = s.restart(op, res, err)
        op = None  # drop this stage's kernel before the next one is built
        if restart is not None:
            f, g, eps = restart
            continue
        f, g, s.fitted = res.f, res.g, True
        if final:
            refit = None if support is None else (
                lambda f_, g_: reduced_cost_support(cost, f_, g_, eps, s.theta, s.max_nnz))
            # a stage started from given potentials (exact duals) drifts too far from the
            # support read at its start for the bound to hold: measured to fail every time
            box = [] if s.stages == 1 and s.init_given else [support]
            support = None
            err, kept = verify(cost, f, g, eps, a, b, tol, box, refit)
            converged, again = s.judge_final(err)
            if not again:
                break
            f, g, eps = again if again is not True else (f, g, eps)
            continue
        eps = max(float(epsilon), eps / eps_scaling)
        s.dense_stage, s.stalls_here = False, 0
    return Coupling(f=f, g=g, epsilon=float(epsilon), iterations=s.iterations,
                    converged=converged, marginal_error=err, stages=s.stages,
                    sparse_iterations=s.sparse_iterations,
                    support=None if kept is None else kept[:3],
                    off_support_mass=math.nan if kept is None else kept[3], passes=s.passes)
