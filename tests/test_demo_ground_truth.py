"""Demo ground truth: mIoU arithmetic, reproducible regeneration, shipped CSV, job spec."""

from __future__ import annotations

import json

import numpy as np
import pytest

from segotce_ray.demo import ground_truth as gt
from segotce_ray.demo.build import build_demo
from segotce_ray.demo.world import WorldConfig, write_world
from segotce_ray.demo.zoo import LRASPP, TINY_FACTORY, TrainRecipe, ZooMember, build_zoo, default_members

SMALL = WorldConfig(sources=("alderbrook",), targets=("juniper", "lumen"),
                    n_source=4, n_target_train=2, n_target_val=2)
FEW = TrainRecipe(steps=2, batch=2)


def test_confusion_and_mean_iou_by_hand():
    label = np.array([[0, 0, 1, 255], [1, 1, 2, 2]])
    pred = np.array([[0, 1, 1, 0], [1, 2, 2, 2]])
    conf = gt.confusion(pred, label, 4)
    assert conf.sum() == 7 and conf[0, 0] == 1 and conf[0, 1] == 1 and conf[1, 2] == 1
    # IoU: class0 1/(2+1-1)=0.5, class1 2/(3+3-2)=0.5, class2 2/(2+3-2)=2/3; class 3 absent
    assert gt.mean_iou(conf) == pytest.approx(100 * (0.5 + 0.5 + 2 / 3) / 3)
    assert gt.mean_iou(gt.confusion(label.clip(0, 2), label, 4)) == pytest.approx(100.0)


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    root = tmp_path_factory.mktemp("gt")
    layout = write_world(root / "world", SMALL)
    members = [ZooMember("tiny_alderbrook", TINY_FACTORY, "alderbrook")]
    zoo = build_zoo(root, layout.root, SMALL, members, seed=0, workers=1,
                    recipes={TINY_FACTORY: TrainRecipe(steps=4, batch=2)})
    return root, layout, zoo


def test_regenerating_reproduces_the_ground_truth(small_zoo, tmp_path):
    _, layout, zoo = small_zoo
    a = gt.compute_ground_truth(zoo, layout.root, SMALL, seed=0, recipe=FEW, workers=1)
    b = gt.compute_ground_truth(zoo, layout.root, SMALL, seed=0, recipe=FEW, workers=2)
    assert a == b
    rows, scratch = a
    assert [r[:3] for r in rows] == [("tiny_alderbrook", t, s) for t in ("juniper", "lumen")
                                     for s in gt.SEEDS]
    assert all(0.0 <= v <= 100.0 for *_, v in rows)
    assert set(scratch) == {"juniper", "lumen"} and all(set(v) == set(gt.SEEDS) for v in scratch.values())
    # the fine-tuning seed matters (head, batches, flips), so the repeats are not copies
    assert len({v for m, t, s, v in rows if t == "lumen"}) == len(gt.SEEDS)
    # the CSV round-trips and the cached copy is reused while its fingerprint matches
    out = gt.ground_truth_csv(zoo, layout.root, SMALL, tmp_path / "gt.csv", seed=0, recipe=FEW,
                              workers=1, use_shipped=False)
    assert gt.read_csv(out) == rows
    assert [r[:2] for r in gt.read_csv(gt.mean_csv_path(out))] == sorted({r[:2] for r in rows})
    assert json.loads(out.with_suffix(".json").read_text())["scratch"]["lumen"]["0"] == scratch["lumen"][0]
    mtime = out.stat().st_mtime_ns
    gt.ground_truth_csv(zoo, layout.root, SMALL, out, seed=0, recipe=FEW, workers=1, use_shipped=False)
    assert out.stat().st_mtime_ns == mtime
    fp = json.loads(out.with_suffix(".json").read_text())["fingerprint"]
    assert gt.gt_fingerprint(zoo, SMALL, 1, FEW) != fp
    assert gt.gt_fingerprint(zoo, SMALL, 0, FEW, seeds=(0, 1)) != fp


def test_mean_over_seeds_and_the_old_layout(tmp_path):
    rows = [("a", "t", 0, 10.0), ("a", "t", 1, 20.0), ("b", "t", 0, 5.0)]
    assert gt.mean_over_seeds(rows) == [("a", "t", 15.0), ("b", "t", 5.0)]
    old = tmp_path / "old.csv"
    old.write_text("model,target,value\na,t,1.5\n")
    assert gt.read_csv(old) == [("a", "t", 0, 1.5)]   # no seed column: one seed, 0


def test_shipped_ground_truth_covers_the_default_zoo_with_repeats():
    config = WorldConfig()
    rows = gt.read_csv(gt.SHIPPED_CSV)
    names = {m.name for m in default_members(config)}
    meta = json.loads(gt.SHIPPED_META.read_text())
    assert len(meta["fingerprint"]) == 16 and len(meta["seeds"]) >= 3
    assert sorted((m, t, s) for m, t, s, _ in rows) == sorted(
        (m, t, s) for m in names for t in config.targets for s in meta["seeds"])
    values = np.array([v for *_, v in rows])
    assert ((values > 0) & (values <= 100)).all()
    # transfer quality varies widely across sources for every target
    means = gt.mean_over_seeds(rows)
    for t in config.targets:
        v = [x for _, tt, x in means if tt == t]
        assert max(v) - min(v) > 5.0, t


def test_build_demo_writes_a_valid_job_spec(tmp_path):
    from segotce_ray.demo.build import READER_AVERAGES_SEEDS
    from segotce_ray.results.matrix import read_ground_truth
    from segotce_ray.spec.build import load_spec

    recipes = {TINY_FACTORY: TrainRecipe(steps=1, batch=2), LRASPP: TrainRecipe(steps=1, batch=2)}
    path = build_demo(tmp_path, config=SMALL, zoo_recipes=recipes, finetune_recipe=FEW, workers=1)
    spec = load_spec(path)
    assert spec.name == "demo"
    assert set(spec.targets) == {"juniper", "lumen"}
    assert set(spec.models) == {"tiny_alderbrook", "lraspp_alderbrook"}
    assert spec.models["tiny_alderbrook"].source == "alderbrook"
    assert spec.datasets["lumen"].format == "folder"
    per_seed = gt.read_csv(tmp_path / "ground_truth.csv")
    assert {(m, t, s) for m, t, s, _ in per_seed} == {(m, t, s) for m in spec.models
                                                     for t in spec.targets for s in gt.SEEDS}
    # the spec names a file the job's reader takes: the seed means unless it averages seeds
    truth = read_ground_truth(spec.ground_truth)
    if READER_AVERAGES_SEEDS:                 # the per-seed rows, read as they are
        assert "seed" in truth.columns and len(truth) == len(per_seed)
    else:
        expect = {(m, t): v for m, t, v in gt.mean_over_seeds(per_seed)}
        got = {(r.model, r.target): r.value for r in truth.itertuples()}
        assert got.keys() == expect.keys()
        assert all(abs(got[k] - expect[k]) < 1e-3 for k in got)
    # cached: building again changes nothing
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pth")}
    assert build_demo(tmp_path, config=SMALL, zoo_recipes=recipes, finetune_recipe=FEW, workers=1) == path
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.pth")} == before


@pytest.mark.slow
def test_full_regeneration_matches_the_shipped_csv(tmp_path):
    """`python -m segotce_ray.demo.worlds --world demo` reproduces the shipped CSV (same torch
    build)."""
    from segotce_ray.demo.worlds import main

    out = tmp_path / "gt.csv"
    assert main(["--world", "demo", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    shipped = {(m, t, s): v for m, t, s, v in gt.read_csv(gt.SHIPPED_CSV)}
    fresh = {(m, t, s): v for m, t, s, v in gt.read_csv(out)}
    assert fresh.keys() == shipped.keys()
    meta = json.loads(gt.SHIPPED_META.read_text())
    if json.loads(out.with_suffix(".json").read_text())["fingerprint"] == meta["fingerprint"]:
        assert fresh == shipped  # same zoo weights: bit-identical fine-tuning
    else:  # another torch build / CPU: float-level differences only
        assert max(abs(fresh[k] - shipped[k]) for k in fresh) < 3.0
