"""Chunked passes over the cost: c-transforms, reduced costs, sparse supports and the
full-kernel marginals that every solver's verification uses.

A sparse support is ``(rows, cols, costs, indptr)``: the kept entries in CSR order (numpy
int64 / float64) and the row pointer. No pass here holds more than a row chunk of N_t
entries beside the cost.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def cost_scale_of(cost: torch.Tensor) -> float:
    """``max |C|`` without an N² temporary (``cost.abs()`` would make one)."""
    return max(float(cost.max()), -float(cost.min()), 0.0)


def balance_gauge(f: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f + s, g - s)`` with ``s`` making both means equal: the same coupling and reduced
    costs (potentials are defined up to that shift), but no large common offset — the
    network simplex returns duals offset by ~10⁶ at costs ~10², which would swamp every
    float32 reduced cost and rounding allowance computed from them."""
    s = 0.5 * (g.mean() - f.mean())
    return f + s, g - s


def c_transform(cost: torch.Tensor, pot: torch.Tensor, dim: int, chunk: int = 512) -> torch.Tensor:
    """Hard c-transform in row chunks, float64.

    dim = 1: ``f_i = min_j (C_ij - pot_j)``; dim = 0: ``g_j = min_i (C_ij - pot_i)``.
    One chunk buffer is reused (a fresh temporary per chunk left the allocator holding
    hundreds of MB at N = 10⁴).
    """
    p = pot.to(cost.device, cost.dtype)
    ns, nt = cost.shape
    buf = torch.empty((min(chunk, ns), nt), dtype=cost.dtype, device=cost.device)
    if dim == 1:
        out = torch.empty(ns, dtype=cost.dtype, device=cost.device)
        for lo in range(0, ns, chunk):
            r = torch.sub(cost[lo:lo + chunk], p[None, :], out=buf[:min(chunk, ns - lo)])
            torch.amin(r, 1, out=out[lo:lo + chunk])
        return out.double()
    out = torch.full((nt,), math.inf, dtype=cost.dtype, device=cost.device)
    for lo in range(0, ns, chunk):
        r = torch.sub(cost[lo:lo + chunk], p[lo:lo + chunk, None], out=buf[:min(chunk, ns - lo)])
        torch.minimum(out, r.amin(0), out=out)
    return out.double()


def c_transform_start(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The c-transform potentials ``f_i = min_j C_ij``, ``g_j = min_i (C_ij - f_i)`` and the
    cost spread ``mean(C) - mean(f) - mean(g)``: how far a typical entry lies above the
    cheapest ones (the scale an ε schedule starts from)."""
    f = cost.min(1).values.double()
    g = c_transform(cost, f, 0)
    return f, g, float((cost.mean() - f.mean() - g.mean()).item())


def reduced_costs(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, chunk_rows: int = 512):
    """Yield ``(lo, hi, r)`` with ``r = C[lo:hi] - f_i - g_j`` in C's dtype, row chunk by chunk
    (``r`` is one reused buffer: valid until the next chunk)."""
    fr, gr = f.to(cost.device, cost.dtype), g.to(cost.device, cost.dtype)
    buf = torch.empty((min(chunk_rows, cost.shape[0]), cost.shape[1]), dtype=cost.dtype,
                      device=cost.device)
    for lo in range(0, cost.shape[0], chunk_rows):
        hi = min(cost.shape[0], lo + chunk_rows)
        r = torch.sub(cost[lo:hi], fr[lo:hi, None], out=buf[:hi - lo])
        yield lo, hi, r.sub_(gr[None, :])


def coupling_rows(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                  chunk_rows: int):
    """Yield ``(lo, C[lo:hi] float64, P[lo:hi])`` with ``P_ij = exp((f_i + g_j - C_ij)/ε)``.

    The exponent is formed in float64 from C's stored values, so the coupling carries no
    rounding of the potentials (a float32 exponent at costs ~10³ and ε = 0.1 is off by
    ~10⁻³ relative); only ``chunk_rows`` rows exist at a time.
    """
    g_row = g.to(cost.device)[None, :]
    for lo in range(0, cost.shape[0], chunk_rows):
        c = cost[lo:lo + chunk_rows].double()
        p = torch.sub(f[lo:lo + chunk_rows].to(cost.device)[:, None], c).add_(g_row)
        yield lo, c, p.mul_(1.0 / eps).exp_()


def full_marginals(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                   chunk_rows: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column sums of the full coupling (float64, row chunks)."""
    row = torch.empty(cost.shape[0], dtype=torch.float64, device=cost.device)
    col = torch.zeros(cost.shape[1], dtype=torch.float64, device=cost.device)
    for lo, _, p in coupling_rows(cost, f, g, eps, chunk_rows):
        row[lo:lo + p.shape[0]] = p.sum(1)
        col += p.sum(0)
    return row, col


def csr_support(rows: torch.Tensor, cols: torch.Tensor, cost: torch.Tensor):
    """``(rows, cols, costs, indptr)`` from row-major COO index tensors of ``cost``."""
    ns = cost.shape[0]
    indptr = np.zeros(ns + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows.cpu().numpy(), minlength=ns), out=indptr[1:])
    return (rows.cpu().numpy(), cols.cpu().numpy(),
            cost[rows, cols].double().cpu().numpy(), indptr)


def reduced_cost_support(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                         theta: float, max_nnz: float, chunk_rows: int = 512):
    """Sparse support from reduced costs ``r_ij = C_ij - f_i - g_j``, without a kernel.

    Keeps the entries within ``θ·ε`` of their row's or their column's smallest reduced cost:
    the entries whose coupling mass, once rows (columns) are renormalised, is within ``e^-θ``
    of the largest mass of their row (column). Two chunked passes over C (minima, then the
    mask), no exponentials. Returns the CSR support, or None when it would have more than
    ``max_nnz`` entries (the caller then works on the dense kernel).
    """
    ns, nt = cost.shape
    row_min = torch.empty(ns, dtype=cost.dtype, device=cost.device)
    col_min = torch.full((nt,), math.inf, dtype=cost.dtype, device=cost.device)
    for lo, hi, r in reduced_costs(cost, f, g, chunk_rows):
        row_min[lo:hi] = r.min(1).values
        torch.minimum(col_min, r.min(0).values, out=col_min)
    band = float(theta * eps)
    rows_l, cols_l, nnz = [], [], 0
    for lo, hi, r in reduced_costs(cost, f, g, chunk_rows):
        keep = (r <= (row_min[lo:hi, None] + band)) | (r <= (col_min[None, :] + band))
        rr, cc = keep.nonzero(as_tuple=True)
        nnz += rr.numel()
        if nnz > max_nnz:
            return None
        rows_l.append(rr + lo)
        cols_l.append(cc)
    return csr_support(torch.cat(rows_l), torch.cat(cols_l), cost)


def support_marginals(cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
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
    scale = cost_scale_of(cost) + float(f.abs().max()) + float(g.abs().max())
    margin = 8 * torch.finfo(cost.dtype).eps * scale
    bound = 0.0
    rows_t, cols_t = torch.from_numpy(rows).to(cost.device), torch.from_numpy(cols).to(cost.device)
    for lo, hi, r in reduced_costs(cost, f, g, chunk_rows):
        s0, s1 = int(indptr[lo]), int(indptr[hi])
        r[rows_t[s0:s1] - lo, cols_t[s0:s1]] = math.inf
        m = r.min(1).values.double() - margin
        bound += float((nt * torch.exp(-m / eps)).sum())
    return torch.from_numpy(row), torch.from_numpy(col), bound
