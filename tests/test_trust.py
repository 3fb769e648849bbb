"""Rankings a user can trust (issue 18) end to end: ground truth with seeds, noise ceilings,
intervals, baselines, families, the recommended ranking, and bad ground-truth files."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from segotce_ray.cli import main
from tests.test_job import data_root, seed_pools, write_job  # noqa: F401 - data_root is a fixture

TRUTH = {("m_a", "t1"): 50.0, ("m_b", "t1"): 40.0, ("m_c", "t1"): 45.0, ("m_d", "t1"): 30.0,
         ("m_a", "t2"): 30.0, ("m_b", "t2"): 20.0, ("m_c", "t2"): 35.0, ("m_d", "t2"): 25.0}
MODELS = {"m_a": "src_a", "m_b": "src_b", "m_c": "src_a", "m_d": "src_b"}


def seeded_truth(path, seeds=(0, 1, 2), noise=0.5):
    rows = [f"{m},{t},{s},{v + noise * ((s * 7 + len(m) + sum(map(ord, t)) % 3) % 3 - 1)}"
            for (m, t), v in TRUTH.items() for s in seeds]
    path.write_text("model,target,seed,value\n" + "\n".join(rows) + "\n")


def job(tmp_path, data_root, **extra):  # noqa: F811
    seeded_truth(tmp_path / "gt.csv")
    path = write_job(tmp_path, data_root, models=MODELS, metrics=("otce", "logme"),
                     ground_truth="gt.csv", **extra)
    raw = yaml.safe_load(path.read_text())
    raw["models"]["m_d"]["family"] = "other_family"      # a second architecture family
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    seed_pools(path)
    return path


def test_a_run_with_seeded_truth_reports_ceilings_intervals_and_baselines(tmp_path, data_root,
                                                                         ray_local):  # noqa: F811
    path = job(tmp_path, data_root)
    assert main(["run", str(path), "--run-id", "r"]) == 0
    run = tmp_path / "runs" / "nightly" / "r"
    summary = pd.read_csv(run / "ground_truth_summary.csv")
    assert set(summary["target"]) == {"t1", "t2"} and (summary["n_seeds"] == 3).all()
    assert summary["noise_ceiling"].between(0.5, 1.0).all()        # small noise, big gaps
    corr = pd.read_csv(run / "correlation.csv")
    assert {"pearson_lo", "pearson_hi", "regret_lo", "regret_hi"} <= set(corr.columns)
    otce = corr[(corr["metric"] == "otce") & (corr["target"] == "t1")].iloc[0]
    assert otce["pearson_lo"] <= otce["pearson"] <= otce["pearson_hi"]
    random = corr[corr["metric"] == "random"]
    assert (random["pearson"] == 0).all() and (random["regret"] > 0).all()
    long = pd.read_parquet(run / "matrix.parquet")
    assert dict(long.groupby("model")["family"].first()) == {
        "m_a": "tiny_segnet", "m_b": "tiny_segnet", "m_c": "tiny_segnet", "m_d": "other_family"}
    base = pd.read_csv(run / "baselines.csv")
    assert {"random"} <= set(base["baseline"]) and set(base["metric"]) >= {"otce", "logme"}
    assert (run / "ties.csv").is_file()
    report = (run / "report.md").read_text()
    assert "## How far the ground truth can be trusted" in report
    assert "## Against the baselines" in report and "pearson 90% CI" in report


def test_calibrate_learns_a_recommendation_that_a_job_applies(tmp_path, data_root, ray_local,
                                                            capsys):  # noqa: F811
    path = job(tmp_path, data_root)
    assert main(["run", str(path), "--run-id", "r1"]) == 0
    run1 = tmp_path / "runs" / "nightly" / "r1"
    capsys.readouterr()
    assert main(["calibrate", str(run1), "--ground-truth", str(tmp_path / "gt.csv"),
                 "--out", str(tmp_path / "rec.json")]) == 0
    out = capsys.readouterr().out
    assert "recommended ranking — leave-one-target-out" in out and "← chosen" in out
    rec = json.loads((tmp_path / "rec.json").read_text())
    assert rec["chosen"] in rec["loto"] and "recommended" in rec["loto"]
    assert set(rec["loto"]["otce"]) >= {"pearson", "weighted_tau", "regret"}
    assert rec["loto"]["recommended"]["reason"]            # 2 targets: no inner LOTO possible
    raw = yaml.safe_load(path.read_text())
    raw["calibration"] = "rec.json"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["run", str(path), "--run-id", "r2"]) == 0
    run2 = tmp_path / "runs" / "nightly" / "r2"
    long = pd.read_parquet(run2 / "matrix.parquet")
    recd = long[long["metric"] == "recommended"]
    assert len(recd) == 4 * 2 and (recd["status"] == "ok").all()
    report = (run2 / "report.md").read_text()
    assert "**Recommended ranking**" in report
    header = next(ln for ln in report.splitlines() if ln.startswith("| rank | model |"))
    assert header.startswith("| rank | model | recommended")      # the report leads with it


@pytest.mark.parametrize("body, expected", [
    ("model,target,value\nm_a,t1,50\nm_b,t1,high\nm_a,t2,3\n",
     "line 3: model 'm_b', target 't1': value 'high' is not a number"),
    ("model,target,value\nm_a,t1,50\nm_a,t1,51\nm_a,t2,3\n",
     "line 3: model 'm_a', target 't1' repeats line 2 (fine-tuning repeats need a 'seed' column)"),
    ("model,target,seed,value\nm_a,t1,0,50\nm_a,t1,0,51\n",
     "line 3: model 'm_a', target 't1', seed '0' repeats line 2"),
])
def test_validate_names_the_file_and_line_of_bad_ground_truth(tmp_path, data_root, capsys,
                                                               body, expected):  # noqa: F811
    (tmp_path / "gt.csv").write_text(body)
    path = write_job(tmp_path, data_root, ground_truth="gt.csv")
    assert main(["validate", "--shallow", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"gt.csv: {expected}" in err


def test_validate_warns_about_unknown_models_and_a_single_target(tmp_path, data_root,
                                                                caplog):  # noqa: F811
    (tmp_path / "gt.csv").write_text("model,target,value\nm_a,t1,50\nzz,t1,3\nm_b,t1,40\n")
    path = write_job(tmp_path, data_root, ground_truth="gt.csv")
    assert main(["validate", "--shallow", str(path)]) == 0
    text = caplog.text
    assert "line 3: model 'zz' is not in the job" in text
    assert "only one target ('t1'): leave-one-target-out is impossible" in text
