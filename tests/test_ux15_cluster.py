"""Joining a cluster that is not there (issue 15, item 6): fail fast, exit 3, the cause in
run.json; and the embedded default never joins another process's cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segotce_ray.cluster import runtime
from segotce_ray.cli import EXIT_ERROR, main
from tests.fixtures_layouts import make_folder

REPO = Path(__file__).resolve().parents[1]


def _job(tmp_path: Path) -> Path:
    make_folder(tmp_path / "data" / "mine", n=2, label_map={0: "road", 1: "car"})
    spec = {"name": "j", "otce": {"n_pixels": 40, "repetitions": 1},
            "datasets": {"mine": {"format": "folder", "root": "data/mine",
                                  "label_map": {0: "road", 1: "car"}}},
            "models": {"m": {"architecture": "tests.tiny_segmodels:tiny_segnet",
                             "num_classes": 2, "source": "mine"}},
            "targets": ["mine"], "metrics": ["otce"]}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _only_run(tmp_path: Path) -> dict:
    runs = [p for p in (tmp_path / "runs" / "j").iterdir() if p.is_dir()]
    assert len(runs) == 1
    return json.loads((runs[0] / "run.json").read_text())


def test_unreachable_address_fails_fast_with_exit_3_and_the_cause_recorded(tmp_path):
    path = _job(tmp_path)
    out = subprocess.run([sys.executable, "-m", "segotce_ray.cli", "run", str(path),
                          "--address", "127.0.0.1:1"], cwd=REPO, capture_output=True,
                         text=True, timeout=90)            # Ray's own retries take minutes
    assert out.returncode == EXIT_ERROR, out.stderr
    assert "127.0.0.1:1" in out.stderr and "unreachable" in out.stderr
    info = _only_run(tmp_path)
    assert info["status"] == "error"
    assert "ClusterUnreachable" in info["error"] and "127.0.0.1:1" in info["error"]


def test_auto_without_a_cluster_records_why_not_interrupted(tmp_path, monkeypatch, capsys):
    import ray

    def no_cluster(**kwargs):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one "
                              "to connect to by setting `--address` flag")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    path = _job(tmp_path)
    assert main(["run", str(path), "--address", "auto"]) == EXIT_ERROR
    assert "'auto'" in capsys.readouterr().err
    info = _only_run(tmp_path)
    assert info["status"] == "error"
    assert "Could not find any running Ray instance" in info["error"] and "'auto'" in info["error"]


def test_probe_names_the_address_and_the_embedded_default_is_local(monkeypatch):
    with pytest.raises(runtime.ClusterUnreachable, match=r"'ray://127\.0\.0\.1:1'"):
        runtime.probe_address("ray://127.0.0.1:1", timeout=5)
    runtime.probe_address("auto")                          # nothing to probe: Ray decides
    import ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runtime.init_ray(num_cpus=1)
    assert seen["address"] == "local" and seen["num_cpus"] == 1
