"""The metric registry: one record per metric; a peer metric added as one function plus one
record runs end to end (validate, plan, Ray fan-out, matrix, rankings, report)."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from segotce_ray.cli import main
from segotce_ray.metrics import registry
from segotce_ray.metrics.registry import MetricRecord
from segotce_ray.spec.build import load_spec
from segotce_ray.spec.model import known_metrics
from segotce_ray.spec.validate import validate
from tests.test_job import data_root, seed_pools, write_job  # noqa: F401 - data_root is a fixture

TOY = MetricRecord("toy_spread", "toy spread", "features", "peer", 50,
                   "tests.test_registry:feature_spread", summary="mean per-pixel feature std")


def feature_spread(features, labels, *, ignore_index=255):
    """A toy peer: the mean standard deviation of the labelled pixels' features."""
    keep = np.asarray(labels) != ignore_index
    return float(np.asarray(features, dtype=np.float64)[keep].std(axis=0).mean())


@pytest.fixture
def toy_metric():
    registry.register(TOY)
    yield TOY
    registry.unregister(TOY.name)


def test_registry_is_torch_free_and_ordered():
    code = ("import sys; from segotce_ray.metrics import registry; "
            "print('torch' in sys.modules, registry.scored_names()[0])")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", registry.PRIMARY]
    assert registry.ordered(["nce", "otce", "logme", "otce_calibrated"])[:2] == ["otce", "otce_calibrated"]
    with pytest.raises(KeyError, match="unknown metric 'nope'"):
        registry.get("nope")
    with pytest.raises(ValueError, match="registered already"):
        registry.register(registry.get("logme"))


def test_a_registered_metric_is_known_to_the_spec(toy_metric, tmp_path):
    assert "toy_spread" in known_metrics()
    raw = {"name": "j", "datasets": {"d": {"format": "folder", "root": str(tmp_path)}},
           "models": {"m": {"architecture": "tests.tiny_segmodels:tiny_segnet", "num_classes": 3}},
           "targets": ["d"], "metrics": ["toy_spread", "toy_sprea"]}
    problems = {p.path: p.message for p in validate(raw, tmp_path)}
    assert "metrics[0]" not in problems
    assert "did you mean 'toy_spread'" in problems["metrics[1]"]


def test_a_toy_metric_runs_end_to_end(toy_metric, tmp_path, data_root, ray_local):  # noqa: F811
    path = write_job(tmp_path, data_root, models={"m_a": "src_a", "m_b": "src_b"},
                     metrics=["otce", "toy_spread"])
    seed_pools(path)
    assert main(["run", str(path), "--run-id", "r"]) == 0
    run = tmp_path / "runs" / "nightly" / "r"
    table = pd.read_parquet(run / "matrix.parquet")
    toy = table[table["metric"] == "toy_spread"]
    spec = load_spec(path)
    assert len(toy) == 2 * 2 * spec.otce.repetitions and (toy["status"] == "ok").all()
    assert toy["score"].gt(0).all()
    ranks = pd.read_csv(run / "rankings.csv")
    assert set(ranks["metric"]) == {"otce", "toy_spread"}
    assert (run / "scores_toy_spread.csv").is_file()
    assert "toy_spread" in (run / "report.md").read_text()
    saved = yaml.safe_load((run / "spec.yaml").read_text())
    assert saved["metrics"] == ["otce", "toy_spread"]
