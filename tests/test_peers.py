"""Peer metrics: each against an independent re-derivation of its formula, plus invariances,
degenerate inputs and sanity (better-separated classes score higher)."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from segotce_ray.metrics.peers import PEER_METRICS, compute_metric, metrics_for_inputs
from segotce_ray.metrics.peer_inputs import MetricInputError, pca
from segotce_ray.metrics.nleep import _fit_gaussian_mixture, nleep
from segotce_ray.metrics.logme import _logme_per_class, logme
from segotce_ray.metrics.gbc import gbc
from segotce_ray.metrics.hscore import hscore, hscore_shrinkage
from segotce_ray.metrics.leep import leep
from segotce_ray.metrics.nce import nce
from segotce_ray.metrics.transrate import transrate

FEATURE_METRICS = [n for n, i in PEER_METRICS.items() if i.inputs == "features"]
PROB_METRICS = [n for n, i in PEER_METRICS.items() if i.inputs == "probs"]


def blobs(n=240, d=6, c=4, sep=1.5, seed=0):
    """Gaussian class blobs: features (n, d), labels (n,) with every class present."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    rng.shuffle(y)
    centers = rng.normal(size=(c, d)) * sep
    x = centers[y] + rng.normal(size=(n, d)) * rng.uniform(0.5, 1.5, size=d)
    return x, y


def probs_for(y, n_source=5, noise=1.0, seed=0):
    """Source probabilities loosely tied to y (softmax of noisy logits), rows sum to 1."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(y.size, n_source)) * noise
    logits[np.arange(y.size), y % n_source] += 2.0
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


def call(name, x, p, y, **kw):
    return compute_metric(name, features=x, probs=p, labels=y, **kw)


# ------------------------------------------------------------------ reference computations


def nce_by_counting(p, y):
    z = [int(np.argmax(row)) for row in p]
    n = len(y)
    pair = Counter(zip(z, (int(v) for v in y)))
    zc = Counter(z)
    return sum(cnt / n * math.log(cnt / zc[zz]) for (zz, _), cnt in pair.items())


def leep_by_loops(p, y):
    n, cs = p.shape
    classes = sorted(set(int(v) for v in y))
    joint = {(zz, yy): 0.0 for zz in range(cs) for yy in classes}
    for i in range(n):
        for zz in range(cs):
            joint[zz, int(y[i])] += p[i, zz] / n
    marg = {zz: sum(joint[zz, yy] for yy in classes) for zz in range(cs)}
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[zz, int(y[i])] / marg[zz] * p[i, zz]
                              for zz in range(cs) if marg[zz] > 0))
    return total / n


def logme_evidence_direct(f, y, alpha, beta):
    """Closed-form log-evidence with explicit inverse and determinant."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.inv(a) @ f.T @ y
    _, logdet = np.linalg.slogdet(a)
    return (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
            - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)


# ------------------------------------------------------------------ formulas


def test_nce_matches_counting():
    x, y = blobs(n=300, c=4)
    p = probs_for(y, n_source=6, noise=1.5)
    assert nce(p, y) == pytest.approx(nce_by_counting(p, y), abs=1e-12)
    assert nce(p, y) < 0


def test_leep_matches_explicit_empirical_conditional():
    _, y = blobs(n=120, c=3)
    p = probs_for(y, n_source=4, noise=1.2)
    p[:, 3] = 0.0  # a source class never predicted: P(z)=0 must be skipped
    p /= p.sum(1, keepdims=True)
    assert leep(p, y) == pytest.approx(leep_by_loops(p, y), abs=1e-12)
    # LEEP is a mean log-likelihood: bounded by log(1)=0 and by the trivial bound −H(Y) from below
    assert leep(p, y) <= 0.0


@pytest.mark.parametrize("n,d", [(80, 5), (12, 20)])  # N >= D (eig of FᵀF) and N < D (of FFᵀ)
def test_logme_fixed_point_and_evidence(n, d):
    x, y = blobs(n=n, d=d, c=3, sep=1.0, seed=3)
    alphas, betas, evidences = _logme_per_class(x, y, 3)
    for c in range(3):
        yc = (y == c).astype(float)
        a, b = alphas[c], betas[c]
        # evidence equals the closed form with explicit inverse / determinant ...
        direct = logme_evidence_direct(x, yc, a, b)
        assert evidences[c] == pytest.approx(direct, rel=1e-7, abs=1e-7)
        # ... and the Gaussian marginal likelihood y ~ N(0, I/β + F Fᵀ/α)
        cov = np.eye(n) / b + x @ x.T / a
        assert evidences[c] == pytest.approx(multivariate_normal(np.zeros(n), cov).logpdf(yc),
                                             rel=1e-6)
        # fixed-point equations hold (explicit matrices)
        amat = a * np.eye(d) + b * x.T @ x
        m = b * np.linalg.solve(amat, x.T @ yc)
        sig = np.linalg.eigvalsh(x.T @ x)
        gamma = np.sum(b * sig / (a + b * sig))
        assert a == pytest.approx(gamma / (m @ m), rel=1e-5)
        assert b == pytest.approx((n - gamma) / np.sum((x @ m - yc) ** 2), rel=1e-5)
        # it is a maximum of the evidence: perturbing α or β lowers it
        for da, db in [(1.05, 1), (0.95, 1), (1, 1.05), (1, 0.95)]:
            assert logme_evidence_direct(x, yc, a * da, b * db) < direct
    assert logme(x, y) == pytest.approx(np.mean(evidences) / n, rel=1e-12)


def test_hscore_matches_explicit_matrix_formula():
    x, y = blobs(n=150, d=5, c=3)
    g = np.empty_like(x)
    for c in np.unique(y):  # explicit class-conditional expectation per sample
        g[y == c] = x[y == c].mean(axis=0)
    cov_f = np.cov(x, rowvar=False)
    cov_g = np.cov(g, rowvar=False)
    expected = np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ cov_g)
    assert hscore(x, y, rcond=1e-15) == pytest.approx(expected, rel=1e-9)
    # the known trap (element-wise product before the trace) gives a different number
    trap = np.trace(np.linalg.pinv(cov_f) * cov_g)
    assert abs(trap - expected) > 1e-3 * abs(expected)
    assert 0.0 <= expected <= 2.0 + 1e-9  # H <= C − 1


@pytest.mark.parametrize("rcond", [1e-15, 1e-6])
def test_hscore_near_collinear_features_follow_pinv_cutoff(rcond):
    # a channel that nearly copies another: cov eigenvalue ~1e-8 of the largest;
    # kept (Cholesky path) at rcond=1e-15, cut (eigendecomposition path) at 1e-6
    x, y = blobs(n=200, d=4, c=3)
    rng = np.random.default_rng(8)
    x = np.hstack([x, x[:, :1] + 1e-4 * rng.normal(size=(200, 1)) + 0.3 * (y == 1)[:, None] * 1e-4])
    g = np.stack([x[y == c].mean(0) for c in y])
    expected = np.trace(np.linalg.pinv(np.cov(x, rowvar=False), rcond=rcond)
                        @ np.cov(g, rowvar=False))
    assert hscore(x, y, rcond=rcond) == pytest.approx(expected, rel=1e-6)


def test_hscore_pinv_handles_rank_deficient_features():
    x, y = blobs(n=100, d=4, c=3)
    x_dup = np.hstack([x, x[:, :2], np.zeros((100, 1))])  # duplicated and dead channels
    assert hscore(x_dup, y) == pytest.approx(hscore(x, y), rel=1e-6)


def test_hscore_shrinkage_matches_ledoit_wolf_from_definition():
    x, y = blobs(n=60, d=8, c=3, sep=0.8)
    n, d = x.shape
    xc = x - x.mean(0)
    s = sum(np.outer(r, r) for r in xc) / n
    mu = np.trace(s) / d
    fro2 = lambda a: np.sum(a * a) / d  # LW's normalised Frobenius norm  # noqa: E731
    delta2 = fro2(s - mu * np.eye(d))
    b_bar2 = sum(fro2(np.outer(r, r) - s) for r in xc) / n**2
    shrink = min(b_bar2, delta2) / delta2
    assert 0.0 < shrink < 1.0
    cov_lw = (1 - shrink) * s + shrink * mu * np.eye(d)
    g = np.stack([xc[y == c].mean(0) for c in y])  # E[f|y] per sample
    cov_g = g.T @ g / n
    expected = np.trace(np.linalg.inv(cov_lw) @ ((1 - shrink) * cov_g))
    assert hscore_shrinkage(x, y) == pytest.approx(expected, rel=1e-9)
    # shrinkage only lowers the score relative to the plain H-score
    assert hscore_shrinkage(x, y) < hscore(x, y)


def test_hscore_shrinkage_close_to_hscore_with_many_samples():
    x, y = blobs(n=4000, d=4, c=3)
    assert hscore_shrinkage(x, y) == pytest.approx(hscore(x, y), rel=1e-2)


def test_gbc_matches_pairwise_loop():
    x, y = blobs(n=200, d=10, c=4, sep=0.7)
    for k in (3, 64):  # PCA below D and PCA capped at D
        xc = x - x.mean(0)
        _, _, vt = np.linalg.svd(xc, full_matrices=False)
        z = xc @ vt[: min(k, 10)].T
        floor = 1e-4 * np.mean(z.var(0))
        stats = {}
        for c in range(4):
            zc = z[y == c]
            stats[c] = (zc.mean(0), np.maximum(zc.var(0), floor))
        total = 0.0
        for i in range(4):
            for j in range(4):
                if i == j:
                    continue
                (mi, vi), (mj, vj) = stats[i], stats[j]
                db = 0.0
                for dim in range(z.shape[1]):
                    vbar = (vi[dim] + vj[dim]) / 2
                    db += (mi[dim] - mj[dim]) ** 2 / (8 * vbar)
                    db += 0.5 * math.log(vbar / math.sqrt(vi[dim] * vj[dim]))
                total += math.exp(-db)
        assert gbc(x, y, n_components=k) == pytest.approx(-total, rel=1e-9)
        assert -12.0 <= -total <= 0.0


def test_transrate_matches_slogdet():
    x, y = blobs(n=90, d=7, c=3)
    eps = 1e-2
    xc = x - x.mean(0)

    def rate(z):
        return 0.5 * np.linalg.slogdet(np.eye(z.shape[1]) + z.T @ z / (z.shape[0] * eps))[1]

    expected = rate(xc) - np.mean([rate(xc[y == c]) for c in range(3)])
    assert transrate(x, y, eps=eps) == pytest.approx(expected, rel=1e-9)
    # N < D path of a class (Sylvester identity) also agrees
    x_wide, y_wide = blobs(n=30, d=40, c=2, seed=2)
    xc = x_wide - x_wide.mean(0)
    expected = rate(xc) - np.mean([rate(xc[y_wide == c]) for c in range(2)])
    assert transrate(x_wide, y_wide, eps=eps) == pytest.approx(expected, rel=1e-8)


def test_pca_keeps_fewest_axes_reaching_80_percent_variance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.1])
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    expected_k = int(np.argmax(np.cumsum(s) / s.sum() >= 0.8)) + 1
    z = pca(x, variance=0.8)
    assert z.shape == (200, expected_k)
    np.testing.assert_allclose(np.sort(z.var(0))[::-1], s[:expected_k] / 200, rtol=1e-9)


@pytest.mark.parametrize("covariance", ["diag", "full"])
def test_gaussian_mixture_em(covariance):
    x, _ = blobs(n=300, d=3, c=3, sep=3.0, seed=4)
    fit = _fit_gaussian_mixture(x, 3, covariance=covariance, seed=0)
    # EM never decreases the likelihood
    assert np.all(np.diff(fit.log_likelihood) > -1e-9)
    # responsibilities are the posteriors of the returned parameters (scipy densities)
    dens = np.stack([
        fit.weights[k] * multivariate_normal(
            fit.means[k], np.diag(fit.covariances[k]) if covariance == "diag"
            else fit.covariances[k]).pdf(x)
        for k in range(3)], axis=1)
    np.testing.assert_allclose(fit.responsibilities, dens / dens.sum(1, keepdims=True),
                               atol=1e-8)
    assert fit.log_likelihood[-1] == pytest.approx(np.mean(np.log(dens.sum(1))), rel=1e-9)


def test_nleep_is_leep_of_mixture_posteriors_with_the_log():
    x, y = blobs(n=200, d=6, c=3, sep=0.6)
    z = pca(x, variance=0.8)
    post = _fit_gaussian_mixture(z, 5 * 3, seed=0).responsibilities
    expected = leep_by_loops(post, y)
    got = nleep(x, y)
    assert got == pytest.approx(expected, rel=1e-9)
    # not the "dropped log" variant (mean of the expected empirical prediction)
    _, codes = np.unique(y, return_inverse=True)
    joint = post.T @ np.eye(3)[codes] / len(y)
    eep = np.sum(post * (joint / joint.sum(1, keepdims=True))[:, codes].T, axis=1)
    assert got < math.log(np.mean(eep)) - 1e-3
    assert nleep(x, y) == got  # deterministic (fixed seed)
    assert nleep(x, y, covariance="full") <= 0.0


# ------------------------------------------------------------------ invariances


@pytest.mark.parametrize("name", list(PEER_METRICS))
def test_invariant_to_relabelling_target_classes(name):
    x, y = blobs(n=160, d=5, c=4, sep=1.0)
    p = probs_for(y)
    relabel = np.array([7, 3, 11, 0])[y]  # non-contiguous, reordered ids
    assert call(name, x, p, relabel) == pytest.approx(call(name, x, p, y), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", PROB_METRICS)
def test_invariant_to_permuting_source_classes(name):
    _, y = blobs(n=160, c=4)
    p = probs_for(y, n_source=6)
    perm = np.random.default_rng(5).permutation(6)
    assert call(name, None, p[:, perm], y) == pytest.approx(call(name, None, p, y), rel=1e-12)


@pytest.mark.parametrize("name", [n for n in PEER_METRICS if n != "nleep"])
def test_invariant_to_pixel_order(name):
    x, y = blobs(n=160, d=5, c=4)
    p = probs_for(y)
    order = np.random.default_rng(6).permutation(len(y))
    assert call(name, x[order], p[order], y[order]) == pytest.approx(call(name, x, p, y), rel=1e-9)


@pytest.mark.parametrize("name", ["nleep", "hscore", "hscore_shrinkage", "gbc"])
def test_scale_invariant_metrics(name):
    x, y = blobs(n=160, d=5, c=3, sep=0.8)
    assert call(name, 37.0 * x + 5.0, None, y) == pytest.approx(call(name, x, None, y), rel=1e-6)


@pytest.mark.parametrize("name", list(PEER_METRICS))
def test_ignore_index_pixels_are_dropped(name):
    x, y = blobs(n=120, d=5, c=3)
    p = probs_for(y)
    rng = np.random.default_rng(7)
    x_all = np.vstack([x, rng.normal(size=(30, 5)) * 100])
    p_all = np.vstack([p, probs_for(np.zeros(30, int), seed=9)])
    y_all = np.concatenate([y, np.full(30, 255)])
    assert call(name, x_all, p_all, y_all) == pytest.approx(call(name, x, p, y), rel=1e-9)


# ------------------------------------------------------------------ degenerate / bad input


@pytest.mark.parametrize("name", list(PEER_METRICS))
def test_single_class_is_a_clear_error(name):
    x, _ = blobs(n=50)
    y = np.full(50, 2)
    with pytest.raises(MetricInputError, match=rf"{name}: .*1 class"):
        call(name, x, probs_for(y), y)
    y2 = y.copy()
    y2[:10] = 255  # the only other "class" is ignore_index
    with pytest.raises(MetricInputError, match="ignore_index=255"):
        call(name, x, probs_for(y), y2)


@pytest.mark.parametrize("name", list(PEER_METRICS))
def test_bad_shapes_and_values(name):
    x, y = blobs(n=50)
    p = probs_for(y)
    with pytest.raises(MetricInputError, match="has 49 entries"):
        call(name, x, p, y[:-1])
    with pytest.raises(MetricInputError, match="2-D"):
        call(name, x[:, 0], p[:, 0], y)
    with pytest.raises(MetricInputError, match="1-D"):
        call(name, x, p, y[:, None])
    bad_x, bad_p = x.copy(), p.copy()
    bad_x[3, 1] = np.nan
    bad_p[3, 1] = np.nan
    with pytest.raises(MetricInputError, match="NaN"):
        call(name, bad_x, bad_p, y)
    with pytest.raises(MetricInputError, match="integer"):
        call(name, x, p, y + 0.5)
    # float labels that are whole numbers are accepted
    assert call(name, x, p, y.astype(float)) == pytest.approx(call(name, x, p, y))


def test_probs_must_be_probabilities():
    _, y = blobs(n=50)
    logits = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(MetricInputError, match="not logits"):
        leep(logits, y)
    with pytest.raises(MetricInputError, match="sum to 1"):
        nce(np.abs(logits), y)
    p16 = probs_for(y).astype(np.float16)  # float16 rows within 1e-2 of 1 are accepted
    assert leep(p16, y) == pytest.approx(leep(p16.astype(float) / p16.astype(float).sum(1)[:, None], y))


def test_constant_features_documented_values():
    _, y = blobs(n=120, c=4)
    const = np.full((120, 6), 3.0)
    counts = np.bincount(y) / len(y)
    assert hscore(const, y) == 0.0
    assert hscore_shrinkage(const, y) == 0.0
    assert transrate(const, y) == 0.0
    assert gbc(const, y) == -12.0
    assert nleep(const, y) == pytest.approx(np.sum(counts * np.log(counts)), rel=1e-12)
    # LogME: all-zero features are the α → ∞ limit: β = N / n_c per class
    n = len(y)
    expected = np.mean([(n / 2 * math.log(n / nc) - n / 2 * math.log(2 * math.pi) - n / 2) / n
                        for nc in np.bincount(y)])
    assert logme(np.zeros((120, 6)), y) == pytest.approx(expected, rel=1e-12)
    x, _ = blobs(n=120, c=4, sep=2.0)
    assert np.isfinite(logme(const, y)) and logme(const, y) < logme(x, y)


def test_float16_features_accepted():
    x, y = blobs(n=100, d=5, c=3)
    for name in FEATURE_METRICS:
        assert np.isfinite(call(name, x.astype(np.float16), None, y))


# ------------------------------------------------------------------ sanity


@pytest.mark.parametrize("name", FEATURE_METRICS)
def test_better_separated_features_score_higher(name):
    rng = np.random.default_rng(11)
    y = np.arange(300) % 3
    noise = rng.normal(size=(300, 6))
    direction = rng.normal(size=(3, 6))
    scores = [call(name, direction[y] * sep + noise, None, y) for sep in (0.3, 1.0, 3.0)]
    assert scores[0] < scores[1] < scores[2], scores


@pytest.mark.parametrize("name", PROB_METRICS)
def test_more_informative_source_scores_higher(name):
    _, y = blobs(n=300, c=3)
    scores = [call(name, None, probs_for(y, n_source=4, noise=s, seed=1), y)
              for s in (6.0, 2.0, 0.5)]
    assert scores[0] < scores[1] < scores[2], scores


# ------------------------------------------------------------------ registry


def test_registry_and_generic_call():
    assert set(PEER_METRICS) == {"nce", "leep", "nleep", "logme", "hscore",
                                 "hscore_shrinkage", "gbc", "transrate"}
    assert PROB_METRICS == ["nce", "leep"]
    assert all(i.higher_is_better and not i.needs_source for i in PEER_METRICS.values())
    assert metrics_for_inputs(has_probs=False) == FEATURE_METRICS
    assert metrics_for_inputs(has_probs=True) == list(PEER_METRICS)
    x, y = blobs()
    assert compute_metric("transrate", features=x, labels=y, eps=1e-2) == transrate(x, y, 1e-2)
    with pytest.raises(MetricInputError, match="leep: needs source probabilities"):
        compute_metric("leep", features=x, labels=y)
    with pytest.raises(KeyError, match="unknown peer metric 'otce'"):
        compute_metric("otce", features=x, labels=y)


def test_nleep_few_pixels_and_duplicated_rows():
    # K = min(5·C, N // 2) components; more components than distinct points must not break EM
    x, y = blobs(n=10, d=3, c=4)
    assert np.isfinite(nleep(x, y)) and nleep(x, y) <= 0.0
    rows = np.array([[0.0, 1.0], [2.0, -1.0], [5.0, 5.0]])
    y_dup = np.arange(60) % 2
    x_dup = rows[np.arange(60) % 3]
    value = nleep(x_dup, y_dup)
    assert np.isfinite(value) and value <= 0.0
