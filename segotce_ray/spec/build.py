"""Build a JobSpec from validated YAML (defaults filled in, paths resolved).
"""


from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segotce_ray.spec.model import known_metrics, DatasetEntry, ExtractionSettings, JobSpec, ModelEntry, OTCESettings, Resources, Schedule, SpecError, SpecProblem
from segotce_ray.spec.validate import SpecChecker, read_yaml, validate

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- building


def _tuple(v: Any) -> tuple | None:
    if v is None:
        return None
    if isinstance(v, int):
        return (v, v)
    return tuple(v)


def build_spec(raw: dict, base_dir: str | Path, path: str | Path | None = None) -> JobSpec:
    """A :class:`JobSpec` from a raw spec; raises :class:`SpecError` listing every problem."""
    base = Path(base_dir).expanduser().absolute()
    problems = validate(raw, base)
    if problems:
        raise SpecError(problems, path)
    c = SpecChecker(base)
    otce_raw = dict(raw.get("otce", {}))
    legacy_layer = otce_raw.pop("layer", None)
    if "epsilon" in otce_raw:
        otce_raw["epsilon"] = float(otce_raw["epsilon"])
    if otce_raw.get("calibration"):
        otce_raw["calibration"] = str(c.resolve(otce_raw["calibration"]).absolute())
    otce = OTCESettings(**otce_raw)
    sched_raw = raw.get("schedule", "full")
    schedule = Schedule(mode=sched_raw) if isinstance(sched_raw, str) else Schedule(**sched_raw)
    extraction = ExtractionSettings(**raw.get("extraction", {}))
    if legacy_layer is not None:
        log.warning("%sotce.layer is deprecated: the layer is the feature space of every metric "
                    "and decides the pools; write it as extraction.layer (or per model as "
                    "models.<name>.layer)", f"{path}: " if path else "")
        if "layer" not in raw.get("extraction", {}):
            extraction.layer = legacy_layer
    resources = Resources(**raw.get("resources", {}))

    datasets: dict[str, DatasetEntry] = {}
    for name, d in raw["datasets"].items():
        opts = {k: v for k, v in d.items() if k not in ("format", "root")}
        if "split_list" in opts:
            opts["split_list"] = str(c.resolve(opts["split_list"]).absolute())
        if "cities" in opts and isinstance(opts["cities"], str):
            opts["cities"] = [opts["cities"]]
        if "max_images" not in opts and extraction.max_images is not None:
            opts["max_images"] = extraction.max_images
        datasets[name] = DatasetEntry(name=name, format=d["format"],
                                      root=str(c.resolve(d["root"]).absolute()), options=opts)

    models: dict[str, ModelEntry] = {}
    for name, m in raw["models"].items():
        ckpt = m.get("checkpoint")
        models[name] = ModelEntry(
            name=name, architecture=m["architecture"],
            checkpoint=str(c.resolve(ckpt).absolute()) if ckpt else None,
            num_classes=m.get("num_classes"), source=m.get("source"),
            layer=m.get("layer", extraction.layer),
            mean=_tuple(m.get("mean")), std=_tuple(m.get("std")),
            input_size=_tuple(m.get("input_size")),
            kwargs=dict(m.get("kwargs") or {}), family=m.get("family"),
        )
    targets = raw["targets"]
    metrics = raw.get("metrics", list(known_metrics()))
    gt = raw.get("ground_truth")
    return JobSpec(
        name=raw["name"],
        output=str(c.resolve(raw.get("output", "runs")).absolute()),
        store=str(c.resolve(raw.get("store", "store")).absolute()),
        seed=int(raw.get("seed", 0)), otce=otce, datasets=datasets, models=models,
        targets=[targets] if isinstance(targets, str) else list(targets),
        metrics=[metrics] if isinstance(metrics, str) else list(metrics),
        ground_truth=str(c.resolve(gt).absolute()) if gt else None,
        calibration=str(c.resolve(raw["calibration"]).absolute()) if raw.get("calibration") else None,
        resources=resources, extraction=extraction, schedule=schedule,
        base_dir=str(base), path=str(Path(path).absolute()) if path else None,
    )


def load_spec(path: str | Path) -> JobSpec:
    """Read, validate and resolve a job spec file; :class:`SpecError` lists every problem."""
    path = Path(path)
    raw, problems = read_yaml(path)
    if raw is not None:
        problems += validate(raw, path.parent)
    if problems:
        raise SpecError(problems, path)
    return build_spec(raw, path.parent, path)


def check_spec_file(path: str | Path) -> list[SpecProblem]:
    """Every problem in a spec file (YAML errors, duplicate keys, then :func:`validate`)."""
    path = Path(path)
    raw, problems = read_yaml(path)
    if raw is not None:
        problems += validate(raw, path.parent)
    return problems
