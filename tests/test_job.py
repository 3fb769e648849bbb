"""Job runs end to end: dry-run plan, resume after a kill, latest pointer, report diff,
incremental nightly runs (new models only), failures isolated with a non-zero exit.

Most tests put hand-made pools into the store under the keys the plan computes, so they
exercise the job logic (plan, score log, run directories) in seconds; one test runs the
real extraction for a newly added model.
"""

from __future__ import annotations

import json
import zlib
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segotce_ray.metrics import registry
from segotce_ray.cli import main
from segotce_ray.pools.score_log import ScoreLog
from segotce_ray.job.run import _set_latest, latest_run, run_job
from segotce_ray.job.plan import make_plan
from segotce_ray.pools.pool import PixelPool
from segotce_ray.spec.build import load_spec
from segotce_ray.pools.store import PoolStore
from tests.fixtures_layouts import make_folder

K = 3
MODELS = {"m_a": "src_a", "m_b": "src_b", "m_c": "src_a"}
SEPARATION = {"m_a": 3.0, "m_b": 0.3, "m_c": 1.2}   # class separation of each model's features


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    lm3 = {0: "road", 1: "car", 2: "person"}
    make_folder(root / "src_a", n=2, label_map=lm3, seed=1)
    make_folder(root / "src_b", n=2, label_map=lm3, seed=2)
    make_folder(root / "t1", n=2, label_map={0: "road", 1: "car"}, seed=3)
    make_folder(root / "t2", n=2, label_map=lm3, seed=4)
    return root


def write_job(tmp: Path, data_root: Path, models=None, metrics=("otce",), **extra) -> Path:
    """A job spec over the module's data; ``metrics=None`` leaves the key out (the default)."""
    models = models if models is not None else MODELS
    spec = {
        "name": "nightly", "seed": 0,
        "otce": {"n_pixels": 60, "repetitions": K, "epsilon": 1.0},
        "extraction": {"pixels_per_image": 40, "batch_size": 2},
        "datasets": {name: {"format": "folder", "root": str(data_root / name),
                            "label_map": ({0: "road", 1: "car"} if name == "t1"
                                          else {0: "road", 1: "car", 2: "person"})}
                     for name in ("src_a", "src_b", "t1", "t2")},
        "models": {m: {"architecture": "tests.tiny_segmodels:tiny_segnet", "num_classes": 3,
                       "source": src} for m, src in models.items()},
        "targets": ["t1", "t2"],
    }
    if metrics is not None:
        spec["metrics"] = list(metrics)
    spec.update(extra)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "job.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def seed_pools(path: Path, dims: dict | None = None) -> int:
    """Write a synthetic pool for every pool the plan still needs; returns how many."""
    spec = load_spec(path)
    plan = make_plan(spec)
    store = PoolStore(spec.store)
    n = 0
    for p in plan.pools:
        if p.cached or p.error:
            continue
        rng = np.random.default_rng(zlib.crc32(f"{p.model}@{p.dataset}".encode()))
        n_classes = 2 if p.dataset == "t1" else 3
        labels = rng.integers(0, n_classes, 120).astype(np.int16)
        dim = (dims or {}).get((p.model, p.dataset), 8)
        centers = np.eye(n_classes, dim) * SEPARATION.get(p.model, 1.0)
        feats = (centers[labels] + rng.normal(0, 1, (120, dim))).astype(np.float16)
        logits = rng.normal(0, 1, (120, 3)) + 2.0 * np.eye(3)[labels % 3]
        probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float16)
        store.write(p.key, PixelPool(feats, labels, probs=probs,
                                     meta={"model": p.model, "dataset": p.dataset}),
                    {"synthetic": True})
        n += 1
    return n


class Killed(KeyboardInterrupt):
    """Stands in for the driver being interrupted (Ctrl-C / SIGINT)."""


def _scores(table: pd.DataFrame) -> pd.DataFrame:
    cols = ["model", "target", "metric", "k", "score", "w_t", "w_d", "status", "seed"]
    return table[cols].sort_values(["model", "target", "metric", "k"]).reset_index(drop=True)


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, data_root, capsys):
    path = write_job(tmp_path, data_root)
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pools: 9 needed, 0 cached, 9 to extract, 0 unavailable" in out
    assert "pairs: 6 (model × target × metric), 0 complete, 6 to score (18 repetitions" in out
    assert "extract     m_a @ src_a" in out and "score 3/3   otce     m_b → t2" in out
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()


def test_spec_without_metrics_scores_every_metric_the_pools_allow(tmp_path, data_root, capsys):
    from segotce_ray.spec.model import known_metrics

    # m_x has no source dataset: the peers still score it, SEG-OTCE is marked unavailable
    path = write_job(tmp_path, data_root, metrics=None,
                     models={"m_a": "src_a", "m_x": None})
    spec = load_spec(path)
    assert spec.metrics == list(known_metrics()) and spec.metrics[0] == "otce"
    plan = make_plan(spec)
    by_metric = {m: [p for p in plan.pairs if p.metric == m] for m in known_metrics()}
    assert all(len(v) == 2 * 2 for v in by_metric.values())  # 2 models × 2 targets each
    otce_x = [p for p in by_metric["otce"] if p.model == "m_x"]
    assert otce_x and all(p.not_applicable and "source" in p.error for p in otce_x)
    assert all(p.error is None for m in known_metrics()[1:] for p in by_metric[m])
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"pairs: {len(known_metrics()) * 4} (model × target × metric)" in out


def test_resume_after_kill_computes_only_missing_rows_and_same_matrix(tmp_path, data_root, ray_local):
    path = write_job(tmp_path, data_root)
    assert seed_pools(path) == 9
    spec = load_spec(path)
    total = len(MODELS) * 2 * K

    seen: list[dict] = []

    def kill_after_7(row):
        seen.append(row)
        if len(seen) == 7:
            raise Killed()

    with pytest.raises(Killed):
        run_job(spec, on_row=kill_after_7, run_id="killed")
    plan = make_plan(spec)
    assert plan.counts()["repetitions_cached"] == 7
    assert plan.counts()["repetitions_to_run"] == total - 7
    killed_info = json.loads((spec.job_dir / "killed" / "run.json").read_text())
    assert killed_info["status"] == "interrupted"       # never marked finished
    assert "Killed" in killed_info["error"]
    assert latest_run(spec.job_dir) is None              # latest only moves on completion

    computed: list[dict] = []
    resumed = run_job(spec, on_row=computed.append, run_id="resumed")
    assert resumed.status == "ok" and resumed.exit_code == 0
    assert len(computed) == total - 7
    done_before = {(r["model"], r["target"], r["k"]) for r in seen}
    assert not done_before & {(r["model"], r["target"], r["k"]) for r in computed}

    # an uninterrupted run from the same pools (score log moved away) gives the same table
    shutil.move(Path(spec.store) / "scores", tmp_path / "scores.bak")
    fresh_rows: list[dict] = []
    fresh = run_job(spec, on_row=fresh_rows.append, run_id="fresh")
    assert len(fresh_rows) == total
    pd.testing.assert_frame_equal(_scores(resumed.table), _scores(fresh.table))
    on_disk = [pd.read_parquet(spec.job_dir / r / "matrix.parquet") for r in ("resumed", "fresh")]
    pd.testing.assert_frame_equal(_scores(on_disk[0]), _scores(on_disk[1]))
    assert (spec.job_dir / "resumed" / "scores.csv").read_text() == \
        (spec.job_dir / "fresh" / "scores.csv").read_text()
    # a third run computes nothing
    again: list[dict] = []
    run_job(spec, on_row=again.append, run_id="again")
    assert again == []
    assert latest_run(spec.job_dir).name == "again"


def test_run_dir_contents_latest_and_report_diff(tmp_path, data_root, ray_local, capsys):
    """Nightly: a second run with a new model (real extraction) and a broken one."""
    path = write_job(tmp_path, data_root, models={"m_a": "src_a", "m_b": "src_b"},
                     ground_truth="gt.csv")
    (tmp_path / "gt.csv").write_text(
        "model,target,value\n" + "".join(f"{m},{t},{v}\n" for m, t, v in [
            ("m_a", "t1", 50), ("m_b", "t1", 40), ("m_new", "t1", 45),
            ("m_a", "t2", 30), ("m_b", "t2", 20), ("m_new", "t2", 25)]))
    seed_pools(path)
    assert main(["run", str(path), "--run-id", "night1"]) == 0
    job_dir = tmp_path / "runs" / "nightly"
    run1 = job_dir / "night1"
    for name in ("matrix.parquet", "scores.csv", "rankings.csv", "heatmap.png", "report.md",
                 "report.html", "per_class.csv", "classes.json", "correlation.csv", "spec.yaml",
                 "run.json", "plan.json"):
        assert (run1 / name).is_file(), name
    info = json.loads((run1 / "run.json").read_text())
    assert info["status"] == "ok"
    assert {"segotce-ray", "python", "torch", "ray", "POT"} <= set(info["versions"])
    assert {"plan", "extract", "score", "matrix", "total"} <= set(info["timings"])
    assert yaml.safe_load((run1 / "spec.yaml").read_text())["models"]["m_a"]["source"] == "src_a"
    assert os.path.islink(job_dir / "latest") and latest_run(job_dir) == run1
    assert "First run of this job" in (run1 / "report.md").read_text()
    scores = pd.read_csv(run1 / "scores.csv", index_col="model")
    assert list(scores.columns) == ["t1", "t2"] and sorted(scores.index) == ["m_a", "m_b"]

    # tomorrow: one new model, one that cannot be built
    raw = yaml.safe_load(path.read_text())
    raw["models"]["m_new"] = {"architecture": "tests.tiny_segmodels:tiny_segnet",
                              "num_classes": 3, "source": "src_b", "kwargs": {"returns": "dict"}}
    raw["models"]["m_broken"] = {"architecture": "tests.tiny_segmodels:not_a_module",
                                 "num_classes": 3, "source": "src_a"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    plan = make_plan(load_spec(path))
    todo = {(p.model, p.dataset) for p in plan.pools if not p.cached and not p.error}
    assert todo == {("m_new", "src_b"), ("m_new", "t1"), ("m_new", "t2")}
    assert {p.model for p in plan.pairs if p.todo} == {"m_new"}
    assert {p.model for p in plan.pairs if p.error} == {"m_broken"}
    capsys.readouterr()

    code = main(["run", str(path), "--run-id", "night2"])
    out = capsys.readouterr().out
    assert code == 1                                       # a pair failed
    assert "failed" in out and "m_broken" in out
    run2 = job_dir / "night2"
    assert latest_run(job_dir) == run2
    table = pd.read_parquet(run2 / "matrix.parquet")
    ok = table[(table["status"] == "ok") & (table["metric"] == "otce")]
    assert set(ok["model"]) == {"m_a", "m_b", "m_new"} and len(ok) == 3 * 2 * K
    assert set(table[table["status"] == "failed"]["model"]) == {"m_broken"}
    capacity = table[table["metric"] == "capacity"]          # the baseline of runs with truth
    assert set(capacity["target"]) == {"t1", "t2"} and capacity["k"].eq(0).all()
    report = (run2 / "report.md").read_text()
    assert "Compared with run `night1`" in report
    assert "- new models: m_new" in report
    assert "| m_new |" in report and "new |" in report       # rank table lists the newcomer
    assert "m_broken" in report.split("## Failures")[1]
    assert "## Agreement with ground truth" in report
    # `segotce-ray report` re-renders the latest run of a job folder
    assert main(["report", str(job_dir)]) == 0
    assert "Compared with run `night1`" in capsys.readouterr().out


def test_failed_pair_is_isolated_and_exit_code_nonzero(tmp_path, data_root, ray_local, capsys):
    path = write_job(tmp_path, data_root, models={"m_a": "src_a", "m_b": "src_b"})
    seed_pools(path, dims={("m_b", "t2"): 5})           # m_b's t2 pool does not match its source
    assert main(["run", str(path), "--run-id", "r"]) == 1
    out = capsys.readouterr().out
    assert "otce m_b → t2: 3 repetition(s) failed" in out and "8-dim features" in out
    table = pd.read_parquet(tmp_path / "runs" / "nightly" / "r" / "matrix.parquet")
    assert (table.groupby(["model", "target"])["status"].apply(lambda s: (s == "ok").all())
            == pd.Series({("m_a", "t1"): True, ("m_a", "t2"): True, ("m_b", "t1"): True,
                          ("m_b", "t2"): False})).all()
    info = json.loads((tmp_path / "runs" / "nightly" / "r" / "run.json").read_text())
    assert info["status"] == "failed" and info["counts"]["rows_failed"] == K
    # failed rows are not cached: the next run retries exactly them
    plan = make_plan(load_spec(path))
    assert [(p.model, p.target, p.todo) for p in plan.pairs if p.todo] == [("m_b", "t2", K)]


def test_score_log_skips_torn_lines_and_failed_rows(tmp_path):
    log_ = ScoreLog(tmp_path)
    key = "ab" * 32
    log_.append(key, {"metric": "otce", "k": 1, "score": 0.5, "status": "ok"})
    log_.append(key, {"metric": "otce", "k": 0, "score": np.float64(0.25), "status": "ok"})
    log_.append(key, {"metric": "otce", "k": 2, "score": float("nan"), "status": "failed"})
    log_.append(key, {"metric": "otce", "k": 1, "score": 9.0, "status": "ok"})  # duplicate k
    with open(log_.path(key), "a") as fh:
        fh.write('{"metric": "otce", "k": 3, "sco')                           # killed mid-write
    rows = log_.rows(key)
    assert [(r["k"], r["score"]) for r in rows] == [(0, 0.25), (1, 0.5)]


def test_latest_text_file_fallback(tmp_path, monkeypatch):
    job_dir = tmp_path / "runs" / "j"
    (job_dir / "r1").mkdir(parents=True)
    (job_dir / "r2").mkdir()
    _set_latest(job_dir, job_dir / "r1")
    assert os.path.islink(job_dir / "latest") and latest_run(job_dir) == job_dir / "r1"

    def no_symlinks(*a, **k):
        raise OSError("symlinks not supported here")

    monkeypatch.setattr(os, "symlink", no_symlinks)
    _set_latest(job_dir, job_dir / "r2")
    assert not os.path.islink(job_dir / "latest")
    assert (job_dir / "latest").read_text().strip() == "r2"
    assert latest_run(job_dir) == job_dir / "r2"
    (job_dir / "latest").write_text("../../etc\n")
    assert latest_run(job_dir) is None


def test_peer_metrics_side_by_side_and_model_without_source(tmp_path, data_root, ray_local, capsys):
    """metrics: [otce, logme, leep]; a model without a source dataset gets the peers only."""
    path = write_job(tmp_path, data_root, models={"m_a": "src_a", "m_b": "src_b"},
                     metrics=["otce", "logme", "leep"])
    raw = yaml.safe_load(path.read_text())
    raw["models"]["m_nosrc"] = {"architecture": "tests.tiny_segmodels:tiny_segnet", "num_classes": 3}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    seed_pools(path)
    plan = make_plan(load_spec(path))
    assert ("m_nosrc", "src_a") not in {(p.model, p.dataset) for p in plan.pools}
    assert main(["run", str(path), "--run-id", "r"]) == 0    # not applicable is not a failure
    run = tmp_path / "runs" / "nightly" / "r"
    table = pd.read_parquet(run / "matrix.parquet")
    ok = table[table["status"] == "ok"]
    assert set(ok["metric"]) == {"otce", "logme", "leep"}
    assert len(ok[ok["metric"] == "logme"]) == 3 * 2 * K and len(ok[ok["metric"] == "otce"]) == 2 * 2 * K
    na = table[table["status"] == "unavailable"]
    assert set(zip(na["model"], na["metric"])) == {("m_nosrc", "otce")}
    assert "source" in na["error"].iloc[0]
    ranks = pd.read_csv(run / "rankings.csv")
    assert set(ranks["metric"]) == {"otce", "logme", "leep"}
    assert (run / "scores_logme.csv").is_file() and (run / "heatmap_leep.png").is_file()
    report = (run / "report.md").read_text()
    header = next(ln for ln in report.splitlines() if ln.startswith("| rank | model | otce mean"))
    assert header.endswith("| rank by logme, leep |")
    assert "Not applicable" in report and "otce for m_nosrc → t1" in report


def _issue_world(tmp_path: Path) -> Path:
    """The issue's nightly spec, verbatim, with every file and root it names made real."""
    import torch
    import torchvision

    from tests.fixtures_layouts import make_bdd100k, make_cityscapes, make_gta5
    from tests.test_spec import ISSUE_SPEC

    jobs = tmp_path / "jobs"
    make_gta5(jobs / "data/gta5", n=3)
    make_cityscapes(jobs / "data/cityscapes", cities=("aachen", "bochum"), n_per_city=2)
    make_bdd100k(jobs / "data/bdd100k", n=3)
    make_folder(jobs / "data/mine", n=2, label_map={0: "road", 1: "car"})
    (jobs / "ckpt").mkdir(parents=True)
    torch.manual_seed(0)
    lraspp = torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=19)
    torch.save(lraspp.state_dict(), jobs / "ckpt/lraspp_gta5.pth")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                            torch.nn.ReLU())
            self.head = torch.nn.Conv2d(8, 19, 1)

        def forward(self, x):
            f = self.body(x)
            return {"out": self.head(f), "features": f}

    torch.jit.save(torch.jit.trace(Tiny().eval(), torch.rand(1, 3, 32, 64), strict=False),
                   str(jobs / "ckpt/tiny_bdd.pt"))
    (jobs / "gt.csv").write_text("model,target,value\nlraspp_gta5,cs_aachen,41\n"
                                 "tiny_bdd,cs_aachen,30\nlraspp_gta5,mine,70\ntiny_bdd,mine,75\n")
    path = jobs / "nightly.yaml"
    path.write_text(ISSUE_SPEC)
    return path


def test_issue_spec_plans_as_written(tmp_path, capsys):
    path = _issue_world(tmp_path)
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "pools: 6 needed, 0 cached, 6 to extract, 0 unavailable" in out
    # no `metrics:` key: every metric (9) for each of the 4 model × target pairs
    assert "pairs: 36 (model × target × metric), 0 complete, 36 to score (360 repetitions" in out
    for pool in ("lraspp_gta5 @ gta5", "lraspp_gta5 @ cs_aachen", "tiny_bdd @ bdd",
                 "tiny_bdd @ mine"):
        assert pool in out


@pytest.mark.slow
def test_issue_spec_runs_as_written(tmp_path, ray_local, capsys):
    """`segotce-ray run jobs/nightly.yaml` on the issue's spec, unchanged (N=10⁴, K=10)."""
    path = _issue_world(tmp_path)
    assert main(["run", str(path)]) == 0
    run = latest_run(tmp_path / "jobs" / "runs" / "nightly")
    for name in ("matrix.parquet", "scores.csv", "rankings.csv", "heatmap.png", "report.md",
                 "correlation.csv", "spec.yaml", "versions.json", "timings.json"):
        assert (run / name).is_file(), name
    table = pd.read_parquet(run / "matrix.parquet")
    assert (table["status"] == "ok").all() and len(table) == 4 * 9 * 10


def test_demo_command_prints_rankings_correlation_and_paths(tmp_path, data_root, ray_local,
                                                            monkeypatch, capsys):
    """`segotce-ray demo` wiring: build_demo's job runs and its results are printed."""
    import segotce_ray.demo

    def fake_build_demo(workdir):
        path = write_job(Path(workdir), data_root, ground_truth="gt.csv",
                         metrics=("logme", "otce"))
        (Path(workdir) / "gt.csv").write_text(
            "model,target,value\n" + "".join(f"{m},{t},{v}\n" for m, t, v in [
                ("m_a", "t1", 50), ("m_b", "t1", 40), ("m_c", "t1", 45),
                ("m_a", "t2", 30), ("m_b", "t2", 20), ("m_c", "t2", 35)]))
        seed_pools(path)
        return path

    monkeypatch.setattr(segotce_ray.demo, "build_demo", fake_build_demo)
    assert main(["demo", "--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "SEG-OTCE ranking for target 't1'" in out and "SEG-OTCE ranking for target 't2'" in out
    assert " 1. m_a" in out                                   # best-separated features
    assert "SEG-OTCE against the fine-tuning ground truth, per target" in out and "pearson" in out
    side = out.split("Every metric side by side")[1].splitlines()
    rows = [line.split()[0] for line in side[2:]
            if line.strip() and not line.startswith(("heat", "rep", "page", "Timeline"))]
    assert rows == ["otce", "logme", "capacity", "random"]   # SEG-OTCE first, baselines last
    assert "Timeline: every pool was cached; scoring " in out  # seeded pools: nothing extracted
    corr = pd.read_csv(latest_run(tmp_path / "demo" / "runs" / "nightly") / "correlation.csv")
    assert list(dict.fromkeys(corr["metric"])) == ["otce", "logme", "capacity", "random"]
    run = latest_run(tmp_path / "demo" / "runs" / "nightly")
    assert f"heatmap: {run / 'heatmap.png'}" in out and f"report:  {run / 'report.md'}" in out
    assert f"page:    {run / 'report.html'}" in out


# ------------------------------------------------------------------ adaptive schedule

ADAPTIVE_K = 6
ADAPTIVE_MODELS = {"m_a": "src_a", "m_b": "src_b", "m_c": "src_a", "m_d": "src_b",
                   "m_e": "src_a", "m_f": "src_b"}
SEPARATION.update({"m_d": 0.1, "m_e": 2.0, "m_f": 0.6})


def write_adaptive_job(tmp: Path, data_root: Path, **schedule) -> Path:
    return write_job(tmp, data_root, models=ADAPTIVE_MODELS,
                     otce={"n_pixels": 60, "repetitions": ADAPTIVE_K, "epsilon": 1.0},
                     schedule={"mode": "adaptive", "min_repetitions": 2, "top_k": 1,
                               "alpha": 0.5, **schedule})


def test_adaptive_job_prunes_marks_and_resumes_to_the_same_decisions(tmp_path, data_root,
                                                                      ray_local):
    """schedule: adaptive end to end: schedule.csv, pruned pairs marked, kill + resume ==
    an uninterrupted run (same matrix, same decisions), a rerun computes nothing."""
    from segotce_ray.results.matrix import TransferabilityMatrix

    path = write_adaptive_job(tmp_path, data_root)
    seed_pools(path)
    spec = load_spec(path)
    assert spec.schedule.mode == "adaptive"
    assert "schedule: adaptive (min_repetitions=2, top_k=1, alpha=0.5)" in make_plan(spec).render()
    full = len(ADAPTIVE_MODELS) * 2 * ADAPTIVE_K

    seen: list[dict] = []

    def kill_after_9(row):
        seen.append(row)
        if len(seen) == 9:
            raise Killed()

    with pytest.raises(Killed):
        run_job(spec, on_row=kill_after_9, run_id="killed")
    assert make_plan(spec).counts()["repetitions_cached"] == 9
    computed: list[dict] = []
    resumed = run_job(spec, on_row=computed.append, run_id="resumed")
    assert resumed.status == "ok"
    assert not {(r["model"], r["target"], r["k"]) for r in seen} & \
        {(r["model"], r["target"], r["k"]) for r in computed}

    run = spec.job_dir / "resumed"
    sched = pd.read_csv(run / "schedule.csv")
    assert len(sched) == len(ADAPTIVE_MODELS) * 2
    assert set(sched["schedule_status"]) == {"complete", "pruned"}
    complete = sched[sched["schedule_status"] == "complete"]
    pruned = sched[sched["schedule_status"] == "pruned"]
    assert (complete["repetitions_done"] == ADAPTIVE_K).all()
    assert len(complete) >= 2                                   # top_k = 1 per target survives
    assert ((pruned["repetitions_done"] >= 2) & (pruned["repetitions_done"] < ADAPTIVE_K)).all()
    assert (pruned["upper"] < pruned["threshold"]).all()
    spent = int(sched["repetitions_done"].sum())
    assert spent < full and len(seen) + len(computed) == spent    # nothing computed twice
    assert resumed.counts["repetitions_spent"] == spent
    assert resumed.counts["repetitions_full"] == full
    assert resumed.counts["pairs_pruned"] == len(pruned)
    # every target's best model (by its full-K mean) is among the complete ones
    best = complete.groupby("target")["mean"].max()
    for t, grp in sched.groupby("target"):
        assert grp["mean"].max() == best[t]

    # matrix.parquet stays a plain long table; a pruned pair holds its partial repetitions
    mat = TransferabilityMatrix.load(run)
    summ = mat.summary().set_index(["model", "target"])
    for r in sched.itertuples():
        assert summ.loc[(r.model, r.target), "n"] == r.repetitions_done
        assert summ.loc[(r.model, r.target), "mean"] == pytest.approx(r.mean, rel=1e-9)
    ranks = pd.read_csv(run / "rankings.csv")
    assert {"schedule_status", "repetitions_done"} <= set(ranks.columns)
    assert (ranks[ranks["rank"] == 1]["schedule_status"] == "complete").all()
    assert "schedule_status" in pd.read_csv(run / "summary.csv").columns

    report = (run / "report.md").read_text()
    assert f"Adaptive schedule: {spent} repetitions spent instead of {full}" in report
    one = pruned.iloc[0]
    row = next(line for line in report.splitlines()
               if f"| {one['model']} |" in line and "pruned after" in line)
    assert f"pruned after {one['repetitions_done']}/{ADAPTIVE_K}" in row
    for r in complete.itertuples():
        assert not any(f"| {r.model} |" in line and "pruned" in line
                       for line in report.split(f"### {r.target}")[1].split("###")[0].splitlines())
    info = json.loads((run / "run.json").read_text())
    assert info["settings"]["schedule"] == "adaptive"

    # an uninterrupted run (score log moved away) comes to the same decisions and matrix
    shutil.move(Path(spec.store) / "scores", tmp_path / "scores.bak")
    fresh_rows: list[dict] = []
    fresh = run_job(spec, on_row=fresh_rows.append, run_id="fresh")
    assert len(fresh_rows) == spent
    assert (spec.job_dir / "fresh" / "schedule.csv").read_text() == \
        (run / "schedule.csv").read_text()
    pd.testing.assert_frame_equal(_scores(fresh.table), _scores(resumed.table))
    on_disk = [pd.read_parquet(spec.job_dir / r / "matrix.parquet") for r in ("resumed", "fresh")]
    pd.testing.assert_frame_equal(_scores(on_disk[0]), _scores(on_disk[1]))
    # and a rerun computes nothing, with the same decisions
    again: list[dict] = []
    run_job(spec, on_row=again.append, run_id="again")
    assert again == []
    assert (spec.job_dir / "again" / "schedule.csv").read_text() == \
        (run / "schedule.csv").read_text()

    # a model that cannot be built: its pairs are listed as failed (not scheduled), the
    # others keep their decisions and nothing is recomputed
    raw = yaml.safe_load(path.read_text())
    raw["models"]["m_broken"] = {"architecture": "tests.tiny_segmodels:not_a_module",
                                 "num_classes": 3, "source": "src_a"}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    broken_rows: list[dict] = []
    broken = run_job(load_spec(path), on_row=broken_rows.append, run_id="broken")
    assert broken.status == "failed" and broken_rows == []
    sched_b = pd.read_csv(spec.job_dir / "broken" / "schedule.csv")
    bad = sched_b[sched_b["model"] == "m_broken"]
    assert list(bad["schedule_status"]) == ["failed", "failed"] and not bad["scheduled"].any()
    pd.testing.assert_frame_equal(sched_b[sched_b["model"] != "m_broken"].reset_index(drop=True),
                                  sched.assign(scheduled=True), check_dtype=False)
    assert broken.counts["repetitions_spent"] == spent
    assert broken.counts["repetitions_full"] == full


def test_layer_probs_reads_the_probs_column_of_the_logits_pool(tmp_path, data_root, ray_local):
    """layer: probs shares the logits pools (no re-extraction), scores their probs column with
    SEG-OTCE and the feature peers, and keeps its own pair keys; cost_scale reaches the solver."""
    from segotce_ray.scoring.adapters import otce_repetition, peer_repetition
    from segotce_ray.pools.views import probs_as_features

    def job(sub: str, layer: str, **otce) -> Path:
        return write_job(tmp_path / sub, data_root, models={"m_a": "src_a", "m_b": "src_b"},
                         metrics=["otce", "hscore"],
                         extraction={"pixels_per_image": 40, "batch_size": 2, "layer": layer},
                         otce={"n_pixels": 60, "repetitions": K, "epsilon": 1.0, **otce})

    probs, logits = make_plan(load_spec(job("p", "probs"))), make_plan(load_spec(job("l", "logits")))
    assert [p.key for p in probs.pools] == [p.key for p in logits.pools]
    assert not {p.key for p in probs.pairs} & {p.key for p in logits.pairs}
    scaled = make_plan(load_spec(job("s", "probs", cost_scale="max")))
    otce_keys = lambda plan: {p.key for p in plan.pairs if p.metric == "otce"}  # noqa: E731
    assert not otce_keys(scaled) & otce_keys(probs)
    for sub in ("p", "s"):
        path = tmp_path / sub / "job.yaml"
        seed_pools(path)
        assert main(["run", str(path), "--run-id", "r"]) == 0
    spec = load_spec(tmp_path / "p" / "job.yaml")
    store = PoolStore(spec.store)
    keys = {(p.model, p.dataset): p.key for p in probs.pools}
    src, tgt = (probs_as_features(store.load(keys[("m_a", d)])) for d in ("src_a", "t1"))
    assert src.dim == 3                                        # the softmax over 3 source classes
    table = pd.read_parquet(tmp_path / "p" / "runs" / "nightly" / "r" / "matrix.parquet")
    row = table[(table.model == "m_a") & (table.target == "t1") & (table.k == 1)].set_index("metric")
    seed = int(row.loc["otce", "seed"])
    want = otce_repetition(src, tgt, seed, n_pixels=60, epsilon=1.0, solver="sinkhorn",
                           sampling="uniform", ignore_index=255)
    assert row.loc["otce", "score"] == pytest.approx(want["score"], abs=1e-9)
    peer = peer_repetition(None, tgt, int(row.loc["hscore", "seed"]), record=registry.get("hscore"),
                           n_pixels=60)
    assert row.loc["hscore", "score"] == pytest.approx(peer["score"], abs=1e-9)
    scaled_table = pd.read_parquet(tmp_path / "s" / "runs" / "nightly" / "r" / "matrix.parquet")
    s_row = scaled_table[(scaled_table.model == "m_a") & (scaled_table.target == "t1")
                         & (scaled_table.k == 1) & (scaled_table.metric == "otce")]
    want_max = otce_repetition(src, tgt, seed, n_pixels=60, epsilon=1.0, solver="sinkhorn",
                               sampling="uniform", ignore_index=255, options={"cost_scale": "max"})
    assert s_row["score"].iloc[0] == pytest.approx(want_max["score"], abs=1e-9)
    assert want_max["score"] != pytest.approx(want["score"], abs=1e-6)
