"""The small-pool warning uses the job's otce.n_pixels, not a hard-coded 10000 (issue 15.4)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest

from segotce_ray.extract.pipeline import _consume_chunk, _PendingPool
from segotce_ray.pools.degeneracy import partial_stats
from segotce_ray.pools.store import PoolStore, write_shard


def _pending(draws: int) -> _PendingPool:
    model = SimpleNamespace(name="m", to_dict=lambda: {"name": "m"}, layer="logits")
    dataset = SimpleNamespace(name="d", samples=["a", "b"], format="folder")
    request = SimpleNamespace(pair=("m", "d"), model=model, dataset=dataset, seed=0,
                              sampling_params=lambda: {"mode": "uniform"})
    return _PendingPool(0, request, "ab" * 32, "fp", chunks=1, draws=draws)


@pytest.mark.parametrize("draws, warned", [(500, True), (3, False)])
def test_pool_warning_compares_with_the_configured_draws(tmp_path, caplog, draws, warned):
    caplog.set_level(logging.WARNING, logger="segotce_ray.extract")
    p = _pending(draws)
    table = pa.table({"image_id": ["a", "a", "b", "b"], "label": pa.array([0, 1, 0, 1], pa.int16())})
    store = PoolStore(tmp_path)
    p.staging = store.staging(p.key)                      # the shard as an actor writes it
    shard = write_shard(table, p.staging, "part-00000.parquet")
    facts = json.dumps(partial_stats(np.ones((4, 16), np.float16), np.array([0, 1, 0, 1])))
    row = dict(shard, chunk=0, kept_images=2, dim=16, num_probs=0, images=2, errors="[]",
               facts=facts)
    _consume_chunk(p, row, store, "fail")
    assert p.failed is None and p.committed and store.has(p.key)
    assert store.manifest(p.key)["facts"]["n_valid"] == 4      # the chunk's facts, merged
    msgs = [m for m in caplog.messages if "fewer than" in m]
    if warned:
        assert msgs == [f"pool m@d has 4 pixels, fewer than the N={draws} draws of SEG-OTCE "
                        "(otce.n_pixels); raise pixels_per_image or the number of images"]
    else:
        assert msgs == []
