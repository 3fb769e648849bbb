r"""Degenerate pools: features that carry no information, or too few pixels to score.

A model whose features are constant over a pool (e.g. random weights behind a saturated
ReLU or a batch norm in eval mode) still gets scores — and can rank first: with a constant
cost every coupling is optimal and the joint says nothing about the model. These checks
flag such pools so the report can warn and the matrix rows can be marked; they never
change a score.

Per pool (P pixels, D channels), over the labelled pixels (label ≠ ignore index):

- ``n_valid``: number of labelled pixels;
- ``spread = sqrt(Σ_c var_c)``: the total standard deviation of the features (float64);
- ``rms_norm = sqrt(mean_i ||f_i||²)``: the typical feature norm;
- ``constant_channels``: channels whose std is 0.

A pool is **degenerate** when ``spread ≤ ABS_SPREAD`` or ``spread ≤ REL_SPREAD · rms_norm``
(features constant up to float16 rounding, which is ~1e-3 relative), or when ``n_valid <
n_pixels`` (fewer pixels than one SEG-OTCE repetition draws: the repetitions reuse the
whole pool and differ only by order). :func:`pool_stats` is computed once per pool (one
pass over the features) and does not depend on the job's settings; :func:`degenerate_reason`
turns it into a sentence for a given ``n_pixels``.

Where a pool is written, each chunk's :func:`partial_stats` (count, channel means, centred
sums of squares) travel with the chunk's metadata and :func:`combine_stats` merges them
exactly (Chan et al.'s pairwise update) into the pool's manifest (``facts``): nothing reads a
pool back to learn its statistics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["ABS_SPREAD", "REL_SPREAD", "STATS_VERSION", "combine_stats", "degenerate_reason",
           "partial_stats", "pool_stats"]

#: Total feature std at or below which a pool is constant, absolutely ...
ABS_SPREAD = 1e-6
#: ... or relative to the RMS feature norm (float16 pools resolve ~1e-3 relative).
REL_SPREAD = 1e-3
#: Version of :func:`pool_stats`'s output (a stored memo of another version is recomputed).
STATS_VERSION = 1


def pool_stats(features: np.ndarray, labels: np.ndarray, ignore_index: int = 255,
               chunk: int = 65_536) -> dict[str, Any]:
    """Spread statistics of a pool: features (P, D), labels (P,) → a JSON-able dict.

    Keys: version, n_pixels (P), n_valid, dim, spread, rms_norm, constant_channels.
    Computed in float64 chunks of rows (two passes: means, then centred squares), so a pool
    of millions of float16 pixels needs no float64 copy of itself.
    """
    feats = np.asarray(features)
    valid = np.flatnonzero(np.asarray(labels) != ignore_index)
    n, dim = int(valid.size), int(feats.shape[1]) if feats.ndim == 2 else 0
    out = {"version": STATS_VERSION, "n_pixels": int(feats.shape[0]), "n_valid": n, "dim": dim,
           "spread": 0.0, "rms_norm": 0.0, "constant_channels": dim}
    if n == 0 or dim == 0:
        return out
    total = np.zeros(dim)
    sq_norm = 0.0
    for i in range(0, n, chunk):
        block = feats[valid[i:i + chunk]].astype(np.float64)
        total += block.sum(axis=0)
        sq_norm += float(np.square(block).sum())
    mean = total / n
    var = np.zeros(dim)
    for i in range(0, n, chunk):
        block = feats[valid[i:i + chunk]].astype(np.float64) - mean
        var += np.square(block).sum(axis=0)
    var /= n
    out.update(spread=float(math.sqrt(var.sum())), rms_norm=float(math.sqrt(sq_norm / n)),
               constant_channels=int(np.count_nonzero(var == 0)))
    return out


def partial_stats(features: np.ndarray, labels: np.ndarray, ignore_index: int = 255
                  ) -> dict[str, Any]:
    """A chunk's share of :func:`pool_stats`: rows, labelled rows ``n``, channel ``mean``
    and centred sums of squares ``m2`` (float64), and ``sq_norm`` = Σ ||f_i||² (JSON-able)."""
    feats = np.asarray(features)
    block = feats[np.asarray(labels) != ignore_index].astype(np.float64)
    n = int(block.shape[0])
    mean = block.mean(axis=0) if n else np.zeros(feats.shape[1] if feats.ndim == 2 else 0)
    return {"rows": int(feats.shape[0]), "n": n, "mean": mean.tolist(),
            "m2": np.square(block - mean).sum(axis=0).tolist() if n else [0.0] * mean.size,
            "sq_norm": float(np.square(block).sum())}


def combine_stats(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """:func:`pool_stats` of a pool from its chunks' :func:`partial_stats` (in chunk order)."""
    rows = sum(int(p["rows"]) for p in parts)
    dim = len(parts[0]["mean"]) if parts else 0
    n, mean, m2, sq_norm = 0, np.zeros(dim), np.zeros(dim), 0.0
    for p in parts:
        nb = int(p["n"])
        if nb == 0:
            continue
        mb, m2b = np.asarray(p["mean"], dtype=np.float64), np.asarray(p["m2"], dtype=np.float64)
        total = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / total)
        m2 = m2 + m2b + np.square(delta) * (n * nb / total)
        n, sq_norm = total, sq_norm + float(p["sq_norm"])
    out = {"version": STATS_VERSION, "n_pixels": rows, "n_valid": n, "dim": dim,
           "spread": 0.0, "rms_norm": 0.0, "constant_channels": dim}
    if n and dim:
        var = m2 / n
        out.update(spread=float(math.sqrt(var.sum())), rms_norm=float(math.sqrt(sq_norm / n)),
                   constant_channels=int(np.count_nonzero(var == 0)))
    return out


def degenerate_reason(stats: Mapping[str, Any], n_pixels: int | None = None) -> str | None:
    """Why a pool with :func:`pool_stats` ``stats`` is degenerate, or None when it is not.

    n_pixels: pixels one repetition draws per side (``otce.n_pixels``); None skips that check.
    """
    reasons = []
    spread, rms, dim = float(stats["spread"]), float(stats["rms_norm"]), int(stats["dim"])
    if int(stats["n_valid"]) > 0 and (spread <= ABS_SPREAD or spread <= REL_SPREAD * rms):
        rel = f" ({spread / rms:.2g} of the RMS feature norm {rms:.3g})" if rms > 0 else ""
        reasons.append(f"features (nearly) constant: total std {spread:.3g}{rel}; "
                       f"{int(stats['constant_channels'])} of {dim} channels have std 0")
    if n_pixels is not None and int(stats["n_valid"]) < int(n_pixels):
        reasons.append(f"{int(stats['n_valid'])} labelled pixels, fewer than "
                       f"otce.n_pixels={int(n_pixels)}")
    return "; ".join(reasons) or None
