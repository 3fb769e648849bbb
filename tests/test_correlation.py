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


# ---------------------------------------------------------------------------- ground truth

def _seeded_truth(effects: np.ndarray, noise: float, seeds: int, targets=("t1", "t2"),
                  rng_seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    return pd.DataFrame([{"model": f"m{i:03d}", "target": t, "seed": k,
                          "value": e + noise * rng.normal()}
                         for t in targets for i, e in enumerate(effects) for k in range(seeds)])


def test_ground_truth_problems_name_the_line():
    bad = pd.DataFrame({"model": ["a", "b", "a", "c"], "target": ["t"] * 4,
                        "value": ["1.0", "x", "2.0", ""]})
    problems = corr.ground_truth_problems(bad)
    text = [str(p) for p in problems]
    assert "error: line 3: model 'b', target 't': value 'x' is not a number" in text
    assert any(p.line == 5 and "has no value" in p.message for p in problems)
    assert any(p.line == 4 and "repeats line 2" in p.message and "'seed' column" in p.message
               for p in problems)
    assert any(p.level == "warning" and "leave-one-target-out" in p.message for p in problems)
    seeded = pd.DataFrame({"model": ["a", "a", "a"], "target": ["t", "t", "u"],
                           "seed": [0, 0, 0], "value": [1.0, 2.0, 3.0]})
    (dup,) = corr.ground_truth_problems(seeded, first_line=10)
    assert dup.line == 11 and "seed '0' repeats line 10" in dup.message
    assert corr.ground_truth_problems(seeded.assign(seed=[0, 1, 0])) == []
    assert "lacks column" in corr.ground_truth_problems(bad[["model", "value"]])[0].message


def test_ground_truth_means_and_seed_spread():
    truth = pd.DataFrame({"model": ["a", "a", "b", "b", "c"], "target": "t",
                          "seed": [0, 1, 0, 1, 0], "value": [1.0, 3.0, 5.0, 5.0, 7.0]})
    means = corr.ground_truth_means(truth).set_index("model")
    assert means.loc["a", "value"] == 2.0 and means.loc["a", "seed_std"] == pytest.approx(math.sqrt(2))
    assert means.loc["b", "seed_std"] == 0.0 and math.isnan(means.loc["c", "seed_std"])
    assert list(means["n_seeds"]) == [2, 2, 1]
    summary = corr.ground_truth_summary(truth)
    row = summary.targets.iloc[0]
    assert row["seed_spread"] == pytest.approx(math.sqrt(2) / 2)  # mean of √2 and 0
    with pytest.raises(ValueError, match="seed '0'"):
        corr.ground_truth_means(pd.concat([truth, truth.iloc[:1]]))


def test_noise_ceiling_reliable_noise_and_too_few_seeds():
    effects = np.linspace(20, 60, 12)
    perfect = corr.ground_truth_summary(_seeded_truth(effects, 0.0, 4)).targets
    assert perfect["noise_ceiling"].tolist() == pytest.approx([1.0, 1.0])
    assert perfect["pearson_bound"].tolist() == pytest.approx([1.0, 1.0])
    assert perfect["n_seeds"].tolist() == [4, 4] and perfect["seed_spread"].tolist() == [0, 0]
    noise = corr.ground_truth_summary(_seeded_truth(np.zeros(400), 1.0, 4)).targets
    assert np.all(np.abs(noise["noise_ceiling"]) < 0.2)
    assert noise["seed_spread"].to_numpy() == pytest.approx(1.0, abs=0.1)
    one = corr.ground_truth_summary(_seeded_truth(effects, 1.0, 1)).targets
    assert one["noise_ceiling"].isna().all() and one["reason"].str.contains("fewer than 2 seeds").all()
    plain = corr.ground_truth_summary(pd.DataFrame({"model": ["a", "b", "c"], "target": "t",
                                                    "value": [1.0, 2.0, 3.0]})).targets
    assert math.isnan(plain.loc[0, "noise_ceiling"]) and "no 'seed' column" in plain.loc[0, "reason"]


def test_split_half_is_spearman_brown_over_every_split():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(9, 2)) + np.arange(9)[:, None] * 1.0
    r = stats.pearsonr(v[:, 0], v[:, 1])[0]
    two = corr.split_half_reliability(v)
    assert two["r_half"] == pytest.approx(r) and two["n_splits"] == 1
    assert two["r_full"] == pytest.approx(2 * r / (1 + r))
    assert two["pearson_bound"] == pytest.approx(math.sqrt(2 * r / (1 + r)))
    v4 = rng.normal(size=(9, 4)) + np.arange(9)[:, None] * 1.0
    halves = [([0, 1], [2, 3]), ([0, 2], [1, 3]), ([0, 3], [1, 2])]
    rh = np.mean([stats.pearsonr(v4[:, a].mean(1), v4[:, b].mean(1))[0] for a, b in halves])
    four = corr.split_half_reliability(v4)
    assert four["n_splits"] == 3 and four["r_half"] == pytest.approx(rh)
    # Many seeds: seeded random splits, deterministic.
    v12 = rng.normal(size=(9, 12))
    assert corr.split_half_reliability(v12, n_splits=20, seed=1) == \
        corr.split_half_reliability(v12, n_splits=20, seed=1)
    assert corr.split_half_reliability(v12, n_splits=20)["n_splits"] == 20


# ---------------------------------------------------------------------------- bootstrap

def test_bootstrap_replicates_recompute_each_measure_like_scipy():
    rng = np.random.default_rng(5)
    s = np.round(rng.normal(size=9), 1)   # coarse: resamples carry ties
    g = s + np.round(rng.normal(size=9), 1)
    reps = corr.bootstrap_replicates(s, g, n_resamples=40, seed=11)
    idx = np.random.default_rng(11).integers(0, 9, size=(40, 9))
    checked = 0
    for b in range(40):
        x, y = s[idx[b]], g[idx[b]]
        if len(set(idx[b])) < 3:
            assert all(math.isnan(reps[m][b]) for m in corr.BOOTSTRAP_MEASURES)
            continue
        assert reps["pearson"][b] == pytest.approx(corr.pearson(x, y), abs=1e-12)
        assert reps["spearman"][b] == pytest.approx(corr.spearman(x, y), abs=1e-12)
        assert reps["kendall_tau"][b] == pytest.approx(corr.kendall_tau(x, y), abs=1e-12)
        assert reps["weighted_tau"][b] == pytest.approx(corr.weighted_kendall_tau(x, y), abs=1e-12)
        assert reps["regret"][b] == pytest.approx(corr.regret(x, y), abs=1e-12)
        checked += 1
    assert checked > 30


def test_bootstrap_skips_resamples_with_fewer_than_three_models():
    reps = corr.bootstrap_replicates([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], n_resamples=2000)
    # Only the 3! orderings of all three models are kept: 6/27 of the resamples.
    assert np.isfinite(reps["regret"]).mean() == pytest.approx(6 / 27, abs=0.03)
    assert np.isnan(corr.bootstrap_replicates([1, 2], [2, 1])["pearson"]).all()


def test_bootstrap_intervals_contain_point_shrink_and_are_seeded():
    rng = np.random.default_rng(2)

    def sample(m):
        g = rng.normal(size=m)
        return g + rng.normal(size=m), g
    s, g = sample(12)
    iv = corr.bootstrap_intervals(s, g)
    point = corr.measures_for_target(s, g)
    for m in corr.BOOTSTRAP_MEASURES:
        assert iv[m][0] <= point[m] <= iv[m][1], m
    assert iv == corr.bootstrap_intervals(s, g)
    assert iv != corr.bootstrap_intervals(s, g, seed=1)
    big = corr.bootstrap_intervals(*sample(150))
    for m in ("pearson", "spearman", "kendall_tau", "weighted_tau"):
        assert big[m][1] - big[m][0] < 0.7 * (iv[m][1] - iv[m][0]), m
    # Wider level, wider interval.
    wide = corr.bootstrap_intervals(s, g, level=0.98)
    assert wide["pearson"][0] <= iv["pearson"][0] and wide["pearson"][1] >= iv["pearson"][1]


def _long(metrics: int, targets: int, models: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for t in range(targets):
        g = rng.uniform(20, 60, models)
        for i in range(models):
            truth.append({"model": f"m{i}", "target": f"t{t}", "value": g[i]})
            for k in range(metrics):
                rows.append({"metric": f"x{k}", "model": f"m{i}", "target": f"t{t}",
                             "score": g[i] * k / metrics + rng.normal(0, 8)})
    return pd.DataFrame(rows), pd.DataFrame(truth)


def test_correlation_table_intervals_columns_and_speed():
    import time
    scores, truth = _long(9, 4, 10)
    t0 = time.perf_counter()
    table = corr.correlation_table(scores, truth)
    assert time.perf_counter() - t0 < 5.0  # about 1.3 s on 2 shared cores
    assert list(table.columns) == ["metric", "target", "n_models", *corr.MEASURES, "reason",
                                   *corr.INTERVAL_COLUMNS]
    per = table[table["target"] != corr.MEAN_ROW]
    for m in corr.BOOTSTRAP_MEASURES:
        assert (per[f"{m}_lo"] <= per[m] + 1e-12).all() and (per[m] <= per[f"{m}_hi"] + 1e-12).all()
    row = per.iloc[0]
    sub_s = scores[(scores["metric"] == row["metric"]) & (scores["target"] == row["target"])]
    sub_g = truth[truth["target"] == row["target"]]
    merged = sub_s.merge(sub_g, on=["model", "target"]).sort_values("model")
    iv = corr.bootstrap_intervals(merged["score"], merged["value"])
    assert (row["pearson_lo"], row["pearson_hi"]) == pytest.approx(iv["pearson"])
    mean = table[table["target"] == corr.MEAN_ROW].iloc[0]
    assert mean["pearson_lo"] < mean["pearson"] < mean["pearson_hi"]
    # The mean row's interval is narrower than a typical target's (4 targets' noise averages).
    assert (mean["pearson_hi"] - mean["pearson_lo"]) < \
        (per["pearson_hi"] - per["pearson_lo"]).iloc[:4].mean()
    off = corr.correlation_table(scores, truth, n_resamples=0)
    assert off[list(corr.INTERVAL_COLUMNS)].isna().all().all()
    assert off["pearson"].equals(table["pearson"])


def test_correlation_table_averages_ground_truth_seeds():
    scores, truth = _long(1, 2, 6)
    seeded = pd.concat([truth.assign(seed=0, value=truth["value"] - 1.0),
                        truth.assign(seed=1, value=truth["value"] + 1.0)])
    a = corr.correlation_table(scores, truth, n_resamples=50)
    b = corr.correlation_table(scores, seeded, n_resamples=50)
    pd.testing.assert_frame_equal(a, b)


# ---------------------------------------------------------------------------- ties at the top

def test_tied_at_top_uses_combined_standard_error():
    mean = {"a": 10.0, "b": 9.5, "c": 5.0}
    std = {"a": 1.0, "b": 1.0, "c": 1.0}
    # √(1/4 + 1/4) = 0.707 > 0.5: a tie between a and b; c is far.
    assert corr.tied_at_top(mean, std, 4) == ["a", "b"]
    # √(1/100 + 1/100) = 0.141 < 0.5: a clear pick.
    assert corr.tied_at_top(mean, std, 100) == ["a"]
    assert corr.tied_at_top(mean, {"a": math.nan, "b": 1.0, "c": 1.0}, 4) == ["a"]
    assert corr.tied_at_top({}, {}, 3) == []
    reps = pd.DataFrame([{"metric": "x", "target": "t", "model": m, "k": k,
                          "score": mu + d, "status": "ok"}
                         for m, mu in mean.items() for k, d in enumerate((-1.0, 0.0, 1.0))])
    table = corr.top_ties(reps).iloc[0]
    assert table["top"] == "a" and table["tied"] == "a;b" and table["n_tied"] == 2
    assert table["lead"] == pytest.approx(0.5)
    assert table["threshold"] == pytest.approx(math.sqrt(2 / 3))
    flipped = corr.top_ties(reps, higher_is_better={"x": False}).iloc[0]
    assert flipped["top"] == "c" and flipped["n_tied"] == 1


# ---------------------------------------------------------------------------- baselines

def test_random_baseline_expectations():
    g = np.array([30.0, 50.0, 40.0, 45.0])
    truth = pd.DataFrame({"model": list("abcd"), "target": "t", "value": g})
    base = corr.random_baseline(truth).set_index("target")
    assert base.loc["t", "regret"] == pytest.approx(np.mean(50 - g))
    assert base.loc["t", "relative_regret"] == pytest.approx(np.mean(50 - g) / 50)
    # By enumeration over every ranking: the mean weighted τ, τ and regret.
    import itertools
    perms = [np.array(p, dtype=float) for p in itertools.permutations(range(4))]
    assert np.mean([corr.weighted_kendall_tau(p, g) for p in perms]) == pytest.approx(0, abs=1e-12)
    assert np.mean([corr.kendall_tau(p, g) for p in perms]) == pytest.approx(0, abs=1e-12)
    assert np.mean([corr.regret(p, g) for p in perms]) == pytest.approx(base.loc["t", "regret"])
    assert base.loc[corr.MEAN_ROW, "pearson"] == 0.0


def test_beats_baseline_rule():
    assert corr.beats_baseline("pearson", 0.1, 0.8, 0.0) is True
    assert corr.beats_baseline("pearson", -0.1, 0.8, 0.0) is False  # point above, interval not
    assert corr.beats_baseline("regret", 0.0, 2.0, 3.0) is True
    assert corr.beats_baseline("regret", 0.0, 4.0, 3.0) is False
    assert corr.beats_baseline("pearson", math.nan, math.nan, 0.0) is None
    with pytest.raises(ValueError, match="unknown measure"):
        corr.beats_baseline("auc", 0, 1, 0)


def test_capacity_without_variation_is_said_so():
    rng = np.random.default_rng(4)
    g = rng.uniform(20, 60, 8)
    models = [f"m{i}" for i in range(8)]
    truth = pd.DataFrame({"model": models, "target": "t", "value": g})
    scores = pd.concat([
        pd.DataFrame({"metric": "good", "model": models, "target": "t", "score": g}),
        pd.DataFrame({"metric": "capacity", "model": models, "target": "t",
                      "score": corr.capacity_score([3e6] * 8)})])
    table = corr.correlation_table(scores, truth, n_resamples=200)
    cap = table[(table["metric"] == "capacity") & (table["target"] == "t")].iloc[0]
    assert "no variation" in cap["reason"]
    cmp = corr.compare_with_baselines(table, truth)
    good = cmp[(cmp["metric"] == "good") & (cmp["target"] == "t") & (cmp["measure"] == "pearson")]
    assert good.set_index("baseline").loc["random", "beats"] is True
    assert good.set_index("baseline").loc["capacity", "reason"] == "capacity has no variation"
    assert corr.capacity_score([0, 1000])[1] == pytest.approx(3.0)
    assert math.isnan(corr.capacity_score([0, 1000])[0])


# ---------------------------------------------------------------------------- families

def _demo_like():
    """7 tiny nets where the metric tracks ground truth, and one big LR-ASPP model that
    fine-tunes far better but scores low."""
    rng = np.random.default_rng(8)
    rows, truth = [], []
    for t in ("t1", "t2"):
        g = rng.uniform(20, 30, 7)
        s = g + rng.normal(0, 1.5, 7)
        models = [(f"tiny{i}", "tiny", s[i], g[i]) for i in range(7)] + \
                 [("lraspp", "lraspp", s.min() - 3, 60.0)]
        for m, fam, x, y in models:
            rows.append({"metric": "otce", "model": m, "target": t, "score": x})
            truth.append({"model": m, "target": t, "value": y})
    fams = {f"tiny{i}": "tiny" for i in range(7)} | {"lraspp": "lraspp"}
    return pd.DataFrame(rows), pd.DataFrame(truth), fams


def test_family_agreement_and_driving_family():
    scores, truth, fams = _demo_like()
    agree = corr.family_agreement(scores, truth, fams, n_resamples=0)
    assert set(agree["family"]) == {corr.ALL_FAMILIES, "tiny"}  # lraspp: 1 model, no family row
    assert list(agree.columns[:2]) == ["family", "metric"]
    tiny = agree[(agree["family"] == "tiny") & (agree["target"] == corr.MEAN_ROW)].iloc[0]
    overall = agree[(agree["family"] == corr.ALL_FAMILIES)
                    & (agree["target"] == corr.MEAN_ROW)].iloc[0]
    assert tiny["pearson"] > 0.5 and overall["pearson"] < 0
    drive = corr.driving_family(scores, truth, fams).iloc[0]
    assert drive["family"] == "lraspp" and bool(drive["drives"])
    assert drive["overall"] == pytest.approx(overall["pearson"])
    assert drive["without"] == pytest.approx(tiny["pearson"])
    assert drive["difference"] == pytest.approx(overall["pearson"] - tiny["pearson"])
    # Without the outlier the tiny family drives nothing: removing it leaves < 3 models.
    no_big = scores[scores["model"] != "lraspp"]
    calm = corr.driving_family(no_big, truth, fams).iloc[0]
    assert calm["family"] == "" and not calm["drives"]
