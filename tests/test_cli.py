"""CLI surface (help, validate, exit codes) and the cluster/scheduling files under the repo."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from segotce_ray.cli import EXIT_INVALID, EXIT_OK, build_parser, main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [["--help"], ["validate", "--help"], ["run", "--help"],
                                  ["report", "--help"], ["demo", "--help"]])
def test_help_for_every_subcommand(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: segotce-ray")
    if argv[0] == "run":
        for flag in ("--address", "--dry-run", "--store", "--output"):
            assert flag in out
    if argv[0] == "demo":
        assert "--workdir" in out


def test_subcommands_listed_in_top_level_help():
    text = build_parser().format_help()
    for cmd in ("validate", "run", "report", "demo"):
        assert cmd in text


def test_module_entry_point_runs_as_a_process():
    """``python -m segotce_ray.cli --help`` works in a fresh interpreter (the console script)."""
    out = subprocess.run([sys.executable, "-m", "segotce_ray.cli", "run", "--help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--dry-run" in out.stdout


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["frobnicate"])
    assert exit_.value.code == 2


def _write_spec(tmp_path: Path, **override) -> Path:
    from tests.fixtures_layouts import make_folder

    make_folder(tmp_path / "data" / "mine", n=2, label_map={0: "road", 1: "car"})
    spec = {"name": "j", "datasets": {"mine": {"format": "folder", "root": "data/mine",
                                               "label_map": {0: "road", 1: "car"}}},
            "models": {"m": {"architecture": "tests.tiny_segmodels:tiny_segnet",
                             "num_classes": 2, "source": "mine"}},
            "targets": ["mine"]}
    spec.update(override)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_validate_ok_and_bad(tmp_path, capsys):
    path = _write_spec(tmp_path)
    assert main(["validate", str(path)]) == EXIT_OK
    assert "ok — job 'j'" in capsys.readouterr().out

    bad = _write_spec(tmp_path, targets=["mine", "nope"], output="../out",
                      otce={"n_pixels": -1, "epsilonn": 1})
    assert main(["validate", str(bad)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "4 problem(s)" in err
    for fragment in ("targets[1]: target 'nope' is not a declared dataset",
                     "output: '../out' escapes via '..'", "otce.n_pixels: must be >= 1",
                     "otce.epsilonn: unknown key 'epsilonn' (did you mean 'epsilon'?)"):
        assert fragment in err


def test_validate_opens_datasets(tmp_path, capsys):
    """The deep pass reports a dataset whose layout is wrong, with its path in the spec."""
    path = _write_spec(tmp_path)
    raw = yaml.safe_load(path.read_text())
    (tmp_path / "empty").mkdir()
    raw["datasets"]["other"] = {"format": "cityscapes", "root": "empty"}
    raw["targets"].append("other")
    path.write_text(yaml.safe_dump(raw))
    assert main(["validate", "--shallow", str(path)]) == EXIT_OK
    capsys.readouterr()
    assert main(["validate", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "datasets.other: dataset 'other'" in err


def test_run_refuses_invalid_spec_before_any_work(tmp_path, capsys):
    path = _write_spec(tmp_path, targets=["nope"])
    assert main(["run", str(path)]) == EXIT_INVALID
    assert "targets[0]" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "store").exists()


def test_report_on_a_non_run_dir(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == EXIT_INVALID
    assert "not a run directory" in capsys.readouterr().err


# ------------------------------------------------------------------ cluster and schedules


def test_cluster_yaml_matches_the_ray_schema():
    """cluster.yaml validates against ray/autoscaler/ray-schema.json shipped with ray."""
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    # and Ray's own check (head type declared, worker bounds, synced files present)
    from ray.autoscaler._private.util import validate_config

    validate_config(config)
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    gpu_types = [n for n, v in nodes.items() if v["node_config"]["InstanceType"].startswith(("g", "p"))]
    assert gpu_types and all(nodes[n]["min_workers"] == 0 and nodes[n]["max_workers"] > 0
                             for n in gpu_types), "GPU workers autoscale from zero"
    assert not nodes[config["head_node_type"]]["node_config"]["InstanceType"].startswith(("g", "p"))
    assert any("pip install" in c and "segotce-ray" in c for c in config["setup_commands"])


def test_cluster_yaml_schema_check_catches_mistakes():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["max_wokers"] = 3
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, schema)


def test_schedule_examples_run_the_nightly_job():
    docs = list(yaml.safe_load_all((REPO / "jobs" / "kuberay-rayjob.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["RayJob"]
    assert "segotce-ray run /app/jobs/nightly.yaml" in docs[0]["spec"]["entrypoint"]
    assert docs[0]["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"][
        "containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    cron = list(yaml.safe_load_all((REPO / "jobs" / "kuberay-cronjob.yaml").read_text()))
    assert [d["kind"] for d in cron] == ["RayCronJob", "CronJob"]
    assert cron[0]["spec"]["schedule"] == cron[1]["spec"]["schedule"]
    cmd = cron[1]["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert cmd[:3] == ["ray", "job", "submit"] and "segotce-ray" in cmd
    lines = [ln for ln in (REPO / "jobs" / "cron.example").read_text().splitlines()
             if ln and not ln.startswith("#") and "=" not in ln.split()[0]]
    assert lines and all(len(ln.split()) > 5 and "segotce-ray run jobs/nightly.yaml" in ln
                         for ln in lines)
    # every job spec these examples run parses and names only known keys
    from segotce_ray.spec.build import check_spec_file

    for spec in (REPO / "jobs").glob("*.yaml"):
        if spec.name.startswith("kuberay"):
            continue
        problems = check_spec_file(spec)
        assert all(p.message.startswith(("file not found", "directory not found")) for p in problems), \
            (spec, [str(p) for p in problems])
