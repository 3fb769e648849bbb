"""Dense log-domain Sinkhorn on a batch of problems: the GPU path.

The K repetitions of a (source, target) pair are K independent transport problems of the
same size; on a GPU one batched kernel over ``(K, N_s, N_t)`` keeps the device busy where
one N² problem at a time may not. Each problem runs its own ε schedule (from its cost
spread / ``eps_scaling`` down to ε, or from given potentials — e.g. exact duals — at a given
ε) in the log domain::

    f_i ← f_i + ε log a_i - ε LSE_j((f_i + g_j - C_ij)/ε)      (and the same for g)

so nothing under- or overflows whatever ε. The reduced costs ``C_ij - f_i - g_j`` are formed
in row chunks from the stored cost and the float64 potentials: in float32 during the
warm-up stages, in float64 in the final stage (a float32 exponent at costs ~10³ and small ε
is off by more than the tolerance). The potentials stay float64 throughout. A problem stops
at its own convergence (its potentials then stay fixed while the others go on), so a batch
gives each problem the result it gets alone. The result of each problem is verified on the
full coupling in float64.
"""

from __future__ import annotations

import math

import torch

from segotce_ray.ot.result import Coupling
from segotce_ray.ot.scaling import Overrelaxation
from segotce_ray.ot.support import c_transform_start, full_marginals


def _lse(cost, f, g, eps, dim: int, dtype, chunk: int) -> torch.Tensor:
    """``LSE over dim of (f_i + g_j - C_ij)/ε`` for a batch ``cost: (B, N_s, N_t)``,
    ``f: (B, N_s)``, ``g: (B, N_t)``, ``eps: (B,)`` float64, computed in ``dtype`` in row
    chunks. dim = 2: one value per row (B, N_s); dim = 1: one per column (B, N_t)."""
    fd, gd = f.to(dtype), g.to(dtype)
    inv = (1.0 / eps).to(dtype)[:, None, None]
    parts = []
    for lo in range(0, cost.shape[1], chunk):
        c = cost[:, lo:lo + chunk].to(dtype)
        r = torch.sub(fd[:, lo:lo + chunk, None], c).add_(gd[:, None, :]).mul_(inv)
        parts.append(torch.logsumexp(r, dim=dim))
    if dim == 2:
        return torch.cat(parts, 1).double()
    return torch.logsumexp(torch.stack(parts), dim=0).double()


class _Batch:
    """Per-problem state of one batched solve: ε, stage, iterations, error, done."""

    def __init__(self, cost, epsilon, eps_scaling, init, tol, omega):
        b, ns, nt = cost.shape
        dev = cost.device
        self.epsilon, self.eps_scaling, self.tol = float(epsilon), eps_scaling, tol
        self.log_a = torch.full((b, ns), -math.log(ns), dtype=torch.float64, device=dev)
        self.log_b = torch.full((b, nt), -math.log(nt), dtype=torch.float64, device=dev)
        self.b = 1.0 / nt
        if init is None:
            starts = [c_transform_start(cost[k]) for k in range(b)]
            self.f = torch.stack([s[0] for s in starts])
            self.g = torch.stack([s[1] for s in starts])
            ratio = eps_scaling if eps_scaling and eps_scaling > 1 else math.inf
            e0 = [max(self.epsilon, s[2] / ratio) for s in starts]
        else:
            self.f, self.g = init[0].double().to(dev).clone(), init[1].double().to(dev).clone()
            e0 = [max(self.epsilon, float(init[2]))] * b
        self.eps = torch.tensor(e0, dtype=torch.float64)  # on the CPU: read every check
        self.iterations = torch.zeros(b, dtype=torch.long)
        self.error = torch.full((b,), math.inf, dtype=torch.float64)
        self.done = torch.zeros(b, dtype=torch.bool)
        self.stages = torch.ones(b, dtype=torch.long)
        self.omega = omega
        self.relax = [Overrelaxation(omega) for _ in range(b)]
        self.w = torch.ones(b, dtype=torch.float64)

    def final(self) -> torch.Tensor:
        return self.eps <= self.epsilon * (1 + 1e-9)

    def groups(self, dtype_warm, dtype_final):
        """Active problems grouped by the dtype of their stage: ``[(dtype, index list)]``."""
        fin = self.final()
        out = []
        for dt, mask in ((dtype_warm, ~fin), (dtype_final, fin)):
            idx = (mask & ~self.done).nonzero().squeeze(1).tolist()
            if idx:
                out.append((dt, idx))
        return out

    def finish_stage(self, k: int) -> None:
        """Problem k met its stage tolerance: next ε, or done after the final stage."""
        if bool(self.final()[k]):
            self.done[k] = True
            return
        self.eps[k] = max(self.epsilon, float(self.eps[k]) / self.eps_scaling)
        self.stages[k] += 1
        self.relax[k] = Overrelaxation(self.omega)
        self.w[k] = 1.0


def _iterate(cost, st: _Batch, idx: list[int], dtype, chunk: int, check: bool) -> None:
    """One Sinkhorn iteration (f then g) of problems ``idx`` (all at once when they are the
    whole batch, else one by one on views of the cost), over-relaxed by each problem's ω
    except on a ``check``: a plain f update, after which the column error of
    ``(new f, old g)`` is the coupling's whole marginal error and decides whether the
    problem's stage is over (then its g is kept)."""
    whole = len(idx) == cost.shape[0]
    for sel in ([slice(None)] if whole else [slice(k, k + 1) for k in idx]):
        c, eps = cost[sel], st.eps[sel].to(cost.device)
        w = torch.ones_like(eps) if check else st.w[sel].to(cost.device)
        step = (w * eps)[:, None]
        f = st.f[sel] + step * (st.log_a[sel] - _lse(c, st.f[sel], st.g[sel], eps, 2, dtype, chunk))
        lse_col = _lse(c, f, st.g[sel], eps, 1, dtype, chunk)
        g = st.g[sel] + step * (st.log_b[sel] - lse_col)
        st.f[sel] = f
        ks = list(range(cost.shape[0])) if whole else [sel.start]
        st.iterations[ks] += 1
        if not check:
            st.g[sel] = g
            continue
        err = (lse_col.exp() - st.b).abs().sum(1).cpu()
        for j, k in enumerate(ks):
            st.error[k] = err[j]
            tol = 0.5 * st.tol if bool(st.final()[k]) else max(st.tol, 1e-3)
            if float(err[j]) < tol:
                st.finish_stage(k)
                continue
            st.g[k] = g[j]
            st.w[k] = st.relax[k].update(float(err[j]))


def log_sinkhorn_batch(cost: torch.Tensor, epsilon: float, *, tol: float = 1e-3,
                       max_iter: int = 20_000, eps_scaling: float = 4.0, init=None,
                       check_every: int = 10, chunk_rows: int = 1024, omega: float = 1.8,
                       dtype: torch.dtype = torch.float32,
                       final_dtype: torch.dtype = torch.float64) -> list[Coupling]:
    """Entropic couplings at ``epsilon`` of a batch ``cost: (B, N_s, N_t)`` (uniform
    marginals), one :class:`Coupling` per problem (dense: no support).

    ``init`` = ``(f (B, N_s), g (B, N_t), ε_start)`` starts every problem from those
    potentials at ``ε_start`` (e.g. exact duals and a few ε); else each starts from its
    c-transform potentials at its cost spread / ``eps_scaling``. Warm-up stages stop at a
    marginal error of ``max(tol, 1e-3)``, the final one at ``tol / 2``; ``max_iter``
    iterations per problem over all stages. ``dtype`` / ``final_dtype``: arithmetic of the
    reduced costs in the warm-up / final stages; ``omega``: over-relaxation of the updates
    between checks (with the safeguard of :class:`~segotce_ray.ot.scaling.Overrelaxation`).
    """
    if cost.dim() != 3:
        raise ValueError(f"cost must be (B, N_s, N_t), got shape {tuple(cost.shape)}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    st = _Batch(cost, epsilon, eps_scaling, init, tol, omega)
    it = 0
    while not bool(st.done.all()) and it < max_iter:
        check = (it + 1) % check_every == 0
        for dt, idx in st.groups(dtype, final_dtype):
            _iterate(cost, st, idx, dt, chunk_rows, check)
        it += 1
    out = []
    for k in range(cost.shape[0]):
        row, col = full_marginals(cost[k], st.f[k], st.g[k], float(epsilon))
        ns, nt = cost.shape[1:]
        err = float((row - 1.0 / ns).abs().sum() + (col - 1.0 / nt).abs().sum())
        fin = bool(st.final()[k])
        out.append(Coupling(f=st.f[k].clone(), g=st.g[k].clone(), epsilon=float(epsilon),
                            iterations=int(st.iterations[k]), converged=fin and err < tol,
                            marginal_error=err, stages=int(st.stages[k]),
                            passes=2.0 * int(st.iterations[k]) + 3, solver="sinkhorn-batch"))
    return out
