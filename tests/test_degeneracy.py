"""Degenerate pools flagged (constant features, too few pixels), and a job end to end that
marks them and adds the calibrated SEG-OTCE beside the raw one."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segotce_ray.metrics.calibration import CALIBRATED_METRIC, read_calibration
from segotce_ray.cli import main
from segotce_ray.pools.degeneracy import degenerate_reason, pool_stats
from segotce_ray.job.plan import make_plan
from segotce_ray.pools.pool import PixelPool
from segotce_ray.spec.build import load_spec
from segotce_ray.pools.store import PoolStore
from tests.test_job import data_root, write_job  # noqa: F401 - data_root is a fixture


def test_constant_and_nearly_constant_features_are_flagged():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 500).astype(np.int16)
    good = rng.normal(0, 1, (500, 16)).astype(np.float16)
    assert degenerate_reason(pool_stats(good, labels), n_pixels=100) is None
    const = np.full((500, 16), 3.5, dtype=np.float16)
    s = pool_stats(const, labels)
    assert s["spread"] == 0 and s["constant_channels"] == 16 and s["n_valid"] == 500
    assert "16 of 16 channels have std 0" in degenerate_reason(s, n_pixels=100)
    # a large offset with variation at the float16 rounding level is constant too
    near = (100.0 + rng.normal(0, 1e-4, (500, 16))).astype(np.float16)
    assert "(nearly) constant" in degenerate_reason(pool_stats(near, labels))
    # one informative channel among constant ones is not degenerate
    one = const.copy()
    one[:, 0] = rng.normal(0, 1, 500)
    assert degenerate_reason(pool_stats(one, labels)) is None


def test_too_few_labelled_pixels_and_ignored_pixels_do_not_count():
    rng = np.random.default_rng(1)
    feats = rng.normal(0, 1, (300, 4)).astype(np.float16)
    labels = np.where(np.arange(300) < 120, 1, 255).astype(np.int16)
    s = pool_stats(feats, labels, ignore_index=255)
    assert s["n_valid"] == 120 and s["n_pixels"] == 300
    assert degenerate_reason(s, n_pixels=200) == "120 labelled pixels, fewer than otce.n_pixels=200"
    assert degenerate_reason(s, n_pixels=120) is None
    # the spread is over the labelled pixels only: constant there, noise elsewhere
    feats[:120] = 1.0
    assert "constant" in degenerate_reason(pool_stats(feats, labels))


def seed_pools(path: Path, constant: str) -> None:
    """Synthetic pools for every pool of the plan; model ``constant`` gets constant features."""
    spec = load_spec(path)
    store = PoolStore(spec.store)
    for p in make_plan(spec).pools:
        if p.cached or p.error:
            continue
        rng = np.random.default_rng(zlib.crc32(f"{p.model}@{p.dataset}".encode()))
        n_classes = 2 if p.dataset == "t1" else 3
        labels = rng.integers(0, n_classes, 120).astype(np.int16)
        sep = {"m_a": 3.0, "m_b": 0.3, "m_c": 1.2}[p.model]
        feats = (np.eye(n_classes, 8)[labels] * sep + rng.normal(0, 1, (120, 8)))
        if p.model == constant:
            feats = np.ones((120, 8))
        logits = rng.normal(0, 1, (120, 3)) + 2.0 * np.eye(3)[labels % 3]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        store.write(p.key, PixelPool(feats.astype(np.float16), labels,
                                     probs=probs.astype(np.float16),
                                     meta={"model": p.model, "dataset": p.dataset}), {})


def test_job_marks_degenerate_models_and_adds_calibrated_metric(tmp_path, data_root, ray_local,
                                                                 capsys):
    gt = {("m_a", "t1"): 60, ("m_b", "t1"): 40, ("m_c", "t1"): 50,
          ("m_a", "t2"): 35, ("m_b", "t2"): 20, ("m_c", "t2"): 30}
    (tmp_path / "gt.csv").write_text("model,target,value\n" + "".join(
        f"{m},{t},{v}\n" for (m, t), v in gt.items()))
    path = write_job(tmp_path, data_root, metrics=("otce", "logme"), ground_truth="gt.csv")
    seed_pools(path, constant="m_b")
    assert main(["run", str(path), "--run-id", "r1"]) == 0
    run1 = tmp_path / "runs" / "nightly" / "r1"
    long = pd.read_parquet(run1 / "matrix.parquet")
    assert set(long.loc[long["metric"] == "capacity", "status"]) == {"unavailable"}  # seeded pools
    long = long[long["metric"] != "capacity"]               # the baseline reads no pool
    marked = long[long["degenerate"].notna()]
    assert set(marked["model"]) == {"m_b"} and len(marked) == len(long[long["model"] == "m_b"])
    otce_b = marked[marked["metric"] == "otce"]["degenerate"].iloc[0]
    assert "m_b@src_b: features (nearly) constant" in otce_b
    assert " | m_b@t1: " in otce_b or " | m_b@t2: " in otce_b
    assert "m_b@src_b" not in marked[marked["metric"] == "logme"]["degenerate"].iloc[0]
    assert set(pd.read_csv(run1 / "rankings.csv").dropna(subset=["degenerate"])["model"]) == {"m_b"}
    report = (run1 / "report.md").read_text()
    assert "## Warning: degenerate models" in report and "- **m_b**:" in report
    assert "| m_b ⚠ |" in report
    # the check ran once per pool (3 models × source + 2 targets), memoised in the store
    memos = {p: p.stat().st_mtime_ns for p in (tmp_path / "store" / "checks").rglob("*.json")}
    assert len(memos) == 9

    # fit a calibration on run 1, then apply it in run 2
    capsys.readouterr()
    assert main(["calibrate", str(run1), "--ground-truth", str(tmp_path / "gt.csv"),
                 "--otce-out", str(tmp_path / "cal.json")]) == 0
    assert "leave-one-target-out" in capsys.readouterr().out
    raw = yaml.safe_load(path.read_text())
    raw["otce"]["calibration"] = "cal.json"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(path), "--run-id", "r2"]) == 0
    run2 = tmp_path / "runs" / "nightly" / "r2"
    long2 = pd.read_parquet(run2 / "matrix.parquet")
    assert {p: p.stat().st_mtime_ns for p in memos} == memos   # reused, not recomputed
    c = read_calibration(tmp_path / "cal.json")
    otce = long2[long2["metric"] == "otce"].set_index(["model", "target", "k"])
    calib = long2[long2["metric"] == CALIBRATED_METRIC].set_index(["model", "target", "k"])
    assert len(calib) == len(otce) == 18
    if c.form == "linear":
        np.testing.assert_allclose(calib["score"], c.w_d * otce["w_d"] + c.w_t * otce["w_t"]
                                   + c.intercept, rtol=1e-9)
    assert calib["degenerate"].notna().groupby("model").all().to_dict() == \
        {"m_a": False, "m_b": True, "m_c": False}
    ranks = pd.read_csv(run2 / "rankings.csv")
    assert {"otce", CALIBRATED_METRIC, "logme", "capacity"} == set(ranks["metric"])
    corr = pd.read_csv(run2 / "correlation.csv")      # then the baselines: capacity, random
    assert list(corr["metric"].drop_duplicates()) == ["otce", CALIBRATED_METRIC, "logme",
                                                      "capacity", "random"]
    report = (run2 / "report.md").read_text()
    assert "## Calibrated SEG-OTCE" in report and "rank by otce_calibrated" in report
    applied = json.loads((run2 / "calibration_applied.json").read_text())
    assert applied["fingerprint"] == c.fingerprint
    mean = [r for r in report.splitlines() if r.startswith("| mean |")][0]
    assert mean.split(" | ")[2] == f"{c.loto['calibrated']['pearson']:.4f}"
    # a calibration made for another ε is refused before any work
    raw["otce"]["epsilon"] = 2.0
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    assert main(["run", str(path), "--run-id", "r3"]) == 2
    err = capsys.readouterr().err
    assert "otce.calibration" in err and "fitted for 1.0, the job uses 2.0" in err


@pytest.mark.slow  # ~70 s on the 2-core VM: real extraction of 2 models × 3 datasets
def test_real_extraction_of_a_dead_network_is_flagged(tmp_path, data_root, ray_local):
    """A network whose weights are all zero has constant features after extraction: its
    rows are marked and the report warns, while a live network's rows are not."""
    import torch

    from segotce_ray.job.run import run_job
    from tests.tiny_segmodels import tiny_segnet

    dead = tiny_segnet(3)
    torch.save({k: torch.zeros_like(v) for k, v in dead.state_dict().items()},
               tmp_path / "dead.pt")
    live = tiny_segnet(3)
    torch.manual_seed(0)
    for p in live.parameters():
        torch.nn.init.normal_(p, 0, 0.5)
    torch.save(live.state_dict(), tmp_path / "live.pt")
    models = {name: {"architecture": "tests.tiny_segmodels:tiny_segnet", "num_classes": 3,
                     "source": "src_a", "checkpoint": str(tmp_path / f"{name}.pt")}
              for name in ("dead", "live")}
    path = write_job(tmp_path, data_root, models={}, metrics=("otce", "transrate"))
    raw = yaml.safe_load(path.read_text())
    raw["models"] = models
    raw["otce"]["repetitions"] = 1
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = run_job(load_spec(path), run_id="r")
    assert result.status == "ok"
    long = pd.read_parquet(result.run_dir / "matrix.parquet")
    flags = long.groupby("model")["degenerate"].apply(lambda s: s.notna().all()).to_dict()
    assert flags == {"dead": True, "live": False}
    assert long[long["model"] == "dead"]["degenerate"].str.contains("(nearly) constant",
                                                                     regex=False).all()
    assert "- **dead**: dead@" in (result.run_dir / "report.md").read_text()


def test_chunk_statistics_combine_to_the_pool_statistics():
    """Stats merged from chunks (where a pool is written) equal those of the whole pool."""
    from segotce_ray.pools.degeneracy import combine_stats, partial_stats

    rng = np.random.default_rng(3)
    feats = (rng.normal(5.0, 0.01, size=(1000, 7))).astype(np.float16)
    feats[:, 2] = 1.0
    labels = rng.integers(0, 4, size=1000)
    labels[rng.random(1000) < 0.2] = 255
    whole = pool_stats(feats, labels)
    cuts = [0, 1, 250, 251, 700, 1000]
    merged = combine_stats([partial_stats(feats[a:b], labels[a:b]) for a, b in zip(cuts, cuts[1:])])
    assert merged["n_valid"] == whole["n_valid"] and merged["n_pixels"] == 1000
    assert merged["constant_channels"] == whole["constant_channels"] == 1
    assert merged["spread"] == pytest.approx(whole["spread"], rel=1e-9)
    assert merged["rms_norm"] == pytest.approx(whole["rms_norm"], rel=1e-12)
    assert degenerate_reason(merged) == degenerate_reason(whole)
