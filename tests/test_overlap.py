"""Scoring overlaps extraction: a pair starts as soon as its pools are published.

The fan-out loop with a :class:`PoolFeed` (pools arriving from another thread, as the
extraction thread of a job sends them): units wait for their pools, the in-flight bound holds
while the feed is open, failed and missing pools fail their pairs with the reason, and the
table is the one of a run with every pool given up front (full and adaptive schedules). Then a
real job on a fresh store with a slow model: the fast model's pairs are scored while the slow
one is still being extracted, every row starts after its pools were published, the matrix is
the in-process reference, and the driver opens no pool shard.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segotce_ray.pools.pool import PixelPool
from segotce_ray.scoring.adapters import metric_spec
from segotce_ray.scoring.adaptive import AdaptiveSettings, score_pairs_adaptive
from segotce_ray.scoring.feed import PoolFeed
from segotce_ray.scoring.rows import TIME_COLUMNS, ScorePair
from segotce_ray.scoring.schedules import score_pairs
from segotce_ray.scoring.settings import OTCESettings
from tests.fixtures_layouts import make_folder
from tests.shard_watch import ShardWatch

SETTINGS = OTCESettings(n_pixels=60, repetitions=3, epsilon=1.0, solver="sinkhorn")
METRICS = [metric_spec("otce", SETTINGS), metric_spec("logme", SETTINGS)]
MODELS = ("m1", "m2")
PAIRS = [ScorePair(m, "src", t) for m in MODELS for t in ("t1", "t2")]


def _pool(seed: int, n: int = 150, dim: int = 6) -> PixelPool:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int16)
    feats = (np.eye(3, dim)[labels] * 2.0 + rng.normal(0, 1, (n, dim))).astype(np.float16)
    return PixelPool(feats, labels)


POOLS = {(m, d): _pool(10 * i + j) for i, m in enumerate(MODELS)
         for j, d in enumerate(("src", "t1", "t2"))}


def _same(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=TIME_COLUMNS).reset_index(drop=True)


def _produce(feed: PoolFeed, items: list, delay: float, times: dict,
             after: threading.Event | None = None) -> threading.Thread:
    """Put ``items`` into ``feed`` after ``delay`` s (and once ``after`` is set, 60 s at most),
    0.2 s apart; then close it."""

    def run() -> None:
        time.sleep(delay)
        if after is not None:
            after.wait(60)
        for pool, outcome in items:
            times[pool] = time.time()
            feed.put(pool, outcome)
            time.sleep(0.2)
        feed.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_units_wait_for_their_pools_and_the_table_is_the_same(ray_local):
    reference = score_pairs(PAIRS, POOLS, metrics=METRICS, seed=3, progress=False)
    late = [p for p in POOLS if p[0] == "m2"]
    feed = PoolFeed({p: POOLS[p] for p in POOLS if p[0] == "m1"}, late, limit=1)
    put: dict = {}
    first_row = threading.Event()      # the late pools come once a row of m1 is back: m1's
    producer = _produce(feed, [(p, POOLS[p]) for p in late], 0.5, put, after=first_row)
    table = score_pairs(PAIRS, {}, metrics=METRICS, seed=3, progress=False, feed=feed,
                        on_result=lambda row: first_row.set())   # units must not wait for m2's
    producer.join()
    pd.testing.assert_frame_equal(_same(table), _same(reference))
    assert (table["status"] == "ok").all()
    for r in table.itertuples():            # no repetition started before its pools arrived
        if r.model == "m2":
            needs = [("m2", r.target)] + ([("m2", "src")] if r.metric == "otce" else [])
            assert r.started_at >= max(put[p] for p in needs), r
    assert (table[table.model == "m1"]["started_at"] < min(put.values())).any()
    # the bound: while the feed was open, one task at a time
    open_rows = table[table["finished_at"] < feed.closed_at].sort_values("started_at")
    assert len(open_rows) >= 2
    assert (open_rows["started_at"].to_numpy()[1:] >= open_rows["finished_at"].to_numpy()[:-1]).all()


def test_a_failed_or_missing_pool_fails_its_pairs_with_the_reason(ray_local):
    feed = PoolFeed({p: POOLS[p] for p in POOLS if p[0] == "m1" or p[1] == "src"},
                    [("m2", "t1"), ("m2", "t2")])
    producer = _produce(feed, [(("m2", "t1"), RuntimeError("pool m2@t1: model exploded"))], 0.5, {})
    table = score_pairs(PAIRS, {}, metrics=METRICS, seed=3, progress=False, feed=feed)
    producer.join()
    ok = table[table.model == "m1"]
    assert (ok["status"] == "ok").all() and len(ok) == 2 * 2 * 3
    t1 = table[(table.model == "m2") & (table.target == "t1")]
    t2 = table[(table.model == "m2") & (table.target == "t2")]
    assert len(t1) == len(t2) == 2 * 3
    assert (t1["status"] == "failed").all() and t1["error"].str.contains("model exploded").all()
    assert (t2["status"] == "failed").all()
    assert t2["error"].str.contains("pool m2@t2: extraction ended without producing it").all()
    assert t1["started_at"].notna().all() and t2["finished_at"].notna().all()


def test_adaptive_with_a_feed_and_two_metrics_decides_as_each_alone(ray_local):
    sched = AdaptiveSettings(min_repetitions=2, top_k=1, alpha=0.5)
    alone = {m.name: score_pairs_adaptive(PAIRS, POOLS, metric=m, seed=5, schedule=sched,
                                          progress=False) for m in METRICS}
    late = [p for p in POOLS if p[0] == "m1"]
    feed = PoolFeed({p: POOLS[p] for p in POOLS if p[0] == "m2"}, late)
    producer = _produce(feed, [(p, POOLS[p]) for p in late], 1.0, {})
    both = score_pairs_adaptive(PAIRS, {}, metrics=METRICS, seed=5, schedule=sched,
                                progress=False, feed=feed)
    producer.join()
    for name, run in alone.items():
        mine = both.table[both.table.metric == name]
        pd.testing.assert_frame_equal(_same(mine), _same(run.table))
        pd.testing.assert_frame_equal(
            both.decisions[both.decisions.metric == name].reset_index(drop=True),
            run.decisions.reset_index(drop=True))


def test_feed_rejects_a_bad_limit_and_closes_what_never_came():
    with pytest.raises(ValueError, match="limit"):
        PoolFeed({}, [], limit=0)
    feed = PoolFeed({("a", "x"): "k"}, [("a", "x"), ("b", "y")])
    assert feed.expected == {("b", "y")}
    feed.close(OSError("disk full"))
    got = feed.take(None)
    assert not feed.open and set(got) == {("b", "y")}
    assert "pool b@y: extraction ended without producing it: OSError: disk full" in str(got[("b", "y")])


# --------------------------------------------------------------------------- a real job

K = 2


def _write_job(tmp: Path) -> Path:
    lm3 = {0: "road", 1: "car", 2: "person"}
    for i, name in enumerate(("src", "t1", "t2")):
        make_folder(tmp / "data" / name, n=3, size=(32, 48), label_map=lm3, seed=30 + i)
    spec = {
        "name": "overlap", "seed": 0, "store": "store", "output": "runs",
        "metrics": ["otce", "logme"],
        "otce": {"n_pixels": 60, "repetitions": K, "epsilon": 1.0, "solver": "sinkhorn"},
        "extraction": {"pixels_per_image": 40, "batch_size": 1},
        "datasets": {n: {"format": "folder", "root": str(tmp / "data" / n), "label_map": lm3}
                     for n in ("src", "t1", "t2")},
        "models": {"a_fast": {"architecture": "tests.tiny_segmodels:tiny_segnet",
                              "num_classes": 3, "source": "src"},
                   "z_slow": {"architecture": "tests.tiny_segmodels:tiny_segnet",
                              "num_classes": 3, "source": "src", "kwargs": {"delay": 1.0}}},
        "targets": ["t1", "t2"],
    }
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def test_job_scores_while_it_extracts_and_the_driver_opens_no_shard(tmp_path, ray_local):
    from segotce_ray.job.run import run_job
    from segotce_ray.pools.store import PoolStore
    from segotce_ray.scoring.rows import results_frame
    from segotce_ray.spec.build import load_spec
    from tests.test_multinode import SCORE_COLS, reference_table

    spec = load_spec(_write_job(tmp_path))
    with ShardWatch(spec.store) as watch:
        result = run_job(spec, run_id="r", progress=False)
    assert result.status == "ok", result.summary()
    assert watch.hits == [], watch.hits[:5]
    store = PoolStore(spec.store)
    published = {(p.model, p.dataset): store.manifest(p.key)["published_at"]
                 for p in result.plan.pools}
    assert all(isinstance(v, float) for v in published.values())
    table = results_frame(pd.read_parquet(result.run_dir / "matrix.parquet"))
    assert table["started_at"].notna().all() and (table["finished_at"] >= table["started_at"]).all()
    for r in table.itertuples():
        needs = [(r.model, r.target)] + ([(r.model, "src")] if r.metric == "otce" else [])
        assert r.started_at >= max(published[p] for p in needs) - 1e-3, r
    last = max(published.values())
    fast = table[table.model == "a_fast"]
    assert (fast["started_at"] < last).any(), "no repetition ran while extraction went on"
    info = json.loads((result.run_dir / "run.json").read_text())
    line = info["timeline"]
    assert line["last_pool_published_at"] == pytest.approx(last)
    assert line["started_before_last_pool"] == int((table["started_at"] < last).sum()) > 0
    assert "started before the last pool was published" in (result.run_dir / "report.md").read_text()
    ref = reference_table(spec)
    pd.testing.assert_frame_equal(table[SCORE_COLS].reset_index(drop=True),
                                  ref[SCORE_COLS].reset_index(drop=True))


def test_scoring_limit_leaves_the_pipeline_its_cpus():
    from segotce_ray.job.overlap import scoring_limit

    assert scoring_limit({"CPU": 2.0}, None, gpu=False) == 1           # 1 actor + 2 readers: ≥ 1 anyway
    assert scoring_limit({"CPU": 16.0}, None, gpu=False) == 11         # 16 − 1 actor − 16 × ¼
    assert scoring_limit({"CPU": 16.0}, 4, gpu=False) == 8             # 4 actors take a CPU each
    assert scoring_limit({"CPU": 16.0, "GPU": 4.0}, None, gpu=True) == 12   # GPU actors: readers only


def test_stored_pools_are_scored_without_the_driver_opening_a_shard(tmp_path, ray_local):
    """Store keys go to the tasks as they are; a pool whose manifest does not name its feature
    dim (written before manifests did) has its schema read on a worker, not in the driver."""
    from segotce_ray.pools.store import MANIFEST, PoolStore

    store = PoolStore(tmp_path / "store")
    keys = {p: f"{abs(hash(p)) % 16**12:012x}" + "0" * 52 for p in POOLS}
    for p, key in keys.items():
        store.write(key, POOLS[p])
    legacy = store.path(keys[("m1", "t1")]) / MANIFEST
    man = json.loads(legacy.read_text())
    del man["metadata"]["dim"]
    legacy.write_text(json.dumps(man))
    reference = score_pairs(PAIRS, POOLS, metrics=METRICS, seed=3, progress=False)
    with ShardWatch(store.root) as watch:
        table = score_pairs(PAIRS, keys, store=store, metrics=METRICS, seed=3, progress=False)
    assert watch.hits == [], watch.hits[:5]
    pd.testing.assert_frame_equal(_same(table), _same(reference))
