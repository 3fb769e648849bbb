"""How a scoring task sees a pool: a stored pool by (root, key), the probs view, the pool checks.
"""


from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segotce_ray.pools.pool import PixelPool

# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class ProbsView:
    """A pool read in the ``probs`` feature space (``layer: probs``): every metric sees the
    source head's softmax column as the pool's features. ``pool``: a PixelPool or store key."""

    pool: PixelPool | str


def probs_as_features(pool: PixelPool) -> PixelPool:
    """``pool`` with its ``probs`` (P, C) as ``features``; a ValueError if it has none."""
    if pool.probs is None:
        raise ValueError("layer 'probs' needs the pool's probs column (the source head's "
                         "softmax) and this pool has none; re-extract it with keep_probs")
    return PixelPool(features=pool.probs, labels=pool.labels, image_ids=pool.image_ids,
                     rows=pool.rows, cols=pool.cols, probs=pool.probs,
                     meta={**pool.meta, "space": "probs"})


PoolSource = PixelPool | str | ProbsView | BaseException


def check_pool(pool: PixelPool, ignore_index: int) -> None:
    """Raise ValueError if ``pool`` cannot be scored: empty, unlabelled, non-finite features."""
    if len(pool) == 0:
        raise ValueError("pool is empty")
    if not np.any(pool.labels != ignore_index):
        raise ValueError(f"pool has no labelled pixel (all labels are {ignore_index})")
    bad = int(np.size(pool.features) - np.count_nonzero(np.isfinite(pool.features)))
    if bad:
        raise ValueError(f"pool has {bad} non-finite feature values")


_CHECKED: set[tuple[str, str, int]] = set()   # stored pools this process has checked


@dataclass(frozen=True)
class StoredPool:
    """A published pool as a task receives it: where it is, not its bytes (~200 bytes to ship).

    :meth:`open` reads it on the worker through :func:`segotce_ray.pools.store.load_cached` (shards
    memory-mapped, kept in a small per-process LRU) and checks it once per process.
    """

    root: str
    key: str
    ignore_index: int
    description: str

    def open(self) -> PixelPool:
        from segotce_ray.pools.store import load_cached

        try:
            pool = load_cached(self.root, self.key)
            if (self.root, self.key, self.ignore_index) not in _CHECKED:
                check_pool(pool, self.ignore_index)
                _CHECKED.add((self.root, self.key, self.ignore_index))
        except Exception as exc:  # noqa: BLE001 - named, then failed rows
            raise RuntimeError(f"{self.description}: {type(exc).__name__}: {exc}") from exc
        return pool
