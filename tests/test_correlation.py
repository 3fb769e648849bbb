"""Correlation and selection measures against SciPy and against hand-derived values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from segotce_ray.metrics import correlation as corr


@pytest.fixture()
def known() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    g = rng.uniform(20, 60, size=12)
    s = 0.5 * g + rng.normal(0, 6, size=12)
    return s, g


def test_correlations_match_scipy(known):
    s, g = known
    assert corr.pearson(s, g) == pytest.approx(stats.pearsonr(s, g)[0], abs=1e-12)
    assert corr.spearman(s, g) == pytest.approx(stats.spearmanr(s, g)[0], abs=1e-12)
    assert corr.kendall_tau(s, g) == pytest.approx(stats.kendalltau(s, g)[0], abs=1e-12)
    assert corr.weighted_kendall_tau(s, g) == pytest.approx(stats.weightedtau(s, g)[0], abs=1e-12)
    # Not trivially 1: the noise reorders some models.
    assert 0.2 < corr.kendall_tau(s, g) < 0.999


def test_kendall_is_tau_b_with_ties():
    s = np.array([1.0, 1.0, 2.0, 3.0, 3.0, 4.0])
    g = np.array([10.0, 12.0, 11.0, 15.0, 14.0, 20.0])
    # τ_b by its definition, counted by hand over all pairs.
    conc = disc = ties_s = ties_g = 0
    for i in range(len(s)):
        for j in range(i + 1, len(s)):
            ds, dg = np.sign(s[i] - s[j]), np.sign(g[i] - g[j])
            if ds == 0 and dg == 0:
                continue
            if ds == 0:
                ties_s += 1
            elif dg == 0:
                ties_g += 1
            elif ds == dg:
                conc += 1
            else:
                disc += 1
    expected = (conc - disc) / math.sqrt((conc + disc + ties_s) * (conc + disc + ties_g))
    assert corr.kendall_tau(s, g) == pytest.approx(expected, abs=1e-12)


def test_selection_measures_by_hand():
    s = np.array([0.9, 0.8, 0.1, 0.5])   # picks model 0, top-3 = {0, 1, 3}
    g = np.array([40.0, 50.0, 20.0, 45.0])  # best is model 1 (50)
    assert corr.relative_top1(s, g) == pytest.approx(40 / 50)
    assert corr.regret(s, g) == pytest.approx(10.0)
    assert corr.relative_regret(s, g) == pytest.approx(10 / 50)
    assert corr.rel_at_k(s, g, 1) == pytest.approx(0.8)
    assert corr.rel_at_k(s, g, 3) == pytest.approx(1.0)
    assert corr.best_in_top_n(s, g, 1) == 0.0
    assert corr.best_in_top_n(s, g, 2) == 1.0
    with pytest.raises(ValueError, match="k >= 1"):
        corr.rel_at_k(s, g, 0)


def test_degenerate_inputs_give_nan_with_reason():
    two = corr.measures_for_target([1.0, 2.0], [3.0, 4.0])
    assert math.isnan(two["pearson"]) and math.isnan(two["regret"])
    assert "fewer than 3 models" in two["reason"]
    flat = corr.measures_for_target([1.0, 1.0, 1.0, 1.0], [3.0, 4.0, 5.0, 6.0])
    assert all(math.isnan(flat[m]) for m in corr.MEASURES)
    assert "scores are constant" in flat["reason"]
    flat_gt = corr.measures_for_target([1.0, 2.0, 3.0], [5.0, 5.0, 5.0])
    assert math.isnan(flat_gt["spearman"]) and flat_gt["regret"] == 0.0
    assert "ground truth is constant" in flat_gt["reason"]
    nan_in = corr.measures_for_target([1.0, np.nan, 3.0, 2.0, 5.0], [1.0, 2.0, 3.0, 4.0, 6.0])
    assert nan_in["n_models"] == 4 and "dropped" in nan_in["reason"]
    assert nan_in["spearman"] == pytest.approx(stats.spearmanr([1, 3, 2, 5], [1, 3, 4, 6])[0])
    with pytest.raises(ValueError, match="3 values"):
        corr.pearson([1.0, 2.0, 3.0], [1.0, 2.0])


def test_correlation_table_per_target_and_mean(known):
    s, g = known
    models = [f"m{i:02d}" for i in range(len(s))]
    rows, truth = [], []
    for t, (ss, gg) in {"a": (s, g), "b": (-s, g), "c": (s[:2], g[:2])}.items():
        for m, x, y in zip(models, ss, gg):
            rows.append({"model": m, "target": t, "metric": "otce", "score": x})
            truth.append({"model": m, "target": t, "value": y})
    # Shuffle rows: the table must not depend on input order.
    scores = pd.DataFrame(rows).sample(frac=1.0, random_state=3)
    table = corr.correlation_table(scores, pd.DataFrame(truth).sample(frac=1.0, random_state=4))
    assert list(table["target"]) == ["a", "b", "c", corr.MEAN_ROW]
    a = table.set_index("target").loc["a"]
    assert a["pearson"] == pytest.approx(stats.pearsonr(s, g)[0])
    assert a["weighted_tau"] == pytest.approx(stats.weightedtau(s, g)[0])
    b = table.set_index("target").loc["b"]
    assert b["spearman"] == pytest.approx(-stats.spearmanr(s, g)[0])
    assert "fewer than 3" in table.set_index("target").loc["c", "reason"]
    mean = table.set_index("target").loc[corr.MEAN_ROW]
    assert mean["kendall_tau"] == pytest.approx((a["kendall_tau"] + b["kendall_tau"]) / 2)
    assert mean["n_models"] == 2 and "c" in mean["reason"]
    # A lower-is-better metric is negated before correlating.
    flipped = corr.correlation_table(scores, pd.DataFrame(truth), higher_is_better={"otce": False})
    assert flipped.set_index("target").loc["b", "spearman"] == pytest.approx(stats.spearmanr(s, g)[0])


def test_correlation_table_averages_repetitions(known):
    s, g = known
    models = [f"m{i:02d}" for i in range(len(s))]
    rows = []
    for m, x in zip(models, s):   # three repetitions around x; one failed repetition ignored
        rows += [{"model": m, "target": "t", "metric": "otce", "k": k, "score": x + d,
                  "status": "ok"} for k, d in enumerate((-0.5, 0.0, 0.5))]
        rows.append({"model": m, "target": "t", "metric": "otce", "k": 3, "score": 99.0,
                     "status": "failed"})
    truth = pd.DataFrame({"model": models, "target": "t", "value": g})
    table = corr.correlation_table(pd.DataFrame(rows), truth).set_index("target")
    assert table.loc["t", "pearson"] == pytest.approx(stats.pearsonr(s, g)[0], abs=1e-12)
    assert table.loc["t", "n_models"] == len(s)
    dup = pd.concat([truth, truth.iloc[:1]])
    with pytest.raises(ValueError, match="more than one value"):
        corr.correlation_table(pd.DataFrame(rows), dup)
