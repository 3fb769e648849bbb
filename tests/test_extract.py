"""Extraction on Ray into the pool store: contents, cache, determinism, failures.

Ray pipelines are the slow part here, so a few module-scoped runs are shared by the tests.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segotce_ray.inputs.datasets import open_dataset
from segotce_ray.extract.pipeline import ExtractionError, ExtractionRequest, extract_pools
from segotce_ray.inputs.models import ModelSpec, load_model
from segotce_ray.extract.sampling import sample_pixels
from segotce_ray.seeds import stable_seed
from segotce_ray.pools.store import PoolStore
from tests.fixtures_layouts import make_folder
from tests.tiny_segmodels import forward_count

TINY = "tests.tiny_segmodels:tiny_segnet"
K = 20


class World:
    """Datasets, model specs and the shared first run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.layout_a = make_folder(root / "a", n=5, size=(32, 48), seed=0)
        self.layout_b = make_folder(root / "b", n=4, size=(32, 48), seed=1)
        bad = self.layout_b.image_paths["img_002"]
        bad.write_bytes(bad.read_bytes()[:60])                          # truncated PNG
        self.ds_a = open_dataset("set-a", self.layout_a.spec)
        self.ds_b = open_dataset("set-b", self.layout_b.spec)
        self.counter = root / "forwards.bin"
        self.tiny = ModelSpec(name="tiny", architecture=TINY, num_classes=3, kwargs={"counter": str(self.counter)})
        src = load_model(ModelSpec(name="src", architecture=TINY, num_classes=3)).module.state_dict()
        broken = OrderedDict(src)
        broken.pop("classifier.bias")
        torch.save(broken, root / "broken.pt")
        torch.save(src, root / "ok3.pt")
        self.bad_specs = {
            "bad-keys": ModelSpec(name="bad-keys", architecture=TINY, num_classes=3, checkpoint=root / "broken.pt"),
            "no-ckpt": ModelSpec(name="no-ckpt", architecture=TINY, num_classes=3, checkpoint=root / "nope.pt"),
            "bad-layer": ModelSpec(name="bad-layer", architecture=TINY, num_classes=3, layer="body.9"),
            "bad-classes": ModelSpec(name="bad-classes", architecture=TINY, num_classes=4, checkpoint=root / "ok3.pt"),
        }
        self.store = PoolStore(root / "store1")
        reqs = [ExtractionRequest(self.tiny, self.ds_a, pixels_per_image=K),
                ExtractionRequest(self.tiny, self.ds_b, pixels_per_image=K)]
        reqs += [ExtractionRequest(s, self.ds_a, pixels_per_image=K) for s in self.bad_specs.values()]
        self.first = extract_pools(reqs, self.store, batch_size=2, num_actors=1)
        self.bad_specs["nan"] = ModelSpec(name="nan", architecture=TINY, num_classes=3, kwargs={"nan": True})
        self.first_forwards = forward_count(self.counter)


@pytest.fixture(scope="module")
def world(tmp_path_factory, ray_local):
    return World(tmp_path_factory.mktemp("extract"))


def expected_features(spec: ModelSpec, ds, pool):
    """In-process reference: full-resolution upsampled map indexed at the pool's pixels."""
    model = load_model(spec)
    by_id = {s.image_id: s for s in ds.samples}
    feats, probs = [], []
    for image_id in dict.fromkeys(pool.image_ids):
        sel = pool.image_ids == image_id
        image, label = ds.load(by_id[image_id])
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        with torch.inference_mode():
            feat, logits = model.features(x)
        up = F.interpolate(feat, size=label.shape, mode="bilinear", align_corners=False)[0]
        lg = F.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)[0]
        r, c = pool.rows[sel], pool.cols[sel]
        feats.append(up[:, r, c].T.numpy())
        probs.append(torch.softmax(lg[:, r, c].T, dim=1).numpy())
    return np.concatenate(feats), np.concatenate(probs), model.weights_hash


def test_pool_holds_sampled_valid_pixels_with_their_labels(world):
    key = world.first[("tiny", "set-a")]
    assert isinstance(key, str) and world.store.has(key)
    pool = world.store.load(key)
    layout = world.layout_a
    assert list(dict.fromkeys(pool.image_ids)) == layout.image_ids           # image order kept
    for image_id, train in layout.train_labels.items():
        sel = pool.image_ids == image_id
        assert sel.sum() == min(K, int((train != 255).sum()))
        rows, cols, labels = sample_pixels(train, K, seed=stable_seed(0, "tiny", "set-a", image_id))
        assert np.array_equal(pool.rows[sel], rows) and np.array_equal(pool.cols[sel], cols)
        assert np.array_equal(pool.labels[sel], train[pool.rows[sel], pool.cols[sel]])
    assert (pool.labels != 255).all()
    assert pool.meta["model"] == "tiny" and pool.meta["dataset"] == "set-a" and pool.meta["dim"] == "16"
    assert pool.class_names == ["road", "car", "person"]


def test_sampled_features_equal_full_resolution_upsampled_map(world):
    key = world.first[("tiny", "set-a")]
    pool = world.store.load(key)
    feats, probs, weights_hash = expected_features(world.tiny, world.ds_a, pool)
    assert world.store.manifest(key)["model"]["name"] == "tiny"
    np.testing.assert_allclose(pool.features.astype(np.float32), feats, rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(pool.probs.astype(np.float32), probs, rtol=2e-3, atol=2e-3)
    assert np.allclose(pool.probs.astype(np.float32).sum(1), 1, atol=5e-3)


def test_each_bad_model_fails_alone_with_a_named_error(world):
    errs = {m: world.first[(m, "set-a")] for m in world.bad_specs if m != "nan"}
    assert all(isinstance(e, ExtractionError) for e in errs.values())
    assert "model 'bad-keys'" in str(errs["bad-keys"]) and "classifier.bias" in str(errs["bad-keys"])
    assert "model 'no-ckpt'" in str(errs["no-ckpt"]) and "checkpoint not found" in str(errs["no-ckpt"])
    assert "model 'bad-layer'" in str(errs["bad-layer"]) and "'body.9' does not exist" in str(errs["bad-layer"])
    assert "shape mismatch" in str(errs["bad-classes"]) and "num_classes=4" in str(errs["bad-classes"])
    assert all(e.dataset == "set-a" for e in errs.values())
    assert isinstance(world.first[("tiny", "set-a")], str)                  # the good one still ran
    assert len(world.store.keys()) == 1


def test_bad_image_fails_its_pool_and_names_the_file(world):
    err = world.first[("tiny", "set-b")]
    assert isinstance(err, ExtractionError)
    assert "set-b" in str(err) and "img_002" in str(err)


def test_cached_pools_cost_zero_forward_passes(world):
    assert world.first_forwards > 0
    before = forward_count(world.counter)
    again = extract_pools([ExtractionRequest(world.tiny, world.ds_a, pixels_per_image=K)],
                          world.store, batch_size=2, num_actors=1)
    assert again[("tiny", "set-a")] == world.first[("tiny", "set-a")]
    assert forward_count(world.counter) == before


def test_two_actors_redo_an_interrupted_write_skip_bad_images_and_match_one_actor(world):
    root = world.root / "store2"
    store = PoolStore(root)
    key_a = world.first[("tiny", "set-a")]
    crashed = store.writer(key_a)                        # a killed run left shards but no manifest
    crashed.write(world.store.read_table(key_a).slice(0, 7))
    assert not store.has(key_a)
    reqs = [ExtractionRequest(world.tiny, world.ds_a, pixels_per_image=K),
            ExtractionRequest(world.tiny, world.ds_b, pixels_per_image=K)]
    before = forward_count(world.counter)
    run = extract_pools(reqs, store, batch_size=2, num_actors=2, bad_images="skip")
    assert forward_count(world.counter) > before
    # the interrupted pool is redone, and 2 actors give the same table as 1 actor did
    assert run[("tiny", "set-a")] == key_a and store.has(key_a)
    one, two = world.store.read_table(key_a), store.read_table(key_a)
    assert one.equals(two) and one.schema.metadata == two.schema.metadata
    assert crashed.tmp.exists() and store.sweep_tmp(older_than_s=0) == 1   # leftovers never read
    # skip policy: set-b's pool exists without the truncated image, and its manifest says so
    key_b = run[("tiny", "set-b")]
    assert isinstance(key_b, str)
    man = store.manifest(key_b)
    assert [s["image_id"] for s in man["skipped"]] == ["img_002"] and "img_002" in man["skipped"][0]["error"]
    assert man["images"] == 3 and man["images_requested"] == 4
    assert "img_002" not in set(store.load(key_b).image_ids)


def test_nan_features_name_the_model_and_image_in_process(world):
    """The read step and the actor callable, run in-process (no Ray): NaN and bad-file rows."""
    from segotce_ray.extract.actor import ChunkFeatureExtractor, load_chunk

    jobs = {0: {"dataset": world.ds_b, "model": "nan", "seed": 0, "pixels_per_image": K, "sampling": "uniform"}}
    batch = {"request": np.array([0]), "chunk": np.array([1]), "start": np.array([2]), "stop": np.array([4])}
    loaded = load_chunk(batch, jobs=jobs)
    staging = world.root / "staging-nan"
    staging.mkdir()
    extractor = ChunkFeatureExtractor({0: {"model": "nan", "meta": {"model": "nan"}, "keep_probs": True,
                                           "staging": str(staging)}},
                                      {"nan": (world.bad_specs["nan"], "h")})
    out = extractor(loaded)
    errors = json.loads(out["errors"][0])
    assert [(e["image_id"], e["kind"]) for e in errors] == [("img_002", "image"), ("img_003", "model")]
    assert "set-b" in errors[0]["error"] and "img_002" in errors[0]["error"]
    assert "model 'nan'" in errors[1]["error"] and "NaN" in errors[1]["error"]
    assert out["file"][0] == "" and out["rows"][0] == 0 and out["images"][0] == 2
    assert list(staging.iterdir()) == []                                # no shard for no rows


def test_lraspp_from_checkpoint_on_ray(world, tmp_path):
    ck = tmp_path / "lraspp.pth"
    src = load_model(ModelSpec(name="x", architecture="lraspp_mobilenet_v3_large", num_classes=3))
    torch.save({"model": src.module.state_dict()}, ck)
    layout = make_folder(tmp_path / "c", n=2, size=(64, 64), seed=3)
    ds = open_dataset("set-c", layout.spec)
    spec = ModelSpec(name="lr", architecture="lraspp_mobilenet_v3_large", num_classes=3, checkpoint=ck)
    store = PoolStore(tmp_path / "s")
    res = extract_pools([ExtractionRequest(spec, ds, pixels_per_image=30, sampling="balanced")], store,
                        batch_size=2)
    pool = store.load(res[("lr", "set-c")])
    assert pool.dim == 168 and pool.probs.shape == (len(pool), 3) and len(pool) == 60
    feats, probs, weights_hash = expected_features(spec, ds, pool)
    np.testing.assert_allclose(pool.features.astype(np.float32), feats, rtol=5e-3, atol=5e-3)
    np.testing.assert_allclose(pool.probs.astype(np.float32), probs, atol=5e-3)
    assert pool.meta["weights_hash"] == weights_hash == hashlib.sha256(ck.read_bytes()).hexdigest()


def test_request_validation(world):
    req = ExtractionRequest(world.tiny, world.ds_a, pixels_per_image=K)
    with pytest.raises(ValueError, match=r"duplicate \(model, dataset\) requests: \[\('tiny', 'set-a'\)\]"):
        extract_pools([req, req], world.store)
    other = ModelSpec(name="tiny", architecture=TINY, num_classes=5)
    with pytest.raises(ValueError, match="two different model specs share the name 'tiny'"):
        extract_pools([req, ExtractionRequest(other, world.ds_b)], world.store)
    with pytest.raises(ValueError, match="sampling 'stratified'"):
        ExtractionRequest(world.tiny, world.ds_a, sampling="stratified")
    with pytest.raises(ValueError, match="bad_images"):
        extract_pools([req], world.store, bad_images="ignore")


def test_workers_write_the_shards_and_the_driver_gets_only_metadata(world, tmp_path, monkeypatch):
    """The driver never writes a shard (its Parquet writers are disabled here) and receives a
    fixed few hundred bytes per chunk, whatever the pool's size."""
    from segotce_ray.pools import store as store_mod

    def no_driver_writes(*args, **kwargs):
        raise AssertionError("the driver wrote a shard")

    monkeypatch.setattr(store_mod.pq, "write_table", no_driver_writes)
    monkeypatch.setattr(store_mod.pq, "ParquetWriter", no_driver_writes)
    store, stats = PoolStore(tmp_path / "s"), {}
    res = extract_pools([ExtractionRequest(world.tiny, world.ds_a, pixels_per_image=1000)], store,
                        batch_size=2, num_actors=1, stats=stats)
    key = res[("tiny", "set-a")]
    assert isinstance(key, str) and store.has(key)
    man = store.manifest(key)
    assert [s["file"] for s in man["shards"]] == [f"part-{c:05d}.parquet" for c in range(3)]
    assert store.read_table(key).num_rows == man["rows"] == sum(s["rows"] for s in man["shards"]) == 5000
    assert stats["tiny"]["pool_bytes"] == sum((store.path(key) / s["file"]).stat().st_size
                                              for s in man["shards"])
    dim = int(man["metadata"]["dim"])   # 3 chunks of metadata: the shard's facts and the chunk's
    assert stats["tiny"]["driver_bytes"] <= 3 * (400 + 2 * 25 * dim)   # mean and m2 per channel
    assert man["facts"]["n_valid"] == 5000 and man["facts"]["dim"] == dim
    assert stats["tiny"]["driver_bytes"] < 0.02 * stats["tiny"]["pool_bytes"]


def test_one_actor_serves_many_models_from_a_small_lru(world, tmp_path, monkeypatch):
    """In-process: models load on first use, stay loaded (LRU of cache_size), a model that
    fails to load fails its own chunks only and is not reloaded for every chunk."""
    from segotce_ray.extract import actor as ex

    loads: list[str] = []
    real_load = ex.load_model

    def counting_load(spec, **kwargs):
        loads.append(spec.name)
        return real_load(spec, **kwargs)

    monkeypatch.setattr(ex, "load_model", counting_load)
    specs = {n: ModelSpec(name=n, architecture=TINY, num_classes=3, kwargs={"returns": "dict"})
             for n in ("m1", "m2", "m3")}
    specs["bad"] = world.bad_specs["bad-keys"]
    staging = tmp_path / "staging"
    staging.mkdir()
    requests = {i: {"model": n, "meta": {"model": n}, "keep_probs": False, "staging": str(staging)}
                for i, n in enumerate(specs)}
    actor = ex.ChunkFeatureExtractor(requests, {n: (s, f"h-{n}") for n, s in specs.items()}, cache_size=2)
    jobs = {i: {"dataset": world.ds_a, "model": n, "seed": 0, "pixels_per_image": K, "sampling": "uniform"}
            for i, n in enumerate(specs)}

    def run(req: int, chunk: int) -> dict:
        batch = {"request": np.array([req]), "chunk": np.array([chunk]), "start": np.array([chunk]),
                 "stop": np.array([chunk + 1])}
        out = actor(ex.load_chunk(batch, jobs=jobs))
        return {k: v[0] for k, v in out.items()}

    assert run(0, 0)["rows"] == K and run(0, 1)["rows"] == K and run(1, 0)["rows"] == K
    assert loads == ["m1", "m2"]                                   # loaded once each
    run(2, 0)                                                      # m3 evicts m1 (least recent)
    run(1, 1)                                                      # m2 still loaded
    run(0, 2)                                                      # m1 is loaded again
    assert loads == ["m1", "m2", "m3", "m1"]
    bad = [run(3, c) for c in range(2)]
    assert all(r["file"] == "" for r in bad) and loads.count("bad-keys") == 1
    err = json.loads(bad[1]["errors"])[0]
    assert err["kind"] == "load" and "model 'bad-keys'" in err["error"] and "classifier.bias" in err["error"]
    assert run(2, 1)["rows"] == K                                   # the others go on
    assert sorted(p.name for p in staging.iterdir()) == ["part-00000.parquet", "part-00001.parquet",
                                                          "part-00002.parquet"]
