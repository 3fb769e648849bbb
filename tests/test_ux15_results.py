"""Reading the results (issue 15, item 7): heatmap colour scale per target column with its
colour-bar label inside the figure; a narrow per-target table in report.md; one failure line
per (pair, cause); skipped images in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segotce_ray.results.matrix import TransferabilityMatrix, column_positions
from segotce_ray.scoring.rows import results_frame


def _long(scores: dict[tuple[str, str], float], metrics=("otce",), k: int = 2):
    rows = []
    for metric in metrics:
        for (model, target), s in scores.items():
            for kk in range(k):
                rows.append({"model": model, "target": target, "metric": metric, "k": kk,
                             "score": s + 0.01 * kk, "status": "ok"})
    return results_frame(rows)


def test_column_positions_scale_each_target_on_its_own():
    v = np.array([[-1.0, -300.0], [-2.0, -100.0], [np.nan, -200.0]])
    got = column_positions(v)
    np.testing.assert_allclose(got[:2, 0], [1.0, 0.0])
    np.testing.assert_allclose(got[:, 1], [0.0, 1.0, 0.5])
    assert np.isnan(got[2, 0])
    assert column_positions(np.array([[3.0], [3.0]]))[0, 0] == 0.5


@pytest.mark.parametrize("shape", [(2, 1), (4, 3)])
def test_heatmap_colour_is_per_target_and_the_colour_bar_label_fits(shape):
    n_models, n_targets = shape
    scale = [1.0, 100.0, 0.01][:n_targets]
    scores = {(f"model_{i}", f"target_{j}"): -scale[j] * (1 + i) for i in range(n_models)
              for j in range(n_targets)}
    fig = TransferabilityMatrix(_long(scores)).heatmap_figure("otce")
    colours = fig.axes[0].images[0].get_array()
    for j in range(n_targets):
        assert colours[:, j].min() == pytest.approx(0.0) and colours[:, j].max() == pytest.approx(1.0)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    label = fig.axes[1].yaxis.label
    assert "position within the target" in label.get_text()
    box, page = label.get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1


ALL_METRICS = ("otce", "logme", "hscore", "hscore_shrinkage", "gbc", "transrate", "nleep",
               "leep", "nce")


def _run_dir(tmp_path: Path, long, **info) -> Path:
    run = tmp_path / "runs" / "j" / "r1"
    TransferabilityMatrix(long).save(run)
    (run / "run.json").write_text(json.dumps({"job": "j", "run_id": "r1", "status": "failed",
                                              **info}))
    return run


def test_per_target_table_stays_narrow_with_every_metric(tmp_path):
    from segotce_ray.results.report import render_report

    scores = {(f"m{i}", t): -float(i + j) for i in range(4) for j, t in enumerate(["ta", "tb"])}
    text = render_report(_run_dir(tmp_path, _long(scores, metrics=ALL_METRICS)))
    section = text.split("### ta")[1].split("###")[0]
    header = next(line for line in section.splitlines() if line.startswith("| rank"))
    assert header.count("|") - 1 <= 5, header               # was 1 + 2 × 9 columns
    assert header == ("| rank | model | otce mean ± std | rank by logme, hscore, hscore_shrinkage, "
                      "gbc, transrate, nleep, leep, nce |")
    best = next(line for line in section.splitlines() if line.startswith("| 1 |"))
    assert "| m0 |" in best and best.endswith("| 1 · 1 · 1 · 1 · 1 · 1 · 1 · 1 |")


def test_a_failure_is_listed_once_per_pair_and_cause(tmp_path):
    from segotce_ray.results.report import render_report

    long = _long({("m0", "ta"): -1.0, ("m1", "ta"): -2.0}, metrics=("otce", "logme", "leep"))
    rows = [{"model": "m2", "target": "ta", "metric": m, "k": k, "score": float("nan"),
             "status": "failed", "error": "dataset 'ta': labels/x.png: label file not found"}
            for m in ("otce", "logme", "leep") for k in range(2)]
    long = results_frame([*long.to_dict("records"), *rows])
    text = render_report(_run_dir(tmp_path, long))
    failures = text.split("## Failures")[1].split("##")[0]
    lines = [line for line in failures.splitlines() if "label file not found" in line]
    assert lines == ["| m2 | ta | otce, logme, leep | 6 | dataset 'ta': labels/x.png: label "
                     "file not found |"]


def test_skipped_images_are_in_the_report(tmp_path):
    from segotce_ray.results.report import render_report

    skipped = {"m0@ta": [{"image_id": "img_003", "error": "cannot read image (truncated)"}]}
    text = render_report(_run_dir(tmp_path, _long({("m0", "ta"): -1.0}), skipped_images=skipped))
    assert "## Skipped images" in text
    assert "1 image(s) were left out of 1 pool(s)" in text
    assert "- m0@ta: `img_003`: cannot read image (truncated)" in text


def test_run_groups_failures_and_records_skipped_images(tmp_path, ray_local):
    from segotce_ray.job.plan import make_plan
    from segotce_ray.job.run import run_job
    from segotce_ray.spec.build import load_spec
    from segotce_ray.pools.store import PoolStore
    from tests.fixtures_layouts import make_folder
    from tests.test_job import seed_pools, write_job

    data = tmp_path / "data"
    lm = {0: "road", 1: "car", 2: "person"}
    make_folder(data / "src_a", n=2, label_map=lm, seed=1)
    make_folder(data / "src_b", n=2, label_map=lm, seed=2)
    make_folder(data / "t1", n=2, label_map={0: "road", 1: "car"}, seed=3)
    broken = make_folder(data / "t2", n=2, label_map=lm, seed=4)
    broken.label_paths["img_001"].unlink()                 # t2 fails to open: unpaired image
    path = write_job(tmp_path / "job", data, models={"m_a": "src_a"}, metrics=("otce", "logme"),
                     otce={"n_pixels": 60, "repetitions": 1, "epsilon": 1.0})
    seed_pools(path)
    spec = load_spec(path)
    store = PoolStore(spec.store)
    pool = next(p for p in make_plan(spec).pools if p.dataset == "t1")
    kept = store.load(pool.key)
    store.delete(pool.key)
    store.write(pool.key, kept, {"skipped": [{"image_id": "img_009", "error": "truncated"}]})
    result = run_job(spec, run_id="r")
    assert result.status == "failed"
    t2 = [f for f in result.failures if "m_a → t2" in f]
    assert len(t2) == 1 and t2[0].startswith("otce, logme m_a → t2: 2 repetition(s) failed")
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["skipped_images"] == {"m_a@t1": [{"image_id": "img_009", "error": "truncated"}]}
    assert "`img_009`: truncated" in (result.run_dir / "report.md").read_text()
