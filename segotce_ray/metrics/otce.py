r"""SEG-OTCE: optimal-transport conditional entropy between two labelled pixel sets.

Definition (Tan, Li, Huang, arXiv 2109.15242; OTCE, CVPR'21). Per repetition k:

1. drop pixels whose label is ``ignore_index``; draw N source pixels ``fs: (N, D)``,
   ``ys: (N,)`` and N target pixels ``ft: (N, D)``, ``yt: (N,)`` without replacement
   (uniformly, or class-balanced with probability ∝ 1 / frequency of the pixel's class);
2. cost ``C[i, j] = ||fs_i - ft_j||²`` (no rescaling by default);
3. entropic coupling with uniform marginals ``a = 1/N_s``, ``b = 1/N_t``::

       P = argmin_{P 1 = a, Pᵀ 1 = b}  <P, C> + ε Σ P_ij (log P_ij - 1)

   (ε has POT's ``reg`` meaning: the Gibbs kernel is ``exp(-C/ε)``);
4. joint label distribution ``J = Sᵀ P T`` (S, T one-hot labels), renormalised to sum 1;
5. ``W_T = H(Y_t | Y_s) = -Σ_ab J_ab ln(J_ab / Σ_b' J_ab')`` (nats), score ``= -W_T``;
   ``W_D = <P, C>`` is recorded too;
6. the result is the mean and std of the score over K repetitions.

The solver
----------
With unscaled squared distances (tens to thousands) and ε = 0.1 the problem is an almost
exact transport: ``exp(-C/ε)`` underflows and plain Sinkhorn needs tens of thousands of
iterations. :func:`sinkhorn_potentials` therefore combines

- **stabilised kernel scaling** (Schmitzer 2019): the dual potentials ``f, g`` are kept in
  float64 and absorbed into the kernel ``K = exp((f_i + g_j - C_ij)/ε)``, so iterations are
  cheap multiplications ``u = a / K v``, ``v = b / Kᵀ u`` instead of a log-sum-exp;
- **ε-scaling**: a geometric schedule from the cost scale down to ε, each stage warm-started
  from the previous potentials;
- **sparse iterations on CPU**: once the coupling's mass sits on a small support (entries
  above ``θ = 1e-3·tol/(N_s·N_t)`` in the final stage, so the mass left out is below a
  thousandth of the tolerance; a coarser support in warm-up stages), iterations run on that
  support only (scipy CSR, float64 exponents). A support that makes the restricted problem
  infeasible (rising error) is rebuilt from the full kernel.

Convergence is always judged on the **full** coupling, evaluated with float64 exponents
(``_coupling_rows``): the L1 marginal violation ``||P1 - a||₁ + ||Pᵀ1 - b||₁`` (relative to
unit mass) must fall below ``tol`` (default 1e-3, i.e. 0.1% of the mass; the label joint is
renormalised, and on the benchmark mixtures W_T moves by ~3e-4 nats between tol = 1e-3 and
1e-5). ``iterations`` counts scaling iterations over all stages; ``converged`` is False when
``max_iter`` ran out first. Sinkhorn's convergence at ε ≪ cost scale is sublinear: a tighter
``tol`` costs many more iterations.

``solver="emd"`` computes the exact (ε = 0) coupling: a linear assignment when both sides
have the same size (the exact optimum of uniform equal-size OT is a permutation),
POT's ``ot.emd`` otherwise.

Determinism: the draws of repetition k depend only on ``(seed, k)`` (NumPy ``SeedSequence``),
so a repetition gives the same result whether it is computed alone, in a batch, or on
another worker; index sampling always happens on the CPU, so every device draws the same
pixels.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

__all__ = [
    "OTCEResult",
    "SinkhornResult",
    "otce_score",
    "otce_repetition",
    "prepare_side",
    "sample_indices",
    "squared_euclidean_cost",
    "sinkhorn_potentials",
    "coarse_potentials",
    "CoarseStart",
    "coupling_from_potentials",
    "emd_coupling",
    "label_joint",
    "conditional_entropy",
    "working_set_bytes",
    "fit_otce_weights",
]

log = logging.getLogger(__name__)

SOLVERS = ("sinkhorn", "emd")
SAMPLINGS = ("uniform", "class_balanced")
COST_SCALES = ("none", "mean", "max")


# --------------------------------------------------------------------------- results


@dataclass
class SinkhornResult:
    """Dual potentials of the entropic coupling ``P_ij = exp((f_i + g_j - C_ij)/ε)``.

    f: (N_s,) float64; g: (N_t,) float64 (on the cost's device); iterations: scaling
    iterations over all ε-stages; converged: marginal violation ≤ tol; marginal_error:
    ``||P1 - a||₁ + ||Pᵀ1 - b||₁`` of the full kernel at the end (an upper bound when
    ``support`` is set). support: ``(rows, cols, costs)`` numpy arrays of the entries that
    carry the coupling's mass, or None; off_support_mass: a proven upper bound on the total
    mass of the entries outside ``support`` (then :func:`label_joint` sums the support only).
    """

    f: torch.Tensor
    g: torch.Tensor
    epsilon: float
    iterations: int
    converged: bool
    marginal_error: float
    stages: int = 0
    sparse_iterations: int = 0
    support: tuple | None = None
    off_support_mass: float = math.nan


@dataclass
class OTCEResult:
    """SEG-OTCE over K repetitions. Arrays have shape (K,); ``score`` = mean(-W_T)."""

    score: float
    std: float
    scores: np.ndarray
    w_t: np.ndarray
    w_d: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    n_source: int
    n_target: int
    pool_source: int
    pool_target: int
    used_whole_source: bool
    used_whole_target: bool
    marginal_error: np.ndarray = field(default_factory=lambda: np.zeros(0))
    repetition_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    settings: dict[str, Any] = field(default_factory=dict)

    def as_rows(self) -> list[dict[str, Any]]:
        """One dict per repetition (k, score, w_t, w_d, iterations, converged, n_*)."""
        return [
            {"k": int(k), "score": float(s), "w_t": float(wt), "w_d": float(wd),
             "iterations": int(it), "converged": bool(cv),
             "n_source": self.n_source, "n_target": self.n_target}
            for k, s, wt, wd, it, cv in zip(self.repetition_ids, self.scores, self.w_t,
                                            self.w_d, self.iterations, self.converged)
        ]


# --------------------------------------------------------------------------- input checks


def _to_numpy_labels(labels: Any, side: str) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"{side} labels must be integers, got torch dtype {labels.dtype}")
        return labels.detach().cpu().numpy().astype(np.int64)
    arr = np.asarray(labels)
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{side} labels must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def prepare_side(features: Any, labels: Any, ignore_index: int | None, side: str
                 ) -> tuple[np.ndarray | torch.Tensor, np.ndarray]:
    """Validate one side and drop its ``ignore_index`` pixels.

    features: (P, D) float16/32/64, numpy or torch (any device); labels: (P,) integer.
    Returns ``(features[keep], labels[keep])`` with the features' container and device kept.
    Raises ``ValueError`` naming the side for: non-2-D features, non-float features,
    mismatched lengths, non-integer labels, NaN/inf features, an empty pool.
    """
    is_torch = isinstance(features, torch.Tensor)
    feats = features if is_torch else np.asarray(features)
    if feats.ndim != 2:
        raise ValueError(f"{side} features must be 2-D (pixels, dim), got shape {tuple(feats.shape)}")
    if is_torch:
        if not feats.is_floating_point():
            raise ValueError(f"{side} features must be floating point, got {feats.dtype}")
    elif feats.dtype.kind != "f":
        raise ValueError(f"{side} features must be floating point, got dtype {feats.dtype}")
    labs = _to_numpy_labels(labels, side)
    if labs.ndim != 1:
        raise ValueError(f"{side} labels must be 1-D, got shape {labs.shape}")
    if labs.shape[0] != feats.shape[0]:
        raise ValueError(f"{side}: {feats.shape[0]} feature rows but {labs.shape[0]} labels")
    keep = labs != ignore_index if ignore_index is not None else np.ones(len(labs), bool)
    if not keep.all():
        labs = labs[keep]
        feats = feats[torch.from_numpy(keep).to(feats.device)] if is_torch else feats[keep]
    if labs.shape[0] == 0:
        raise ValueError(f"{side} pool is empty after dropping ignore_index={ignore_index} pixels")
    finite = bool(torch.isfinite(feats).all()) if is_torch else bool(np.isfinite(feats).all())
    if not finite:
        bad = (~torch.isfinite(feats)).any(1).nonzero()[0, 0].item() if is_torch else \
            int(np.flatnonzero(~np.isfinite(feats).all(1))[0])
        raise ValueError(f"{side} features contain NaN or inf (first bad pixel row {bad})")
    if labs.min() < 0:
        raise ValueError(f"{side} labels contain negative ids ({int(labs.min())}) that are not ignore_index")
    return feats, labs


def working_set_bytes(n_source: int, n_target: int, itemsize: int = 4) -> int:
    """Peak bytes of one repetition: cost C and kernel K (N_s×N_t each) plus one temporary."""
    return 3 * n_source * n_target * itemsize


def _available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # pragma: no cover - psutil ships with ray
        return 8 * 1024**3


# --------------------------------------------------------------------------- sampling


def sample_indices(labels: np.ndarray, n: int, rng: np.random.Generator,
                   sampling: str = "uniform") -> np.ndarray:
    """Draw ``min(n, P)`` distinct indices of a pool with labels ``(P,)``.

    ``uniform``: uniform without replacement. ``class_balanced``: without replacement with
    weight ∝ 1/count(label) (Efraimidis–Spirakis keys ``log(U)/w``, top n), so every class
    is drawn about equally often. Returns sorted int64 indices (a pool of size ≤ n is
    returned whole, in order).
    """
    p = labels.shape[0]
    if n >= p:
        return np.arange(p, dtype=np.int64)
    if sampling == "uniform":
        idx = rng.choice(p, size=n, replace=False)
    elif sampling == "class_balanced":
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse]
        keys = np.log(rng.random(p)) / weights
        idx = np.argpartition(-keys, n - 1)[:n]
    else:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    return np.sort(idx).astype(np.int64)


def _repetition_rngs(seed: int, k: int) -> tuple[np.random.Generator, np.random.Generator]:
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(k)])
    src, tgt = ss.spawn(2)
    return np.random.default_rng(src), np.random.default_rng(tgt)


# --------------------------------------------------------------------------- cost


def squared_euclidean_cost(x: torch.Tensor, y: torch.Tensor, center: bool = True) -> torch.Tensor:
    """``C[i, j] = ||x_i - y_j||²`` as ``||x||² + ||y||² - 2 x yᵀ``, clamped at 0.

    x: (N_s, D), y: (N_t, D), same dtype/device -> (N_s, N_t). ``center`` subtracts the
    joint mean first (C is translation invariant; it shrinks the norms and with them the
    cancellation error of the expansion in float32).
    """
    if center:
        m = torch.cat([x, y]).mean(0, keepdim=True)
        x, y = x - m, y - m
    cost = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :]
    cost.addmm_(x, y.T, alpha=-2.0)
    return cost.clamp_(min=0.0)


# --------------------------------------------------------------------------- sinkhorn


def _absorbed_kernel(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                     out: torch.Tensor) -> torch.Tensor:
    """out ← exp((f_i + g_j - C_ij)/ε) in place, computed in ``out``'s dtype."""
    torch.sub(f.to(out.dtype)[:, None], cost, out=out)
    out.add_(g.to(out.dtype)[None, :]).mul_(1.0 / eps).exp_()
    return out


def _coupling_rows(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                   chunk_rows: int):
    """Yield ``(lo, P[lo:hi])`` with ``P_ij = exp((f_i + g_j - C_ij)/ε)`` in float64.

    The exponent is formed in float64 from C's stored values, so the coupling carries no
    rounding of the potentials (a float32 exponent at costs ~10³ and ε = 0.1 is off by
    ~10⁻³ relative); only ``chunk_rows`` rows exist at a time.
    """
    g_row = g.to(cost.device)[None, :]
    for lo in range(0, cost.shape[0], chunk_rows):
        c = cost[lo:lo + chunk_rows].double()
        p = torch.sub(f[lo:lo + chunk_rows].to(cost.device)[:, None], c).add_(g_row)
        yield lo, c, p.mul_(1.0 / eps).exp_()


def _marginals(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
               chunk_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of the full coupling (float64, row chunks)."""
    row = torch.empty(cost.shape[0], dtype=torch.float64, device=cost.device)
    col = torch.zeros(cost.shape[1], dtype=torch.float64, device=cost.device)
    for lo, _, p in _coupling_rows(cost, f, g, eps, chunk_rows):
        row[lo:lo + p.shape[0]] = p.sum(1)
        col += p.sum(0)
    return row, col


def _split(pot: torch.Tensor, eps: float, dt: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """pot (float64) = hi + ε·log(scale): ``hi`` exactly representable in the kernel dtype
    (so the kernel's exponent carries no rounding of the potential), ``scale`` ≈ 1."""
    hi = pot.to(dt).double()
    return hi, torch.exp((pot - hi) / eps)


class _Overrelaxation:
    """Over-relaxation factor ω for the scaling updates, with a safeguard.

    Over-relaxed Sinkhorn replaces ``u ← a/Kv`` by ``u ← u^{1-ω} (a/Kv)^ω`` (in log domain
    ``f ← f + ω (f_sinkhorn - f)``). It has the same fixed point and converges locally for
    ω ∈ (0, 2), faster than plain Sinkhorn (ω = 1) when the plain rate is close to 1 — small
    ε against the costs (Thibault et al. 2017; Lehmann et al. 2021). Far from the fixed point
    it can overshoot, so the first ``warmup`` checks run plain and a check whose error exceeds
    twice the smallest of the last ``window`` ones halves ω - 1 for the rest of the stage.
    On the benchmark mixtures a fixed ω = 1.8 beat Young's rate-based ω, whose estimate the
    non-monotone L1 error of a relaxed iteration makes unreliable.
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


def _scale_matrix(p: np.ndarray, a: np.ndarray, b: np.ndarray, iters: int = 1000,
                  rtol: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Diagonal scalings ``x, y`` with ``diag(x) p diag(y)`` having marginals ``a``, ``b``.

    p: (m, m') non-negative float64 (the coupling aggregated over clusters); plain Sinkhorn,
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


class _CoarseCorrection:
    """Two-level acceleration of the scaling iterations.

    The slow modes of Sinkhorn on clustered points are per-group shifts of the potentials:
    mass that must move between groups through exponentially small kernel entries. Given
    cluster labels of both sides, the current coupling is aggregated to a small matrix
    ``P̄_cd = Σ_{i∈c, j∈d} u_i K_ij v_j``, which is scaled exactly to the clusters' masses;
    the scalings multiply ``u`` and ``v`` cluster-wise. That removes the inter-cluster error
    in one step (an aggregation coarse-grid correction); the ordinary iterations then fix the
    fast, local part. A correction that has not lowered the error ``settle`` iterations later
    is undone and the interval doubles; after three such misses the stage goes on without.
    """

    def __init__(self, clusters, a: torch.Tensor, b: torch.Tensor, every: int = 50,
                 settle: int = 30):
        ls, lt = clusters
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
            # back off: try again after twice the interval; give up after three misses
            self.misses += 1
            self.every *= 2
            self.active = self.misses < 3
            return u, v
        return None

    def scalings(self, pbar: np.ndarray, err: float) -> tuple[np.ndarray, np.ndarray]:
        # cluster marginals to 1% of the current error: enough for a correction
        return _scale_matrix(pbar, self.a_c, self.b_c, rtol=max(1e-9, 0.01 * err))

    def dense(self, kernel: torch.Tensor, u: torch.Tensor, v: torch.Tensor, err: float, it: int):
        """Corrected (u, v), float64, on a dense kernel (the caller re-absorbs if out of range)."""
        dev, kdt = kernel.device, kernel.dtype
        lt, ls = self.lt.to(dev), self.ls.to(dev)
        t1 = torch.zeros(kernel.shape[1], self.mt, dtype=kdt, device=dev)
        t1[torch.arange(kernel.shape[1], device=dev), lt] = v
        kt = kernel @ t1  # (N_s, m'): Σ_{j∈d} K_ij v_j
        pbar = torch.zeros(self.m, self.mt, dtype=torch.float64, device=dev)
        pbar.index_add_(0, ls, (u[:, None] * kt).double())
        x, y = self.scalings(pbar.cpu().numpy(), err)
        self.pending, self.last = (u, v, err), it
        xs = torch.from_numpy(x).to(dev)[ls]
        ys = torch.from_numpy(y).to(dev)[lt]
        return u.double() * xs, v.double() * ys

    def sparse(self, rows: np.ndarray, cols: np.ndarray, kdata: np.ndarray, u: np.ndarray,
               v: np.ndarray, err: float, it: int):
        """Corrected (u, v) on a sparse (COO rows/cols, values) kernel."""
        ls, lt = self.ls.numpy(), self.lt.numpy()
        mass = u[rows] * kdata * v[cols]
        pbar = np.bincount(ls[rows] * self.mt + lt[cols], weights=mass,
                           minlength=self.m * self.mt).reshape(self.m, self.mt)
        x, y = self.scalings(pbar, err)
        self.pending, self.last = (u, v, err), it
        return (u * x[ls]).astype(u.dtype), (v * y[lt]).astype(v.dtype)


def _reabsorb(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
              kernel: torch.Tensor):
    """Absorb float64 potentials into ``kernel`` (in place, its dtype); returns
    ``(f_hi, g_hi, u, v, K v, Kᵀ u)`` with the residual scalings ``u, v`` ≈ 1."""
    kdt = kernel.dtype
    f_hi, u = _split(f, eps, kdt)
    g_hi, v = _split(g, eps, kdt)
    _absorbed_kernel(cost, f_hi, g_hi, eps, kernel)
    u, v = u.to(kdt), v.to(kdt)
    return f_hi, g_hi, u, v, kernel @ v, kernel.T @ u


def _sparse_stage(support, f: torch.Tensor, g: torch.Tensor, eps: float, a: torch.Tensor,
                  b: torch.Tensor, tol: float, budget: int, check_every: int,
                  omega: float = 1.8, corr: "_CoarseCorrection | None" = None,
                  dtype=np.float64):
    """Scaling iterations on a fixed sparse support (scipy CSR, CPU; kernel and scalings in
    ``dtype`` — float32 halves the memory traffic of warm-up stages — potentials float64).

    Returns updated potentials ``(f, g)``, iterations done, the last row-marginal error and
    whether it stalled: a support that misses entries the coupling needs makes the restricted
    problem (nearly) infeasible, the error stops falling and the potentials drift; the caller
    then rebuilds the support from the full kernel.
    """
    import scipy.sparse as sp

    rows, cols, c_vals, indptr = support
    fn, gn = f.numpy().copy(), g.numpy().copy()
    an, bn = a.numpy().astype(dtype), b.numpy().astype(dtype)
    ns, nt = len(an), len(bn)
    tiny = float(np.finfo(dtype).tiny)
    big = 1e100 if dtype == np.float64 else 1e30
    k = sp.csr_matrix((np.exp((fn[rows] + gn[cols] - c_vals) / eps).astype(dtype), cols, indptr),
                      shape=(ns, nt))
    kt = k.T.tocsr()
    un, vn = np.ones(ns, dtype), np.ones(nt, dtype)
    ktu = kt @ un
    done, err = 0, math.inf
    best, stalled, last_mark = math.inf, False, math.inf
    relax = _Overrelaxation(omega)
    w = 1.0
    while done < budget:
        kv = k @ vn
        if done % check_every == 0:
            # row error of the current (u, v) plus the column error left by the last
            # (possibly over-relaxed) column update
            err = float(np.abs(un * kv - an).sum() + np.abs(vn * ktu - bn).sum())
            restore = corr.judge(err, done) if corr is not None else None
            if restore is not None:  # the last coarse correction did not help: undo it
                un, vn = restore
                kv, ktu = k @ vn, kt @ un
                relax.forget()
                err = float(np.abs(un * kv - an).sum() + np.abs(vn * ktu - bn).sum())
            if not np.isfinite(err):
                stalled = True
                break
            if err < tol:
                break
            best = min(best, err)
            if err > 10 * best and w == 1.0:  # rising error: the restricted problem is infeasible
                stalled = True
                break
            if done % 2000 == 0:
                if done and err > 0.5 * last_mark:  # no halving in 2000 iterations
                    # close to the target (tol is half the caller's): let the full-kernel
                    # check decide; far from it: the support lacks entries
                    stalled = err > 2 * tol
                    break
                last_mark = err
            w = relax.update(err)
            if max(un.max(), vn.max()) > big or min(un.min(), vn.min()) < 1 / big:
                fn += eps * np.log(un)
                gn += eps * np.log(vn)
                un[:] = 1.0
                vn[:] = 1.0
                k.data[:] = np.exp((fn[rows] + gn[cols] - c_vals) / eps)
                kt = k.T.tocsr()
                kv = k @ vn
                if corr is not None:
                    corr.pending = None
            if corr is not None and corr.due(done):
                un, vn = corr.sparse(rows, cols, k.data, un, vn, err, done)
                kv = k @ vn
                relax.forget()  # the error jump of a correction is not an overshoot
        if w == 1.0:
            un = an / np.maximum(kv, tiny)
            ktu = kt @ un
            vn = bn / np.maximum(ktu, tiny)
        else:
            # u^{1-ω} (a/Kv)^ω written with one power: u · (a / (u·Kv))^ω
            un = un * (an / np.maximum(un * kv, tiny)) ** w
            ktu = kt @ un
            vn = vn * (bn / np.maximum(vn * ktu, tiny)) ** w
        done += 1
    if stalled:
        fn, gn = fn + eps * np.log(un), gn + eps * np.log(vn)
        if np.isfinite(fn).all() and np.isfinite(gn).all() and err < 1.0:
            return torch.from_numpy(fn), torch.from_numpy(gn), done, err, True  # keep progress
        return f, g, done, err, True
    return (torch.from_numpy(fn + eps * np.log(un)), torch.from_numpy(gn + eps * np.log(vn)),
            done, err, False)


def _c_transform(cost: torch.Tensor, pot: torch.Tensor, dim: int, chunk: int = 512) -> torch.Tensor:
    """Hard c-transform in row chunks (no N_s×N_t temporary), float64.

    dim = 1: ``f_i = min_j (C_ij - pot_j)``; dim = 0: ``g_j = min_i (C_ij - pot_i)``.
    """
    p = pot.to(cost.device, cost.dtype)
    if dim == 1:
        return torch.cat([(cost[lo:lo + chunk] - p[None, :]).min(1).values
                          for lo in range(0, cost.shape[0], chunk)]).double()
    out = torch.full((cost.shape[1],), math.inf, dtype=cost.dtype, device=cost.device)
    for lo in range(0, cost.shape[0], chunk):
        torch.minimum(out, (cost[lo:lo + chunk] - p[lo:lo + chunk, None]).min(0).values, out=out)
    return out.double()


def _reduced_costs(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, chunk_rows: int = 512):
    """Yield ``(lo, hi, r)`` with ``r = C[lo:hi] - f_i - g_j`` in C's dtype, row chunk by chunk."""
    fr, gr = f.to(cost.dtype), g.to(cost.dtype)
    for lo in range(0, cost.shape[0], chunk_rows):
        hi = min(cost.shape[0], lo + chunk_rows)
        yield lo, hi, cost[lo:hi] - fr[lo:hi, None] - gr[None, :]


def _reduced_cost_support(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                          theta: float, max_nnz: float, chunk_rows: int = 512):
    """Sparse support from reduced costs ``r_ij = C_ij - f_i - g_j``, without a kernel.

    Keeps the entries within ``θ·ε`` of their row's or their column's smallest reduced cost:
    the entries whose coupling mass, once rows (columns) are renormalised, is within ``e^-θ``
    of the largest mass of their row (column). Two chunked passes over C (minima, then the
    mask), no exponentials. Returns ``(rows, cols, costs, indptr)`` in CSR order, or None when
    the support has more than ``max_nnz`` entries (the stage then runs dense).
    """
    ns, nt = cost.shape
    row_min = torch.empty(ns, dtype=cost.dtype)
    col_min = torch.full((nt,), math.inf, dtype=cost.dtype)
    for lo, hi, r in _reduced_costs(cost, f, g, chunk_rows):
        row_min[lo:hi] = r.min(1).values
        torch.minimum(col_min, r.min(0).values, out=col_min)
    band = float(theta * eps)
    rows_l, cols_l, nnz = [], [], 0
    for lo, hi, r in _reduced_costs(cost, f, g, chunk_rows):
        keep = (r <= (row_min[lo:hi, None] + band)) | (r <= (col_min[None, :] + band))
        rr, cc = keep.nonzero(as_tuple=True)
        nnz += rr.numel()
        if nnz > max_nnz:
            return None
        rows_l.append(rr + lo)
        cols_l.append(cc)
    rows_t, cols_t = torch.cat(rows_l), torch.cat(cols_l)
    indptr = np.zeros(ns + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows_t.numpy(), minlength=ns), out=indptr[1:])
    return rows_t.numpy(), cols_t.numpy(), cost[rows_t, cols_t].double().numpy(), indptr


def _support_marginals(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                       support, chunk_rows: int = 512):
    """Marginals of the coupling restricted to ``support`` (float64, exact) and a proven
    upper bound on the mass outside it.

    The bound: with ``m_i`` the smallest reduced cost ``C_ij - f_i - g_j`` of row i outside the
    support (one chunked pass, no exponentials; lowered by a rounding margin), the off-support
    mass of row i is at most ``N_t·exp(-m_i/ε)``. Returns ``(row (N_s,), col (N_t,), bound)``.
    """
    rows, cols, c_vals, indptr = support
    ns, nt = cost.shape
    fn, gn = f.cpu().numpy(), g.cpu().numpy()
    mass = np.exp((fn[rows] + gn[cols] - c_vals) / eps)
    row = np.bincount(rows, weights=mass, minlength=ns)
    col = np.bincount(cols, weights=mass, minlength=nt)
    scale = float(cost.abs().max()) + float(f.abs().max()) + float(g.abs().max())
    margin = 8 * torch.finfo(cost.dtype).eps * scale
    bound = 0.0
    rows_t, cols_t = torch.from_numpy(rows), torch.from_numpy(cols)
    for lo, hi, r in _reduced_costs(cost, f, g, chunk_rows):
        s0, s1 = int(indptr[lo]), int(indptr[hi])
        r[rows_t[s0:s1] - lo, cols_t[s0:s1]] = math.inf
        m = r.min(1).values.double() - margin
        bound += float((nt * torch.exp(-m / eps)).sum())
    return torch.from_numpy(row), torch.from_numpy(col), bound


def sinkhorn_potentials(cost: torch.Tensor, epsilon: float = 0.1, *, tol: float = 1e-3,
                        max_iter: int = 20_000, a: torch.Tensor | None = None,
                        b: torch.Tensor | None = None, eps_scaling: float = 4.0,
                        sparse: str | bool = "auto", check_every: int = 10,
                        sparse_fraction: float = 0.05, warmup_tol: float = 1e-2,
                        omega: float = 1.8, init=None, clusters=None) -> SinkhornResult:
    r"""Entropic OT potentials for cost ``C: (N_s, N_t)`` with marginals ``a``, ``b``.

    Solves ``min <P,C> + ε Σ P(log P - 1)`` s.t. ``P1 = a, Pᵀ1 = b`` (uniform by default);
    the optimal coupling is ``P_ij = exp((f_i + g_j - C_ij)/ε)``. Stabilised kernel scaling
    with absorption, an ε-scaling schedule with ratio ``eps_scaling`` (≤ 1 disables it) and,
    on CPU, sparse iterations on the support of the absorbed kernel (``sparse`` True, False
    or "auto": when fewer than 5% of the entries carry mass). Updates are over-relaxed by
    ``omega`` (1 = plain Sinkhorn; see ``_Overrelaxation``). Warm-up stages stop at a
    marginal error of ``max(tol, 1e-3)``; they only seed the next ε.

    Multiscale: ``init`` = ``(f, g, ε_start, ...)`` (e.g. a :class:`CoarseStart` from
    :func:`coarse_potentials`) starts the schedule at ``ε_start`` from the hard c-transforms
    of those potentials; ``clusters`` = ``(source labels (N_s,), target labels (N_t,))``
    turns on coarse corrections between those groups every 50 iterations
    (``_CoarseCorrection``) and lets dense warm-up stages stop at ``warmup_tol``.

    Stops when ``||P1-a||₁ + ||Pᵀ1-b||₁ < tol``, measured on the full kernel, or after
    ``max_iter`` scaling iterations. Memory: C plus one kernel buffer of C's size.
    """
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    ns, nt = cost.shape
    dev, dt = cost.device, cost.dtype
    a = torch.full((ns,), 1.0 / ns, dtype=torch.float64, device=dev) if a is None else a.double()
    b = torch.full((nt,), 1.0 / nt, dtype=torch.float64, device=dev) if b is None else b.double()
    allow_sparse = dev.type == "cpu" and sparse in ("auto", True)
    # c-transform start: f_i = min_j C_ij, g_j = min_i (C_ij - f_i)
    f = cost.min(1).values.double()
    g = _c_transform(cost, f, 0)
    kernel = torch.empty_like(cost)
    if eps_scaling and eps_scaling > 1:
        spread = float((cost.mean() - f.mean() - g.mean()).item())
        eps = max(float(epsilon), spread / eps_scaling)
    else:
        eps = float(epsilon)
    f0, g0, eps0 = f.clone(), g.clone(), eps
    if init is not None:
        # hard c-transforms of the given potentials: f_i + g_j ≤ C_ij everywhere, so the
        # absorbed kernel cannot overflow whatever the quality of the guess
        f = _c_transform(cost, init[1], 1)
        g = _c_transform(cost, f, 0)
        eps = max(float(epsilon), float(init[2]))
    iterations = sparse_iterations = stages = checks = 0
    err = math.inf
    converged = False
    # support: entries whose mass (after one renormalising iteration at the new ε) exceeds
    # θ; far below the 1e-3·tol/(N_s·N_t) that the tolerance needs, because that first
    # iterate underestimates entries the converged coupling uses (~14ε of reduced-cost slack)
    threshold = 1e-9 * tol / (ns * nt)
    support = None  # (rows, cols, costs, indptr) of the sparse kernel of the current stage
    dense_stage = False  # set when a sparse support stalled twice: redo the stage on the full kernel
    stalls_here = 0
    fitted = False  # (f, g) come from a finished stage (not the c-transform or a coarse guess)
    kept = None  # (rows, cols, costs, bound) of a verified final support
    while True:
        final = eps <= epsilon * (1 + 1e-9)
        stages += 1
        # warm-up stages only seed the next one: a looser tolerance and at most half of the
        # remaining budget, so the final stage always gets iterations of its own
        # (with coarse corrections, dense warm-up stages stop at the looser ``warmup_tol``:
        # their iterations cost N_s·N_t each; sparse ones are cheap and a tight start
        # shortens the final stage)
        stage_tol = 0.5 * tol if final else max(tol, 1e-3)
        stage_cap = max_iter if final else iterations + max(1, (max_iter - iterations) // 2)
        if support is None and allow_sparse and not dense_stage and fitted and dev.type == "cpu":
            # potentials fitted at an earlier ε (or a stalled support): the next support
            # straight from reduced costs, no dense kernel (θ: e^-θ ≈ 1e-9·tol / N)
            theta = math.log(max(ns, nt) / (1e-9 * tol))
            support = _reduced_cost_support(cost, f, g, eps, theta,
                                            1.0 * ns * nt if sparse is True else sparse_fraction * ns * nt)
        if support is None:
            # the final dense stage runs a float64 kernel: in float32 the exponent of costs
            # ~10³ at ε = 0.1 is off by ~10⁻³ relative, a floor above the tolerance
            # (C in float32 + K in float64 = 12 bytes/entry, within the 3·N²·4 budget)
            kdt = torch.float64 if final else dt
            if kernel.dtype != kdt:
                del kernel
                kernel = torch.empty(cost.shape, dtype=kdt, device=dev)
            a_w, b_w, tiny = a.to(kdt), b.to(kdt), torch.finfo(kdt).tiny
            f_hi, u = _split(f, eps, kdt)
            g_hi, v = _split(g, eps, kdt)
            _absorbed_kernel(cost, f_hi, g_hi, eps, kernel)
            u, v = u.to(kdt), v.to(kdt)
            # one dense iteration renormalises the coupling at the new ε
            u = a_w / (kernel @ v).clamp_min(tiny)
            v = b_w / (kernel.T @ u).clamp_min(tiny)
            iterations += 1
            # (rows sampled first: a kernel that is clearly too dense skips the full mask)
            sample = torch.linspace(0, ns - 1, min(ns, 256), device=dev).long()
            if allow_sparse and not dense_stage and (sparse is True or float(
                    ((kernel[sample] * u[sample, None] * v[None, :]) > threshold).double().mean())
                    < 2 * sparse_fraction):
                mass = kernel * u[:, None]
                keep = mass.mul_(v[None, :]) > threshold
                del mass
                covered = bool(keep.any(1).all()) and bool(keep.any(0).all())
                if covered and (sparse is True or int(keep.sum()) < sparse_fraction * ns * nt):
                    rows_t, cols_t = keep.nonzero(as_tuple=True)  # row-major = CSR order
                    indptr = np.zeros(ns + 1, dtype=np.int64)
                    np.cumsum(np.bincount(rows_t.numpy(), minlength=ns), out=indptr[1:])
                    support = (rows_t.numpy(), cols_t.numpy(),
                               cost[rows_t, cols_t].double().numpy(), indptr)
                    f = f_hi + eps * torch.log(u.double())
                    g = g_hi + eps * torch.log(v.double())
                del keep
        if support is None:
            if not final and clusters is not None:
                # with coarse corrections a loosely converged dense stage is a safe start
                # for the (cheap) sparse ones; without, they can stall on it (N=1000, D=256)
                stage_tol = max(tol, warmup_tol)
            it = 0
            ktu = kernel.T @ u
            relax = _Overrelaxation(omega)
            corr = _CoarseCorrection(clusters, a, b) if clusters is not None else None
            w = 1.0
            while iterations < stage_cap:
                kv = kernel @ v
                if it % check_every == 0 and (bool((kv <= 0).any()) or bool((ktu <= 0).any())):
                    # a row/column whose kernel underflowed entirely: give it its exact
                    # log-domain c-transform, then re-absorb everything
                    f_full = f_hi + eps * torch.log(u.double())
                    g_full = g_hi + eps * torch.log(v.double())
                    rows = (kv <= 0).nonzero().squeeze(1)
                    if rows.numel():
                        f_full[rows] = eps * torch.log(a[rows]) - eps * torch.logsumexp(
                            (g_full[None, :] - cost[rows].double()) / eps, dim=1)
                    cols = (ktu <= 0).nonzero().squeeze(1)
                    if cols.numel():
                        g_full[cols] = eps * torch.log(b[cols]) - eps * torch.logsumexp(
                            (f_full[:, None] - cost[:, cols].double()) / eps, dim=0)
                    f_hi, g_hi, u, v, kv, ktu = _reabsorb(cost, f_full, g_full, eps, kernel)
                    if corr is not None:
                        corr.pending = None
                if it % check_every == 0 and it:
                    # row error of (u, v) + column error left by the last column update
                    err = float((u * kv - a_w).abs().sum().item()
                                + (v * ktu - b_w).abs().sum().item())
                    restore = corr.judge(err, it) if corr is not None else None
                    if restore is not None:  # the coarse correction did not help: undo it
                        u, v = restore
                        kv, ktu = kernel @ v, kernel.T @ u
                        relax.forget()
                        err = float((u * kv - a_w).abs().sum().item()
                                    + (v * ktu - b_w).abs().sum().item())
                    if err < stage_tol or not math.isfinite(err):
                        break
                    w = relax.update(err)
                    if corr is not None and corr.due(it):
                        u, v = corr.dense(kernel, u, v, err, it)  # float64
                        relax.forget()  # its error jump is not an overshoot
                    big = max(float(u.max()), float(v.max()))
                    small = min(float(u.min()), float(v.min()))
                    if u.dtype != kdt and 1e-15 <= small and big <= 1e15:
                        u, v = u.to(kdt), v.to(kdt)
                        kv = kernel @ v
                    if big > 1e15 or small < 1e-15:
                        f_hi, g_hi, u, v, kv, ktu = _reabsorb(
                            cost, f_hi + eps * torch.log(u.double()),
                            g_hi + eps * torch.log(v.double()), eps, kernel)
                        if corr is not None:
                            corr.pending = None
                if w == 1.0:
                    u = a_w / kv.clamp_min(tiny)
                    ktu = kernel.T @ u
                    v = b_w / ktu.clamp_min(tiny)
                else:
                    u = u * (a_w / (u * kv).clamp_min(tiny)).pow_(w)
                    ktu = kernel.T @ u
                    v = v * (b_w / (v * ktu).clamp_min(tiny)).pow_(w)
                iterations += 1
                it += 1
            f = f_hi + eps * torch.log(u.double())
            g = g_hi + eps * torch.log(v.double())
            log.debug("stage ε=%.4g dense iterations=%d err=%.2e", eps, iterations, err)
            if not (math.isfinite(err) and torch.isfinite(f).all() and torch.isfinite(g).all()):
                if init is not None or omega != 1.0:
                    # a warm start (or over-relaxation) that broke the scaling: start over
                    # from the c-transform with plain updates (else the verification reports it)
                    log.debug("stage ε=%.4g: non-finite scaling; restarting plainly", eps)
                    init, omega, fitted = None, 1.0, False
                    f, g, eps = f0.clone(), g0.clone(), eps0
                    support, dense_stage, stalls_here = None, False, 0
                    continue
            fitted = True
        else:
            f, g, done, err, stalled = _sparse_stage(
                support, f, g, eps, a, b, stage_tol, max(1, stage_cap - iterations), check_every,
                omega, _CoarseCorrection(clusters, a, b) if clusters is not None else None,
                np.float64 if final else np.float32)
            iterations += done
            sparse_iterations += done
            fitted = True
            if stalled and iterations < max_iter:
                # first stall: refit the support to the progressed potentials; second: dense
                dense_stage = stalls_here >= 1
                stalls_here += 1
                log.debug("stage ε=%.4g: sparse support stalled; %s", eps,
                          "redoing the stage dense" if dense_stage else "refitting the support")
                support = None
                stages -= 1
                continue
            log.debug("stage ε=%.4g sparse nnz=%d (%.3f%%) iterations=%d err=%.2e", eps,
                      len(support[0]), 100 * len(support[0]) / (ns * nt), iterations, err)
        if final:
            # verify the marginals of the full (untruncated) kernel, exponent in float64:
            # after a sparse stage, exactly on the support plus a proven bound on the rest
            kept = None
            if support is not None:
                row, col, bound = _support_marginals(cost, f, g, eps, support)
                if 2 * bound < 0.01 * tol:
                    err = float((row - a).abs().sum() + (col - b).abs().sum()) + 2 * bound
                    kept = (support[0], support[1], support[2], bound)
            if kept is None:
                row, col = _marginals(cost, f, g, eps)
                err = float((row - a).abs().sum() + (col - b).abs().sum())
            converged = err < tol
            checks += 1
            log.debug("verify ε=%.4g full marginal error %.2e after %d iterations", eps, err, iterations)
            if converged or iterations >= max_iter or checks >= 4:
                break
            support = None  # the support missed mass: rebuild it from the full kernel
            if not err < 1.0 and (allow_sparse or not math.isfinite(err)):
                # potentials fitted on a support that missed most of the mass: start over on
                # the dense kernel (ε-scaling from the c-transform start)
                allow_sparse, fitted = False, False
                f, g, eps = f0.clone(), g0.clone(), eps0
                continue
            if checks >= 2 and allow_sparse:
                allow_sparse = False  # a second miss: finish on the dense kernel
            continue
        eps = max(float(epsilon), eps / eps_scaling)
        support = None  # a support fitted at one ε can miss entries the next ε needs
        dense_stage = False
        stalls_here = 0
    return SinkhornResult(f=f, g=g, epsilon=float(epsilon), iterations=iterations,
                          converged=converged, marginal_error=err, stages=stages,
                          sparse_iterations=sparse_iterations,
                          support=None if kept is None else kept[:3],
                          off_support_mass=math.nan if kept is None else kept[3])


def coupling_from_potentials(cost: torch.Tensor, pot: SinkhornResult) -> torch.Tensor:
    """Materialise ``P_ij = exp((f_i + g_j - C_ij)/ε)`` (N_s, N_t) float64 — small N, tests."""
    return torch.cat([p for _, _, p in _coupling_rows(cost, pot.f, pot.g, pot.epsilon, 4096)])


def emd_coupling(cost: torch.Tensor) -> torch.Tensor:
    """Exact OT coupling with uniform marginals (ε = 0), returned as a dense (N_s, N_t) tensor.

    Equal sizes: the optimum is a permutation (Birkhoff), found by
    ``scipy.optimize.linear_sum_assignment``; otherwise POT's network simplex ``ot.emd``.
    """
    c = cost.detach().double().cpu().numpy()
    ns, nt = c.shape
    if ns == nt:
        from scipy.optimize import linear_sum_assignment

        r, col = linear_sum_assignment(c)
        p = np.zeros_like(c)
        p[r, col] = 1.0 / ns
    else:
        import ot

        p = ot.emd(np.full(ns, 1.0 / ns), np.full(nt, 1.0 / nt), c, numItermax=10_000_000)
    return torch.from_numpy(p).to(cost.device)


# --------------------------------------------------------------------------- joint & entropy


def _one_hot(labels: np.ndarray, classes: np.ndarray, dtype, device) -> torch.Tensor:
    idx = np.searchsorted(classes, labels)
    out = torch.zeros((labels.shape[0], classes.shape[0]), dtype=dtype, device=device)
    out[torch.arange(labels.shape[0], device=device), torch.from_numpy(idx).to(device)] = 1
    return out


def label_joint(coupling: torch.Tensor | SinkhornResult, source_labels: np.ndarray,
                target_labels: np.ndarray, cost: torch.Tensor | None = None,
                chunk_rows: int = 2048) -> tuple[np.ndarray, float]:
    """Joint ``J = Sᵀ P T`` over (source class, target class), renormalised to sum 1.

    coupling: a dense P (N_s, N_t) or a :class:`SinkhornResult` (then ``cost`` is required
    and P is formed in row chunks, never whole). Also returns ``W_D = <P, C>`` (nan when no
    cost is given). Rows/columns of J follow the sorted unique labels of each side.
    Returns ``(J: (A, B) float64, w_d)``.
    """
    sc = np.unique(source_labels)
    tc = np.unique(target_labels)
    if isinstance(coupling, SinkhornResult):
        if cost is None:
            raise ValueError("label_joint: the cost matrix is needed with potentials")
        dev = cost.device
        if coupling.support is not None:
            # the mass lives on the support (the rest is below coupling.off_support_mass)
            rows, cols, c_vals = coupling.support
            fn, gn = coupling.f.cpu().numpy(), coupling.g.cpu().numpy()
            mass = np.exp((fn[rows] + gn[cols] - c_vals) / coupling.epsilon)
            si = np.searchsorted(sc, np.asarray(source_labels))[rows]
            ti = np.searchsorted(tc, np.asarray(target_labels))[cols]
            j = np.bincount(si * len(tc) + ti, weights=mass,
                            minlength=len(sc) * len(tc)).reshape(len(sc), len(tc))
            total = j.sum()
            if not total > 0:
                raise ValueError("coupling has no mass (all entries underflowed)")
            return j / total, float(mass @ c_vals)
        t_onehot = _one_hot(target_labels, tc, torch.float64, dev)
        s_idx = torch.from_numpy(np.searchsorted(sc, source_labels)).to(dev)
        joint = torch.zeros((len(sc), len(tc)), dtype=torch.float64, device=dev)
        w_d = torch.zeros((), dtype=torch.float64, device=dev)
        for lo, c, p in _coupling_rows(cost, coupling.f, coupling.g, coupling.epsilon, chunk_rows):
            w_d += (p * c).sum()
            joint.index_add_(0, s_idx[lo:lo + p.shape[0]], p @ t_onehot)
        w_d_val = float(w_d.item())
    else:
        p = coupling.double()
        dev = p.device
        s1 = _one_hot(source_labels, sc, torch.float64, dev)
        t1 = _one_hot(target_labels, tc, torch.float64, dev)
        joint = s1.T @ p @ t1
        w_d_val = float((p * cost.double()).sum().item()) if cost is not None else math.nan
    j = joint.cpu().numpy()
    total = j.sum()
    if not total > 0:
        raise ValueError("coupling has no mass (all entries underflowed)")
    return j / total, w_d_val


def conditional_entropy(joint: np.ndarray) -> float:
    r"""``H(Y_t | Y_s) = -Σ_ab J_ab ln(J_ab / Σ_b' J_ab')`` in nats, with 0·ln 0 = 0.

    joint: (A, B) non-negative, summing to 1 (source classes × target classes).
    Bounds: 0 ≤ H ≤ ln B.
    """
    j = np.asarray(joint, dtype=np.float64)
    row = j.sum(1, keepdims=True)
    mask = j > 0
    ratio = np.divide(j, np.broadcast_to(row, j.shape), out=np.ones_like(j), where=mask)
    return float(-(j[mask] * np.log(ratio[mask])).sum())


# --------------------------------------------------------------------------- the score


def _torch_features(x: Any, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device=device, dtype=dtype)


def _index(x: Any, idx: np.ndarray) -> Any:
    if isinstance(x, torch.Tensor):
        return x[torch.from_numpy(idx).to(x.device)]
    return x[idx]


def _kmeans(x: torch.Tensor, m: int, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
    (labels in 0..m-1 per point) that :func:`sinkhorn_potentials` corrects between."""
    f: torch.Tensor
    g: torch.Tensor
    epsilon: float
    source_groups: torch.Tensor
    target_groups: torch.Tensor


def coarse_potentials(fs: torch.Tensor, ft: torch.Tensor, epsilon: float, *, scale: float = 1.0,
                      clusters: int | None = None, min_points: int = 2048,
                      groups: int = 64) -> CoarseStart | None:
    """Multiscale warm start for :func:`sinkhorn_potentials`: ``(f, g, ε_start)`` or None.

    Sinkhorn is slow when the points form well-separated groups (classes do): mass moves
    between groups through exponentially small kernel entries. Here each side is clustered
    (k-means, ``clusters`` centres, default min(256, N/25)), the OT problem between the
    centres (cost ``scale``·||μ_a - μ_b||², weights = cluster sizes) is solved down to
    ``ε_start`` = an eighth of the mean within-cluster squared distance (scaled), and every
    point inherits its cluster's potential. The fine solve then starts at ``ε_start`` with
    the groups already balanced (Schmitzer 2019, multiscale ε-scaling). None when the pools
    are smaller than ``min_points`` or the coarse solve does not converge. The clusters,
    merged into at most ``groups`` groups (k-means of the centres), also serve the solver's
    coarse corrections.
    fs: (N_s, D), ft: (N_t, D) — the sampled features of one repetition.
    """
    ns, nt = fs.shape[0], ft.shape[0]
    if min(ns, nt) < min_points:
        return None
    m = clusters or min(256, min(ns, nt) // 25)
    x, y = fs.float(), ft.float()
    mean = torch.cat([x, y]).mean(0, keepdim=True)
    x, y = x - mean, y - mean
    ls, cs, ms = _kmeans(x, m)
    lt, ct, mt = _kmeans(y, m)
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
    gs = _kmeans(ms, q)[0][ls]
    gt = _kmeans(mt, q)[0][lt]
    return CoarseStart(fc[ls], gc[lt], eps_start, gs, gt)


def otce_repetition(fs: torch.Tensor, ys: np.ndarray, ft: torch.Tensor, yt: np.ndarray, *,
                    epsilon: float = 0.1, solver: str = "sinkhorn", cost_scale: str = "none",
                    tol: float = 1e-3, max_iter: int = 20_000, eps_scaling: float = 4.0,
                    multiscale: bool = True) -> dict[str, Any]:
    """One SEG-OTCE repetition on already-sampled pixels ``fs: (N_s, D)``, ``ft: (N_t, D)``.

    ``multiscale`` warm-starts Sinkhorn from a clustered problem (:func:`coarse_potentials`;
    same fixed point, fewer iterations at N ≳ 2000).
    Returns ``{score, w_t, w_d, iterations, converged, marginal_error}``; score = -W_T.
    """
    cost = squared_euclidean_cost(fs, ft)
    scale = 1.0
    if cost_scale == "mean":
        scale = 1.0 / float(cost.mean().clamp_min(torch.finfo(cost.dtype).tiny))
        cost *= scale
    elif cost_scale == "max":
        scale = 1.0 / float(cost.max().clamp_min(torch.finfo(cost.dtype).tiny))
        cost *= scale
    elif cost_scale != "none":
        raise ValueError(f"cost_scale must be one of {COST_SCALES}, got {cost_scale!r}")
    if solver == "sinkhorn":
        init = coarse_potentials(fs, ft, epsilon, scale=scale) if multiscale else None
        pot = sinkhorn_potentials(cost, epsilon, tol=tol, max_iter=max_iter, eps_scaling=eps_scaling,
                                  init=init, clusters=None if init is None else
                                  (init.source_groups, init.target_groups))
        joint, w_d = label_joint(pot, ys, yt, cost=cost)
        iterations, converged, merr = pot.iterations, pot.converged, pot.marginal_error
    elif solver == "emd":
        p = emd_coupling(cost)
        joint, w_d = label_joint(p, ys, yt, cost=cost)
        iterations, converged, merr = 0, True, 0.0
    else:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    w_t = conditional_entropy(joint)
    return {"score": -w_t, "w_t": w_t, "w_d": w_d, "iterations": iterations,
            "converged": converged, "marginal_error": merr}


def otce_score(source_features: Any, source_labels: Any, target_features: Any,
               target_labels: Any, n_pixels: int = 10_000, repetitions: int = 10,
               epsilon: float = 0.1, seed: int = 0, ignore_index: int | None = 255,
               solver: str = "sinkhorn", sampling: str = "uniform", *,
               cost_scale: str = "none", tol: float = 1e-3, max_iter: int = 20_000,
               eps_scaling: float = 4.0, device: str | torch.device | None = None,
               dtype: str | torch.dtype = "float32", memory_budget: int | None = None,
               repetition_ids: Sequence[int] | None = None) -> OTCEResult:
    """SEG-OTCE transferability of a source model to a target (higher = more transferable).

    source_features: (P_s, D), target_features: (P_t, D) — float16/32/64, numpy or torch,
    CPU or GPU; source_labels: (P_s,), target_labels: (P_t,) integer. Pixels labelled
    ``ignore_index`` are dropped first. For each repetition k in ``repetition_ids``
    (default ``range(repetitions)``) N = ``n_pixels`` pixels per side are drawn with the
    generator seeded by ``(seed, k)``, the entropic coupling (``epsilon``; ``solver="emd"``
    for the exact one) of the squared-Euclidean cost is solved, and the score
    ``-H(Y_t|Y_s)`` of its label joint is recorded. A pool smaller than N is used whole
    (``used_whole_*``). ``device`` defaults to the features' device; ``dtype`` of the cost
    and kernel is float32 (float64 for validation). ``memory_budget`` (bytes, default the
    free memory of the device) bounds the N×N working set; a bigger N is a ValueError.
    """
    if n_pixels < 1:
        raise ValueError(f"n_pixels must be >= 1, got {n_pixels}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    fs_all, ys_all = prepare_side(source_features, source_labels, ignore_index, "source")
    ft_all, yt_all = prepare_side(target_features, target_labels, ignore_index, "target")
    if fs_all.shape[1] != ft_all.shape[1]:
        raise ValueError(f"feature dimension differs: source D={fs_all.shape[1]}, "
                         f"target D={ft_all.shape[1]}")
    ids = list(range(repetitions)) if repetition_ids is None else [int(k) for k in repetition_ids]
    if not ids:
        raise ValueError("repetitions must be >= 1")
    if device is None:
        device = fs_all.device if isinstance(fs_all, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    tdtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    ns, nt = min(n_pixels, len(ys_all)), min(n_pixels, len(yt_all))
    need = working_set_bytes(ns, nt, torch.finfo(tdtype).bits // 8)
    budget = memory_budget if memory_budget is not None else _available_bytes(device)
    if need > budget:
        raise ValueError(f"n_pixels={n_pixels}: the N×N working set needs {need / 2**30:.2f} GiB "
                         f"but the memory budget is {budget / 2**30:.2f} GiB; lower n_pixels")
    rows = []
    for k in ids:
        rng_s, rng_t = _repetition_rngs(seed, k)
        i = sample_indices(ys_all, n_pixels, rng_s, sampling)
        j = sample_indices(yt_all, n_pixels, rng_t, sampling)
        fs = _torch_features(_index(fs_all, i), device, tdtype)
        ft = _torch_features(_index(ft_all, j), device, tdtype)
        rows.append(otce_repetition(fs, ys_all[i], ft, yt_all[j], epsilon=epsilon, solver=solver,
                                    cost_scale=cost_scale, tol=tol, max_iter=max_iter,
                                    eps_scaling=eps_scaling))
    scores = np.array([r["score"] for r in rows])
    return OTCEResult(
        score=float(scores.mean()), std=float(scores.std()), scores=scores,
        w_t=np.array([r["w_t"] for r in rows]), w_d=np.array([r["w_d"] for r in rows]),
        iterations=np.array([r["iterations"] for r in rows], dtype=np.int64),
        converged=np.array([r["converged"] for r in rows], dtype=bool),
        n_source=ns, n_target=nt, pool_source=len(ys_all), pool_target=len(yt_all),
        used_whole_source=len(ys_all) <= n_pixels, used_whole_target=len(yt_all) <= n_pixels,
        marginal_error=np.array([r["marginal_error"] for r in rows]),
        repetition_ids=np.array(ids, dtype=np.int64),
        settings={"n_pixels": n_pixels, "epsilon": epsilon, "seed": seed, "solver": solver,
                  "sampling": sampling, "cost_scale": cost_scale, "tol": tol,
                  "max_iter": max_iter, "ignore_index": ignore_index, "dtype": str(tdtype)},
    )


# --------------------------------------------------------------------------- CVPR'21 combination


def fit_otce_weights(w_d: Sequence[float], w_t: Sequence[float],
                     accuracy: Sequence[float]) -> tuple[float, float, float]:
    """Least-squares fit of the CVPR'21 OTCE combination ``acc ≈ λ1·W_D + λ2·W_T + b``.

    Inputs: one entry per (source, target) pair with known transfer accuracy (≥ 3 pairs).
    Returns ``(λ1, λ2, b)``. Explicit by design: the plain SEG-OTCE score never uses it.
    """
    wd, wt, acc = (np.asarray(x, dtype=np.float64) for x in (w_d, w_t, accuracy))
    if not (wd.shape == wt.shape == acc.shape) or wd.ndim != 1:
        raise ValueError("w_d, w_t and accuracy must be 1-D arrays of the same length")
    if wd.shape[0] < 3:
        raise ValueError(f"need at least 3 pairs with known accuracy, got {wd.shape[0]}")
    design = np.stack([wd, wt, np.ones_like(wd)], axis=1)
    coef, *_ = np.linalg.lstsq(design, acc, rcond=None)
    return float(coef[0]), float(coef[1]), float(coef[2])
