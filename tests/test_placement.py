"""Autoscaling-aware placement: what an autoscaler can add is not infeasible."""

from __future__ import annotations

import pytest
import yaml

from segotce_ray.cluster import placement
from segotce_ray.cluster.placement import NodeType, cluster_gpus, memory_limit, node_types_from_bootstrap

GIB = 2**30
HEAD_ONLY = [{"Alive": True, "Resources": {"CPU": 4.0, "memory": 8.0 * GIB}},
             {"Alive": False, "Resources": {"CPU": 64.0, "memory": 512.0 * GIB}}]   # dead: ignored

BOOTSTRAP = """
max_workers: 10
head_node_type: head
available_node_types:
  head:   {resources: {CPU: 4}, node_config: {}}
  gpu:    {min_workers: 0, max_workers: 4, resources: {CPU: 8, GPU: 1}, node_config: {}}
  big:    {min_workers: 0, max_workers: 2, resources: {CPU: 32, memory: 274877906944}}
  never:  {min_workers: 0, max_workers: 0, resources: {CPU: 96, GPU: 8}}
"""


def test_bootstrap_config_lists_launchable_node_types():
    types = {t.name: t for t in node_types_from_bootstrap(yaml.safe_load(BOOTSTRAP))}
    assert set(types) == {"head", "gpu", "big"}                  # max_workers 0: never launched
    assert types["gpu"].resources == {"CPU": 8.0, "GPU": 1.0} and types["gpu"].max_count == 4
    assert types["head"].max_count == 1


def test_memory_limit_counts_what_the_autoscaler_can_add():
    types = node_types_from_bootstrap(yaml.safe_load(BOOTSTRAP))
    # fixed cluster (or autoscaling off): only live nodes count
    assert memory_limit(HEAD_ONLY, None) == 8 * GIB
    assert memory_limit(HEAD_ONLY, types, "off") == 8 * GIB
    # auto: a node type whose memory is detected at start satisfies any request
    assert memory_limit(HEAD_ONLY, types, "auto") is None
    # auto with every node type's memory stated: the largest of live and launchable
    big = [NodeType("big", {"CPU": 32, "memory": 256.0 * GIB}, 2)]
    assert memory_limit(HEAD_ONLY, big, "auto") == 256 * GIB
    # on: nothing is refused up front
    assert memory_limit(HEAD_ONLY, None, "on") is None
    with pytest.raises(ValueError, match="autoscaling"):
        memory_limit(HEAD_ONLY, None, "sometimes")


def test_gpus_from_zero_come_from_the_autoscaler_unless_off():
    types = node_types_from_bootstrap(yaml.safe_load(BOOTSTRAP))
    assert cluster_gpus(0, types, "auto") == 4                   # 4 one-GPU nodes at most
    assert cluster_gpus(0, types, "off") == 0
    assert cluster_gpus(2, types, "auto") == 2                   # live GPUs win once up
    unbounded = [NodeType("g", {"GPU": 2}, -1)]
    assert cluster_gpus(0, unbounded) == placement.UNBOUNDED_ACTORS


def test_scorer_refuses_only_what_no_node_can_hold(ray_local, monkeypatch):
    from segotce_ray.scoring.tasks import PairScorer
    from segotce_ray.scoring.rows import ScorePair
    from segotce_ray.scoring.settings import OTCESettings
    from segotce_ray.scoring.adapters import otce_metric
    from segotce_ray.pools.pool import PixelPool
    import numpy as np

    rng = np.random.default_rng(0)
    pool = PixelPool(rng.normal(size=(50, 4)).astype(np.float16), rng.integers(0, 2, 50).astype(np.int16))
    pools = {("m", "s"): pool, ("m", "t"): pool}
    huge = otce_metric(OTCESettings(n_pixels=3_000_000, repetitions=1))   # ~100 TiB per task
    pair = ScorePair("m", "s", "t")

    monkeypatch.setattr(placement, "autoscaler_node_types", lambda: None)
    fixed = PairScorer(pools)
    fixed.reserve(pair, huge)
    rows = fixed.submit(pair, huge, [0])
    assert isinstance(rows, list) and "more than the largest node" in rows[0]["error"]

    # an autoscaler that can add nodes of undeclared memory: the request is not refused
    monkeypatch.setattr(placement, "autoscaler_node_types",
                        lambda: [NodeType("big", {"CPU": 64}, 3)])
    grows = PairScorer(pools)
    assert not grows.fail_infeasible
    # ...unless the spec says the cluster is fixed
    assert PairScorer(pools, autoscaling="off").fail_infeasible


def test_spec_resources_autoscaling(tmp_path):
    from segotce_ray.spec.model import SpecError
    from segotce_ray.spec.build import load_spec

    (tmp_path / "d").mkdir()

    def spec(value) -> str:
        raw = {"name": "j", "datasets": {"d": {"format": "folder", "root": "d", "label_map": {0: "a"}}},
               "models": {"m": {"architecture": "torchscript", "checkpoint": "m.pt", "source": "d"}},
               "targets": ["d"], "resources": {"autoscaling": value}}
        (tmp_path / "m.pt").write_bytes(b"x")
        path = tmp_path / "j.yaml"
        path.write_text(yaml.safe_dump(raw).replace(f"autoscaling: '{value}'", f"autoscaling: {value}"))
        return str(path)

    assert load_spec(spec("off")).resources.autoscaling == "off"     # YAML false
    assert load_spec(spec("on")).resources.autoscaling == "on"       # YAML true
    assert load_spec(spec("auto")).resources.autoscaling == "auto"
    with pytest.raises(SpecError, match="resources.autoscaling: expected auto, on or off"):
        load_spec(spec("sometimes"))
