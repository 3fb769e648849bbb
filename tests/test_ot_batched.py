"""The batched dense log-domain Sinkhorn (the GPU path), run here on the CPU: a batch gives
each problem the result it gets alone, and that result is the entropic coupling."""

import numpy as np
import ot
import pytest
import torch

from segotce_ray import otce_score
from segotce_ray.ot import squared_euclidean_cost
from segotce_ray.ot.batched import log_sinkhorn_batch


def clouds(k, ns, nt, d=6, seed=0):
    r = np.random.default_rng(seed + k)
    x = torch.from_numpy((r.normal(size=(ns, d)) * 3).astype(np.float32))
    y = torch.from_numpy((r.normal(size=(nt, d)) * 3 + 1).astype(np.float32))
    return squared_euclidean_cost(x, y)


def test_batch_equals_one_by_one():
    cost = torch.stack([clouds(k, 120, 100) for k in range(3)])
    batch = log_sinkhorn_batch(cost, 0.5, tol=1e-4)
    for k, plan in enumerate(batch):
        alone = log_sinkhorn_batch(cost[k:k + 1], 0.5, tol=1e-4)[0]
        assert plan.iterations == alone.iterations
        assert torch.equal(plan.f, alone.f) and torch.equal(plan.g, alone.g)
        assert plan.converged and plan.marginal_error < 1e-4


def test_batch_matches_pot_sinkhorn():
    cost = torch.stack([clouds(k, 90, 80, seed=7) for k in range(2)])
    for k, plan in enumerate(log_sinkhorn_batch(cost, 1.0, tol=1e-6)):
        c = cost[k].double()
        p = torch.exp((plan.f[:, None] + plan.g[None, :] - c) / plan.epsilon)
        ref = ot.sinkhorn(ot.unif(90), ot.unif(80), c.numpy(), 1.0, method="sinkhorn_log",
                          stopThr=1e-10, numItermax=100_000)
        assert np.abs(p.numpy() - ref).sum() < 1e-4


def test_warm_start_from_given_potentials_converges_in_fewer_iterations():
    cost = clouds(0, 100, 100, seed=3)[None]
    cold = log_sinkhorn_batch(cost, 0.5, tol=1e-5)[0]
    warm = log_sinkhorn_batch(cost, 0.5, tol=1e-5, init=(cold.f[None], cold.g[None], 0.5))[0]
    assert warm.converged and warm.iterations < cold.iterations


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError):
        log_sinkhorn_batch(torch.zeros(4, 4), 0.1)


def test_otce_score_batched_equals_one_by_one_and_the_cpu_solver():
    r = np.random.default_rng(1)
    means = r.normal(size=(4, 5)) * 3
    ys, yt = r.integers(0, 4, 400), r.integers(0, 4, 400)
    xs = (means[ys] + r.normal(size=(400, 5))).astype(np.float32)
    xt = (means[yt] + r.normal(size=(400, 5)) + 0.5).astype(np.float32)
    kw = dict(n_pixels=150, repetitions=3, epsilon=0.5, tol=1e-4)
    together = otce_score(xs, ys, xt, yt, batch=3, **kw)
    alone = otce_score(xs, ys, xt, yt, batch=1, **kw)
    cpu = otce_score(xs, ys, xt, yt, batch=0, solver="sinkhorn", **kw)
    assert list(together.solvers) == ["sinkhorn-batch"] * 3 and together.converged.all()
    np.testing.assert_array_equal(together.w_t, alone.w_t)
    np.testing.assert_array_equal(together.iterations, alone.iterations)
    assert np.abs(together.w_t - cpu.w_t).max() < 2e-3
