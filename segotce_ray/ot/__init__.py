"""Optimal-transport solvers for SEG-OTCE: a family of small modules behind one face.

- :mod:`.cost` — squared-Euclidean cost and its optional rescaling;
- :mod:`.kernel` — the dense and sparse kernel operators;
- :mod:`.scaling` — the one scaling loop both run under (over-relaxation, stall rules);
- :mod:`.sinkhorn` — the ε schedule as an outer loop, supports, verification;
- :mod:`.coarse` — coarse corrections between groups during the iterations;
- :mod:`.multiscale` — k-means and the coarse warm start;
- :mod:`.support` — chunked passes: c-transforms, reduced-cost supports, marginals;
- :mod:`.exact` — exact OT by POT's network simplex on growing sparse edge sets;
- :mod:`.result` — :class:`Coupling`, the one result type of every solver path;
- :mod:`.solvers` — ``solve(cost, ε, solver)`` and the ``auto`` choice.

Pure: tensors in, potentials or plans out; no Ray, no files.
"""

from segotce_ray.ot.cost import COST_SCALES, scale_cost, squared_euclidean_cost
from segotce_ray.ot.exact import ExactPlan, network_simplex
from segotce_ray.ot.multiscale import CoarseStart, coarse_potentials
from segotce_ray.ot.result import Coupling
from segotce_ray.ot.sinkhorn import sinkhorn_potentials
from segotce_ray.ot.solvers import SOLVERS, choose_solver, solve

__all__ = [
    "COST_SCALES", "SOLVERS", "CoarseStart", "Coupling", "ExactPlan", "choose_solver",
    "coarse_potentials", "network_simplex", "scale_cost", "sinkhorn_potentials", "solve",
    "squared_euclidean_cost",
]
