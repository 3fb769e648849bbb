"""Exact (ε = 0) optimal transport: POT's network simplex on a sparse set of candidate
edges, grown until the duals prove optimality on the full cost.

Most of the N_s·N_t edges of a transport between point clouds never carry mass: the
optimum pairs each point with one of its near neighbours. ``network_simplex`` starts from
each point's ``k`` nearest points on the other side (plus a north-west-corner path, so the
sparse problem is always feasible), solves it with POT's sparse network simplex, and checks
the duals ``α, β`` on every entry of the cost in one chunked pass: where some reduced cost
``C_ij - α_i - β_j`` is negative (beyond the rounding of C) the offending rows' most negative
entries are added and the simplex restarts from the duals. When no entry is negative the
sparse optimum is the optimum of the full problem (LP duality).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import ot
import torch
from ot.lp.emd_wrap import check_result, emd_c_sparse

from segotce_ray.ot.result import Coupling
from segotce_ray.ot.support import balance_gauge, c_transform, cost_scale_of, reduced_costs


@dataclass
class ExactPlan:
    """An exact coupling as sparse flows: ``mass[e]`` from source ``rows[e]`` to target
    ``cols[e]`` at cost ``costs[e]``; ``alpha, beta`` optimal duals (float64); ``rounds``
    simplex solves; ``edges`` candidate edges of the last one; ``passes`` cost entries
    touched / (N_s·N_t)."""

    rows: np.ndarray
    cols: np.ndarray
    mass: np.ndarray
    costs: np.ndarray
    alpha: torch.Tensor
    beta: torch.Tensor
    rounds: int
    edges: int
    passes: float
    solver: str = "emd"

    def coupling(self) -> Coupling:
        """The plan as the solvers' one result type (``epsilon = 0``: exact)."""
        return Coupling(f=self.alpha, g=self.beta, epsilon=0.0, iterations=self.rounds,
                        converged=True, marginal_error=0.0,
                        support=(self.rows, self.cols, self.costs), mass=self.mass,
                        passes=self.passes, solver=self.solver)


def north_west_corner(ns: int, nt: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``ns + nt - 1`` edges of the north-west-corner transport of uniform masses."""
    # source i covers [i/ns, (i+1)/ns), target j [j/nt, (j+1)/nt): an edge where they overlap
    cuts = np.unique(np.concatenate([np.arange(ns) * nt, np.arange(nt) * ns]))  # in units 1/(ns·nt)
    return cuts // nt, cuts // ns


def nearest_edges(cost: torch.Tensor, k: int, chunk_rows: int = 1024, duals=None):
    """Each source's ``k`` cheapest targets and each target's ``k`` cheapest sources, in one
    chunked pass — cheapest in reduced cost ``C_ij - f_i - g_j`` when ``duals = (f, g)`` are
    given. Returns ``(rows, cols)`` int64 numpy (with repeats)."""
    ns, nt = cost.shape
    if duals is None:
        duals = (torch.zeros(ns, dtype=torch.float64), torch.zeros(nt, dtype=torch.float64))
    k_r, k_c = min(k, nt), min(k, ns)
    rows, cols = [], []
    best_v = torch.full((k_c, nt), math.inf, dtype=cost.dtype, device=cost.device)
    best_i = torch.zeros((k_c, nt), dtype=torch.long, device=cost.device)
    for lo, _, c in reduced_costs(cost, duals[0], duals[1], chunk_rows):
        idx = c.topk(k_r, dim=1, largest=False).indices
        rows.append(torch.arange(lo, lo + c.shape[0], device=cost.device)[:, None].expand_as(idx))
        cols.append(idx)
        kk = min(k_c, c.shape[0])
        cv, ci = c.topk(kk, dim=0, largest=False)
        v, pick = torch.cat([best_v, cv]).topk(k_c, dim=0, largest=False)
        best_i = torch.cat([best_i, ci + lo]).gather(0, pick)
        best_v = v
    rows.append(best_i)
    cols.append(torch.arange(nt, device=cost.device)[None, :].expand_as(best_i))
    return (torch.cat([r.reshape(-1) for r in rows]).cpu().numpy(),
            torch.cat([c.reshape(-1) for c in cols]).cpu().numpy())


def dual_violations(cost: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor, add: int,
                    exact: bool = True, chunk_rows: int = 64):
    """Edges to add where the duals are infeasible: every row with a reduced cost
    ``C_ij - α_i - β_j < -1e-9·max|C|`` gets its ``add`` most negative entries, every such
    column its most negative one. ``exact``: reduced costs in float64 from C's stored values
    (the simplex's duals are sums of edge costs along its tree); else in C's dtype with a
    per-row rounding allowance (cheaper; may miss violations below that allowance).
    Returns ``(rows, cols)`` — empty when no violation is found."""
    top = cost_scale_of(cost)
    dt = torch.float64 if exact else cost.dtype
    al, be = alpha.to(cost.device, dt), beta.to(cost.device, dt)
    slack = -1e-9 * top - (0.0 if exact else 4 * torch.finfo(dt).eps * (top + float(be.abs().max())))
    row_slack = slack - (0 if exact else 4 * torch.finfo(dt).eps) * al.abs()
    nt = cost.shape[1]
    col_min = torch.full((nt,), math.inf, dtype=dt, device=cost.device)
    buf = torch.empty((min(chunk_rows, cost.shape[0]), nt), dtype=dt, device=cost.device)
    rows, cols = [], []
    for lo in range(0, cost.shape[0], chunk_rows):
        c = cost[lo:lo + chunk_rows]
        red = torch.sub(c.to(dt) if exact else c, al[lo:lo + chunk_rows, None], out=buf[:c.shape[0]])
        red.sub_(be[None, :])
        bad = (red.amin(1) < row_slack[lo:lo + chunk_rows]).nonzero().squeeze(1)
        if bad.numel():
            idx = red[bad].topk(min(add, nt), dim=1, largest=False).indices
            rows.append((bad + lo)[:, None].expand_as(idx).reshape(-1))
            cols.append(idx.reshape(-1))
        torch.minimum(col_min, red.amin(0), out=col_min)
    bad_c = (col_min < slack - (0 if exact else 4 * torch.finfo(dt).eps) * al.abs().max()).nonzero().squeeze(1)
    if bad_c.numel():  # each offending column's most negative entry (a second, narrow pass)
        best = torch.full((bad_c.numel(),), math.inf, dtype=dt, device=cost.device)
        arg = torch.zeros(bad_c.numel(), dtype=torch.long, device=cost.device)
        for lo in range(0, cost.shape[0], chunk_rows):
            red_c = cost[lo:lo + chunk_rows, bad_c].to(dt) - al[lo:lo + chunk_rows, None] - be[bad_c]
            m, i = red_c.min(0)
            better = m < best
            best, arg = torch.where(better, m, best), torch.where(better, i + lo, arg)
        rows.append(arg)
        cols.append(bad_c)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return torch.cat(rows).cpu().numpy(), torch.cat(cols).cpu().numpy()


def dense_simplex(cost: torch.Tensor, duals=None, rounds: int = 0, passes: float = 0.0) -> ExactPlan:
    """POT's dense network simplex ``ot.emd`` (float64 copy of C), warm-started from
    ``duals`` when given. The fallback for small or very degenerate problems."""
    ns, nt = cost.shape
    m = cost.double().cpu().numpy()
    init = None if duals is None else tuple(d.cpu().numpy() for d in duals)
    g, log = ot.emd(np.full(ns, 1.0 / ns), np.full(nt, 1.0 / nt), m, numItermax=10**9,
                    log=True, potentials_init=init)
    if log.get("result_code", 1) != 1:
        raise RuntimeError(f"network simplex failed: {log.get('warning')}")
    fr, fc = np.nonzero(g)
    return ExactPlan(fr.astype(np.int64), fc.astype(np.int64), g[fr, fc], m[fr, fc],
                     *balance_gauge(torch.from_numpy(log["u"]), torch.from_numpy(log["v"])),
                     rounds + 1, ns * nt, passes + 2)


def _sparse_round(cost, keys, a, b, duals, add: int, max_iter: int):
    """One sparse simplex solve on ``keys`` (row·N_t + col) and its dual check: returns
    ``(flows (rows, cols, mass), duals (α, β), new edges (rows, cols), passes)``."""
    nt = cost.shape[1]
    r, c = keys // nt, keys % nt
    cv = cost[torch.from_numpy(r).to(cost.device), torch.from_numpy(c).to(cost.device)]
    alpha, beta = (None, None) if duals is None else (d.numpy() for d in duals)
    fr, fc, mass, _, alpha, beta, code = emd_c_sparse(
        a, b, r.astype(np.uint64), c.astype(np.uint64), cv.double().cpu().numpy(), max_iter,
        alpha, beta)
    if code != 1:
        raise RuntimeError(f"network simplex failed: {check_result(code)}")
    al, be = balance_gauge(torch.from_numpy(alpha), torch.from_numpy(beta))
    # rounds check in C's dtype; the last word is a float64 check
    new, passes = dual_violations(cost, al, be, add, exact=False), 1
    if not len(new[0]):
        new, passes = dual_violations(cost, al, be, add, exact=True), 2
    return (fr.astype(np.int64), fc.astype(np.int64), mass), (al, be), new, passes


def network_simplex(cost: torch.Tensor, *, k: int = 8, add: int = 32, max_rounds: int = 30,
                    max_iter: int = 10**9, duals=None, multiscale_above: int = 2000,
                    dense_below: int = 1500, max_degree: float = 64.0,
                    dense_fallback_entries: float = 4e6) -> ExactPlan:
    """Exact OT with uniform marginals for ``cost: (N_s, N_t)`` (any device; solved on CPU).

    ``duals`` = ``(f, g)``: a guess of the optimal duals; the first edges are then the
    smallest reduced costs, which follow the transport's global shifts that plain nearest
    neighbours miss. By default the guess comes from a subsample (:func:`subsample_duals`)
    when the problem has more than ``multiscale_above`` points per side. Problems with at
    most ``dense_below`` points per side go to the dense simplex. So do edge sets that grow
    past ``max_degree`` edges per point (near-duplicate points make many near-optima) when the
    problem has at most ``dense_fallback_entries`` entries — the dense simplex holds a float64
    copy of C, the dense plan and its arcs, several times the 3·N²·4-byte working set, so a
    bigger problem goes on growing its sparse edge set instead — and any problem after
    ``max_rounds`` solves; the dense simplex is warm-started from the current duals. Raises
    RuntimeError if a simplex reports a failure.
    """
    ns, nt = cost.shape
    if max(ns, nt) <= dense_below:
        return dense_simplex(cost, duals)
    a, b = np.full(ns, 1.0 / ns), np.full(nt, 1.0 / nt)
    if duals is None and min(ns, nt) > multiscale_above:
        duals = subsample_duals(cost)
    r, c = nearest_edges(cost, k, duals=duals)
    nw_r, nw_c = north_west_corner(ns, nt)
    keys = np.unique(np.concatenate([r * nt + c, nw_r * nt + nw_c]))
    passes, sparse_duals = 1.0, None
    for rounds in range(1, max_rounds + 1):
        flows, sparse_duals, (new_r, new_c), p = _sparse_round(cost, keys, a, b, sparse_duals, add,
                                                               max_iter)
        passes += p
        if not len(new_r):
            fr, fc, mass = flows
            costs = cost[torch.from_numpy(fr).to(cost.device), torch.from_numpy(fc).to(cost.device)]
            return ExactPlan(fr, fc, mass, costs.double().cpu().numpy(), *sparse_duals,
                             rounds, len(keys), passes)
        keys = np.union1d(keys, new_r * nt + new_c)
        if len(keys) > max_degree * (ns + nt) / 2 and ns * nt <= dense_fallback_entries:
            break
    return dense_simplex(cost, sparse_duals, rounds, passes)


def subsample_duals(cost: torch.Tensor, factor: int = 4, dense_below: int = 1500):
    """A guess of the exact duals from a smaller problem: every ``factor``-th point of each
    side (a fixed stride: deterministic), solved exactly (recursively, by
    :func:`network_simplex`; POT's dense ``ot.emd`` below ``dense_below`` points), then
    extended to all points by hard c-transforms (``f_i = min_{j∈sub} C_ij - β_j``,
    ``g_j = min_i C_ij - f_i``). Returns ``(f, g)`` float64."""
    ns, nt = cost.shape
    si = torch.arange(0, ns, factor, device=cost.device)
    ti = torch.arange(0, nt, factor, device=cost.device)
    sub = cost[::factor, ::factor].contiguous()  # = cost[si][:, ti], without index tensors
    if max(len(si), len(ti)) <= dense_below:
        m = sub.double().cpu().numpy()
        _, log = ot.emd(np.full(len(si), 1.0 / len(si)), np.full(len(ti), 1.0 / len(ti)), m,
                        numItermax=10**9, log=True)
        beta = torch.from_numpy(log["v"]).to(cost.device)
    else:
        beta = network_simplex(sub).beta.to(cost.device)
    pot = torch.full((nt,), -math.inf, dtype=torch.float64, device=cost.device)
    pot[ti] = beta  # -inf elsewhere: only the subsampled targets take part in the min
    f = c_transform(cost, pot, 1)
    return f, c_transform(cost, f, 0)
