"""SEG-OTCE scoring core: the definition's oracles, POT agreement, determinism, bad input."""

import math

import numpy as np
import ot
import pytest
import torch

from segotce_ray import otce_score
from segotce_ray.metrics.otce import (
    conditional_entropy,
    coupling_from_potentials,
    emd_coupling,
    fit_otce_weights,
    label_joint,
    otce_repetition,
    sample_indices,
)
from segotce_ray.ot import coarse_potentials, sinkhorn_potentials, squared_euclidean_cost
from segotce_ray.ot.kernel import DenseKernel, SparseKernel
from segotce_ray.ot.coarse import CoarseCorrection as _CoarseCorrection
from segotce_ray.ot.scaling import Overrelaxation as _Overrelaxation
from segotce_ray.ot.support import csr_support


def mixture(n, d, classes, shift, seed, spread=2.0):
    r = np.random.default_rng(seed)
    means = np.random.default_rng(123).normal(size=(classes, d)) * spread
    y = r.integers(0, classes, n)
    return (means[y] + r.normal(size=(n, d)) + shift).astype(np.float32), y


def entropy(labels):
    _, c = np.unique(labels, return_counts=True)
    p = c / c.sum()
    return float(-(p * np.log(p)).sum())


def test_identical_sets_with_emd_give_zero_conditional_entropy():
    f, y = mixture(300, 8, 5, 0.0, 0)
    r = otce_score(f, y, f.copy(), y.copy(), n_pixels=1000, repetitions=1, solver="emd")
    assert r.w_t[0] == pytest.approx(0.0, abs=1e-12)
    assert r.score == pytest.approx(0.0, abs=1e-12)
    # and a label disagreement makes it strictly positive
    y2 = y.copy()
    y2[:50] = (y2[:50] + 1) % 5
    r2 = otce_score(f, y, f, y2, n_pixels=1000, repetitions=1, solver="emd")
    assert r2.w_t[0] > 0.05


def test_labels_independent_of_features_give_target_label_entropy():
    r = np.random.default_rng(1)
    fs, ft = r.normal(size=(2000, 4)), r.normal(size=(2000, 4))
    ys, yt = r.integers(0, 4, 2000), r.integers(0, 3, 2000)
    res = otce_score(fs, ys, ft, yt, n_pixels=600, repetitions=3, seed=3, epsilon=1.0)
    # W_T ≈ H(Y_t) of the drawn target labels (up to finite-sample dependence)
    assert res.w_t.mean() == pytest.approx(entropy(yt), abs=0.03)


def test_hand_worked_example():
    # positions coincide, so the exact coupling is the identity / 3
    f = np.array([[0.0], [10.0], [20.0]])
    ys = np.array([0, 0, 1])
    yt = np.array([0, 1, 1])
    r = otce_score(f, ys, f, yt, n_pixels=3, repetitions=1, solver="emd")
    # J = [[1/3, 1/3], [0, 1/3]]; H(Yt|Ys) = 2/3 · ln 2
    assert r.w_t[0] == pytest.approx(2 / 3 * math.log(2), rel=1e-12)
    assert r.w_d[0] == pytest.approx(0.0, abs=1e-12)
    # Sinkhorn at ε = 0.1 on costs of 100: the same coupling to machine precision
    r_s = otce_score(f, ys, f, yt, n_pixels=3, repetitions=1, tol=1e-10, dtype="float64")
    assert r_s.w_t[0] == pytest.approx(2 / 3 * math.log(2), rel=1e-9)


def test_relabelling_classes_leaves_score_unchanged():
    fs, ys = mixture(800, 6, 4, 0.0, 2)
    ft, yt = mixture(800, 6, 4, 0.3, 3)
    base = otce_score(fs, ys, ft, yt, n_pixels=300, repetitions=2, seed=5)
    perm_s = np.array([3, 0, 1, 2])
    perm_t = np.array([10, 7, 42, 1])
    moved = otce_score(fs, perm_s[ys], ft, perm_t[yt], n_pixels=300, repetitions=2, seed=5)
    np.testing.assert_allclose(moved.scores, base.scores, rtol=1e-9)


def test_joint_marginals_equal_sampled_class_frequencies():
    fs, ys = mixture(400, 5, 3, 0.0, 4)
    ft, yt = mixture(400, 5, 4, 1.0, 5)
    cost = squared_euclidean_cost(torch.from_numpy(fs).double(), torch.from_numpy(ft).double())
    pot = sinkhorn_potentials(cost, 1.0, tol=1e-9, max_iter=50_000)
    assert pot.converged
    joint, _ = label_joint(pot, ys, yt, cost=cost)
    np.testing.assert_allclose(joint.sum(1), np.bincount(ys) / len(ys), atol=1e-8)
    np.testing.assert_allclose(joint.sum(0), np.bincount(yt) / len(yt), atol=1e-8)
    # the chunked joint equals the one from the materialised coupling
    dense, w_d = label_joint(coupling_from_potentials(cost, pot), ys, yt, cost=cost)
    np.testing.assert_allclose(joint, dense, atol=1e-12)


def test_agrees_with_pot_sinkhorn_log():
    fs, ys = mixture(150, 4, 3, 0.0, 6, spread=0.7)
    ft, yt = mixture(150, 4, 3, 0.2, 7, spread=0.7)
    fs, ft = fs * 0.5, ft * 0.5  # costs of order 1–10 so POT's log solver converges
    eps = 0.1
    ours = otce_score(fs, ys, ft, yt, n_pixels=150, repetitions=1, epsilon=eps, tol=1e-11,
                      max_iter=200_000, dtype="float64")
    assert ours.converged[0]
    c = ot.dist(fs.astype(np.float64), ft.astype(np.float64))
    p = ot.sinkhorn(ot.unif(150), ot.unif(150), c, eps, method="sinkhorn_log",
                    numItermax=200_000, stopThr=1e-13)
    s1 = np.eye(3)[ys]
    t1 = np.eye(3)[yt]
    j = s1.T @ p @ t1
    w_t_pot = conditional_entropy(j / j.sum())
    assert ours.w_t[0] == pytest.approx(w_t_pot, rel=1e-6)
    assert ours.w_d[0] == pytest.approx(float((p * c).sum()), rel=1e-6)


def test_sinkhorn_approaches_emd_as_epsilon_shrinks():
    fs, ys = mixture(200, 4, 3, 0.0, 8, spread=1.0)
    ft, yt = mixture(200, 4, 3, 0.5, 9, spread=1.0)
    exact = otce_score(fs, ys, ft, yt, n_pixels=200, repetitions=1, solver="emd").w_t[0]
    gaps = []
    for eps in (3.0, 1.0, 0.3, 0.03):
        r = otce_score(fs, ys, ft, yt, n_pixels=200, repetitions=1, epsilon=eps, tol=1e-5,
                       max_iter=100_000, dtype="float64")
        assert r.converged[0]
        gaps.append(abs(r.w_t[0] - exact))
    assert gaps[0] > gaps[1] > gaps[2] > gaps[3]
    assert gaps[-1] < 0.005


def test_emd_assignment_matches_pot_emd():
    fs, _ = mixture(120, 5, 3, 0.0, 10)
    ft, _ = mixture(120, 5, 3, 0.4, 11)
    cost = squared_euclidean_cost(torch.from_numpy(fs).double(), torch.from_numpy(ft).double())
    p = emd_coupling(cost).numpy()
    c = cost.numpy()
    p_pot = ot.emd(ot.unif(120), ot.unif(120), c)
    assert float((p * c).sum()) == pytest.approx(float((p_pot * c).sum()), rel=1e-10)
    np.testing.assert_allclose(p.sum(0), 1 / 120)


def test_determinism_across_batching_and_containers():
    fs, ys = mixture(1500, 8, 5, 0.0, 12)
    ft, yt = mixture(1500, 8, 5, 0.6, 13)
    kw = dict(n_pixels=128, epsilon=1.0)
    batch = otce_score(fs, ys, ft, yt, repetitions=4, seed=11, **kw)
    single = [otce_score(fs, ys, ft, yt, repetition_ids=[k], seed=11, **kw).scores[0]
              for k in range(4)]
    np.testing.assert_array_equal(batch.scores, np.array(single))
    reversed_ = otce_score(fs, ys, ft, yt, repetition_ids=[3, 2, 1, 0], seed=11, **kw)
    np.testing.assert_array_equal(reversed_.scores[::-1], batch.scores)
    as_torch = otce_score(torch.from_numpy(fs), torch.from_numpy(ys), torch.from_numpy(ft),
                          torch.from_numpy(yt), repetitions=4, seed=11, **kw)
    np.testing.assert_array_equal(as_torch.scores, batch.scores)
    half = otce_score(fs.astype(np.float16), ys, ft.astype(np.float16), yt,
                      repetitions=4, seed=11, **kw)
    np.testing.assert_allclose(half.scores, batch.scores, atol=5e-3)
    other_seed = otce_score(fs, ys, ft, yt, repetitions=4, seed=12, **kw)
    assert not np.array_equal(other_seed.scores, batch.scores)


def test_ignore_pixels_dropped_and_small_pool_used_whole():
    fs, ys = mixture(300, 4, 3, 0.0, 14)
    ft, yt = mixture(300, 4, 3, 0.0, 15)
    ys_i = ys.copy()
    ys_i[:100] = 255
    r = otce_score(fs, ys_i, ft, yt, n_pixels=250, repetitions=2)
    assert r.pool_source == 200 and r.n_source == 200 and r.used_whole_source
    assert r.n_target == 250 and not r.used_whole_target
    same = otce_score(fs[100:], ys[100:], ft, yt, n_pixels=250, repetitions=2)
    np.testing.assert_array_equal(r.scores, same.scores)


def test_sparse_and_dense_iterations_agree():
    fs, ys = mixture(300, 16, 6, 0.0, 16, spread=3.0)
    ft, yt = mixture(300, 16, 6, 0.5, 17, spread=3.0)
    cost = squared_euclidean_cost(torch.from_numpy(fs).double(), torch.from_numpy(ft).double())
    results = []
    for sparse in ("auto", False):
        pot = sinkhorn_potentials(cost, 0.1, tol=1e-5, max_iter=100_000, sparse=sparse)
        assert (pot.sparse_iterations > 0) == (sparse == "auto")
        assert pot.converged
        results.append(conditional_entropy(label_joint(pot, ys, yt, cost=cost)[0]))
    assert results[0] == pytest.approx(results[1], abs=1e-4)


def test_overrelaxed_and_plain_updates_reach_the_same_coupling():
    fs, ys = mixture(300, 8, 6, 0.0, 30, spread=1.5)
    ft, yt = mixture(300, 8, 6, 0.5, 31, spread=1.5)
    cost = squared_euclidean_cost(torch.from_numpy(fs).double(), torch.from_numpy(ft).double())
    pots = {w: sinkhorn_potentials(cost, 0.5, tol=1e-6, max_iter=200_000, omega=w, sparse=False)
            for w in (1.0, 1.8)}
    assert all(p.converged for p in pots.values())
    # same fixed point: the couplings agree entry-wise
    p1, p2 = (coupling_from_potentials(cost, pots[w]) for w in (1.0, 1.8))
    assert float((p1 - p2).abs().sum()) < 1e-5
    # and relaxation takes fewer iterations on this slow (clustered) problem
    assert pots[1.8].iterations < pots[1.0].iterations


def test_overrelaxation_backs_off_on_overshoot():
    r = _Overrelaxation(1.8, warmup=1)
    assert r.update(1.0) == 1.0  # plain during warm-up
    assert r.update(0.5) == 1.8
    assert r.update(0.4) == 1.8
    assert r.update(5.0) == 1.0  # error blew up: plain again, target halved
    assert r.target == pytest.approx(1.4)
    r.update(4.0)
    assert r.update(3.0) == pytest.approx(1.4)
    assert r.update(float("nan")) == 1.0 and r.target == 1.0


def test_coarse_correction_balances_group_masses_and_is_undone_when_useless():
    rng = np.random.default_rng(5)
    ns, nt = 60, 50
    kernel = torch.from_numpy(rng.random((ns, nt)) ** 4 + 1e-3)
    u = torch.from_numpy(rng.random(ns) + 0.1)
    v = torch.from_numpy(rng.random(nt) + 0.1)
    gs = torch.from_numpy(rng.integers(0, 4, ns))
    gt = torch.from_numpy(rng.integers(0, 3, nt))
    a = torch.full((ns,), 1 / ns, dtype=torch.float64)
    b = torch.full((nt,), 1 / nt, dtype=torch.float64)
    # a kernel operator holding exactly this kernel: exp((0 + 0 - C)/ε) with C = -ε log K
    cost = -0.5 * torch.log(kernel)
    zeros_s, zeros_t = torch.zeros(ns, dtype=torch.float64), torch.zeros(nt, dtype=torch.float64)
    dense = DenseKernel(cost, zeros_s, zeros_t, 0.5, torch.float64)
    assert torch.allclose(dense.kernel, kernel)
    corr = _CoarseCorrection((gs, gt), a, b, every=10, settle=5)
    assert not corr.due(4) and corr.due(5)  # first one after every/2 iterations
    u2, v2 = corr.apply(dense, u, v, err=1e-6, it=5)  # scaled to 1% of err
    p = u2[:, None] * kernel * v2[None, :]
    # the coupling's mass per (source group) and per (target group) now equals theirs
    row_g = torch.zeros(4, dtype=torch.float64).index_add_(0, gs, p.sum(1))
    col_g = torch.zeros(3, dtype=torch.float64).index_add_(0, gt, p.sum(0))
    np.testing.assert_allclose(row_g, np.bincount(gs.numpy(), minlength=4) / ns, rtol=1e-5)
    np.testing.assert_allclose(col_g, np.bincount(gt.numpy(), minlength=3) / nt, rtol=1e-5)
    # within a group the scaling is one factor
    ratio = (u2 / u).numpy()
    for g in range(4):
        assert np.ptp(ratio[gs.numpy() == g]) < 1e-12
    # the same correction on the sparse path (every entry kept) gives the same scalings
    rows, cols = torch.ones((ns, nt), dtype=torch.bool).nonzero(as_tuple=True)
    sparse = SparseKernel(csr_support(rows, cols, cost), zeros_s, zeros_t, 0.5)
    corr_sp = _CoarseCorrection((gs, gt), a, b)
    u3, v3 = corr_sp.apply(sparse, u.numpy(), v.numpy(), 1e-6, 0)
    np.testing.assert_allclose(u3 * v3[0], (u2 * v2[0]).numpy(), rtol=1e-8)
    # judged `settle` iterations later: an error that did not fall restores (u, v), and
    # the next correction waits twice as long
    assert corr.judge(2.0, 7) is None          # too early to judge
    restored = corr.judge(2.0, 10)
    assert restored is not None and torch.equal(restored[0], u) and corr.every == 20
    assert corr.active and not corr.due(24) and corr.due(25)  # 20 after the last one (5)


def test_multiscale_warm_start_reaches_the_same_score():
    fs, ys = mixture(600, 16, 6, 0.0, 32, spread=3.0)
    ft, yt = mixture(600, 16, 6, 0.5, 33, spread=3.0)
    xs, xt = torch.from_numpy(fs), torch.from_numpy(ft)
    assert coarse_potentials(xs, xt, 0.1) is None  # below min_points: no coarse level
    init = coarse_potentials(xs, xt, 0.1, min_points=100, clusters=24)
    assert init is not None
    f, g, eps_start, gs, gt = init
    assert f.shape == (600,) and g.shape == (600,) and eps_start >= 0.4
    assert len(torch.unique(f)) <= 24  # one potential per cluster
    assert gs.shape == (600,) and int(gs.max()) < 24 and int(gt.max()) < 24
    cost = squared_euclidean_cost(xs.double(), xt.double())
    cold = sinkhorn_potentials(cost, 0.1, tol=1e-3)
    warm = sinkhorn_potentials(cost, 0.1, tol=1e-3, init=init,
                               clusters=(gs, gt))
    assert cold.converged and warm.converged
    w_cold = conditional_entropy(label_joint(cold, ys, yt, cost=cost)[0])
    w_warm = conditional_entropy(label_joint(warm, ys, yt, cost=cost)[0])
    assert w_warm == pytest.approx(w_cold, abs=1e-3)
    # a deliberately bad start (potentials far off) still converges: the solver's hard
    # c-transform keeps the kernel finite and a broken stage restarts from scratch
    bad = (f * 0 + 1e4, torch.linspace(-1e4, 1e4, 600, dtype=torch.float64), 50.0)
    r = sinkhorn_potentials(cost, 0.1, tol=1e-3, init=bad)
    assert r.converged
    assert conditional_entropy(label_joint(r, ys, yt, cost=cost)[0]) == pytest.approx(w_cold, abs=1e-3)


def test_repetition_with_and_without_multiscale_agree(monkeypatch):
    import segotce_ray.ot.solvers as otce_mod

    fs, ys = mixture(500, 12, 5, 0.0, 34, spread=3.0)
    ft, yt = mixture(500, 12, 5, 0.4, 35, spread=3.0)
    xs, xt = torch.from_numpy(fs), torch.from_numpy(ft)
    calls = []
    real = otce_mod.coarse_potentials

    def low_threshold(*a, **k):
        out = real(*a, **{**k, "min_points": 100})
        calls.append(out is not None)
        return out

    monkeypatch.setattr(otce_mod, "coarse_potentials", low_threshold)
    on = otce_repetition(xs, ys, xt, yt, multiscale=True, solver="sinkhorn")
    off = otce_repetition(xs, ys, xt, yt, multiscale=False, solver="sinkhorn")
    assert calls == [True]
    assert on["converged"] and off["converged"]
    assert on["w_t"] == pytest.approx(off["w_t"], abs=2e-3)
    assert on["w_d"] == pytest.approx(off["w_d"], rel=1e-3)


def test_sparse_result_keeps_its_support_and_bounds_the_rest():
    import dataclasses

    fs, ys = mixture(400, 16, 6, 0.0, 36, spread=3.0)
    ft, yt = mixture(400, 16, 6, 0.5, 37, spread=3.0)
    cost = squared_euclidean_cost(torch.from_numpy(fs), torch.from_numpy(ft))
    pot = sinkhorn_potentials(cost, 0.1)
    assert pot.converged and pot.sparse_iterations > 0 and pot.support is not None
    assert 0 <= pot.off_support_mass < 1e-5
    # the full-kernel marginal error is no larger than the reported (bounded) one
    full = coupling_from_potentials(cost, pot)
    a = torch.full((400,), 1 / 400, dtype=torch.float64)
    true_err = float((full.sum(1) - a).abs().sum() + (full.sum(0) - a).abs().sum())
    assert true_err <= pot.marginal_error + 1e-12
    # the joint and W_D from the support equal the dense computation
    j_sparse, wd_sparse = label_joint(pot, ys, yt, cost=cost)
    j_dense, wd_dense = label_joint(dataclasses.replace(pot, support=None), ys, yt, cost=cost)
    np.testing.assert_allclose(j_sparse, j_dense, atol=1e-9)
    assert wd_sparse == pytest.approx(wd_dense, rel=1e-9)


def test_non_convergence_is_reported():
    fs, ys = mixture(400, 16, 5, 0.0, 18, spread=3.0)
    ft, yt = mixture(400, 16, 5, 0.5, 19, spread=3.0)
    r = otce_score(fs, ys, ft, yt, n_pixels=400, repetitions=1, max_iter=5)
    assert not r.converged[0]
    assert r.iterations[0] < 20  # max_iter caps the loop; each ε-stage renormalises once
    ok = otce_score(fs, ys, ft, yt, n_pixels=400, repetitions=1)
    assert ok.converged[0] and ok.marginal_error[0] < 1e-3
    tight = otce_score(fs, ys, ft, yt, n_pixels=400, repetitions=1, tol=1e-4, max_iter=100_000)
    assert tight.converged[0] and tight.marginal_error[0] < 1e-4
    assert tight.iterations[0] > ok.iterations[0]
    assert abs(tight.w_t[0] - ok.w_t[0]) < 5e-3


def test_class_balanced_sampling_equalises_classes():
    labels = np.array([0] * 9000 + [1] * 900 + [2] * 100)
    idx = sample_indices(labels, 300, np.random.default_rng(0), "class_balanced")
    counts = np.bincount(labels[idx], minlength=3)
    assert len(np.unique(idx)) == 300
    assert counts.min() > 60  # uniform sampling would give ~3 pixels of class 2
    uni = sample_indices(labels, 300, np.random.default_rng(0), "uniform")
    assert np.bincount(labels[uni], minlength=3)[2] < 15


def test_fit_otce_weights_recovers_linear_combination():
    r = np.random.default_rng(0)
    wd, wt = r.uniform(1, 10, 20), r.uniform(0, 2, 20)
    acc = -0.3 * wd - 2.0 * wt + 5.0
    l1, l2, b = fit_otce_weights(wd, wt, acc)
    assert (l1, l2, b) == pytest.approx((-0.3, -2.0, 5.0), rel=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        fit_otce_weights(wd[:2], wt[:2], acc[:2])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda fs, ys, ft, yt: (np.where(np.arange(len(fs))[:, None] == 5, np.nan, fs), ys, ft, yt),
         "source features contain NaN"),
        (lambda fs, ys, ft, yt: (fs, ys, np.where(np.arange(len(ft))[:, None] == 1, np.inf, ft), yt),
         "target features contain NaN or inf"),
        (lambda fs, ys, ft, yt: (fs, ys[:-1], ft, yt), "source: 50 feature rows but 49 labels"),
        (lambda fs, ys, ft, yt: (fs, ys, ft, yt.astype(np.float32)), "target labels must be integers"),
        (lambda fs, ys, ft, yt: (fs, np.full_like(ys, 255), ft, yt), "source pool is empty"),
        (lambda fs, ys, ft, yt: (fs, ys, ft[:, :3], yt), "source D=4, target D=3"),
        (lambda fs, ys, ft, yt: (fs[:, 0], ys, ft, yt), "source features must be 2-D"),
    ],
)
def test_bad_input_names_side_and_problem(mutate, match):
    fs, ys = mixture(50, 4, 2, 0.0, 20)
    ft, yt = mixture(50, 4, 2, 0.0, 21)
    with pytest.raises(ValueError, match=match):
        otce_score(*mutate(fs, ys, ft, yt), n_pixels=20, repetitions=1)


def test_working_set_over_budget_is_rejected():
    fs, ys = mixture(300, 4, 2, 0.0, 22)
    with pytest.raises(ValueError, match="n_pixels=300: the N×N working set"):
        otce_score(fs, ys, fs, ys, n_pixels=300, repetitions=1, memory_budget=1_000_000)
