"""Scoring progress off a terminal (issue 15, item 2): plain log lines, periodic and per pair."""

from __future__ import annotations

import logging

import numpy as np

from segotce_ray.cluster import progress as progress_mod
from segotce_ray.pools.pool import PixelPool
from segotce_ray.cluster.progress import Progress
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.schedules import score_pairs


def _pool(model: str, dataset: str, seed: int) -> PixelPool:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, 120)
    feats = 2.0 * np.eye(3, 5)[labels] + rng.normal(0, 1.0, (120, 5))
    return PixelPool(feats.astype(np.float16), labels.astype(np.int16),
                     meta={"model": model, "dataset": dataset})


def test_log_lines_every_interval_and_per_finished_pair(caplog):
    now = [0.0]
    caplog.set_level(logging.INFO, logger="segotce_ray.progress")
    bar = Progress(4, "scoring", enabled=False, interval=30.0, clock=lambda: now[0],
                             units={("otce", "a", "t"): 2, ("otce", "b", "t"): 2})
    row = {"metric": "otce", "model": "a", "target": "t", "status": "ok"}
    bar.update([row])
    assert not any("a → t" in m for m in caplog.messages)          # pair not finished yet
    now[0] = 31.0
    bar.update([{**row, "status": "failed"}])
    assert any("otce a → t finished, 1 repetition(s) failed (2/4" in m for m in caplog.messages)
    assert any("scoring: 2/4 repetitions (50%), 31 s elapsed, ~31 s left" == m
               for m in caplog.messages), caplog.messages
    n = len(caplog.messages)
    now[0] = 40.0                                                  # < 30 s since the last line
    bar.update([{**row, "model": "b"}])
    assert len(caplog.messages) == n
    bar.update([{**row, "model": "b"}])
    bar.close()
    assert "otce b → t finished (4/4 repetitions)" in caplog.messages[-2]
    assert caplog.messages[-1].startswith("scoring: 4/4 repetitions (100%)")


def test_score_pairs_logs_progress_when_stderr_is_not_a_terminal(ray_local, caplog, monkeypatch):
    monkeypatch.setattr(progress_mod, "INTERVAL_S", 0.0)             # a periodic line per update
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    caplog.set_level(logging.INFO, logger="segotce_ray.progress")
    pools = {(m, d): _pool(m, d, i) for i, (m, d) in
             enumerate([("m1", "src"), ("m1", "t1"), ("m2", "src"), ("m2", "t1")])}
    pairs = [("m1", "src", "t1"), ("m2", "src", "t1")]
    table = score_pairs(pairs, pools, OTCESettings(n_pixels=40, repetitions=2, epsilon=10.0),
                        seed=0, progress=None)
    assert (table["status"] == "ok").all()
    msgs = caplog.messages
    assert "scoring: 4 repetition(s) to run" in msgs
    for model in ("m1", "m2"):
        assert any(f"scoring: otce {model} → t1 finished" in m for m in msgs), msgs
    assert sum(m.startswith("scoring: ") and "repetitions (" in m for m in msgs) >= 4
