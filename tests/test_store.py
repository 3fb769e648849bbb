"""Content-addressed pool store: keys, atomic publish, shards, readers."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from segotce_ray.pools.pool import PixelPool
from segotce_ray.pools.store import PoolStore, StoreError, pool_key

KEY_ARGS = dict(model="m", weights_hash="ab" * 32, dataset="d", fingerprint="cd" * 32,
                layer="penultimate", sampling={"pixels_per_image": 100, "mode": "uniform"}, seed=0)


def make_pool(p=50, d=6, c=3, seed=0, probs=True) -> PixelPool:
    rng = np.random.default_rng(seed)
    return PixelPool(
        features=rng.normal(size=(p, d)).astype(np.float16),
        labels=rng.integers(0, 4, p).astype(np.int16),
        image_ids=np.array([f"img_{i // 10:03d}" for i in range(p)], dtype=object),
        rows=rng.integers(0, 100, p).astype(np.int32), cols=rng.integers(0, 200, p).astype(np.int32),
        probs=rng.dirichlet(np.ones(c), p).astype(np.float16) if probs else None,
        meta={"model": "m", "dataset": "d", "layer": "penultimate"})


def assert_pools_equal(a: PixelPool, b: PixelPool) -> None:
    assert np.array_equal(a.features, b.features) and a.features.dtype == b.features.dtype == np.float16
    assert np.array_equal(a.labels, b.labels)
    assert list(a.image_ids) == list(b.image_ids)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
    assert (a.probs is None) == (b.probs is None)
    if a.probs is not None:
        assert np.array_equal(a.probs, b.probs)


def test_pool_key_is_stable_and_sensitive_to_every_input():
    k = pool_key(**KEY_ARGS)
    assert k == pool_key(**dict(KEY_ARGS, sampling={"mode": "uniform", "pixels_per_image": 100}))
    assert len(k) == 64
    changes = dict(model="m2", weights_hash="ef" * 32, dataset="d2", fingerprint="00" * 32, layer="logits",
                   sampling={"pixels_per_image": 101, "mode": "uniform"}, seed=1, architecture="x",
                   preprocessing={"mean": [0, 0, 0]}, schema_version=99)
    for name, value in changes.items():
        assert pool_key(**dict(KEY_ARGS, **{name: value})) != k, name


def test_write_load_roundtrip_and_layout(tmp_path):
    store = PoolStore(tmp_path / "store")
    key = pool_key(**KEY_ARGS)
    assert not store.has(key)
    pool = make_pool()
    path = store.write(key, pool, {"note": "x"})
    assert path == tmp_path / "store" / "pools" / key[:2] / key
    assert store.has(key) and store.keys() == [key]
    man = store.manifest(key)
    assert man["rows"] == 50 and man["note"] == "x" and man["key"] == key
    assert [s["file"] for s in man["shards"]] == ["part-00000.parquet"]
    assert man["metadata"]["model"] == "m"
    back = store.load(key)
    assert_pools_equal(pool, back)
    assert back.meta["dataset"] == "d" and back.meta["dim"] == "6"
    assert not list((tmp_path / "store" / "tmp").iterdir())            # nothing left behind


def test_streamed_shards_keep_row_order(tmp_path):
    store = PoolStore(tmp_path)
    key = pool_key(**KEY_ARGS)
    pool = make_pool(p=95)
    table = pool.to_table()
    with store.writer(key, rows_per_shard=20) as w:
        for start in range(0, 95, 13):                                    # chunks not aligned to shards
            w.write(table.slice(start, 13))
        w.commit({})
    assert [s["rows"] for s in store.manifest(key)["shards"]] == [20, 20, 20, 20, 15]
    assert len(store.shard_paths(key)) == 5
    assert_pools_equal(pool, store.load(key))


def test_shards_are_readable_by_pandas_polars_duckdb(tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl

    store = PoolStore(tmp_path)
    key = pool_key(**KEY_ARGS)
    pool = make_pool(p=40)
    store.write(key, pool, rows_per_shard=25)
    shards = [str(p) for p in store.shard_paths(key)]
    df = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    assert list(df.columns) == ["image_id", "label", "row", "col", "feature", "probs"]
    assert df["label"].tolist() == pool.labels.tolist() and len(df["feature"][0]) == 6
    pdf = pl.read_parquet(shards)
    assert pdf.height == 40 and pdf["row"].to_list() == pool.rows.tolist()
    glob = str(store.path(key) / "part-*.parquet")
    counts = duckdb.sql(f"select label, count(*) as n from '{glob}' group by label order by label").fetchall()
    assert counts == [(int(v), int(n)) for v, n in zip(*np.unique(pool.labels, return_counts=True))]
    feats = duckdb.sql(f"select feature from '{glob}'").fetchall()
    got = np.array([f[0] for f in feats], dtype=np.float32)
    assert np.allclose(got, pool.features.astype(np.float32))


def test_interrupted_write_stays_invisible_and_is_redone(tmp_path):
    store = PoolStore(tmp_path)
    key = pool_key(**KEY_ARGS)
    crashed = store.writer(key, rows_per_shard=10)
    crashed.write(make_pool(p=30).to_table())                            # shards on disk, then "crash"
    assert any(crashed.tmp.iterdir())
    assert not store.has(key) and store.keys() == []
    with pytest.raises(StoreError, match="not in the store"):
        store.load(key)
    pool = make_pool(p=30, seed=1)
    store.write(key, pool)                                               # the rerun publishes
    assert store.has(key)
    assert_pools_equal(pool, store.load(key))
    assert store.sweep_tmp(older_than_s=0) == 1 and not crashed.tmp.exists()


def test_error_inside_writer_publishes_nothing(tmp_path):
    store = PoolStore(tmp_path)
    key = pool_key(**KEY_ARGS)
    with pytest.raises(RuntimeError, match="boom"):
        with store.writer(key) as w:
            w.write(make_pool().to_table())
            raise RuntimeError("boom")
    assert not store.has(key) and not list((tmp_path / "tmp").iterdir())


def test_manifestless_folder_is_not_a_pool_and_gets_replaced(tmp_path):
    store = PoolStore(tmp_path)
    key = pool_key(**KEY_ARGS)
    store.path(key).mkdir(parents=True)
    (store.path(key) / "part-00000.parquet").write_bytes(b"half")
    assert not store.has(key)
    store.write(key, make_pool())
    assert store.has(key) and len(store.load(key)) == 50


def test_second_writer_of_the_same_pool_is_dropped(tmp_path):
    store = PoolStore(tmp_path)
    key = pool_key(**KEY_ARGS)
    a, b = store.writer(key), store.writer(key)
    a.write(make_pool(seed=0).to_table())
    b.write(make_pool(seed=0).to_table())
    a.commit({"who": "a"})
    b.commit({"who": "b"})
    assert store.manifest(key)["who"] == "a" and not b.tmp.exists()


def test_bad_inputs(tmp_path):
    store = PoolStore(tmp_path)
    with pytest.raises(StoreError, match="not a pool key"):
        store.has("../../etc")
    key = pool_key(**KEY_ARGS)
    with store.writer(key) as w:
        w.write(make_pool(d=6).to_table())
        with pytest.raises(StoreError, match="schema changed"):
            w.write(make_pool(d=7).to_table())
    with pytest.raises(StoreError, match="nothing was written"):
        store.writer(key).commit({})
    store.write(key, make_pool())
    store.shard_paths(key)[0].unlink()
    with pytest.raises(StoreError, match="missing"):
        store.load(key)
    store.delete(key)
    assert not store.has(key)


def test_empty_probs_column_is_optional(tmp_path):
    store = PoolStore(tmp_path)
    key = pool_key(**KEY_ARGS)
    store.write(key, [make_pool(probs=False).to_table()])
    back = store.load(key)
    assert back.probs is None and len(back) == 50
    assert json.loads(json.dumps(store.manifest(key)))["rows"] == 50
    assert isinstance(store.read_table(key, columns=["label"]), pa.Table)
