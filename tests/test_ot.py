"""The OT solver family (segotce_ray.ot): exact network simplex on sparse edge sets, the
exact+polish entropic path, the auto choice, and what a repetition records."""

import numpy as np
import ot
import pytest
import torch

from segotce_ray.metrics.otce import otce_repetition, otce_score
from segotce_ray.ot import choose_solver, network_simplex, solve, squared_euclidean_cost
from segotce_ray.ot.exact import dual_violations, north_west_corner


def mixture(n, d, classes, shift, seed, spread=2.0):
    r = np.random.default_rng(seed)
    means = np.random.default_rng(123).normal(size=(classes, d)) * spread
    y = r.integers(0, classes, n)
    return (means[y] + r.normal(size=(n, d)) + shift).astype(np.float32), y


def cost_of(ns, nt, d=16, seed=0):
    fs, _ = mixture(ns, d, 6, 0.0, seed)
    ft, _ = mixture(nt, d, 6, 0.7, seed + 1)
    return squared_euclidean_cost(torch.from_numpy(fs), torch.from_numpy(ft))


def check_exact(plan, cost):
    ns, nt = cost.shape
    m = cost.double().numpy()
    _, log = ot.emd(ot.unif(ns), ot.unif(nt), m, log=True, numItermax=10**8)
    assert plan.mass @ plan.costs == pytest.approx(log["cost"], rel=1e-9)
    np.testing.assert_allclose(np.bincount(plan.rows, plan.mass, ns), 1 / ns, atol=1e-12)
    np.testing.assert_allclose(np.bincount(plan.cols, plan.mass, nt), 1 / nt, atol=1e-12)
    # the duals prove it: no negative reduced cost anywhere on the full cost
    red = m - plan.alpha.numpy()[:, None] - plan.beta.numpy()[None, :]
    assert red.min() > -1e-7 * m.max()


@pytest.mark.parametrize("ns, nt", [(2100, 2100), (2100, 1700)])
def test_sparse_network_simplex_is_exact_on_the_full_cost(ns, nt):
    cost = cost_of(ns, nt)
    plan = network_simplex(cost)
    assert plan.edges < 0.2 * ns * nt  # a sparse solve, not the dense fallback
    check_exact(plan, cost)


def test_dense_fallback_when_the_edge_set_grows():
    cost = cost_of(1600, 1600, seed=3)
    plan = network_simplex(cost, k=2, add=2, max_degree=3, dense_fallback_entries=1600 * 1600)
    assert plan.edges == 1600 * 1600  # gave up on the sparse rounds, warm-started ot.emd
    check_exact(plan, cost)


def test_small_problem_uses_the_dense_simplex_and_matches_pot():
    cost = cost_of(300, 250, seed=5)
    check_exact(network_simplex(cost), cost)


def test_dual_check_finds_violations_whatever_the_size_of_other_duals():
    # a float32 check with one slack scaled by the largest dual missed a -1 violation when
    # some duals were huge; the check must see it
    cost = torch.rand(300, 200, dtype=torch.float32) * 100
    alpha = cost.min(1).values.double()
    beta = torch.zeros(200, dtype=torch.float64)
    beta[7] = -1e6  # a huge (feasible) dual elsewhere
    alpha[17] = float(cost[17].min()) + 1.0  # row 17 violates by 1 somewhere
    rows, cols = dual_violations(cost, alpha, beta, add=4, exact=False)
    assert 17 in set(rows.tolist())
    rows, cols = dual_violations(cost, alpha, beta, add=4, exact=True)
    assert 17 in set(rows.tolist())
    assert len(dual_violations(cost, alpha - 1.0, beta, add=4)[0]) == 0  # feasible: nothing


@pytest.mark.parametrize("ns, nt", [(3, 3), (2, 5), (7, 4)])
def test_north_west_corner_is_a_feasible_basis(ns, nt):
    r, c = north_west_corner(ns, nt)
    assert len(r) == ns + nt - 1 - (np.gcd(ns, nt) - 1)  # ties merge corners
    assert set(r) == set(range(ns)) and set(c) == set(range(nt))
    cost = torch.rand(ns, nt)
    keys = r * nt + c
    masked = torch.full((ns, nt), 1e6)
    masked.view(-1)[torch.from_numpy(keys)] = cost.view(-1)[torch.from_numpy(keys)]
    _, log = ot.emd(ot.unif(ns), ot.unif(nt), masked.double().numpy(), log=True)
    assert log["cost"] < 1e6 / max(ns, nt)  # feasible on those edges alone


def test_auto_picks_the_path_by_the_blur_and_the_size():
    cost = cost_of(2000, 2000)
    assert choose_solver(cost, 0.1) == "exact+polish"  # spread ≫ ε: nearly exact
    assert choose_solver(cost / cost.max(), 0.1) == "sinkhorn"  # costs ≤ 1: blurred
    assert choose_solver(cost[:1999], 0.1) == "sinkhorn"  # small: the ε ladder is faster


def test_exact_polish_reaches_the_entropic_coupling_of_the_definition():
    fs, ys = mixture(700, 12, 5, 0.0, 40, spread=3.0)
    ft, yt = mixture(700, 12, 5, 0.4, 41, spread=3.0)
    xs, xt = torch.from_numpy(fs), torch.from_numpy(ft)
    pol = otce_repetition(xs, ys, xt, yt, solver="exact+polish")
    snk = otce_repetition(xs, ys, xt, yt, solver="sinkhorn")
    emd = otce_repetition(xs, ys, xt, yt, solver="emd")
    assert pol["solver"] == "exact+polish" and snk["solver"] == "sinkhorn"
    assert pol["converged"] and snk["converged"]
    assert pol["w_t"] == pytest.approx(snk["w_t"], abs=2e-3)
    assert pol["w_d"] == pytest.approx(snk["w_d"], rel=1e-3)
    assert emd["solver"] == "emd" and emd["converged"] and pol["passes"] > emd["passes"] > 0


def test_solve_rejects_unknown_solvers_and_score_records_the_path():
    cost = cost_of(50, 50)
    with pytest.raises(ValueError, match="solver must be one of"):
        solve(cost, 0.1, "simplex")
    fs, ys = mixture(300, 8, 4, 0.0, 1)
    ft, yt = mixture(300, 8, 4, 0.3, 2)
    r = otce_score(fs, ys, ft, yt, n_pixels=300, repetitions=2)
    assert list(r.solvers) == ["sinkhorn"] * 2 and (r.passes > 1).all()
    assert otce_score(fs, ys, ft, yt, n_pixels=300, repetitions=1, cost_scale="max").solvers[0] == "sinkhorn"


def test_matrix_rows_record_the_solver_and_its_passes():
    from segotce_ray.results.matrix import long_schema
    from segotce_ray.pools.pool import PixelPool
    from segotce_ray.scoring.rows import RESULT_COLUMNS
    from segotce_ray.scoring.adapters import otce_repetition as pool_repetition

    fs, ys = mixture(400, 8, 4, 0.0, 3)
    ft, yt = mixture(400, 8, 4, 0.3, 4)
    row = pool_repetition(PixelPool(fs.astype(np.float16), ys.astype(np.int16)),
                          PixelPool(ft.astype(np.float16), yt.astype(np.int16)), 7,
                          n_pixels=300, epsilon=0.1, solver="exact+polish", sampling="uniform",
                          ignore_index=255)
    assert row["solver"] == "exact+polish" and row["passes"] > 1
    assert {"solver", "passes"} <= set(RESULT_COLUMNS) & set(long_schema().names)


def test_no_dense_fallback_above_its_memory_cap():
    # the same growing edge set as above, on a problem whose dense copy is over the cap:
    # the sparse rounds go on (no N² float64 arrays) and still end exact
    cost = cost_of(1600, 1600, seed=3)
    plan = network_simplex(cost, k=2, add=2, max_degree=3, dense_fallback_entries=0)
    assert plan.edges < 0.2 * 1600 * 1600
    check_exact(plan, cost)


def test_solve_returns_one_result_type_for_every_solver():
    from segotce_ray.ot import SOLVERS, Coupling

    cost = cost_of(300, 250, seed=2)
    for solver in SOLVERS:
        r = solve(cost, 0.5, solver)
        assert isinstance(r, Coupling), solver
        assert r.exact == (solver == "emd")
    rows, cols, mass, costs = solve(cost, 0.5, "emd").support_mass()
    assert abs(mass.sum() - 1.0) < 1e-9
    np.testing.assert_allclose(costs, cost.double().numpy()[rows, cols])


def test_exact_duals_are_centred():
    # the simplex's duals may come back offset by a large constant (~5e6 at costs ~400 on
    # real pools), which swamps float32 reduced costs; the plan's duals have equal means
    cost = cost_of(1600, 1600, seed=4)
    plan = network_simplex(cost)
    top = float(cost.max())
    assert abs(float(plan.alpha.mean() - plan.beta.mean())) < 1e-6 * top
    assert float(plan.alpha.abs().max()) < 10 * top and float(plan.beta.abs().max()) < 10 * top
    check_exact(plan, cost)
