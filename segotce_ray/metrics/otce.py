"""SEG-OTCE scoring core (being written; API is final)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class OTCEResult:
    score: float
    std: float
    scores: np.ndarray
    w_t: np.ndarray
    w_d: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    n_source: int
    n_target: int


def otce_score(source_features, source_labels, target_features, target_labels, n_pixels=10_000,
               repetitions=10, epsilon=0.1, seed=0, ignore_index=255, solver="sinkhorn",
               sampling="uniform", **kw) -> OTCEResult:
    import ot
    fs = np.asarray(source_features, dtype=np.float64); ys = np.asarray(source_labels)
    ft = np.asarray(target_features, dtype=np.float64); yt = np.asarray(target_labels)
    ms, mt = ys != ignore_index, yt != ignore_index
    fs, ys, ft, yt = fs[ms], ys[ms], ft[mt], yt[mt]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repetitions):
        i = rng.choice(len(fs), min(n_pixels, len(fs)), replace=False)
        j = rng.choice(len(ft), min(n_pixels, len(ft)), replace=False)
        C = ot.dist(fs[i], ft[j])
        P = ot.emd(ot.unif(len(i)), ot.unif(len(j)), C, numItermax=10**7) if solver == "emd" else \
            ot.sinkhorn(ot.unif(len(i)), ot.unif(len(j)), C, epsilon, method="sinkhorn_log", numItermax=10000)
        a = np.unique(ys); b = np.unique(yt)
        S = (ys[i][:, None] == a).astype(float); T = (yt[j][:, None] == b).astype(float)
        J = S.T @ P @ T; J /= J.sum(); pa_ = J.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            h = -np.nansum(np.where(J > 0, J * np.log(J / pa_), 0))
        out.append((-h, h, float((P * C).sum())))
    s = np.array([o[0] for o in out])
    return OTCEResult(float(s.mean()), float(s.std()), s, np.array([o[1] for o in out]),
                      np.array([o[2] for o in out]), np.zeros(repetitions, int), np.ones(repetitions, bool),
                      min(n_pixels, len(fs)), min(n_pixels, len(ft)))
