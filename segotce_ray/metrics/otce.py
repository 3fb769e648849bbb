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

This module keeps the definition (input checks, sampling, joint, entropy, result); the
coupling comes from :mod:`segotce_ray.ot` (``solver``: ``auto`` picks per problem between the
ε-scaling Sinkhorn and the exact-duals start ``exact+polish``, both the entropic coupling of
step 3, verified on the full kernel to ``tol``; ``emd`` is the exact, ε = 0, coupling).

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
from typing import Any

import numpy as np
import torch

import segotce_ray.ot as sot
from segotce_ray.ot.batched import log_sinkhorn_batch
from segotce_ray.ot.support import coupling_rows

__all__ = [
    "SAMPLINGS",
    "OTCEResult",
    "otce_score",
    "otce_repetition",
    "prepare_side",
    "sample_indices",
    "coupling_from_potentials",
    "emd_coupling",
    "label_joint",
    "conditional_entropy",
    "working_set_bytes",
    "fit_otce_weights",
]

log = logging.getLogger(__name__)

SAMPLINGS = ("uniform", "class_balanced")


# --------------------------------------------------------------------------- results


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
    solvers: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))
    passes: np.ndarray = field(default_factory=lambda: np.zeros(0))
    settings: dict[str, Any] = field(default_factory=dict)
    #: per repetition: the label joint J (source classes × target classes, sums to 1) and
    #: the class ids of its rows and columns (the sorted labels drawn on each side)
    joints: list[np.ndarray] = field(default_factory=list)
    source_classes: list[np.ndarray] = field(default_factory=list)
    target_classes: list[np.ndarray] = field(default_factory=list)

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


# --------------------------------------------------------------------------- joint & entropy


def one_hot(labels: np.ndarray, classes: np.ndarray, dtype, device) -> torch.Tensor:
    idx = np.searchsorted(classes, labels)
    out = torch.zeros((labels.shape[0], classes.shape[0]), dtype=dtype, device=device)
    out[torch.arange(labels.shape[0], device=device), torch.from_numpy(idx).to(device)] = 1
    return out


def coupling_from_potentials(cost: torch.Tensor, pot: sot.Coupling) -> torch.Tensor:
    """Materialise ``P_ij = exp((f_i + g_j - C_ij)/ε)`` (N_s, N_t) float64 — small N, tests."""
    return torch.cat([p for _, _, p in coupling_rows(cost, pot.f, pot.g, pot.epsilon, 4096)])


def emd_coupling(cost: torch.Tensor) -> torch.Tensor:
    """Exact OT coupling with uniform marginals (ε = 0) as a dense (N_s, N_t) float64 tensor
    (small N, tests; the solver itself keeps it sparse: :func:`segotce_ray.ot.network_simplex`)."""
    plan = sot.network_simplex(cost)
    p = torch.zeros(cost.shape, dtype=torch.float64)
    p[torch.from_numpy(plan.rows), torch.from_numpy(plan.cols)] = torch.from_numpy(plan.mass)
    return p.to(cost.device)


def _sparse_joint(rows, cols, mass, c_vals, sc, tc, source_labels, target_labels):
    si = np.searchsorted(sc, np.asarray(source_labels))[rows]
    ti = np.searchsorted(tc, np.asarray(target_labels))[cols]
    j = np.bincount(si * len(tc) + ti, weights=mass, minlength=len(sc) * len(tc))
    return j.reshape(len(sc), len(tc)), float(mass @ c_vals)


def _chunked_joint(cost, pot: sot.Coupling, sc, tc, source_labels, target_labels, chunk_rows):
    dev = cost.device
    t_onehot = one_hot(target_labels, tc, torch.float64, dev)
    s_idx = torch.from_numpy(np.searchsorted(sc, source_labels)).to(dev)
    joint = torch.zeros((len(sc), len(tc)), dtype=torch.float64, device=dev)
    w_d = torch.zeros((), dtype=torch.float64, device=dev)
    for lo, c, p in coupling_rows(cost, pot.f, pot.g, pot.epsilon, chunk_rows):
        w_d += (p * c).sum()
        joint.index_add_(0, s_idx[lo:lo + p.shape[0]], p @ t_onehot)
    return joint.cpu().numpy(), float(w_d.item())


def label_joint(coupling: torch.Tensor | sot.Coupling, source_labels: np.ndarray,
                target_labels: np.ndarray, cost: torch.Tensor | None = None,
                chunk_rows: int = 256) -> tuple[np.ndarray, float]:
    """Joint ``J = Sᵀ P T`` over (source class, target class), renormalised to sum 1.

    coupling: a dense P (N_s, N_t) or a :class:`~segotce_ray.ot.Coupling` — summed on its
    support when it has one (exact flows, or entropic mass whose part outside is
    below its proven ``off_support_mass``), else formed in row chunks from the potentials
    (``cost`` required), never whole. Also returns ``W_D = <P, C>`` (nan when no cost is
    given for a dense P). Rows/columns of J follow the sorted unique labels of each side.
    Returns ``(J: (A, B) float64, w_d)``.
    """
    sc = np.unique(source_labels)
    tc = np.unique(target_labels)
    sparse = coupling.support_mass() if isinstance(coupling, sot.Coupling) else None
    if sparse is not None:
        j, w_d = _sparse_joint(*sparse, sc, tc, source_labels, target_labels)
    elif isinstance(coupling, sot.Coupling):
        if cost is None:
            raise ValueError("label_joint: the cost matrix is needed with potentials")
        j, w_d = _chunked_joint(cost, coupling, sc, tc, source_labels, target_labels, chunk_rows)
    else:
        p = coupling.double()
        s1 = one_hot(source_labels, sc, torch.float64, p.device)
        t1 = one_hot(target_labels, tc, torch.float64, p.device)
        j = (s1.T @ p @ t1).cpu().numpy()
        w_d = float((p * cost.double()).sum().item()) if cost is not None else math.nan
    total = j.sum()
    if not total > 0:
        raise ValueError("coupling has no mass (all entries underflowed)")
    return j / total, w_d


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


def otce_repetition(fs: torch.Tensor, ys: np.ndarray, ft: torch.Tensor, yt: np.ndarray, *,
                    epsilon: float = 0.1, solver: str = "auto", cost_scale: str = "none",
                    tol: float = 1e-3, max_iter: int = 20_000, eps_scaling: float = 4.0,
                    multiscale: bool = True) -> dict[str, Any]:
    """One SEG-OTCE repetition on already-sampled pixels ``fs: (N_s, D)``, ``ft: (N_t, D)``.

    ``solver`` as in :func:`segotce_ray.ot.solvers`; ``multiscale`` lets Sinkhorn warm-start
    from a clustered problem (same fixed point, fewer iterations at N ≳ 2000).
    Returns ``{score, w_t, w_d, iterations, converged, marginal_error, solver, passes, joint,
    source_classes, target_classes}``; score = -W_T; solver = the path that produced the
    coupling; passes = kernel/cost entries touched / (N_s·N_t); joint = the label joint J
    (A, B) whose conditional entropy is W_T, its rows and columns the sorted class ids
    ``source_classes`` (A,) and ``target_classes`` (B,) of the drawn pixels.
    """
    cost = sot.squared_euclidean_cost(fs, ft)
    scale = sot.scale_cost(cost, cost_scale)
    plan = sot.solve(cost, epsilon, solver, tol=tol, max_iter=max_iter, eps_scaling=eps_scaling,
                 features=(fs, ft), scale=scale, multiscale=multiscale)
    joint, w_d = label_joint(plan, ys, yt, cost=cost)
    return _row(plan, joint, w_d, ys, yt)


def _row(plan: sot.Coupling, joint: np.ndarray, w_d: float, ys: np.ndarray,
         yt: np.ndarray) -> dict[str, Any]:
    w_t = conditional_entropy(joint)
    return {"score": -w_t, "w_t": w_t, "w_d": w_d, "iterations": int(plan.iterations),
            "converged": bool(plan.converged), "marginal_error": float(plan.marginal_error),
            "solver": plan.solver, "passes": float(plan.passes), "joint": joint,
            "source_classes": np.unique(ys), "target_classes": np.unique(yt)}


def _check_arguments(n_pixels: int, solver: str, sampling: str, epsilon: float) -> None:
    if n_pixels < 1:
        raise ValueError(f"n_pixels must be >= 1, got {n_pixels}")
    if solver not in sot.SOLVERS:
        raise ValueError(f"solver must be one of {sot.SOLVERS}, got {solver!r}")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")


def _batch_size(batch: int | None, solver: str, repetitions: int, need: int,
                budget: int) -> int:
    """Repetitions solved together by the batched log-domain Sinkhorn: 0 (one by one
    through :func:`segotce_ray.ot.solve`) unless ``batch`` is given; then at most as many
    as the memory budget holds (one cost each plus a working set) and never for ``emd``.
    Opt-in until it has been timed on a GPU against the default path."""
    if not batch or solver == "emd":
        return 0
    fits = max(1, (budget - need) // max(1, need // 3) + 1)
    return max(1, min(int(batch), repetitions, fits))


def _solve_batched(draws: list, batch: int, epsilon: float, cost_scale: str, tol: float,
                   max_iter: int, eps_scaling: float) -> list[dict[str, Any]]:
    """Repetitions ``draws = [(fs, ys, ft, yt)]`` in batches of ``batch`` by the batched
    dense log-domain Sinkhorn (:func:`segotce_ray.ot.batched.log_sinkhorn_batch`)."""
    rows = []
    for lo in range(0, len(draws), batch):
        part = draws[lo:lo + batch]
        costs = [sot.squared_euclidean_cost(fs, ft) for fs, _, ft, _ in part]
        if len({c.shape for c in costs}) > 1:  # pools of different sizes: one at a time
            return rows + _solve_batched(draws[lo:], 1, epsilon, cost_scale, tol, max_iter,
                                         eps_scaling)
        for c in costs:
            sot.scale_cost(c, cost_scale)
        cost = torch.stack(costs)
        del costs
        plans = log_sinkhorn_batch(cost, epsilon, tol=tol, max_iter=max_iter,
                                   eps_scaling=eps_scaling)
        for k, ((_, ys, _, yt), plan) in enumerate(zip(part, plans)):
            joint, w_d = label_joint(plan, ys, yt, cost=cost[k])
            rows.append(_row(plan, joint, w_d, ys, yt))
        del cost
    return rows


def _result(rows: list[dict[str, Any]], ids: list[int], ns: int, nt: int, pools: tuple[int, int],
            n_pixels: int, settings: dict[str, Any]) -> OTCEResult:
    scores = np.array([r["score"] for r in rows])
    return OTCEResult(
        score=float(scores.mean()), std=float(scores.std()), scores=scores,
        w_t=np.array([r["w_t"] for r in rows]), w_d=np.array([r["w_d"] for r in rows]),
        iterations=np.array([r["iterations"] for r in rows], dtype=np.int64),
        converged=np.array([r["converged"] for r in rows], dtype=bool),
        n_source=ns, n_target=nt, pool_source=pools[0], pool_target=pools[1],
        used_whole_source=pools[0] <= n_pixels, used_whole_target=pools[1] <= n_pixels,
        marginal_error=np.array([r["marginal_error"] for r in rows]),
        solvers=np.array([r["solver"] for r in rows], dtype=object),
        passes=np.array([r["passes"] for r in rows]),
        repetition_ids=np.array(ids, dtype=np.int64),
        joints=[r["joint"] for r in rows], source_classes=[r["source_classes"] for r in rows],
        target_classes=[r["target_classes"] for r in rows], settings=settings)


def otce_score(source_features: Any, source_labels: Any, target_features: Any,
               target_labels: Any, n_pixels: int = 10_000, repetitions: int = 10,
               epsilon: float = 0.1, seed: int = 0, ignore_index: int | None = 255,
               solver: str = "auto", sampling: str = "uniform", *,
               cost_scale: str = "none", tol: float = 1e-3, max_iter: int = 20_000,
               eps_scaling: float = 4.0, device: str | torch.device | None = None,
               dtype: str | torch.dtype = "float32", memory_budget: int | None = None,
               repetition_ids: Sequence[int] | None = None,
               batch: int | None = None) -> OTCEResult:
    """SEG-OTCE transferability of a source model to a target (higher = more transferable).

    source_features: (P_s, D), target_features: (P_t, D) — float16/32/64, numpy or torch,
    CPU or GPU; source_labels: (P_s,), target_labels: (P_t,) integer. Pixels labelled
    ``ignore_index`` are dropped first. For each repetition k in ``repetition_ids``
    (default ``range(repetitions)``) N = ``n_pixels`` pixels per side are drawn with the
    generator seeded by ``(seed, k)``, the entropic coupling (``epsilon``; ``solver="emd"``
    for the exact one) of the squared-Euclidean cost is solved, and the score
    ``-H(Y_t|Y_s)`` of its label joint is recorded (``solver``: see
    :mod:`segotce_ray.ot.solvers`). A pool smaller than N is used whole (``used_whole_*``).
    ``device`` defaults to the features' device; ``dtype`` of the cost and kernel is float32
    (float64 for validation). ``memory_budget`` (bytes, default the free memory of the
    device) bounds the N×N working set; a bigger N is a ValueError. ``batch``: solve up to
    that many repetitions together by the batched dense log-domain Sinkhorn
    (:mod:`segotce_ray.ot.batched`, the GPU path; capped by the memory budget; not for
    ``emd``); default None: one by one through :func:`segotce_ray.ot.solve`.
    """
    _check_arguments(n_pixels, solver, sampling, epsilon)
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
    draws = []
    for k in ids:
        rng_s, rng_t = _repetition_rngs(seed, k)
        i = sample_indices(ys_all, n_pixels, rng_s, sampling)
        j = sample_indices(yt_all, n_pixels, rng_t, sampling)
        draws.append((_torch_features(_index(fs_all, i), device, tdtype), ys_all[i],
                      _torch_features(_index(ft_all, j), device, tdtype), yt_all[j]))
    size = _batch_size(batch, solver, len(ids), need, budget)
    if size:
        rows = _solve_batched(draws, size, epsilon, cost_scale, tol, max_iter, eps_scaling)
    else:
        rows = [otce_repetition(*d, epsilon=epsilon, solver=solver, cost_scale=cost_scale,
                                tol=tol, max_iter=max_iter, eps_scaling=eps_scaling)
                for d in draws]
    settings = {"n_pixels": n_pixels, "epsilon": epsilon, "seed": seed, "solver": solver,
                "sampling": sampling, "cost_scale": cost_scale, "tol": tol,
                "max_iter": max_iter, "ignore_index": ignore_index, "dtype": str(tdtype)}
    return _result(rows, ids, ns, nt, (len(ys_all), len(yt_all)), n_pixels, settings)


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
