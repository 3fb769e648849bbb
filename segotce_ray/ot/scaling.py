"""The one scaling loop: (over-relaxed) Sinkhorn iterations on a kernel operator.

``scaling_loop`` runs ``u ← a / K v``, ``v ← b / Kᵀ u`` on a :mod:`~segotce_ray.ot.kernel`
operator (dense or sparse, the same code), checks the marginal error every ``check_every``
iterations, re-absorbs scalings that leave the safe range, applies coarse corrections
between groups (:class:`~segotce_ray.ot.multiscale.CoarseCorrection`) and stops on the
first of: converged, budget spent, stalled (sparse supports only), non-finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


class Overrelaxation:
    """Over-relaxation factor ω for the scaling updates, with a safeguard.

    Over-relaxed Sinkhorn replaces ``u ← a/Kv`` by ``u ← u^{1-ω} (a/Kv)^ω`` (in log domain
    ``f ← f + ω (f_sinkhorn - f)``). It has the same fixed point and converges locally for
    ω ∈ (0, 2), faster than plain Sinkhorn (ω = 1) when the plain rate is close to 1 — small
    ε against the costs (Thibault et al. 2017; Lehmann et al. 2021). Far from the fixed point
    it can overshoot, so the first ``warmup`` checks run plain and a check whose error exceeds
    twice the smallest of the last ``window`` ones halves ω - 1 for the rest of the stage.
    """

    def __init__(self, omega: float = 1.8, warmup: int = 3, window: int = 5):
        self.target, self.warmup, self.window = omega, warmup, window
        self.w = 1.0
        self.history: list[float] = []
        self.checks = 0

    def forget(self) -> None:
        """Drop the error history (after an outside change of the scalings), keep ω."""
        self.history = []

    def update(self, err: float) -> float:
        """Record a check's error; return the ω for the next iterations."""
        if not math.isfinite(err):
            self.target = self.w = 1.0
            return self.w
        h = self.history
        h.append(err)
        self.checks += 1
        if self.w > 1.0 and err > 2.0 * min(h[-self.window:]):
            self.target = 1.0 + (self.target - 1.0) / 2
            self.w, self.history = 1.0, [err]
        elif self.checks > self.warmup:
            self.w = self.target
        return self.w


class StallMonitor:
    """A sparse support that misses entries the coupling needs makes the restricted problem
    (nearly) infeasible: the error rises, or stops halving. ``check`` returns None to go on,
    ``"stalled"`` (rebuild the support) or ``"plateau"`` (close to ``tol``: let the caller's
    full-kernel verification decide)."""

    def __init__(self, tol: float, every: int = 2000):
        self.tol, self.every = tol, every
        self.best = self.mark = math.inf

    def check(self, err: float, it: int, w: float) -> str | None:
        self.best = min(self.best, err)
        if err > 10 * self.best and w == 1.0:
            return "stalled"
        if it % self.every == 0:
            if it and err > 0.5 * self.mark:
                return "stalled" if err > 2 * self.tol else "plateau"
            self.mark = err
        return None


@dataclass
class LoopResult:
    """Potentials (float64) after the loop, iterations done, the last marginal error
    (row error of (u, v) + column error of the last update) and why it stopped."""

    f: torch.Tensor
    g: torch.Tensor
    iterations: int
    error: float
    status: str  # converged | budget | stalled | plateau | diverged


def _error(u, kv, a, v, ktu, b) -> float:
    return float(abs(u * kv - a).sum()) + float(abs(v * ktu - b).sum())


def _update(op, u, v, kv, a, b, w: float):
    """One (over-relaxed) scaling iteration; returns ``(u, v, Kᵀu)``."""
    if w == 1.0:
        u = a / op.floor(kv)
        ktu = op.rmatvec(u)
        return u, b / op.floor(ktu), ktu
    # u^{1-ω} (a/Kv)^ω written with one power: u · (a / (u·Kv))^ω
    u = u * (a / op.floor(u * kv)) ** w
    ktu = op.rmatvec(u)
    return u, v * (b / op.floor(v * ktu)) ** w, ktu


def scaling_loop(op, a: torch.Tensor, b: torch.Tensor, tol: float, budget: int, *,
                 check_every: int = 10, omega: float = 1.8, correction=None) -> LoopResult:
    """Scaling iterations on ``op`` until the marginal error is below ``tol`` (or ``budget``
    iterations). a: (N_s,), b: (N_t,) float64 marginals."""
    u, v = op.u0, op.v0
    a_w, b_w = op.vec(a), op.vec(b)
    ktu = op.rmatvec(u)
    relax, monitor = Overrelaxation(omega), StallMonitor(tol) if op.sparse else None
    it, err, w, status = 0, math.inf, 1.0, "budget"
    while it < budget:
        kv = op.matvec(v)
        if it % check_every == 0:
            fixed = op.repair(u, v, kv, ktu, a, b)
            if fixed is not None:
                u, v = fixed
                kv, ktu = op.matvec(v), op.rmatvec(u)
                if correction is not None:
                    correction.pending = None
            err = _error(u, kv, a_w, v, ktu, b_w)
            restore = correction.judge(err, it) if correction is not None else None
            if restore is not None:  # the last coarse correction did not help: undo it
                u, v = restore
                kv, ktu = op.matvec(v), op.rmatvec(u)
                relax.forget()
                err = _error(u, kv, a_w, v, ktu, b_w)
            if not math.isfinite(err):
                status = "diverged"
                break
            if err < tol:
                status = "converged"
                break
            verdict = monitor.check(err, it, w) if monitor is not None else None
            if verdict is not None:
                status = verdict
                break
            w = relax.update(err)
            if max(float(u.max()), float(v.max())) > op.big or \
                    min(float(u.min()), float(v.min())) < 1 / op.big:
                u, v = op.absorb(u, v)
                kv, ktu = op.matvec(v), op.rmatvec(u)
                if correction is not None:
                    correction.pending = None
            if correction is not None and correction.due(it):
                u, v = correction.apply(op, u, v, err, it)
                kv = op.matvec(v)
                relax.forget()  # the error jump of a correction is not an overshoot
        u, v, ktu = _update(op, u, v, kv, a_w, b_w, w)
        it += 1
    f, g = op.potentials(u, v)
    return LoopResult(f, g, it, err, status)
