"""A job on a simulated multi-node Ray cluster (``ray.cluster_utils.Cluster``).

A head without GPUs and two one-CPU worker nodes on this machine; jobs run as they do by
default, scoring while extraction goes on. The reference matrix is computed in this process
without Ray (the same extraction and repetition functions on the same inputs), so "same as one
node" is checked bit for bit without starting a second Ray. Checked: the overlapped run gives
the single-node matrix and its driver opens no pool shard (:class:`tests.shard_watch.ShardWatch`);
a worker node removed mid-run still gives it; a driver killed with ``kill -9`` mid-run and a
rerun recompute nothing that had finished. The embedded test Ray (``ray_local``) is shut down
for this module and restarted after it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from segotce_ray.scoring.rows import results_frame
from segotce_ray.spec.build import load_spec
from tests.fixtures_layouts import make_folder
from tests.shard_watch import ShardWatch

pytestmark = pytest.mark.slow    # ~2 min on 2 cores: three Ray nodes and two extraction runs

REPO = str(Path(__file__).resolve().parents[1])
K = 2
MODELS = {"m_a": "src_a", "m_b": "src_b"}
SCORE_COLS = ["model", "target", "metric", "k", "score", "w_t", "w_d", "status", "seed"]


def write_job(tmp: Path, data: Path, store: str) -> Path:
    lm3 = {0: "road", 1: "car", 2: "person"}
    spec = {
        "name": "multinode", "seed": 0, "store": store, "metrics": ["otce", "logme"],
        "otce": {"n_pixels": 60, "repetitions": K, "epsilon": 1.0},
        "extraction": {"pixels_per_image": 40, "batch_size": 1},
        "datasets": {n: {"format": "folder", "root": str(data / n), "label_map": lm3}
                     for n in ("src_a", "src_b", "t1", "t2")},
        "models": {m: {"architecture": "tests.tiny_segmodels:tiny_segnet", "num_classes": 3,
                       "source": s} for m, s in MODELS.items()},
        "targets": ["t1", "t2"],
    }
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / f"{store}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def reference_table(spec) -> pd.DataFrame:
    """The matrix computed in-process, no Ray: pools by the extraction's own chunk code,
    repetitions by the scoring task body."""
    from segotce_ray.extract.pipeline import extract_in_process
    from segotce_ray.job.execute import _metric_specs
    from segotce_ray.job.plan import extraction_request, make_plan
    from segotce_ray.scoring.rows import ScorePair, results_frame
    from segotce_ray.scoring.tasks import _run_repetitions
    from segotce_ray.seeds import repetition_seed

    plan = make_plan(spec, write=False)
    pools = {}
    for p in plan.pools:
        req = extraction_request(spec, plan.model_specs[p.model], plan.datasets[p.dataset])
        pools[(p.model, p.dataset)] = extract_in_process(req, batch_size=spec.extraction.batch_size)
    rows = []
    for metric, mspec in _metric_specs(spec).items():
        for p in plan.pairs:
            if p.metric != metric:
                continue
            source = p.source or spec.models[p.model].source
            pair = ScorePair(p.model, source, p.target)
            ks = list(range(mspec.repetitions))
            seeds = [repetition_seed(spec.seed, p.model, p.target, k) for k in ks]
            rows += _run_repetitions(pools[(p.model, source)], pools[(p.model, p.target)],
                                     mspec, pair, ks, seeds)
    return results_frame(rows)


def _scores(table: pd.DataFrame) -> pd.DataFrame:
    return table[SCORE_COLS].sort_values(SCORE_COLS[:4]).reset_index(drop=True)


class ThreeNodes:
    def __init__(self, root: Path) -> None:
        import ray
        from ray.cluster_utils import Cluster

        self.root = root
        self.data = root / "data"
        for i, name in enumerate(("src_a", "src_b", "t1", "t2")):
            make_folder(self.data / name, n=2, size=(32, 48),
                        label_map={0: "road", 1: "car", 2: "person"}, seed=10 + i)
        node = {"num_cpus": 1, "num_gpus": 0, "object_store_memory": 100 * 1024**2}
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(node))
        self.workers = [self.cluster.add_node(**node) for _ in range(2)]
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, runtime_env={"env_vars": {"PYTHONPATH": REPO}},
                 logging_level="WARNING")

    def close(self) -> None:
        import ray

        ray.shutdown()
        self.cluster.shutdown()


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory):
    import ray

    from segotce_ray.cluster.runtime import init_ray

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    cluster = ThreeNodes(tmp_path_factory.mktemp("multinode"))
    try:
        yield cluster
    finally:
        cluster.close()
        if was_up:                     # give the session's embedded Ray back to later tests
            init_ray(num_cpus=2)


@pytest.fixture(scope="module")
def full_run(three_nodes):
    from segotce_ray.job.run import run_job

    spec = load_spec(write_job(three_nodes.root, three_nodes.data, "store_full"))
    with ShardWatch(spec.store) as watch:
        result = run_job(spec, run_id="full")
    return spec, result, watch.hits


def test_three_node_job_gives_the_single_node_matrix(full_run):
    import ray

    from segotce_ray.pools.store import PoolStore

    spec, result, shard_hits = full_run
    assert len(ray.nodes()) == 3 and not ray.cluster_resources().get("GPU")
    assert result.status == "ok"
    assert shard_hits == [], shard_hits[:5]       # the driver opened no published pool shard
    store = PoolStore(spec.store)
    published = {(p.model, p.dataset): store.manifest(p.key)["published_at"] for p in result.plan.pools}
    for r in result.table.itertuples():           # each repetition ran after its pools existed
        needs = [(r.model, r.target)] + ([(r.model, MODELS[r.model])] if r.metric == "otce" else [])
        assert r.started_at >= max(published[p] for p in needs) - 1e-3, r
    assert len(result.table) == len(MODELS) * 2 * 2 * K
    expected = reference_table(spec)
    pd.testing.assert_frame_equal(_scores(result.table), _scores(expected))
    on_disk = results_frame(pd.read_parquet(spec.job_dir / "full" / "matrix.parquet"))
    pd.testing.assert_frame_equal(_scores(on_disk), _scores(expected))


def _remove_when_first_shard_is_written(three_nodes, store: Path, removed: list) -> threading.Thread:
    """Removes a worker node as soon as extraction has written (or is writing) a shard."""

    def watch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not removed:
            if any(store.glob("tmp/*/*")) or any(store.glob("pools/*/*/manifest.json")):
                three_nodes.cluster.remove_node(three_nodes.workers[0])
                removed.append(time.time())
                return
            time.sleep(0.05)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_worker_node_removed_mid_run_finishes_with_the_same_matrix(three_nodes, full_run):
    from segotce_ray.job.plan import make_plan
    from segotce_ray.job.run import run_job

    spec_full, result_full, _ = full_run
    spec = load_spec(write_job(three_nodes.root, three_nodes.data, "store_cut"))
    removed: list = []
    watcher = _remove_when_first_shard_is_written(three_nodes, Path(spec.store), removed)
    try:
        result = run_job(spec, run_id="cut")
    except Exception:                                   # noqa: BLE001 - then a rerun resumes
        result = None
    watcher.join(timeout=5)
    assert removed, "the worker node was never removed"
    if result is None or result.status != "ok":        # resume: only what is missing runs
        result = run_job(spec, run_id="resumed")
    assert result.status == "ok"
    pd.testing.assert_frame_equal(_scores(result.table), _scores(result_full.table))
    assert make_plan(spec, write=False).counts()["repetitions_to_run"] == 0
    assert np.isfinite(result.table["score"]).all()


DRIVER = """
import sys
from segotce_ray.job.run import run_job
from segotce_ray.spec.build import load_spec
run_job(load_spec(sys.argv[1]), address=sys.argv[2], run_id="killed", progress=False)
"""


def _logged(store: Path) -> set[tuple[str, str, str, int]]:
    """(model, target, metric, k) of every row in the store's score log."""
    import json

    out = set()
    for path in store.glob("scores/*/*.jsonl"):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out.add((row["model"], row["target"], row["metric"], int(row["k"])))
    return out


def test_driver_killed_mid_run_and_a_rerun_recompute_nothing_finished(three_nodes, full_run):
    import os
    import signal
    import subprocess
    import sys

    from segotce_ray.job.run import run_job

    _, result_full, _ = full_run
    spec = load_spec(write_job(three_nodes.root, three_nodes.data, "store_kill"))
    store = Path(spec.store)
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(spec.path), three_nodes.cluster.address],
                              env=dict(os.environ, PYTHONPATH=REPO), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and driver.poll() is None and len(_logged(store)) < 3:
        time.sleep(0.05)
    assert driver.poll() is None, "the driver finished before it could be killed mid-run"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    finished = _logged(store)
    assert 3 <= len(finished) < len(result_full.table)
    recomputed: list = []
    result = run_job(spec, run_id="rerun",
                     on_row=lambda r: recomputed.append((r["model"], r["target"], r["metric"], int(r["k"]))))
    assert result.status == "ok"
    assert not set(recomputed) & finished                       # nothing finished ran again
    assert len(recomputed) + len(finished) == len(result_full.table)
    pd.testing.assert_frame_equal(_scores(result.table), _scores(result_full.table))
