"""Adaptive repetition schedule: determinism, pruning marks, top-1 kept, savings, agreement."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from segotce_ray.scoring.adaptive import SCHEDULE_COLUMNS, AdaptiveSettings, interval_quantile, score_pairs_adaptive
from segotce_ray.results.matrix import TransferabilityMatrix
from segotce_ray.pools.pool import PixelPool
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.adapters import MetricSpec
from segotce_ray.seeds import repetition_seed
from segotce_ray.scoring.rows import TIME_COLUMNS
from segotce_ray.scoring.schedules import score_pairs

K = 8
SIGMA = 0.05


def gaussian_metric(truth: dict[tuple[str, str], float], sigma: float = SIGMA, *,
                    higher_is_better: bool = True, fail: tuple[str, str, int] | None = None
                    ) -> MetricSpec:
    """A cheap metric with a known answer: score = truth[(model, target)] + σ·N(0, 1) from seed.

    The closure travels to the workers by value; ``fail`` = (model, target, k) raises there.
    """

    def repetition(source, target, seed, **params):
        key = (target.meta["model"], target.meta["dataset"])
        if fail is not None and key == fail[:2] and \
                seed == repetition_seed(11, fail[0], fail[1], fail[2]):
            raise ArithmeticError("solver blew up")
        noise = np.random.default_rng(seed).normal()
        return {"score": truth[key] + sigma * noise}

    return MetricSpec("otce", repetition, K, 16, {}, needs_source=False,
                      higher_is_better=higher_is_better)


def tiny_pool(model: str, dataset: str, sep: float = 1.0, seed: int = 0, n: int = 96) -> PixelPool:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    feats = sep * np.eye(3, 4)[labels] + rng.normal(0, 1.0, (n, 4))
    return PixelPool(feats.astype(np.float16), labels.astype(np.int16),
                     meta={"model": model, "dataset": dataset})


@pytest.fixture(scope="module")
def synthetic_zoo():
    """40 candidates × 2 targets, true scores spread over [0, 2] with a clear best per target."""
    rng = np.random.default_rng(3)
    truth, pools, pairs = {}, {}, []
    for t in ("t1", "t2"):
        values = rng.uniform(0.0, 1.6, 40)
        values[rng.integers(40)] = 2.0          # the clear-cut winner
        for i, v in enumerate(values):
            m = f"m{i:02d}"
            truth[(m, t)] = float(v)
            pools[(m, t)] = tiny_pool(m, t, seed=i)
            pairs.append((m, "src", t))
    return pairs, pools, truth


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=TIME_COLUMNS).reset_index(drop=True)


@pytest.fixture(scope="module")
def adaptive_ref(synthetic_zoo, ray_local):
    pairs, pools, truth = synthetic_zoo
    return score_pairs_adaptive(pairs, pools, metric=gaussian_metric(truth), seed=11,
                                schedule=AdaptiveSettings(min_repetitions=2, top_k=3),
                                max_in_flight=16, progress=False)


@pytest.fixture(scope="module")
def full_ref(synthetic_zoo, ray_local):
    pairs, pools, truth = synthetic_zoo
    return score_pairs(pairs, pools, metrics=[gaussian_metric(truth)], seed=11, progress=False)


def test_same_seed_same_decisions_and_table_whatever_the_in_flight(synthetic_zoo, adaptive_ref):
    pairs, pools, truth = synthetic_zoo
    again = score_pairs_adaptive(list(reversed(pairs)), pools, metric=gaussian_metric(truth),
                                 seed=11, schedule=AdaptiveSettings(min_repetitions=2, top_k=3),
                                 max_in_flight=1, progress=False)
    pd.testing.assert_frame_equal(again.decisions, adaptive_ref.decisions, check_exact=True)
    pd.testing.assert_frame_equal(comparable(again.table), comparable(adaptive_ref.table),
                                  check_exact=True)
    # Another seed draws other repetitions, so other numbers (the check can fail).
    other = score_pairs_adaptive(pairs, pools, metric=gaussian_metric(truth), seed=12,
                                 schedule=AdaptiveSettings(min_repetitions=2, top_k=3),
                                 progress=False)
    assert not np.array_equal(other.table["score"].to_numpy()[:10],
                              adaptive_ref.table["score"].to_numpy()[:10])


def test_resume_from_a_random_subset_of_finished_rows_gives_the_same_run(synthetic_zoo,
                                                                       adaptive_ref, full_ref):
    pairs, pools, truth = synthetic_zoo
    # Finished rows from an interrupted run (any subset), plus rows only the full run has.
    done = pd.concat([adaptive_ref.table.sample(frac=0.5, random_state=1),
                      full_ref.sample(frac=0.3, random_state=2)]).drop_duplicates(
        ["model", "target", "k"])
    seen: list[dict] = []
    resumed = score_pairs_adaptive(pairs, pools, metric=gaussian_metric(truth), seed=11,
                                   schedule=AdaptiveSettings(min_repetitions=2, top_k=3),
                                   done=done, on_result=seen.append, progress=False)
    pd.testing.assert_frame_equal(resumed.decisions, adaptive_ref.decisions, check_exact=True)
    pd.testing.assert_frame_equal(comparable(resumed.table), comparable(adaptive_ref.table),
                                  check_exact=True)
    done_keys = set(zip(done["model"], done["target"], done["k"]))
    assert seen and not any((r["model"], r["target"], r["k"]) in done_keys for r in seen)


def test_pruned_candidates_are_marked_with_their_partial_estimate(adaptive_ref):
    table, dec = adaptive_ref.table, adaptive_ref.decisions
    assert set(SCHEDULE_COLUMNS) <= set(table.columns)
    pruned = dec[dec["schedule_status"] == "pruned"]
    complete = dec[dec["schedule_status"] == "complete"]
    assert len(pruned) > len(dec) // 2 and len(complete) >= 3 * 2   # top_k per target survive
    assert (pruned["repetitions_done"] < K).all() and (pruned["repetitions_done"] >= 2).all()
    assert (complete["repetitions_done"] == K).all()
    assert (pruned["upper"] < pruned["threshold"]).all()
    # Each pair's rows are exactly its repetitions 0..n-1, tagged with its status and count.
    for (m, t), grp in table.groupby(["model", "target"]):
        row = dec[(dec["model"] == m) & (dec["target"] == t)].iloc[0]
        assert list(grp["k"]) == list(range(row["repetitions_done"]))
        assert (grp["schedule_status"] == row["schedule_status"]).all()
        assert (grp["repetitions_done"] == row["repetitions_done"]).all()
        assert math.isclose(grp["score"].mean(), row["mean"], rel_tol=1e-12)
    # The matrix reduces a pruned pair to the mean of its partial repetitions.
    summary = TransferabilityMatrix(table).summary().set_index(["model", "target"])
    for r in pruned.itertuples():
        assert summary.loc[(r.model, r.target), "n"] == r.repetitions_done
        assert math.isclose(summary.loc[(r.model, r.target), "mean"], r.mean, rel_tol=1e-12)


def test_true_best_kept_fewer_repetitions_and_agreement_with_full(synthetic_zoo, adaptive_ref,
                                                                 full_ref):
    _, _, truth = synthetic_zoo
    ranks = TransferabilityMatrix(adaptive_ref.table).rankings()
    full_ranks = TransferabilityMatrix(full_ref).rankings()
    for t in ("t1", "t2"):
        best = max((v, m) for (m, tt), v in truth.items() if tt == t)[1]
        r = ranks[ranks["target"] == t]
        assert r.iloc[0]["model"] == best
        fr = full_ranks[full_ranks["target"] == t]
        assert list(r["model"][:3]) == list(fr["model"][:3])
    assert adaptive_ref.full_repetitions == len(full_ref)
    assert adaptive_ref.repetitions < 0.5 * len(full_ref)
    both = adaptive_ref.table.merge(full_ref, on=["model", "target", "metric", "k"],
                                    suffixes=("", "_full"))
    assert len(both) == len(adaptive_ref.table)
    assert (both["score"] == both["score_full"]).all() and (both["seed"] == both["seed_full"]).all()


def test_lower_is_better_metric_prunes_the_high_ones(synthetic_zoo, ray_local):
    pairs, pools, truth = synthetic_zoo
    run = score_pairs_adaptive([p for p in pairs if p[2] == "t1"], pools,
                               metric=gaussian_metric(truth, higher_is_better=False), seed=11,
                               schedule=AdaptiveSettings(min_repetitions=2, top_k=2),
                               progress=False)
    dec = run.decisions
    worst = min((v, m) for (m, t), v in truth.items() if t == "t1")[1]   # best when lower wins
    assert dec.set_index("model").loc[worst, "schedule_status"] == "complete"
    pruned = dec[dec["schedule_status"] == "pruned"]
    assert len(pruned) > 10 and (pruned["lower"] > pruned["threshold"]).all()


def test_failed_repetition_and_missing_pool_are_isolated(synthetic_zoo, adaptive_ref, ray_local):
    pairs, pools, truth = synthetic_zoo
    best = max((v, m) for (m, t), v in truth.items() if t == "t1")[1]
    pools = {k: v for k, v in pools.items() if k != ("m05", "t2")}
    run = score_pairs_adaptive(pairs, pools, metric=gaussian_metric(truth, fail=(best, "t1", 3)),
                               seed=11, schedule=AdaptiveSettings(min_repetitions=2, top_k=3),
                               progress=False)
    dec = run.decisions.set_index(["model", "target"])
    assert dec.loc[(best, "t1"), "schedule_status"] == "failed"
    assert dec.loc[("m05", "t2"), "schedule_status"] == "failed"
    rows = run.table.set_index(["model", "target", "k"])
    assert "solver blew up" in rows.loc[(best, "t1", 3), "error"]
    assert "no pool was given" in rows.loc[("m05", "t2", 0), "error"]
    # Nothing finished is lost; the rest of t1 is decided without the failed candidate.
    assert (rows.loc[(best, "t1")].loc[[0, 1, 2], "status"] == "ok").all()
    assert (run.table["status"] == "ok").sum() > 0.2 * len(run.table)


def test_otce_repetitions_agree_with_the_full_schedule(ray_local):
    """Real SEG-OTCE: the adaptive run's repetitions are the full run's, bit for bit."""
    settings = OTCESettings(n_pixels=32, repetitions=4, epsilon=10.0)
    pools, pairs = {}, []
    for i, sep in enumerate([0.0, 0.3, 0.6, 3.0, 6.0]):
        m = f"sep{i}"
        pools[(m, "src")] = tiny_pool(m, "src", 6.0, seed=100 + i)
        pools[(m, "tgt")] = tiny_pool(m, "tgt", sep, seed=200 + i)
        pairs.append((m, "src", "tgt"))
    full = score_pairs(pairs, pools, settings, seed=4, progress=False)
    run = score_pairs_adaptive(pairs, pools, settings, seed=4, progress=False,
                               schedule=AdaptiveSettings(min_repetitions=2, top_k=1))
    both = run.table.merge(full, on=["model", "target", "metric", "k"], suffixes=("", "_full"))
    assert len(both) == len(run.table) and len(run.table) >= 2 * len(pairs)
    for col in ("score", "w_t", "w_d", "seed"):
        assert (both[col] == both[f"{col}_full"]).all(), col
    top = TransferabilityMatrix(run.table).rankings().iloc[0]["model"]
    assert top == TransferabilityMatrix(full).rankings().iloc[0]["model"]


def test_settings_and_quantile():
    with pytest.raises(ValueError, match="min_repetitions"):
        AdaptiveSettings(min_repetitions=0)
    with pytest.raises(ValueError, match="alpha"):
        AdaptiveSettings(alpha=1.5)
    q1 = interval_quantile(0.05, 1, 1, 10_000)
    assert abs(q1 - 1.96) < 0.01                               # ≈ normal two-sided 95 %
    assert interval_quantile(0.05, 200, 9, 200) > interval_quantile(0.05, 20, 9, 200) > q1
    assert interval_quantile(0.05, 10, 5, 0) == math.inf
