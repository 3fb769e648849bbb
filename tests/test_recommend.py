"""The recommended ranking: candidates, LOTO judging, the selection rule, nested evidence."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from segotce_ray.metrics import correlation as corr
from segotce_ray.metrics import recommend as rec

OFFSET = {"big": 12.0, "small": 0.0}


def _world(targets: int = 4, models: int = 10, seed: int = 0, extra_noise: int = 1):
    """Ground truth g per pair; metric ``shifted`` = g − family offset (the raw metric
    misranks the big family, the family-offset fit recovers g exactly up to the per-target
    z-scoring); ``noise*`` metrics unrelated to g; W_D, W_T random."""
    rng = np.random.default_rng(seed)
    fams = ["big" if i % 3 == 0 else "small" for i in range(models)]
    pairs, truth = [], []
    for t in range(targets):
        g = rng.normal(40, 4, models) + np.array([OFFSET[f] for f in fams])
        for i in range(models):
            row = {"model": f"m{i}", "target": f"t{t}", "family": fams[i],
                   "capacity": 1e6 * (3 if fams[i] == "big" else 1), "shifted": g[i] - OFFSET[fams[i]],
                   "w_d": rng.normal(), "w_t": rng.normal()}
            for k in range(extra_noise):
                row[f"noise{k}"] = rng.normal()
            pairs.append(row)
            truth.append({"model": f"m{i}", "target": f"t{t}", "value": g[i]})
    return pd.DataFrame(pairs), pd.DataFrame(truth)


def test_utility_is_the_written_rule():
    assert rec.utility(1.0, 0.0, 5.0) == 1.0                       # perfect
    assert rec.utility(0.0, 5.0, 5.0) == 0.0                       # random-like
    assert rec.utility(0.4, 2.0, 4.0) == pytest.approx(0.5 * 0.4 + 0.5 * 0.5)
    assert rec.utility(0.0, 40.0, 4.0) == pytest.approx(-0.5)      # regret term clipped at −1
    assert rec.utility(0.3, 1.0, 0.0) == pytest.approx(0.3)        # no regret term: wτ alone
    assert math.isnan(rec.utility(math.nan, math.nan, 1.0))
    assert "weighted_tau" in rec.RULE and "regret" in rec.RULE


def test_family_offset_candidate_wins_and_output_is_json():
    pairs, truth = _world()
    out = rec.recommend(pairs, truth, metrics=["shifted", "noise0"])
    json.dumps(out, allow_nan=False)
    assert out["chosen"] == "shifted" + rec.FIT_SUFFIX
    loto = out["loto"]
    assert set(loto) == set(out["candidates"]) | {"recommended"}
    assert {"shifted", "noise0", "noise0" + rec.FIT_SUFFIX, rec.OTCE_FORM,
            rec.RANK_AVERAGE} <= set(out["candidates"])
    best = loto["shifted" + rec.FIT_SUFFIX]
    assert best["utility"] > loto["shifted"]["utility"] + 0.2
    assert best["pearson"] > 0.95 and best["regret"] == pytest.approx(0.0, abs=1e-9)
    assert set(best["per_target"]) == {"t0", "t1", "t2", "t3"}
    fit = out["fit"]
    assert fit["kind"] == "metric_fit" and fit["metric"] == "shifted"
    # The big family's learned offset is above the small one's by about OFFSET (in g units).
    gap = fit["family_offsets"]["big"] - fit["family_offsets"]["small"] + \
        fit["log_capacity_coef"] * math.log10(3)
    assert gap == pytest.approx(OFFSET["big"], rel=0.25)
    # The nested evidence chose the same candidate on every fold here.
    nested = loto["recommended"]
    assert {p["chosen"] for p in nested["per_target"].values()} == {"shifted" + rec.FIT_SUFFIX}
    assert nested["utility"] == pytest.approx(best["utility"])


def test_nested_figure_is_each_folds_choice_and_not_flattered():
    """Pure-noise metrics: the best LOTO figure among many is luck; the nested figure scores
    each held-out target by the candidate chosen without it, so it is no better."""
    pairs, truth = _world(targets=5, models=8, seed=3, extra_noise=8)
    noise = [f"noise{k}" for k in range(8)]
    out = rec.recommend(pairs.drop(columns=["shifted"]), truth, metrics=noise)
    loto, nested = out["loto"], out["loto"]["recommended"]
    best = max(v["utility"] for k, v in loto.items() if k != "recommended")
    assert loto[out["chosen"]]["utility"] == pytest.approx(best)
    assert nested["utility"] <= best
    for t, fig in nested["per_target"].items():  # the nested figure is the chosen one's LOTO
        assert fig["utility"] == pytest.approx(loto[fig["chosen"]]["per_target"][t]["utility"])


def test_otce_form_recovers_a_linear_truth():
    pairs, truth = _world(seed=5)
    pairs = pairs.drop(columns=["shifted"])
    g_by = {(m, t): 3.0 * d - 5.0 * w + 7.0 * (t == "t1") for m, t, d, w in
            zip(pairs["model"], pairs["target"], pairs["w_d"], pairs["w_t"])}
    truth = truth.assign(value=[g_by[(m, t)] for m, t in zip(truth["model"], truth["target"])])
    out = rec.recommend(pairs, truth, metrics=["noise0"])
    assert out["chosen"] == rec.OTCE_FORM
    assert out["fit"]["coef"] == pytest.approx({"w_d": 3.0, "w_t": -5.0})
    assert out["loto"][rec.OTCE_FORM]["pearson"] == pytest.approx(1.0)


def test_rank_average_and_orientation():
    pairs, truth = _world(seed=2)
    g = truth.set_index(["model", "target"])["value"]
    key = list(zip(pairs["model"], pairs["target"]))
    pairs = pairs.assign(a=[g[k] for k in key], b=[-g[k] for k in key])
    out = rec.recommend(pairs, truth, metrics=["a", "b"], higher_is_better={"b": False})
    assert out["loto"]["b"]["weighted_tau"] == pytest.approx(1.0)
    assert out["loto"][rec.RANK_AVERAGE]["weighted_tau"] == pytest.approx(1.0)
    # Ties among perfect candidates go to the one without a fit, then the name.
    assert out["chosen"] == "a"


def test_apply_recommendation_scores_new_runs():
    pairs, truth = _world()
    out = rec.recommend(pairs, truth, metrics=["shifted", "noise0"])
    new, new_truth = _world(targets=2, seed=9)
    new = new.sample(frac=1.0, random_state=1)  # row order must not matter
    score = rec.apply_recommendation(out, new)
    assert score.name == "recommended" and score.index.equals(new.index)
    merged = new.assign(score=score).merge(new_truth, on=["model", "target"])
    for _, per in merged.groupby("target"):
        assert corr.pearson(per["score"], per["value"]) > 0.95
        assert corr.regret(per["score"], per["value"]) == pytest.approx(0.0)
    # The fit alone works too; an unseen family gets offset 0 with a warning.
    odd = new.assign(family=np.where(new["model"] == "m0", "mystery", new["family"]))
    with pytest.warns(UserWarning, match="mystery"):
        rec.apply_recommendation(out["fit"], odd)
    with pytest.raises(ValueError, match="shifted"):
        rec.apply_recommendation(out, new.drop(columns=["shifted"]))
    rows = new[["model", "target"]].assign(metric="recommended", score=score)
    assert rows["score"].notna().all()


def test_two_targets_no_nested_and_one_target_errors():
    pairs, truth = _world(targets=2)
    out = rec.recommend(pairs, truth, metrics=["shifted", "noise0"])
    assert out["loto"]["recommended"]["utility"] is None
    assert "2 targets" in out["loto"]["recommended"]["reason"]
    assert out["chosen"]
    one, one_truth = _world(targets=1)
    with pytest.raises(ValueError, match="at least 2 targets"):
        rec.recommend(one, one_truth, metrics=["shifted"])
    with pytest.raises(ValueError, match="no metric column"):
        rec.recommend(pairs, truth, metrics=["nope"])


def test_seeded_truth_and_default_metric_columns():
    pairs, truth = _world(targets=3)
    seeded = pd.concat([truth.assign(seed=0, value=truth["value"] + 1),
                        truth.assign(seed=1, value=truth["value"] - 1)])
    a = rec.recommend(pairs, truth)
    b = rec.recommend(pairs, seeded)
    assert a == b
    assert "shifted" in a["candidates"] and "capacity" not in a["candidates"]
    assert "w_d" not in a["candidates"] and rec.OTCE_FORM in a["candidates"]


def test_loto_figures_match_the_correlation_measures():
    pairs, truth = _world(seed=4)
    out = rec.recommend(pairs, truth, metrics=["shifted", "noise0"])
    merged = pairs.merge(truth, on=["model", "target"])
    for t, per in merged.groupby("target"):
        for metric in ("shifted", "noise0"):   # no fit: the LOTO score is the metric itself
            want = corr.measures_for_target(per[metric], per["value"])
            got = out["loto"][metric]["per_target"][t]
            for k in rec.FIGURES:
                assert got[k] == pytest.approx(want[k], abs=1e-12), (t, metric, k)


def test_rank_average_applies_to_a_run_missing_some_metrics():
    pairs, truth = _world(seed=6)
    g = truth.set_index(["model", "target"])["value"]
    pairs = pairs.assign(a=[g[k] for k in zip(pairs["model"], pairs["target"])])
    fit = {"kind": "rank_average", "metrics": ["a", "gone"], "signs": {}}
    score = rec.apply_recommendation(fit, pairs)
    merged = pairs.assign(score=score).merge(truth, on=["model", "target"])
    for _, per in merged.groupby("target"):
        assert corr.spearman(per["score"], per["value"]) == pytest.approx(1.0)
    assert rec.apply_recommendation(fit, pairs.drop(columns=["a"])).isna().all()
