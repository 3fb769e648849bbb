"""Fan-out scoring on Ray: determinism across workers/order/retries, failure isolation, resume."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segotce_ray.pools.pool import PixelPool
from segotce_ray.scoring.rows import RESULT_COLUMNS, TIME_COLUMNS, ScorePair
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.adapters import MetricSpec, otce_metric, otce_repetition, peer_metric, task_memory_bytes
from segotce_ray.scoring.tasks import PairScorer
from segotce_ray.seeds import repetition_seed
from segotce_ray.scoring.schedules import score_pairs

# Small and quick: 64 pixels per side, 3 repetitions, a soft ε so Sinkhorn converges fast.
SETTINGS = OTCESettings(n_pixels=64, repetitions=3, epsilon=10.0)
MODELS = {"sharp": 2.0, "mid": 1.0, "blurry": 0.2}   # class separation of each model's features
TARGETS = ["t1", "t2"]
SOURCE = "src"


def mixture_pool(model: str, dataset: str, separation: float, seed: int, n: int = 160,
                 dim: int = 6, classes: int = 3) -> PixelPool:
    """Gaussian mixture: class c centred at separation·e_c (+ a shared random offset)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    centres = separation * np.eye(classes, dim) + rng.normal(0, 0.3, (1, dim))
    feats = centres[labels] + rng.normal(0, 1.0, (n, dim))
    return PixelPool(feats.astype(np.float16), labels.astype(np.int16),
                     image_ids=np.array([f"{dataset}_{i % 7}" for i in range(n)], dtype=object),
                     meta={"model": model, "dataset": dataset})


@pytest.fixture(scope="module")
def zoo() -> tuple[list[tuple[str, str, str]], dict[tuple[str, str], PixelPool]]:
    pools: dict[tuple[str, str], PixelPool] = {}
    pairs = []
    for i, (model, sep) in enumerate(MODELS.items()):
        pools[(model, SOURCE)] = mixture_pool(model, SOURCE, sep, seed=10 * i)
        for j, target in enumerate(TARGETS):
            pools[(model, target)] = mixture_pool(model, target, sep, seed=10 * i + j + 1)
            pairs.append((model, SOURCE, target))
    return pairs, pools


def comparable(df: pd.DataFrame) -> pd.DataFrame:
    """Everything but wall time."""
    return df.drop(columns=TIME_COLUMNS).reset_index(drop=True)


@pytest.fixture(scope="module")
def reference(ray_local, zoo) -> pd.DataFrame:
    pairs, pools = zoo
    return score_pairs(pairs, pools, SETTINGS, seed=5, max_in_flight=1, progress=False)


def test_table_shape_and_values(reference, zoo):
    pairs, _ = zoo
    assert list(reference.columns) == RESULT_COLUMNS
    assert len(reference) == len(pairs) * SETTINGS.repetitions
    assert (reference["status"] == "ok").all()
    assert reference["error"].isna().all()
    assert np.isfinite(reference["score"]).all()
    assert (reference["score"] == -reference["w_t"]).all()
    assert (reference["n_source"] == 64).all() and (reference["n_target"] == 64).all()
    # Each row's seed is the documented derivation.
    row = reference.iloc[4]
    assert row["seed"] == repetition_seed(5, row["model"], row["target"], int(row["k"]))
    # Repetitions differ (fresh samples) and the separable model transfers best.
    assert reference.groupby(["model", "target"])["score"].nunique().min() > 1
    means = reference.groupby("model")["score"].mean()
    assert means["sharp"] > means["blurry"]


def test_same_table_with_two_workers_any_order(reference, zoo, ray_local):
    pairs, pools = zoo
    shuffled = pairs[:]
    random.Random(1).shuffle(shuffled)
    shuffled_pools = dict(random.Random(2).sample(list(pools.items()), len(pools)))
    two = score_pairs(shuffled, shuffled_pools, SETTINGS, seed=5, max_in_flight=2, progress=False)
    pd.testing.assert_frame_equal(comparable(two), comparable(reference), check_exact=True)
    grouped = score_pairs([ScorePair(*p) for p in reversed(pairs)], pools, SETTINGS, seed=5,
                          reps_per_task=SETTINGS.repetitions, progress=False)
    pd.testing.assert_frame_equal(comparable(grouped), comparable(reference), check_exact=True)
    other_seed = score_pairs(pairs[:1], pools, SETTINGS, seed=6, progress=False)
    assert not np.array_equal(other_seed["score"], reference["score"][:3])


def test_seed_is_stable_and_distinct():
    a = repetition_seed(0, "m", "t", 0)
    assert a == repetition_seed(0, "m", "t", 0)
    assert 0 <= a < 2**63
    others = {repetition_seed(0, "m", "t", 1), repetition_seed(1, "m", "t", 0),
              repetition_seed(0, "mt", "", 0), repetition_seed(0, "t", "m", 0)}
    assert a not in others and len(others) == 4


def _crash_once_metric(marker: Path) -> MetricSpec:
    """OTCE whose task kills its worker process the first time it scores (blurry, t2, k=1)."""
    base = otce_metric(SETTINGS)

    def repetition(source, target, seed, **params):
        if (source.meta["model"], target.meta["dataset"]) == ("blurry", "t2") and \
                seed == repetition_seed(5, "blurry", "t2", 1) and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker dies mid-run, as on a lost node
        return otce_repetition(source, target, seed, **params)

    return MetricSpec("otce", repetition, base.repetitions, base.n_pixels, base.params)


def test_worker_killed_mid_run_is_retried_and_matrix_unchanged(reference, zoo, tmp_path, ray_local):
    pairs, pools = zoo
    marker = tmp_path / "crashed"
    out = score_pairs(pairs, pools, seed=5, metrics=[_crash_once_metric(marker)], max_retries=2,
                      progress=False)
    assert marker.exists(), "the crash was never triggered"
    pd.testing.assert_frame_equal(comparable(out), comparable(reference), check_exact=True)


def test_worker_death_without_retries_fails_only_that_repetition(reference, zoo, tmp_path, ray_local):
    pairs, pools = zoo
    out = score_pairs(pairs, pools, seed=5, metrics=[_crash_once_metric(tmp_path / "m")],
                      max_retries=0, progress=False)
    failed = out[out["status"] == "failed"]
    assert list(zip(failed["model"], failed["target"], failed["k"])) == [("blurry", "t2", 1)]
    assert "lost" in failed["error"].iloc[0]
    ok = out["status"] == "ok"
    pd.testing.assert_frame_equal(comparable(out[ok]), comparable(reference[ok]), check_exact=True)


class _BrokenStore:
    """A store where key 'corrupt' fails to load and 'absent' does not exist."""

    def __init__(self, pools: dict[str, PixelPool]) -> None:
        self.pools = pools
        self.loads: dict[str, int] = {}

    def has(self, key: str) -> bool:
        return key != "absent"

    def load(self, key: str) -> PixelPool:
        self.loads[key] = self.loads.get(key, 0) + 1
        if key == "corrupt":
            raise OSError("Parquet magic bytes not found in footer")
        return self.pools[key]


def _failing_solve():
    """OTCE whose solve raises for model 'mid' (a closure, so Ray ships it by value)."""

    def repetition(source, target, seed, **params):
        if source.meta["model"] == "mid":
            raise np.linalg.LinAlgError("solver blew up")
        return otce_repetition(source, target, seed, **params)

    return repetition


def test_failed_pairs_are_isolated(reference, zoo, ray_local):
    pairs, pools = zoo
    keyed = {f"{m}@{d}": p for (m, d), p in pools.items()}
    bad = dict(pools)
    bad[("bad_dim", SOURCE)] = mixture_pool("bad_dim", SOURCE, 1.0, 90, dim=6)
    bad[("bad_dim", "t1")] = mixture_pool("bad_dim", "t1", 1.0, 91, dim=5)
    nan_pool = mixture_pool("nan", "t1", 1.0, 92)
    nan_pool.features[3, 2] = np.nan
    bad.update({("nan", SOURCE): pools[("sharp", SOURCE)], ("nan", "t1"): nan_pool,
                ("broken", SOURCE): "corrupt", ("broken", "t1"): "sharp@t1",
                ("gone", SOURCE): "absent", ("gone", "t1"): "sharp@t1",
                ("extract_failed", SOURCE): RuntimeError("model 'extract_failed': CUDA OOM"),
                ("extract_failed", "t1"): "sharp@t1"})
    for key, value in bad.items():
        if isinstance(value, PixelPool) and key in pools:
            keyed[f"{key[0]}@{key[1]}"] = value
            bad[key] = f"{key[0]}@{key[1]}"   # the good pairs go through the store too
    store = _BrokenStore(keyed)
    extra = [(m, SOURCE, "t1") for m in ("bad_dim", "nan", "broken", "gone", "extract_failed",
                                         "no_pool")]
    seen: list[dict] = []
    out = score_pairs(pairs + extra, bad, SETTINGS, store=store, seed=5, on_result=seen.append,
                      progress=False)
    assert len(seen) == len(out)
    # Each pool was read once and shared by all its tasks (sharp@t1 by four pairs' tasks).
    assert set(store.loads.values()) == {1} and "sharp@t1" in store.loads
    errors = out[out["status"] == "failed"].groupby("model")["error"].first()
    assert set(errors.index) == {m for m, _, _ in extra}
    assert "6-dim features" in errors["bad_dim"] and "5" in errors["bad_dim"]
    assert "non-finite" in errors["nan"]
    assert "magic bytes" in errors["broken"] and "store key corrupt" in errors["broken"]
    assert "missing from the store" in errors["gone"]
    assert "CUDA OOM" in errors["extract_failed"]
    assert "no pool was given" in errors["no_pool"] and "'no_pool'" in errors["no_pool"]
    assert (out[out["status"] == "failed"].groupby("model").size() == SETTINGS.repetitions).all()
    good = out[out["model"].isin(MODELS)]
    pd.testing.assert_frame_equal(comparable(good), comparable(reference), check_exact=True)

    # A solve that raises fails that pair's repetitions only, with the error text.
    base = otce_metric(SETTINGS)
    spec = MetricSpec("otce", _failing_solve(), base.repetitions, base.n_pixels, base.params)
    solved = score_pairs(pairs, pools, seed=5, metrics=[spec], progress=False)
    mid = solved["model"] == "mid"
    assert (solved.loc[mid, "status"] == "failed").all()
    assert solved.loc[mid, "error"].str.contains("LinAlgError: solver blew up").all()
    pd.testing.assert_frame_equal(comparable(solved[~mid]), comparable(reference[~mid]),
                                  check_exact=True)


def test_resume_skips_finished_rows(reference, zoo, ray_local):
    pairs, pools = zoo
    half = reference.iloc[::2]
    failed_before = reference.iloc[1:2].assign(status="failed", score=np.nan)
    seen: list[dict] = []
    out = score_pairs(pairs, pools, SETTINGS, seed=5, done=pd.concat([half, failed_before]),
                      on_result=seen.append, progress=False)
    # Only the missing repetitions ran (the failed one again); the table is the full one.
    assert len(seen) == len(reference) - len(half)
    assert {(r["model"], r["target"], r["k"]) for r in seen} == set(
        zip(reference["model"][1::2], reference["target"][1::2], reference["k"][1::2]))
    pd.testing.assert_frame_equal(comparable(out), comparable(reference), check_exact=True)
    nothing: list[dict] = []
    stray = out.iloc[:2].assign(model="not_requested")       # rows of other pairs are ignored
    again = score_pairs(pairs, pools, SETTINGS, seed=5, done=pd.concat([out, stray]),
                        on_result=nothing.append, progress=False)
    assert nothing == []
    pd.testing.assert_frame_equal(comparable(again), comparable(reference), check_exact=True)


def test_memory_request_and_infeasible_pair(zoo, ray_local):
    assert PairScorer().num_gpus == 0          # no GPU on this cluster: none requested
    assert PairScorer(num_gpus=0.5).num_gpus == 0.5
    assert task_memory_bytes(10_000, 256, 0) - task_memory_bytes(0, 256, 0) >= 3 * 10_000**2 * 4
    assert task_memory_bytes(100, 8, 1000) > task_memory_bytes(100, 8, 0)
    pairs, pools = zoo
    huge = OTCESettings(n_pixels=5_000_000, repetitions=1)   # 3·N²·4 bytes = 300 TB
    out = score_pairs(pairs[:1], pools, huge, progress=False)
    assert (out["status"] == "failed").all()
    assert "more than the largest node offers" in out["error"].iloc[0]


def test_bad_arguments(zoo, ray_local):
    pairs, pools = zoo
    with pytest.raises(ValueError, match="two source datasets"):
        score_pairs([("a", "s1", "t"), ("a", "s2", "t")], pools, SETTINGS, progress=False)
    with pytest.raises(ValueError, match="model, source dataset, target"):
        score_pairs([("a", "t")], pools, SETTINGS, progress=False)
    with pytest.raises(ValueError, match="repetitions"):
        OTCESettings(repetitions=0)


def test_peer_metric_rows_share_the_table(reference, zoo, ray_local):
    pairs, pools = zoo
    no_source = {k: v for k, v in pools.items() if k[1] != SOURCE}   # peers read the target only
    out = score_pairs(pairs, no_source, seed=5, progress=False,
                      metrics=[peer_metric("logme", n_pixels=64, repetitions=2)])
    assert (out["status"] == "ok").all() and set(out["metric"]) == {"logme"}
    assert len(out) == 2 * len(pairs) and (out["n_target"] == 64).all()
    assert out.groupby(["model", "target"])["score"].nunique().min() == 2   # fresh draws per k
    assert out["seed"].tolist() == [repetition_seed(5, m, t, k) for m, t, k in
                                    zip(out["model"], out["target"], out["k"])]
    with pytest.raises(KeyError, match="unknown peer metric"):
        peer_metric("nope")


def test_probs_view_scores_the_probs_column_and_a_pool_without_it_fails_alone(zoo, ray_local):
    """ProbsView: metrics see the softmax column as features; no probs column = that pair fails."""
    from segotce_ray.pools.views import ProbsView, probs_as_features

    pairs, pools = zoo
    rng = np.random.default_rng(3)
    with_probs = {}
    for key, pool in pools.items():
        logits = rng.normal(0, 1, (len(pool), 4)) + 3 * np.eye(4)[pool.labels % 4]
        p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        with_probs[key] = PixelPool(pool.features, pool.labels, image_ids=pool.image_ids,
                                    probs=p.astype(np.float16), meta=pool.meta)
    views = {k: ProbsView(v) for k, v in with_probs.items()}
    views[("blurry", "t2")] = ProbsView(pools[("blurry", "t2")])     # no probs column
    got = score_pairs(pairs, views, SETTINGS, seed=5, progress=False)
    swapped = {k: probs_as_features(v) for k, v in with_probs.items()}
    want = score_pairs(pairs, swapped, SETTINGS, seed=5, progress=False)
    bad = (got.model == "blurry") & (got.target == "t2")
    assert (got[bad].status == "failed").all()
    assert got[bad].error.str.contains("probs column").all()
    assert got[bad].error.str.contains("'blurry' on dataset 't2'").all()
    assert (got[~bad].status == "ok").all()
    np.testing.assert_allclose(got[~bad].score, want[~bad].score, rtol=0, atol=1e-12)
    plain = score_pairs(pairs, pools, SETTINGS, seed=5, progress=False)
    assert not np.allclose(got[~bad].score, plain[~bad].score)
