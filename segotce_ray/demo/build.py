"""Build everything the demo job needs and write its job spec.

:func:`build_demo` is what ``segotce-ray demo`` calls before it runs the job::

    job_yaml = build_demo(workdir)      # world + zoo + ground truth + <workdir>/demo.yaml
    spec = segotce_ray.spec.build.load_spec(job_yaml)

Layout under ``workdir`` (every step is cached; a second call only re-checks manifests)::

    world/                      the generated datasets (world.json manifest)
    demo_zoo/<fingerprint>/     zoo checkpoints (state dicts) + zoo.json
    ground_truth.csv (+ .json)  fine-tuned mIoU per (model, target, fine-tuning seed), in percent
    ground_truth_mean.csv       its means over the seeds (model, target, value)
    demo.yaml                   the job spec (relative paths, resolved against workdir)
    store/  runs/               the job's pixel pools and run directories (written by the job)
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml

from segotce_ray.demo.ground_truth import FINETUNE_RECIPE, ground_truth_csv, mean_csv_path
from segotce_ray.demo.world import DOMAINS, WorldConfig, dataset_specs, num_classes_of, write_world
from segotce_ray.demo.zoo import LRASPP, MEAN, STD, TrainRecipe, build_zoo, default_members

log = logging.getLogger(__name__)

#: SEG-OTCE settings of the demo job (N, K sized for a laptop; the rest are the job defaults)
DEMO_OTCE: dict[str, Any] = {"n_pixels": 1000, "repetitions": 5, "epsilon": 0.1,
                             "solver": "auto", "sampling": "uniform", "cost_scale": "none"}
#: the demo's feature space (``extraction.layer``; the job default)
DEMO_LAYER = "penultimate"
#: True: the job's ground-truth reader takes the per-seed CSV (``model,target,seed,value``;
#: noise ceilings from the seeds, agreement on their means), so the spec names it; False
#: would name the seed means (``ground_truth_mean.csv``), for a reader without seeds
READER_AVERAGES_SEEDS = True


def spec_ground_truth(gt_csv: Path) -> Path:
    """The ground-truth file a job spec names for the per-seed CSV ``gt_csv``."""
    return Path(gt_csv) if READER_AVERAGES_SEEDS else mean_csv_path(gt_csv)


def demo_spec(workdir: Path, config: WorldConfig, zoo_dir: Path, members: list, gt_csv: Path | None,
              otce: dict[str, Any] | None = None, seed: int = 0, *, world_root: Path | None = None,
              target_images: int | None = None, name: str = "demo") -> dict[str, Any]:
    """The demo job spec as a mapping (issue-5 syntax), paths relative to ``workdir``.

    Datasets: one per source domain (the zoo's training split) and one per target domain
    (its small labelled split; only its first ``target_images`` images when given); each
    model names its source dataset. Target names in the spec equal the domain names used in
    the ground-truth CSV. world_root: where the world was written (default ``workdir/world``).
    """
    def rel(p: Path) -> str:
        return os.path.relpath(p, workdir)

    specs = dataset_specs(world_root or workdir / "world", config)
    datasets: dict[str, dict] = {}
    for city in config.sources:
        d = dict(specs[f"src_{city}"]); d["root"] = rel(Path(d["root"]))
        datasets[city] = d
    for city in config.targets:
        d = dict(specs[f"tgt_{city}"]); d["root"] = rel(Path(d["root"]))
        if target_images is not None:
            d.update(max_images=target_images, subset="first")
        datasets[city] = d
    models: dict[str, dict] = {}
    for m in members:
        models[m.name] = {
            "architecture": m.architecture, "num_classes": num_classes_of(m.source),
            "checkpoint": rel(zoo_dir / f"{m.name}.pth"), "source": m.source,
            "mean": list(MEAN), "std": list(STD),
        }
    spec: dict[str, Any] = {
        "name": name,
        "description": "segotce-ray demo: a procedurally generated multi-domain street world, "
                       f"{len(members)} models trained on {len(config.sources)} source domains, "
                       f"ranked for {len(config.targets)} targets",
        "output": "runs", "store": "store", "seed": seed,
        "otce": dict(DEMO_OTCE, **(otce or {})),
        "extraction": {"layer": DEMO_LAYER},
        "datasets": datasets, "models": models, "targets": list(config.targets),
    }
    if gt_csv is not None:
        spec["ground_truth"] = rel(gt_csv)
    return spec


def build_demo(workdir: str | Path, *, seed: int = 0, otce: dict[str, Any] | None = None,
               ground_truth: bool = True, workers: int | None = None,
               config: WorldConfig | None = None,
               zoo_recipes: dict[str, TrainRecipe] | None = None,
               finetune_recipe: TrainRecipe | None = None) -> Path:
    """Write the demo world, zoo, ground truth and job spec under ``workdir``; return the
    path of the job spec YAML (``<workdir>/demo.yaml``).

    seed: world, zoo and ground-truth seed; otce: overrides of :data:`DEMO_OTCE`;
    ground_truth: False skips the ground truth (and the spec's ``ground_truth`` key);
    workers: training processes (default: min(2, CPUs)); config: another world
    (e.g. fewer images, for tests); zoo_recipes / finetune_recipe: other training recipes
    (tests). The ground truth shipped in the package is used when it
    was computed from this very zoo (same weights hashes), else it is computed here.
    """
    t0 = time.perf_counter()
    workdir = Path(workdir).expanduser().absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    config = config or WorldConfig(seed=seed)
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    layout = write_world(workdir / "world", config)
    t_world = time.perf_counter()
    members = default_members(config)
    zoo = build_zoo(workdir, layout.root, config, members, seed=config.seed, workers=workers,
                    recipes=zoo_recipes)
    t_zoo = time.perf_counter()
    gt = None
    if ground_truth:
        gt = ground_truth_csv(zoo, layout.root, config, workdir / "ground_truth.csv",
                              seed=config.seed, recipe=finetune_recipe or FINETUNE_RECIPE,
                              workers=workers,
                              use_shipped=config == WorldConfig(seed=config.seed))
    t_gt = time.perf_counter()
    spec = demo_spec(workdir, config, zoo.root, members, gt and spec_ground_truth(gt), otce,
                     config.seed)
    path = workdir / "demo.yaml"
    tmp = path.with_name(path.name + ".tmp")
    header = ("# Generated by segotce_ray.demo.build.build_demo; paths are relative to this file.\n"
              "# Domains: " + ", ".join(f"{c} ({'source' if c in config.sources else 'target'}"
                                         f"{', coarse labels' if DOMAINS[c].label_space == 'coarse' else ''})"
                                         for c in (*config.sources, *config.targets)) + "\n")
    tmp.write_text(header + yaml.safe_dump(spec, sort_keys=False))
    tmp.replace(path)
    log.info("demo built in %.1fs (world %.1fs, zoo %.1fs, ground truth %.1fs): %s",
             t_gt - t0, t_world - t0, t_zoo - t_world, t_gt - t_zoo, path)
    return path


__all__ = ["DEMO_LAYER", "DEMO_OTCE", "LRASPP", "READER_AVERAGES_SEEDS", "build_demo", "demo_spec",
           "spec_ground_truth"]
