"""The two kernel operators the scaling loop runs on: dense (torch, any device) and sparse
(scipy CSR on a fixed support, CPU).

Both hold the stabilised kernel ``K_ij = exp((f_i + g_j - C_ij)/ε)`` with the float64
potentials ``f, g`` absorbed, so the coupling is ``diag(u) K diag(v)`` with scalings
``u, v ≈ 1``; they expose the same small interface (``matvec``, ``rmatvec``, ``floor``,
``absorb``, ``aggregate``, ``potentials``, ``repair``) and count the kernel entries they touch.
"""

from __future__ import annotations

import numpy as np
import torch


def split_potential(pot: torch.Tensor, eps: float, dt: torch.dtype):
    """pot (float64) = hi + ε·log(scale): ``hi`` exactly representable in the kernel dtype
    (so the kernel's exponent carries no rounding of the potential), ``scale`` ≈ 1."""
    hi = pot.to(dt).double()
    return hi, torch.exp((pot - hi) / eps)


class DenseKernel:
    """Dense absorbed kernel in ``dtype`` (C plus one N_s×N_t buffer)."""

    sparse = False

    def __init__(self, cost: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float,
                 dtype: torch.dtype, buffer: torch.Tensor | None = None):
        self.cost, self.eps, self.dtype = cost, float(eps), dtype
        ok = buffer is not None and buffer.dtype == dtype and buffer.shape == cost.shape
        self.kernel = buffer if ok else torch.empty(cost.shape, dtype=dtype, device=cost.device)
        self.tiny = torch.finfo(dtype).tiny
        self.big = 1e15
        self.entries = 0.0
        self.u0, self.v0 = self._absorb_potentials(f, g)

    def _absorb_potentials(self, f: torch.Tensor, g: torch.Tensor):
        self.f, u = split_potential(f, self.eps, self.dtype)
        self.g, v = split_potential(g, self.eps, self.dtype)
        k, f_d, g_d = self.kernel, self.f.to(self.dtype)[:, None], self.g.to(self.dtype)[None, :]
        # in row chunks: a float32 C against a float64 kernel would otherwise be promoted
        # to a whole float64 temporary (N²·8 bytes beyond the budget)
        for lo in range(0, k.shape[0], 256):
            part = k[lo:lo + 256]
            torch.sub(f_d[lo:lo + 256], self.cost[lo:lo + 256].to(self.dtype), out=part)
            part.add_(g_d).mul_(1.0 / self.eps).exp_()
        self.entries += k.numel()
        return u.to(self.dtype), v.to(self.dtype)

    def vec(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.cost.device, self.dtype)

    def matvec(self, v):
        self.entries += self.kernel.numel()
        return self.kernel @ v

    def rmatvec(self, u):
        self.entries += self.kernel.numel()
        return self.kernel.T @ u

    def floor(self, x):
        return x.clamp_min(self.tiny)

    def potentials(self, u, v) -> tuple[torch.Tensor, torch.Tensor]:
        return self.f + self.eps * torch.log(u.double()), self.g + self.eps * torch.log(v.double())

    def absorb(self, u, v):
        """Fold the scalings into the potentials and rebuild the kernel; new (u, v) ≈ 1."""
        return self._absorb_potentials(*self.potentials(u, v))

    def repair(self, u, v, kv, ktu, a: torch.Tensor, b: torch.Tensor):
        """Rows/columns whose kernel underflowed entirely get their exact log-domain
        c-transform, then everything is re-absorbed. Returns new ``(u, v)`` or None."""
        dead_r, dead_c = (kv <= 0).nonzero().squeeze(1), (ktu <= 0).nonzero().squeeze(1)
        if not dead_r.numel() and not dead_c.numel():
            return None
        f, g = self.potentials(u, v)
        eps = self.eps
        if dead_r.numel():
            f[dead_r] = eps * torch.log(a[dead_r]) - eps * torch.logsumexp(
                (g[None, :] - self.cost[dead_r].double()) / eps, dim=1)
        if dead_c.numel():
            g[dead_c] = eps * torch.log(b[dead_c]) - eps * torch.logsumexp(
                (f[:, None] - self.cost[:, dead_c].double()) / eps, dim=0)
        return self._absorb_potentials(f, g)

    def aggregate(self, u, v, ls: torch.Tensor, lt: torch.Tensor, m: int, mt: int) -> np.ndarray:
        """``P̄_cd = Σ_{i∈c, j∈d} u_i K_ij v_j`` over groups ``ls`` (N_s,), ``lt`` (N_t,)."""
        dev = self.kernel.device
        ls, lt = ls.to(dev), lt.to(dev)
        t1 = torch.zeros(self.kernel.shape[1], mt, dtype=self.dtype, device=dev)
        t1[torch.arange(self.kernel.shape[1], device=dev), lt] = v
        self.entries += self.kernel.numel()
        kt = self.kernel @ t1
        pbar = torch.zeros(m, mt, dtype=torch.float64, device=dev)
        pbar.index_add_(0, ls, (u[:, None] * kt).double())
        return pbar.cpu().numpy()

    def scale(self, u, v, x: np.ndarray, y: np.ndarray, ls: torch.Tensor, lt: torch.Tensor):
        dev = self.kernel.device
        xs = torch.from_numpy(x).to(dev)[ls.to(dev)]
        ys = torch.from_numpy(y).to(dev)[lt.to(dev)]
        return self._cast(u.double() * xs), self._cast(v.double() * ys)

    def _cast(self, x):
        return x.to(self.dtype) if 1e-15 <= float(x.min()) and float(x.max()) <= 1e15 else x


class SparseKernel:
    """Absorbed kernel on a fixed CSR support (scipy, CPU), kernel and scalings in ``dtype``."""

    sparse = True

    def __init__(self, support, f: torch.Tensor, g: torch.Tensor, eps: float, dtype=np.float64):
        import scipy.sparse as sp

        self.rows, self.cols, self.c_vals, self.indptr = support
        self.eps, self.dtype = float(eps), dtype
        self.shape = (len(self.indptr) - 1, int(len(g)))
        self.tiny = float(np.finfo(dtype).tiny)
        self.big = 1e100 if dtype == np.float64 else 1e30
        self.entries = 0.0
        self.f, self.g = f.cpu().numpy().copy(), g.cpu().numpy().copy()
        self.k = sp.csr_matrix((self._values(), self.cols, self.indptr), shape=self.shape)
        self.kt = self.k.T.tocsr()
        self.u0, self.v0 = np.ones(self.shape[0], dtype), np.ones(self.shape[1], dtype)

    def _values(self):
        return np.exp((self.f[self.rows] + self.g[self.cols] - self.c_vals) / self.eps).astype(self.dtype)

    def vec(self, x: torch.Tensor) -> np.ndarray:
        return x.cpu().numpy().astype(self.dtype)

    def matvec(self, v):
        self.entries += self.k.nnz
        return self.k @ v

    def rmatvec(self, u):
        self.entries += self.k.nnz
        return self.kt @ u

    def floor(self, x):
        return np.maximum(x, self.tiny)

    def potentials(self, u, v) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.f + self.eps * np.log(u)),
                torch.from_numpy(self.g + self.eps * np.log(v)))

    def absorb(self, u, v):
        self.f += self.eps * np.log(u)
        self.g += self.eps * np.log(v)
        self.k.data[:] = self._values()
        self.kt = self.k.T.tocsr()
        return np.ones_like(u), np.ones_like(v)

    def repair(self, u, v, kv, ktu, a, b):
        return None

    def aggregate(self, u, v, ls: torch.Tensor, lt: torch.Tensor, m: int, mt: int) -> np.ndarray:
        ls, lt = ls.numpy(), lt.numpy()
        mass = u[self.rows] * self.k.data * v[self.cols]
        return np.bincount(ls[self.rows] * mt + lt[self.cols], weights=mass,
                           minlength=m * mt).reshape(m, mt)

    def scale(self, u, v, x: np.ndarray, y: np.ndarray, ls: torch.Tensor, lt: torch.Tensor):
        return (u * x[ls.numpy()]).astype(self.dtype), (v * y[lt.numpy()]).astype(self.dtype)
