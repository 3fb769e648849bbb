"""Scoring tasks read their pools from the store themselves (the driver reads manifests only)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from segotce_ray.pools import store as store_mod
from segotce_ray.pools.pool import PixelPool
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.adapters import peer_metric, otce_metric
from segotce_ray.pools.views import StoredPool
from segotce_ray.scoring.schedules import score_pairs
from segotce_ray.pools.store import PoolStore

COLS = ["model", "target", "metric", "k", "score", "w_t", "w_d", "status", "error", "seed"]


def _pool(model: str, dataset: str, seed: int, n: int = 90, dim: int = 6) -> PixelPool:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n).astype(np.int16)
    feats = (np.eye(3, dim)[labels] * 2 + rng.normal(0, 1, (n, dim))).astype(np.float16)
    return PixelPool(feats, labels, meta={"model": model, "dataset": dataset})


def test_tasks_read_stored_pools_and_match_in_memory_pools(tmp_path, ray_local, monkeypatch):
    store = PoolStore(tmp_path / "store")
    pools, keys = {}, {}
    for i, (m, d) in enumerate([(m, d) for m in ("a", "b") for d in ("src", "t1", "t2")]):
        pools[(m, d)] = _pool(m, d, i)
        keys[(m, d)] = f"{i:02d}" * 32
        store.write(keys[(m, d)], pools[(m, d)])
    keys[("c", "src")], keys[("c", "t1")] = "ff" * 32, keys[("a", "t1")]        # c: source missing
    pairs = [(m, "src", t) for m in ("a", "b") for t in ("t1", "t2")] + [("c", "src", "t1")]
    metrics = [otce_metric(OTCESettings(n_pixels=40, repetitions=2, epsilon=1.0)),
               peer_metric("logme", n_pixels=40, repetitions=2)]
    in_memory = score_pairs(pairs[:-1], pools, seed=3, metrics=metrics, progress=False)

    def driver_must_not_read(*args, **kwargs):
        raise AssertionError("the driver read a pool")

    monkeypatch.setattr(PoolStore, "load", driver_must_not_read)
    monkeypatch.setattr(PoolStore, "read_table", driver_must_not_read)
    stored = score_pairs(pairs, keys, store=store, seed=3, metrics=metrics, progress=False)
    ok = stored[stored["model"] != "c"].reset_index(drop=True)
    pd.testing.assert_frame_equal(ok[COLS], in_memory[COLS], check_exact=True)
    failed = stored[stored["model"] == "c"]
    otce_c = failed[failed["metric"] == "otce"]
    assert (otce_c["status"] == "failed").all()
    assert "'c' on dataset 'src'" in otce_c["error"].iloc[0] and "missing from the store" in otce_c["error"].iloc[0]
    assert (failed[failed["metric"] == "logme"]["status"] == "ok").all()    # LogME needs no source


def test_a_bad_stored_pool_fails_its_pairs_on_the_worker(tmp_path, ray_local):
    store = PoolStore(tmp_path / "store")
    good, bad = _pool("m", "src", 1), _pool("m", "t1", 2)
    bad.features[4, 1] = np.nan
    store.write("aa" * 32, good)
    store.write("bb" * 32, bad)
    out = score_pairs([("m", "src", "t1")], {("m", "src"): "aa" * 32, ("m", "t1"): "bb" * 32},
                      OTCESettings(n_pixels=30, repetitions=2, epsilon=1.0), store=store,
                      progress=False)
    assert (out["status"] == "failed").all()
    assert "'m' on dataset 't1'" in out["error"].iloc[0] and "non-finite" in out["error"].iloc[0]


def test_worker_cache_reads_a_pool_once_and_evicts_least_recently_used(tmp_path, monkeypatch):
    store = PoolStore(tmp_path / "store")
    keys = [f"{i}{i}" * 32 for i in range(1, 4)]
    for i, key in enumerate(keys):
        store.write(key, _pool("m", f"d{i}", i))
    reads: list[str] = []
    real = PoolStore.load_mapped

    def counting(self, key):
        reads.append(key)
        return real(self, key)

    monkeypatch.setattr(PoolStore, "load_mapped", counting)
    monkeypatch.setattr(store_mod, "_CACHE", {})
    monkeypatch.setattr(store_mod, "CACHE_POOLS", 2)
    root = str(store.root)
    first = store_mod.load_cached(root, keys[0])
    assert store_mod.load_cached(root, keys[0]) is first and reads == [keys[0]]    # one read
    np.testing.assert_array_equal(first.features, store.load(keys[0]).features)
    store_mod.load_cached(root, keys[1])
    store_mod.load_cached(root, keys[0])                    # touch: keys[1] is now the oldest
    store_mod.load_cached(root, keys[2])                    # evicts keys[1]
    assert list(k for _, k in store_mod._CACHE) == [keys[0], keys[2]]
    store_mod.load_cached(root, keys[1])
    assert reads == [keys[0], keys[1], keys[2], keys[1]]
    # what a task is shipped instead of the pool: a few hundred bytes
    import pickle

    assert len(pickle.dumps(StoredPool(root, keys[0], 255, "pool of model 'm'"))) < 400
