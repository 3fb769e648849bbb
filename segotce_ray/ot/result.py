"""The one result type of the OT solvers: :class:`Coupling`.

Every path of :func:`~segotce_ray.ot.solvers.solve` returns a ``Coupling``: the entropic
ones (dual potentials of ``P_ij = exp((f_i + g_j - C_ij)/ε)``, optionally with the sparse
support that carries the mass) and the exact one (``epsilon == 0``: the sparse flows and the
optimal duals).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Coupling:
    """A transport coupling with uniform (or given) marginals.

    f: (N_s,) float64; g: (N_t,) float64 (on the cost's device): the entropic potentials, or
    the optimal duals when ``epsilon == 0`` (exact). iterations: scaling iterations over all
    ε-stages (simplex rounds when exact); converged: marginal violation ≤ tol;
    marginal_error: ``||P1 - a||₁ + ||Pᵀ1 - b||₁`` of the full coupling (an upper bound when
    ``support`` is set; 0 when exact). support: ``(rows, cols, costs)`` numpy arrays of the
    entries that carry the coupling's mass, or None (dense: formed from the potentials);
    mass: the flows on the support when exact (else computed from the potentials);
    off_support_mass: a proven upper bound on the mass outside ``support``; passes: kernel
    or cost entries touched / (N_s·N_t); solver: the path that produced it.
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
    passes: float = 0.0
    solver: str = "sinkhorn"
    mass: np.ndarray | None = None

    @property
    def exact(self) -> bool:
        return self.epsilon == 0.0

    def support_mass(self):
        """``(rows, cols, mass, costs)`` of the coupling on its support, or None (dense)."""
        if self.support is None:
            return None
        rows, cols, c_vals = self.support
        if self.mass is not None:
            return rows, cols, self.mass, c_vals
        fn, gn = self.f.cpu().numpy(), self.g.cpu().numpy()
        return rows, cols, np.exp((fn[rows] + gn[cols] - c_vals) / self.epsilon), c_vals
