"""Calibrated SEG-OTCE: fit, leave-one-target-out validation, application, file, CLI, spec."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from segotce_ray.metrics import calibration as cal
from segotce_ray.spec.model import otce_settings
from segotce_ray.cli import main
from segotce_ray.results.matrix import TransferabilityMatrix
from segotce_ray.scoring.rows import results_frame
from segotce_ray.spec.model import OTCESettings
from segotce_ray.spec.build import check_spec_file

DEFAULT_SOLVER = OTCESettings().solver
SETTINGS = {"layer": "penultimate", "cost_scale": "none", "epsilon": 0.1, "solver": DEFAULT_SOLVER}


def long_table(w: dict[tuple[str, str], tuple[float, float]], reps: int = 2, jitter: float = 0.0,
               seed: int = 0) -> pd.DataFrame:
    """A results table with ``reps`` otce repetitions per pair around the given (W_D, W_T)."""
    rng = np.random.default_rng(seed)
    rows = []
    for (model, target), (wd, wt) in sorted(w.items()):
        for k in range(reps):
            d = jitter * (k - (reps - 1) / 2)
            rows.append({"model": model, "target": target, "metric": "otce", "k": k,
                         "score": -(wt + d), "w_t": wt + d, "w_d": wd - d, "status": "ok",
                         "source": "src", "seed": int(rng.integers(1 << 30))})
    return results_frame(rows)


def world(n_models: int = 6, targets=("t1", "t2", "t3"), seed: int = 1):
    """Pairs whose ground truth is 40 − 0.02·W_D − 3·W_T + noise: W_D matters, so the raw
    score −W_T alone ranks worse than the fitted combination."""
    rng = np.random.default_rng(seed)
    w, gt = {}, []
    for t in targets:
        for i in range(n_models):
            wd, wt = rng.uniform(100, 600), rng.uniform(0.2, 1.2)
            w[(f"m{i}", t)] = (wd, wt)
            gt.append({"model": f"m{i}", "target": t,
                       "value": 40 - 0.02 * wd - 3 * wt + rng.normal(0, 0.05)})
    return w, pd.DataFrame(gt)


def test_linear_fit_recovers_weights_and_beats_raw_in_loto():
    w, gt = world()
    c = cal.calibrate(long_table(w), gt, SETTINGS, forms=("linear",))
    assert c.form == "linear"
    assert c.w_d == pytest.approx(-0.02, abs=2e-3) and c.w_t == pytest.approx(-3, abs=0.3)
    assert c.intercept == pytest.approx(40, abs=1.0)
    fit, raw = c.loto["calibrated"], c.loto["raw"]
    assert fit["pearson"] > 0.99 and fit["regret"] < 0.2
    assert raw["pearson"] < 0.8                       # −W_T alone misses the W_D part
    assert set(fit["per_target"]) == {"t1", "t2", "t3"}
    assert len(c.pairs) == 18 and c.fingerprint == c.content_fingerprint()


def test_loto_never_sees_the_held_out_target():
    """The held-out target's ground truth must not shape its own prediction."""
    w, gt = world()
    frame = cal.pair_features(long_table(w)).merge(gt, on=["model", "target"])
    base = cal.loto(frame, "linear")["per_target"]["t1"]
    poisoned = frame.copy()
    poisoned.loc[poisoned["target"] == "t1", "value"] *= -1  # flips t1's truth only
    again = cal.loto(poisoned, "linear")["per_target"]["t1"]
    assert again["pearson"] == pytest.approx(-base["pearson"], abs=1e-9)


def test_per_target_form_chosen_when_it_validates_better():
    """Targets with very different W_D levels but the same within-target order: a pooled
    linear fit is thrown off by the levels, per-target standardised features are not."""
    rng = np.random.default_rng(3)
    w, gt = {}, []
    for j, t in enumerate(("a", "b", "c", "d")):
        offset, base = [0, 5000, 12000, 2000][j], [70, 20, 50, 35][j]
        for i in range(6):
            x = rng.uniform(0, 1)
            w[(f"m{i}", t)] = (offset + 100 * x, 1.0)
            gt.append({"model": f"m{i}", "target": t, "value": base + 10 * x})
    c = cal.calibrate(long_table(w), pd.DataFrame(gt), SETTINGS)
    assert c.form in ("standardised", "rank")
    assert c.loto["forms"][c.form]["pearson"] > c.loto["forms"]["linear"]["pearson"]
    assert c.loto["calibrated"]["pearson"] > 0.95


def test_errors_name_the_items():
    w, gt = world(targets=("t1", "t2"))
    long = long_table(w)
    with pytest.raises(cal.CalibrationError, match="at least two targets.*found 1: t1"):
        cal.calibrate(long, gt[gt["target"] == "t1"], SETTINGS)
    bad = pd.concat([gt, pd.DataFrame([{"model": "ghost", "target": "t1", "value": 1.0},
                                       {"model": "m0", "target": "nowhere", "value": 1.0}])])
    with pytest.raises(cal.CalibrationError, match=r"2 ground-truth row\(s\).*ghost → t1 "
                       r"\(unknown model\).*m0 → nowhere \(unknown target\)"):
        cal.calibrate(long, bad, SETTINGS)
    no_w = long.assign(w_d=np.nan)
    with pytest.raises(cal.CalibrationError, match="no SEG-OTCE repetition with finite W_D"):
        cal.calibrate(no_w, gt, SETTINGS)


def test_calibrated_rows_apply_the_formula_per_repetition():
    w, gt = world()
    long = long_table(w, reps=3, jitter=0.1)
    long.loc[(long["model"] == "m1") & (long["target"] == "t2") & (long["k"] == 1),
             ["status", "error", "score", "w_t", "w_d"]] = ["failed", "solve failed", np.nan,
                                                           np.nan, np.nan]
    c = cal.calibrate(long, gt, SETTINGS, forms=("linear",))
    rows = cal.calibrated_rows(long, c)
    assert len(rows) == len(long) and set(rows["metric"]) == {cal.CALIBRATED_METRIC}
    ok = rows[rows["status"] == "ok"]
    expect = c.w_d * ok["w_d"] + c.w_t * ok["w_t"] + c.intercept
    np.testing.assert_allclose(ok["score"], expect, rtol=1e-12)
    failed = rows[rows["status"] == "failed"]
    assert len(failed) == 1 and failed["error"].iloc[0] == "solve failed"
    # per-target forms standardise within (target, k)
    c.form = "standardised"
    z = cal.calibrated_rows(long, c)
    grp = z[(z["target"] == "t1") & (z["k"] == 0)]
    xd = (grp["w_d"] - grp["w_d"].mean()) / grp["w_d"].std(ddof=0)
    xt = (grp["w_t"] - grp["w_t"].mean()) / grp["w_t"].std(ddof=0)
    np.testing.assert_allclose(grp["score"], c.w_d * xd + c.w_t * xt + c.intercept, rtol=1e-9)


def test_file_round_trip_and_refusals(tmp_path):
    w, gt = world()
    c = cal.calibrate(long_table(w), gt, SETTINGS)
    path = cal.write_calibration(tmp_path / "c.json", c)
    back = cal.read_calibration(path)
    assert (back.form, back.w_d, back.w_t, back.intercept) == (c.form, c.w_d, c.w_t, c.intercept)
    assert back.settings == SETTINGS and back.loto == json.loads(json.dumps(c.loto))
    data = json.loads(path.read_text())
    data["coefficients"]["w_t"] += 1.0
    (tmp_path / "edited.json").write_text(json.dumps(data))
    with pytest.raises(cal.CalibrationError, match="edited.json: fingerprint does not match"):
        cal.read_calibration(tmp_path / "edited.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(cal.CalibrationError, match="junk.json: not valid JSON"):
        cal.read_calibration(tmp_path / "junk.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(cal.CalibrationError, match="not a segotce-ray calibration file"):
        cal.read_calibration(tmp_path / "other.json")
    data = json.loads(path.read_text())
    data["coefficients"]["w_d"] = "big"
    (tmp_path / "typed.json").write_text(json.dumps(data))
    with pytest.raises(cal.CalibrationError, match="w_d must be a finite number"):
        cal.read_calibration(tmp_path / "typed.json")


def test_settings_of_a_spec_and_their_mismatch():
    raw = {"otce": {"epsilon": 0.5, "layer": "logits"},
           "models": {"a": {}, "b": {"layer": "logits"}}}
    s = otce_settings(raw)
    assert s == {"layer": "logits", "cost_scale": "none", "epsilon": 0.5, "solver": DEFAULT_SOLVER}
    mixed = otce_settings({"models": {"a": {}, "b": {"layer": "logits"}}})
    assert mixed["layer"] == ["logits", "penultimate"]
    assert cal.settings_mismatch(s, s) == []
    lines = cal.settings_mismatch(SETTINGS, s)
    assert lines == ["layer: the calibration was fitted for 'penultimate', the job uses 'logits'",
                     "epsilon: the calibration was fitted for 0.1, the job uses 0.5"]


# ---------------------------------------------------------------------------- CLI + spec


def fake_run(tmp_path, w, spec_extra=None):
    """A run directory with matrix.parquet and spec.yaml, as `segotce-ray run` writes them."""
    run_dir = tmp_path / "runs" / "job" / "r1"
    TransferabilityMatrix(long_table(w)).save(run_dir)
    spec = {"name": "job", "otce": {"epsilon": 0.1}, "models": {"m0": {"layer": "penultimate"}},
            **(spec_extra or {})}
    (run_dir / "spec.yaml").write_text(yaml.safe_dump(spec))
    return run_dir


def test_cli_calibrate_prints_loto_and_writes_the_file(tmp_path, capsys):
    w, gt = world()
    run_dir = fake_run(tmp_path, w)
    gt.to_csv(tmp_path / "gt.csv", index=False)
    assert main(["calibrate", str(run_dir), "--ground-truth", str(tmp_path / "gt.csv")]) == 0
    out = capsys.readouterr().out
    assert "leave-one-target-out" in out and "mean" in out and "form: linear" in out
    c = cal.read_calibration(run_dir / "otce_calibration.json")
    assert c.settings == SETTINGS
    mean_line = [line for line in out.splitlines() if line.strip().startswith("mean")][0]
    raw_r, cal_r = (float(x) for x in mean_line.split()[1:3])
    assert raw_r == pytest.approx(c.loto["raw"]["pearson"], abs=1e-3)
    assert cal_r == pytest.approx(c.loto["calibrated"]["pearson"], abs=1e-3)


def test_cli_calibrate_errors_exit_2(tmp_path, capsys):
    w, gt = world(targets=("t1", "t2"))
    run_dir = fake_run(tmp_path, w)
    gt[gt["target"] == "t1"].to_csv(tmp_path / "one.csv", index=False)
    assert main(["calibrate", str(run_dir), "--ground-truth", str(tmp_path / "one.csv")]) == 2
    assert "at least two targets" in capsys.readouterr().err
    pd.concat([gt, pd.DataFrame([{"model": "zz", "target": "t1", "value": 3}])]) \
        .to_csv(tmp_path / "unknown.csv", index=False)
    assert main(["calibrate", str(run_dir), "--ground-truth", str(tmp_path / "unknown.csv")]) == 2
    assert "zz → t1 (unknown model)" in capsys.readouterr().err
    assert main(["calibrate", str(tmp_path), "--ground-truth", str(tmp_path / "one.csv")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err
    assert not (run_dir / "otce_calibration.json").exists()


def test_spec_checks_the_calibration_file(tmp_path):
    w, gt = world()
    c = cal.calibrate(long_table(w), gt, SETTINGS)
    cal.write_calibration(tmp_path / "cal.json", c)
    (tmp_path / "broken.json").write_text("[]")
    (tmp_path / "d").mkdir()

    def problems(otce: dict, metrics=("otce",)) -> list[str]:
        spec = {"name": "j", "otce": otce, "metrics": list(metrics),
                "datasets": {"d": {"format": "folder", "root": "d", "label_map": ["a"]}},
                "models": {"m": {"architecture": "pkg.mod:fn", "source": "d"}}, "targets": ["d"]}
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
        return [str(p) for p in check_spec_file(tmp_path / "job.yaml")
                if p.path == "otce.calibration"]

    assert problems({"calibration": "cal.json"}) == []
    assert "file not found" in problems({"calibration": "nope.json"})[0]
    assert "not a segotce-ray calibration file" in problems({"calibration": "broken.json"})[0]
    other = problems({"calibration": "cal.json", "layer": "logits", "epsilon": 1.0})
    assert any("fitted for 'penultimate', the job uses 'logits'" in p for p in other)
    assert any("fitted for 0.1, the job uses 1.0" in p for p in other)
    assert "needs metric 'otce'" in problems({"calibration": "cal.json"}, metrics=("logme",))[0]
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "name": "j", "metrics": ["otce", "otce_calibrated"], "datasets": {}, "models": {},
        "targets": []}))
    assert any("set otce.calibration" in str(p) for p in check_spec_file(tmp_path / "job.yaml")
               if p.path == "metrics[1]")
