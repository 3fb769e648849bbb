"""TransferabilityMatrix: reductions, rankings, files, round trip, pandas/polars/DuckDB, heatmap."""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pytest
from PIL import Image
from scipy import stats

from segotce_ray.results.matrix import TransferabilityMatrix, read_ground_truth
from segotce_ray.metrics.correlation import MEAN_ROW
from segotce_ray.scoring.rows import RESULT_COLUMNS, TIME_COLUMNS, results_frame
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.schedules import score_pairs

MODELS = ["alpha", "beta", "gamma", "delta"]
TARGETS = ["cs", "bdd"]
K = 4


def _row(model, target, metric, k, score, status="ok", error=None):
    return {"model": model, "target": target, "metric": metric, "k": k, "score": score,
            "w_t": -score, "w_d": 1.0, "iterations": 10, "converged": True, "n_source": 64,
            "n_target": 64, "seconds": 0.01, "status": status, "error": error,
            "source": "src", "seed": 1000 + k}


@pytest.fixture()
def long() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    base = {"alpha": -0.2, "beta": -0.5, "gamma": -0.9, "delta": -0.4}
    for t_i, target in enumerate(TARGETS):
        for model in MODELS:
            for k in range(K):
                shift = 0.35 if (target == "bdd" and model == "gamma") else 0.0
                rows.append(_row(model, target, "otce", k,
                                 base[model] + shift + 0.01 * rng.normal()))
                rows.append(_row(model, target, "logme", k, 1.0 + MODELS.index(model) + t_i))
    # delta → bdd: every otce repetition failed; beta → cs: one failed.
    for r in rows:
        if (r["model"], r["target"], r["metric"]) == ("delta", "bdd", "otce"):
            r.update(score=math.nan, status="failed", error="pool of model 'delta' missing")
        if (r["model"], r["target"], r["metric"], r["k"]) == ("beta", "cs", "otce", 2):
            r.update(score=math.nan, status="failed", error="worker lost")
    return results_frame(rows).sample(frac=1.0, random_state=1)   # any row order


def test_summary_means_stds_and_status(long):
    mat = TransferabilityMatrix(long)
    s = mat.summary().set_index(["metric", "model", "target"])
    ok = long[(long["status"] == "ok")]
    alpha = ok[(ok["model"] == "alpha") & (ok["target"] == "cs") & (ok["metric"] == "otce")]["score"]
    assert s.loc[("otce", "alpha", "cs"), "mean"] == pytest.approx(alpha.mean(), abs=1e-15)
    assert s.loc[("otce", "alpha", "cs"), "std"] == pytest.approx(np.std(alpha.to_numpy()))
    assert s.loc[("otce", "beta", "cs"), ["n", "n_failed", "status"]].tolist() == [3, 1, "partial"]
    assert s.loc[("otce", "delta", "bdd"), "status"] == "failed"
    assert math.isnan(s.loc[("otce", "delta", "bdd"), "mean"])
    assert "missing" in s.loc[("otce", "delta", "bdd"), "error"]
    assert mat.metrics == ["otce", "logme"]


def test_rankings_per_target_and_metric(long):
    mat = TransferabilityMatrix(long)
    r = mat.rankings("otce")
    cs = r[r["target"] == "cs"].set_index("model")["rank"]
    assert cs.to_dict() == {"alpha": 1, "delta": 2, "beta": 3, "gamma": 4}
    bdd = r[r["target"] == "bdd"]
    assert bdd["model"].tolist() == ["alpha", "beta", "gamma", "delta"]
    assert bdd["rank"].tolist()[:3] == [1, 2, 3] and pd.isna(bdd["rank"].iloc[3])
    logme = mat.rankings("logme")
    assert logme[logme["target"] == "cs"]["model"].tolist() == ["delta", "gamma", "beta", "alpha"]
    flipped = TransferabilityMatrix(long, higher_is_better={"logme": False}).rankings("logme")
    assert flipped[flipped["target"] == "cs"]["model"].tolist()[0] == "alpha"
    assert set(mat.rankings()["metric"]) == {"otce", "logme"}
    with pytest.raises(KeyError, match="no metric 'nce'"):
        mat.rankings("nce")


def test_save_load_round_trip_and_readers(long, tmp_path):
    gt = pd.DataFrame([(m, t, v) for t in TARGETS
                       for m, v in zip(MODELS, [60.0, 50.0, 30.0, 55.0])],
                      columns=["model", "target", "value"])
    gt_path = tmp_path / "gt.csv"
    gt.to_csv(gt_path, index=False)
    run = tmp_path / "run"
    written = TransferabilityMatrix(long).save(run, ground_truth=gt_path)
    assert {"matrix.parquet", "scores.csv", "scores_logme.csv", "rankings.csv", "summary.csv",
            "heatmap.png", "heatmap_logme.png", "correlation.csv", "ground_truth.csv"} <= set(written)
    assert not list(run.glob(".*.tmp"))

    # The Parquet reads as is in pandas, polars and DuckDB, with the same content.
    by_pandas = pd.read_parquet(run / "matrix.parquet")
    by_polars = pl.read_parquet(run / "matrix.parquet")
    by_duckdb = duckdb.sql(f"SELECT * FROM read_parquet('{run / 'matrix.parquet'}')").df()
    assert list(by_pandas.columns) == RESULT_COLUMNS == by_polars.columns == list(by_duckdb.columns)
    assert len(by_pandas) == len(by_polars) == len(by_duckdb) == len(long)
    assert by_polars.schema["score"] == pl.Float64 and by_polars.schema["k"] == pl.Int64
    assert by_polars.filter(pl.col("status") == "failed").height == K + 1
    mean_dd = duckdb.connect().execute(
        f"SELECT avg(score) FROM read_parquet('{run / 'matrix.parquet'}') "
        "WHERE metric = 'otce' AND model = 'alpha' AND target = 'cs'").fetchone()[0]
    mat = TransferabilityMatrix(long)
    assert mean_dd == pytest.approx(mat.scores("otce").loc["alpha", "cs"], abs=1e-12)

    loaded = TransferabilityMatrix.load(run)
    pd.testing.assert_frame_equal(loaded.summary(), mat.summary(), check_exact=True)
    pd.testing.assert_frame_equal(loaded.rankings(), mat.rankings(), check_exact=True)
    pd.testing.assert_frame_equal(loaded.ground_truth, read_ground_truth(gt_path))

    scores = pd.read_csv(run / "scores.csv", index_col="model")
    assert list(scores.columns) == sorted(TARGETS) and list(scores.index) == sorted(MODELS)
    np.testing.assert_allclose(scores.to_numpy(), mat.scores("otce").to_numpy(), rtol=1e-9)
    assert math.isnan(scores.loc["delta", "bdd"])
    ranks = pd.read_csv(run / "rankings.csv")
    assert list(ranks.columns) == ["metric", "target", "rank", "model", "mean", "std", "n", "status",
                                   "degenerate"]

    corr = pd.read_csv(run / "correlation.csv").set_index(["metric", "target"])
    cs_means = mat.scores("otce")["cs"].loc[MODELS].to_numpy()
    assert corr.loc[("otce", "cs"), "spearman"] == pytest.approx(
        stats.spearmanr(cs_means, [60.0, 50.0, 30.0, 55.0])[0])
    # delta → bdd failed: bdd is scored on the 3 models that finished.
    assert corr.loc[("otce", "bdd"), "n_models"] == 3
    assert ("otce", MEAN_ROW) in corr.index and ("logme", MEAN_ROW) in corr.index


def test_heatmap_is_a_readable_image(long, tmp_path):
    path = TransferabilityMatrix(long).heatmap(tmp_path / "h.png")
    with Image.open(path) as img:
        img.load()
        assert img.format == "PNG" and img.size[0] > 200 and img.size[1] > 150
        pixels = np.asarray(img.convert("RGB"))
    assert pixels.std() > 10   # not a blank canvas


def test_bad_inputs(long, tmp_path):
    with pytest.raises(ValueError, match="more than once"):
        TransferabilityMatrix(pd.concat([long, long.iloc[:1]]))
    with pytest.raises(ValueError, match="lacks column"):
        TransferabilityMatrix(long.drop(columns=["status"]))
    bad = tmp_path / "gt.csv"
    bad.write_text("model,target,value\na,cs,0.5\nb,cs,high\n")
    with pytest.raises(ValueError, match=r"gt.csv: line 3: model 'b', target 'cs': value 'high'"):
        read_ground_truth(bad)
    bad.write_text("model,target,value\na,cs,0.5\nb,cs,0.4\na,cs,0.6\n")
    with pytest.raises(ValueError, match=r"gt.csv: line 4: model 'a', target 'cs' repeats line 2 "
                                         r"\(fine-tuning repeats need a 'seed' column\)"):
        read_ground_truth(bad)
    bad.write_text("model,target,seed,value\na,cs,0,0.5\na,cs,1,0.6\nb,cs,0,0.4\nb,cs,1,0.3\n")
    assert len(read_ground_truth(bad)) == 4
    bad.write_text("model,dataset,value\na,cs,0.5\n")
    with pytest.raises(ValueError, match="missing column"):
        read_ground_truth(bad)
    with pytest.raises(FileNotFoundError, match="no matrix.parquet"):
        TransferabilityMatrix.load(tmp_path)


def _mixture_zoo():
    from segotce_ray.pools.pool import PixelPool

    rng = np.random.default_rng(3)
    pools, pairs = {}, []
    for m, sep in {"sharp": 2.5, "blurry": 0.1, "mid": 1.0}.items():
        for d in ("src", "t"):
            y = rng.integers(0, 3, 120)
            f = sep * np.eye(3, 5)[y] + rng.normal(0, 1, (120, 5))
            pools[(m, d)] = PixelPool(f.astype(np.float16), y.astype(np.int16))
        pairs.append((m, "src", "t"))
    return pairs, pools


def test_end_to_end_from_the_fan_out(ray_local, tmp_path):
    pairs, pools = _mixture_zoo()
    long = score_pairs(pairs, pools, OTCESettings(n_pixels=48, repetitions=2, solver="emd"),
                       progress=False)
    TransferabilityMatrix(long).save(tmp_path)
    again = TransferabilityMatrix.load(tmp_path)
    back = again.long[RESULT_COLUMNS]
    pd.testing.assert_frame_equal(back.drop(columns=TIME_COLUMNS), long.drop(columns=TIME_COLUMNS),
                                  check_exact=True)
    ranking = again.rankings("otce")["model"].tolist()
    assert ranking[0] == "sharp" and ranking[-1] == "blurry"


def test_saved_files_follow_the_umask_not_mkstemp_0600(tmp_path):
    import os
    import stat

    import pandas as pd

    from segotce_ray.io import atomic_write

    old = os.umask(0o022)
    try:
        target = tmp_path / "x.csv"
        atomic_write(target, lambda p: pd.DataFrame({"a": [1]}).to_csv(p, index=False))
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
