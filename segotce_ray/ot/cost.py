"""Squared-Euclidean ground cost and its optional rescaling."""

from __future__ import annotations

import torch

COST_SCALES = ("none", "mean", "max")


def squared_euclidean_cost(x: torch.Tensor, y: torch.Tensor, center: bool = True) -> torch.Tensor:
    """``C[i, j] = ||x_i - y_j||²`` as ``||x||² + ||y||² - 2 x yᵀ``, clamped at 0.

    x: (N_s, D), y: (N_t, D), same dtype/device -> (N_s, N_t). ``center`` subtracts the
    joint mean first (C is translation invariant; it shrinks the norms and with them the
    cancellation error of the expansion in float32).
    """
    if center:
        m = torch.cat([x, y]).mean(0, keepdim=True)
        x, y = x - m, y - m
    # the product first, then the norms in place: one N_s×N_t allocation (an in-place addmm
    # onto the norms' sum holds a second one for the product)
    cost = torch.mm(x, y.T).mul_(-2.0)
    cost.add_((x * x).sum(1)[:, None]).add_((y * y).sum(1)[None, :])
    return cost.clamp_(min=0.0)


def scale_cost(cost: torch.Tensor, mode: str = "none") -> float:
    """Rescale ``cost`` in place: ``none`` (as the authors' code), ``mean`` or ``max`` (÷ that
    statistic, a variant). Returns the factor applied."""
    if mode == "none":
        return 1.0
    if mode not in COST_SCALES:
        raise ValueError(f"cost_scale must be one of {COST_SCALES}, got {mode!r}")
    stat = cost.mean() if mode == "mean" else cost.max()
    scale = 1.0 / float(stat.clamp_min(torch.finfo(cost.dtype).tiny))
    cost *= scale
    return scale
