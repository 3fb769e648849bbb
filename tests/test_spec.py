"""Job-spec validation: every problem reported with its path, all at once, before any work."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml

from segotce_ray.spec.model import SpecError, known_metrics
from segotce_ray.spec.build import build_spec, check_spec_file, load_spec
from segotce_ray.spec.validate import validate

ISSUE_SPEC = textwrap.dedent("""\
    name: nightly
    output: runs                 # runs/<name>/<run-id>/ and runs/<name>/latest
    store: store                 # pixel pools (content-addressed)
    seed: 0
    otce: {n_pixels: 10000, repetitions: 10, epsilon: 0.1, layer: penultimate}
    datasets:
      gta5:      {format: gta5, root: data/gta5}
      cs_aachen: {format: cityscapes, root: data/cityscapes, split: train, cities: [aachen]}
      bdd:       {format: bdd100k, root: data/bdd100k, split: train, max_images: 200}
      mine:      {format: folder, root: data/mine, label_map: {0: road, 1: car}, ignore_index: 255}
    models:
      lraspp_gta5:
        architecture: torchvision/lraspp_mobilenet_v3_large
        num_classes: 19
        checkpoint: ckpt/lraspp_gta5.pth
        source: gta5
      tiny_bdd:
        architecture: torchscript
        checkpoint: ckpt/tiny_bdd.pt
        source: bdd
    targets: [cs_aachen, mine]
    ground_truth: gt.csv         # optional: model,target,value
    """)


def _issue_tree(root: Path, with_files: bool = True) -> Path:
    """The issue's spec in ``root/jobs/nightly.yaml`` (+ the files and roots it names)."""
    jobs = root / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    path = jobs / "nightly.yaml"
    path.write_text(ISSUE_SPEC)
    if with_files:
        for d in ("data/gta5", "data/cityscapes", "data/bdd100k", "data/mine", "ckpt"):
            (jobs / d).mkdir(parents=True, exist_ok=True)
        (jobs / "ckpt/lraspp_gta5.pth").write_bytes(b"x")
        (jobs / "ckpt/tiny_bdd.pt").write_bytes(b"x")
        (jobs / "gt.csv").write_text("model,target,value\nlraspp_gta5,cs_aachen,41.0\n")
    return path


def _raw(root: Path) -> dict:
    return yaml.safe_load(_issue_tree(root).read_text())


def _paths(problems) -> list[str]:
    return [p.path for p in problems]


def test_issue_spec_validates_and_resolves_against_its_folder(tmp_path):
    path = _issue_tree(tmp_path)
    assert check_spec_file(path) == []
    spec = load_spec(path)
    jobs = (tmp_path / "jobs").absolute()
    assert spec.name == "nightly"
    assert spec.output == str(jobs / "runs") and spec.store == str(jobs / "store")
    assert spec.datasets["cs_aachen"].root == str(jobs / "data/cityscapes")
    assert spec.datasets["cs_aachen"].reader_spec()["cities"] == ["aachen"]
    assert spec.datasets["bdd"].options["max_images"] == 200
    assert spec.models["lraspp_gta5"].checkpoint == str(jobs / "ckpt/lraspp_gta5.pth")
    assert spec.models["lraspp_gta5"].constructor == "lraspp_mobilenet_v3_large"
    assert spec.models["tiny_bdd"].layer == "penultimate"  # falls back to otce.layer
    assert spec.otce.n_pixels == 10000 and spec.otce.repetitions == 10
    assert spec.otce.solver == "auto" and spec.metrics == list(known_metrics())
    assert spec.ground_truth == str(jobs / "gt.csv")
    assert spec.targets == ["cs_aachen", "mine"]
    # the resolved spec round-trips through YAML and validates again
    again = validate(yaml.safe_load(yaml.safe_dump(spec.to_dict())), tmp_path)
    assert again == []


def test_missing_files_each_reported_with_path(tmp_path):
    path = _issue_tree(tmp_path, with_files=False)
    problems = check_spec_file(path)
    jobs = (tmp_path / "jobs").absolute()
    msgs = {p.path: p.message for p in problems}
    assert msgs["models.tiny_bdd.checkpoint"] == f"file not found: {jobs / 'ckpt/tiny_bdd.pt'}"
    assert msgs["models.lraspp_gta5.checkpoint"].startswith("file not found:")
    for name in ("gta5", "cs_aachen", "bdd", "mine"):
        assert msgs[f"datasets.{name}.root"].startswith("directory not found:")
    assert msgs["ground_truth"] == f"file not found: {jobs / 'gt.csv'}"
    assert len(problems) == 7
    with pytest.raises(SpecError) as err:
        load_spec(path)
    assert len(err.value.problems) == 7
    assert "models.tiny_bdd.checkpoint: file not found" in str(err.value)


def test_every_problem_listed_at_once(tmp_path):
    raw = _raw(tmp_path)
    raw["otce"]["epsilonn"] = 0.2                     # unknown key (typo)
    raw["otce"]["n_pixels"] = "ten"                   # wrong type
    raw["otce"]["repetitions"] = 0                    # range
    raw["otce"]["solver"] = "sinkorn"                 # enum
    raw["otce"]["sampling"] = "stratified"            # enum
    raw["output"] = "../elsewhere"                    # escapes
    raw["store"] = "/srv/segotce/../store"            # absolute, still escapes
    raw["targets"].append("mien")                     # not a dataset
    raw["models"]["tiny_bdd"]["source"] = "bdd100"    # undeclared source
    raw["datasets"]["gta5"]["format"] = "gta"         # unknown format
    raw["datasets"]["mine"]["ignore_index"] = -1      # range
    raw["modles"] = {}                                # unknown top-level key
    raw["resources"] = {"actors": 0, "gpus_per_actor": 0.5, "gpu_per_task": 1}
    raw["seed"] = 1.5
    problems = validate(raw, tmp_path / "jobs")
    by_path = {p.path: p.message for p in problems}
    expected = {
        "otce.epsilonn": "did you mean 'epsilon'",
        "otce.n_pixels": "expected an integer, got string 'ten'",
        "otce.repetitions": "must be >= 1",
        "otce.solver": "did you mean 'sinkhorn'",
        "otce.sampling": "must be one of uniform, class_balanced",
        "output": "escapes via '..'",
        "store": "escapes via '..'",
        "targets[2]": "target 'mien' is not a declared dataset (did you mean 'mine'?)",
        "models.tiny_bdd.source": "source dataset 'bdd100' is not declared under datasets (did you mean 'bdd'?)",
        "datasets.gta5.format": "did you mean 'gta5'",
        "datasets.mine.ignore_index": "must be >= 0",
        "modles": "did you mean 'models'",
        "resources.actors": "must be >= 1",
        "resources.gpus_per_actor": "must be 0 (CPU) or 1",
        "resources.gpu_per_task": "did you mean 'gpus_per_task'",
        "seed": "expected an integer",
    }
    for path, fragment in expected.items():
        assert path in by_path, f"{path} not reported; got {sorted(by_path)}"
        assert fragment in by_path[path], (path, by_path[path])
    with pytest.raises(SpecError) as err:
        build_spec(raw, tmp_path / "jobs")
    assert len(err.value.problems) == len(problems) >= len(expected)


@pytest.mark.parametrize("mutate, path, fragment", [
    (lambda r: r.pop("name"), "name", "required key is missing"),
    (lambda r: r.update(name="night ly"), "name", "job name 'night ly' must match"),
    (lambda r: r.update(targets=[]), "targets", "at least one target"),
    (lambda r: r.update(targets="cs_aachen"), None, None),           # a scalar target is fine
    (lambda r: r.update(datasets=[]), "datasets", "expected a mapping, got list"),
    (lambda r: r["models"]["tiny_bdd"].pop("checkpoint"), "models.tiny_bdd.checkpoint",
     "torchscript model needs"),
    (lambda r: r["models"]["lraspp_gta5"].update(architecture="torchvision/lraspp_mobilenet"),
     "models.lraspp_gta5.architecture", "did you mean 'torchvision/lraspp_mobilenet_v3_large'"),
    (lambda r: r["models"]["lraspp_gta5"].update(architecture="os.system('x')"),
     "models.lraspp_gta5.architecture", "architecture must be"),
    (lambda r: r["models"]["lraspp_gta5"].update(std=[0.2, 0, 0.2]),
     "models.lraspp_gta5.std[1]", "must be > 0"),
    (lambda r: r["models"]["lraspp_gta5"].update(mean=[0.5, 0.5]),
     "models.lraspp_gta5.mean", "list of 3 numbers"),
    (lambda r: r["models"]["lraspp_gta5"].update(layer="backbone; rm"),
     "models.lraspp_gta5.layer", "layer must be"),
    (lambda r: r["models"]["lraspp_gta5"].update(num_classes=True),
     "models.lraspp_gta5.num_classes", "expected an integer, got boolean"),
    (lambda r: r["models"]["lraspp_gta5"].update(input_size=[512]),
     "models.lraspp_gta5.input_size", "[height, width]"),
    (lambda r: r.update(metrics=["otce"]) or r["models"]["lraspp_gta5"].pop("source"),
     "models.lraspp_gta5.source", "needs the model's source dataset"),
    (lambda r: r["models"]["lraspp_gta5"].pop("source"), None, None),  # default: peers still run
    (lambda r: r.update(metrics=["otce", "logme"]) or r["models"]["lraspp_gta5"].pop("source"),
     None, None),                                                   # peers run without a source
    (lambda r: r.update(metrics=["otce", "logmee"]), "metrics[1]", "did you mean 'logme'"),
    (lambda r: r.update(metrics=["otce", "otce"]), "metrics", "twice"),
    (lambda r: r["otce"].update(epsilon=0), "otce.epsilon", "must be > 0"),
    (lambda r: r["otce"].update(epsilon=float("nan")), "otce.epsilon", "finite"),
    (lambda r: r["otce"].update(solver="emd", sampling="class_balanced"), None, None),
    (lambda r: r["otce"].update(cost_scale="mean"), None, None),
    (lambda r: r["otce"].update(cost_scale="median"), "otce.cost_scale", "one of none, mean, max"),
    (lambda r: r["otce"].pop("layer") and r.update(extraction={"layer": "probs"}), None, None),
    (lambda r: r.update(extraction={"layer": "logits"}), "otce.layer",
     "deprecated and contradicts extraction.layer ('logits')"),
    (lambda r: r.update(extraction={"layer": "a b"}), "extraction.layer", "'probs'"),
    (lambda r: r.update(schedule="adaptiv"), "schedule", "did you mean 'adaptive'"),
    (lambda r: r.update(schedule={"mode": "full", "top_k": 0}), "schedule.top_k", "must be >= 1"),
    (lambda r: r.update(schedule={"mode": "full", "top_k": 3}), None, None),
    (lambda r: r.update(schedule="adaptive"), None, None),
    (lambda r: r.update(schedule={"mode": "adaptive", "min_repetitions": 2, "top_k": 3,
                                  "alpha": 0.1}), None, None),
    (lambda r: r.update(schedule={"mode": "adaptive", "min_repetitions": 11}),
     "schedule.min_repetitions", "must be <= otce.repetitions (10), got 11"),
    (lambda r: r.update(schedule={"mode": "adaptive", "min_repetitions": 0}),
     "schedule.min_repetitions", "must be >= 1"),
    (lambda r: r.update(schedule={"mode": "adaptive", "alpha": 1.0}), "schedule.alpha", "must be < 1"),
    (lambda r: r.update(schedule={"mode": "adaptive", "alpha": 0}), "schedule.alpha", "must be > 0"),
    (lambda r: r.update(schedule={"mode": "adaptive", "alpha": 0.9}), None, None),
    (lambda r: r.update(schedule={"mode": "adaptiv"}), "schedule.mode", "did you mean 'adaptive'"),
    (lambda r: r.update(schedule={"mode": "adaptive", "topk": 3}), "schedule.topk",
     "did you mean 'top_k'"),
    (lambda r: r["datasets"]["cs_aachen"].update(cities="aachen"), None, None),
    (lambda r: r["datasets"]["bdd"].update(cities=["x"]), "datasets.bdd.cities", "unknown key 'cities'"),
    (lambda r: r["datasets"]["mine"].pop("label_map"), "datasets.mine.label_map", "needs a label_map"),
    (lambda r: r["datasets"]["mine"].update(label_map={"a": "road"}), "datasets.mine.label_map.a",
     "non-negative integers"),
    (lambda r: r["datasets"]["bdd"].update(max_images=0), "datasets.bdd.max_images", "must be >= 1"),
    (lambda r: r["datasets"]["bdd"].update(resize=[1, 2, 3]), "datasets.bdd.resize", "[height, width]"),
    (lambda r: r["datasets"]["bdd"].update(split_list="lists/none.txt"), "datasets.bdd.split_list",
     "file not found"),
    (lambda r: r["datasets"]["gta5"].update(root="s3://bucket/gta5"), "datasets.gta5.root", "URLs"),
    (lambda r: r["datasets"].update(**{"bad name": {"format": "gta5", "root": "data/gta5"}}),
     "datasets.bad name", "dataset name 'bad name' must match"),
    (lambda r: r["datasets"].update(extra=[1]), "datasets.extra", "expected a mapping"),
    (lambda r: r.update(extraction={"pixels_per_image": 0, "sampling": "balanced"}),
     "extraction.pixels_per_image", "must be >= 1"),
    (lambda r: r.update(extraction={"sampling": "balanced"}), "extraction.sampling",
     "did you mean 'class_balanced'"),
    (lambda r: r.update(output="s3://bucket/runs"), "output", "URL roots are not supported"),
])
def test_single_problem_reported_with_its_path(tmp_path, mutate, path, fragment):
    raw = _raw(tmp_path)
    mutate(raw)
    problems = validate(raw, tmp_path / "jobs")
    if path is None:
        assert problems == []
        return
    hits = [p for p in problems if p.path == path]
    assert hits, f"{path} not reported; got {[str(p) for p in problems]}"
    assert fragment in hits[0].message, str(hits[0])


def test_output_root_absolute_ok_and_existing_file_rejected(tmp_path):
    raw = _raw(tmp_path)
    raw["output"] = str(tmp_path / "shared" / "runs")
    assert validate(raw, tmp_path / "jobs") == []
    (tmp_path / "afile").write_text("x")
    raw["store"] = str(tmp_path / "afile")
    assert _paths(validate(raw, tmp_path / "jobs")) == ["store"]


def test_ground_truth_header_checked(tmp_path):
    raw = _raw(tmp_path)
    (tmp_path / "jobs" / "gt.csv").write_text("model,dataset,miou\nm,t,1\n")
    problems = validate(raw, tmp_path / "jobs")
    assert _paths(problems) == ["ground_truth"]
    assert "missing target, value" in problems[0].message


def test_yaml_errors_and_duplicate_keys(tmp_path):
    path = _issue_tree(tmp_path)
    path.write_text(ISSUE_SPEC + "seed: 3\n")
    problems = check_spec_file(path)
    assert len(problems) == 1 and "duplicate key 'seed'" in problems[0].message
    path.write_text("name: [unclosed\n")
    problems = check_spec_file(path)
    assert len(problems) == 1 and "not valid YAML" in problems[0].message
    path.write_text("- just\n- a list\n")
    assert "a job spec is a YAML mapping" in check_spec_file(path)[0].message
    assert "cannot read job spec" in check_spec_file(tmp_path / "nope.yaml")[0].message


def test_yaml_is_safe_loaded(tmp_path):
    path = _issue_tree(tmp_path)
    path.write_text("!!python/object/apply:os.system ['echo pwned']\n")
    problems = check_spec_file(path)
    assert problems and "not valid YAML" in problems[0].message


def test_content_hash_ignores_output_but_not_settings(tmp_path):
    raw = _raw(tmp_path)
    a = build_spec(copy.deepcopy(raw), tmp_path / "jobs")
    raw2 = copy.deepcopy(raw)
    raw2["output"] = str(tmp_path / "elsewhere")
    b = build_spec(raw2, tmp_path / "jobs")
    raw3 = copy.deepcopy(raw)
    raw3["otce"]["epsilon"] = 0.2
    c = build_spec(raw3, tmp_path / "jobs")
    assert a.content_hash() == b.content_hash() != c.content_hash()


def test_repo_job_files_are_well_formed():
    """jobs/*.yaml in the repository: the nightly spec has no problems but missing inputs."""
    root = Path(__file__).resolve().parents[1]
    problems = check_spec_file(root / "jobs" / "nightly.yaml")
    assert problems, "the nightly spec names data that is not in the repository"
    assert all(p.message.startswith(("file not found", "directory not found")) for p in problems), \
        [str(p) for p in problems]


def test_schedule_string_and_mapping_forms_build(tmp_path):
    raw = _raw(tmp_path)
    raw["schedule"] = "adaptive"
    s = build_spec(raw, tmp_path / "jobs").schedule
    assert (s.mode, s.min_repetitions, s.top_k, s.alpha) == ("adaptive", 2, 5, 0.05)
    raw["schedule"] = {"mode": "adaptive", "min_repetitions": 3, "top_k": 1, "alpha": 0.2}
    spec = build_spec(raw, tmp_path / "jobs")
    assert (spec.schedule.mode, spec.schedule.min_repetitions, spec.schedule.top_k,
            spec.schedule.alpha) == ("adaptive", 3, 1, 0.2)
    assert spec.to_dict()["schedule"]["top_k"] == 1
    assert build_spec(_raw(tmp_path), tmp_path / "jobs").schedule.mode == "full"


def test_layer_lives_in_extraction_and_otce_layer_still_works_with_a_warning(tmp_path, caplog):
    """extraction.layer is every model's default feature space; otce.layer (deprecated) maps to it."""
    raw = _raw(tmp_path)
    raw["otce"]["layer"] = "probs"
    raw["models"]["tiny_bdd"]["layer"] = "logits"
    with caplog.at_level("WARNING", logger="segotce_ray.spec"):
        spec = build_spec(raw, tmp_path / "jobs")
    assert "otce.layer is deprecated" in caplog.text and "extraction.layer" in caplog.text
    assert spec.extraction.layer == "probs"
    assert spec.models["lraspp_gta5"].layer == "probs" and spec.models["tiny_bdd"].layer == "logits"
    assert "layer" not in spec.to_dict()["otce"] and spec.to_dict()["extraction"]["layer"] == "probs"
    raw = _raw(tmp_path / "new")
    raw["otce"].pop("layer")
    raw["otce"]["cost_scale"] = "max"
    raw["extraction"] = {"layer": "logits"}
    caplog.clear()
    with caplog.at_level("WARNING", logger="segotce_ray.spec"):
        spec = build_spec(raw, tmp_path / "new" / "jobs")
    assert "deprecated" not in caplog.text
    assert spec.models["lraspp_gta5"].layer == "logits" and spec.otce.cost_scale == "max"
