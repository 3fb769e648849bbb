"""Worlds of the quality benchmark: one generator, several evaluation protocols.

A :class:`WorldProtocol` fixes what a benchmark world is: the generated world
(:class:`~segotce_ray.demo.world.WorldConfig`, i.e. its domains, seed and splits), the zoo
(one net per source domain, with or without the LR-ASPP of another architecture), the
fine-tuning recipe of the ground truth, its fine-tuning seeds and how many labelled target
images the user has (the fine-tuning set and the scoring pool). :data:`WORLDS` holds the
protocols of ``benchmarks/bench_quality.py``; the ``demo`` protocol is exactly what
``segotce-ray demo`` builds.

Protocols with the same world share the generated images and the trained zoo (both are
cached by fingerprint under one root; the zoo holds the members of every protocol of that
world), so only their ground truths cost extra. Each ground truth ships in
``data/worlds/<name>.csv`` (the demo's in ``data/ground_truth.csv``), one row per
fine-tuning seed, with a ``.json`` holding its fingerprint and the from-scratch reference;
regenerate one with::

    python -m segotce_ray.demo.worlds --world paper
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import yaml

from segotce_ray.demo.build import DEMO_OTCE, demo_spec, spec_ground_truth
from segotce_ray.demo.ground_truth import (FINETUNE_RECIPE, GT_VERSION, SCRATCH_ARCHITECTURE,
                                           SEEDS, SHIPPED_CSV, compute_ground_truth,
                                           gt_fingerprint, ground_truth_csv, write_csv)
from segotce_ray.demo.reliability import format_summary, target_summary
from segotce_ray.demo.world import LEGACY_WORLD, WORLD_VERSION, WorldConfig, write_world
from segotce_ray.demo.zoo import LRASPP, ZOO_VERSION, TrainRecipe, Zoo, build_zoo, default_members

log = logging.getLogger(__name__)

WORLDS_DATA = Path(__file__).parent / "data" / "worlds"


#: the fine-tuning of the first demo (kept by the legacy worlds same_arch)
LEGACY_FINETUNE = TrainRecipe(steps=20, batch=8, lr=1e-3)


@dataclass(frozen=True)
class WorldProtocol:
    """One benchmark world: generated world, zoo, ground-truth recipe, labelled target images.

    world: the generated world (its ``seed`` is replaced by ``seed``); seed: world, zoo and
    ground-truth seed; lraspp: include the LR-ASPP member (another architecture, a capacity
    outlier); recipe: fine-tuning recipe of the ground truth; target_images: the user's
    labelled images per target (the first ones of the train split; None = all of it);
    seeds: the fine-tuning seeds of the ground truth.
    """

    name: str
    description: str
    seed: int = 0
    lraspp: bool = True
    recipe: TrainRecipe = FINETUNE_RECIPE
    target_images: int | None = None
    world: WorldConfig = WorldConfig()
    seeds: tuple[int, ...] = SEEDS

    @property
    def config(self) -> WorldConfig:
        return replace(self.world, seed=self.seed)

    def members(self) -> list:
        members = default_members(self.config)
        return members if self.lraspp else [m for m in members if m.architecture != LRASPP]

    @property
    def shipped(self) -> Path:
        """Where this world's ground truth ships (the demo keeps its historical path)."""
        return SHIPPED_CSV if self.name == "demo" else WORLDS_DATA / f"{self.name}.csv"


WORLDS: dict[str, WorldProtocol] = {p.name: p for p in (
    WorldProtocol("demo", "the demo: the paper world's 8 tiny nets + 1 LR-ASPP (another "
                  "architecture), fine-tune 15 steps (batch 4) on 8 labelled images"),
    WorldProtocol("paper", "the paper regime: one architecture (8 tiny nets on sources at "
                  "graded hue distances from the 3 targets), fine-tune 15 steps (batch 4) "
                  "on 8 labelled images", lraspp=False),
    WorldProtocol("same_arch", "legacy world seed 1, 7 tiny nets only (no capacity outlier), "
                  "fine-tune 20 steps (batch 8) on 16 images", seed=1, lraspp=False,
                  recipe=LEGACY_FINETUNE, world=LEGACY_WORLD),
    WorldProtocol("few_shot", "legacy world and zoo (7 tiny nets + 1 LR-ASPP); 4 labelled "
                  "target images: fine-tune 10 steps (batch 4)",
                  recipe=TrainRecipe(steps=10, batch=4, lr=1e-3), target_images=4,
                  world=LEGACY_WORLD),
    WorldProtocol("long_ft", "legacy world and zoo; fine-tune 60 steps (batch 8) on 16 images",
                  recipe=TrainRecipe(steps=60, batch=8, lr=1e-3), world=LEGACY_WORLD),
)}


def _world_zoo(protocol: WorldProtocol, root: Path, workers: int) -> tuple[Path, Zoo]:
    """The world's images and zoo under ``root`` (shared by protocols with the same world:
    the zoo is trained with the members of all of them and restricted to this one's)."""
    config = protocol.config
    world_root = root / f"world_{config.fingerprint()}"
    layout = write_world(world_root, config)
    members = {m.name: m for p in WORLDS.values() if p.config == config for m in p.members()}
    for m in protocol.members():
        members.setdefault(m.name, m)
    ordered = [m for m in default_members(config) if m.name in members]
    zoo = build_zoo(root, layout.root, config, ordered, seed=protocol.seed, workers=workers)
    return layout.root, zoo.subset(protocol.members())


def build_world(protocol: WorldProtocol, root: str | Path, *, workers: int | None = None,
                otce: dict[str, Any] | None = None) -> Path:
    """World, zoo, ground truth and job spec of ``protocol`` under ``root``; returns the
    spec path ``<root>/<name>/job.yaml``. The shipped ground truth is used when its
    fingerprint matches, else it is computed (minutes on a laptop CPU)."""
    root = Path(root).expanduser().absolute()
    workers = workers or max(1, min(2, os.cpu_count() or 1))
    world_root, zoo = _world_zoo(protocol, root, workers)
    workdir = root / protocol.name
    workdir.mkdir(parents=True, exist_ok=True)
    gt = ground_truth_csv(zoo, world_root, protocol.config, workdir / "ground_truth.csv",
                          seed=protocol.seed, recipe=protocol.recipe, workers=workers,
                          shipped=protocol.shipped, train_images=protocol.target_images,
                          seeds=protocol.seeds)
    spec = demo_spec(workdir, protocol.config, zoo.root, protocol.members(), spec_ground_truth(gt),
                     dict(DEMO_OTCE, **(otce or {})), protocol.seed, world_root=world_root,
                     target_images=protocol.target_images, name=f"world_{protocol.name}")
    path = workdir / "job.yaml"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"# {protocol.name}: {protocol.description}\n" + yaml.safe_dump(spec, sort_keys=False))
    tmp.replace(path)
    return path


def provenance(protocol: WorldProtocol, zoo: Zoo, seconds: float,
               scratch: dict[str, dict[int, float]]) -> dict[str, Any]:
    """The ``.json`` shipped beside a world's ground truth: fingerprint, what made it and
    the from-scratch reference ``{target: {seed: mIoU}}``."""
    return {"world": protocol.name, "description": protocol.description,
            "fingerprint": gt_fingerprint(zoo, protocol.config, protocol.seed, protocol.recipe,
                                          protocol.target_images, protocol.seeds),
            "generator": {"world_version": WORLD_VERSION, "zoo_version": ZOO_VERSION,
                          "gt_version": GT_VERSION, "world": protocol.config.fingerprint(),
                          "zoo": zoo.fingerprint},
            "seed": protocol.seed, "seeds": list(protocol.seeds),
            "members": [m.name for m in protocol.members()],
            "recipe": asdict(protocol.recipe), "target_images": protocol.target_images,
            "scratch": {"architecture": SCRATCH_ARCHITECTURE,
                        "miou": {t: {str(k): v for k, v in sorted(by.items())}
                                 for t, by in sorted(scratch.items())}},
            "torch": torch.__version__, "seconds": round(seconds, 1),
            "regenerate": f"python -m segotce_ray.demo.worlds --world {protocol.name}"}


def shipped_is_current(protocol: WorldProtocol) -> bool:
    """Whether the shipped ground truth was made by this generator version with this
    protocol's seeds (older ones have one value per pair and no scratch reference)."""
    meta_path = protocol.shipped.with_suffix(".json")
    if not meta_path.exists():
        return False
    meta = json.loads(meta_path.read_text())
    return (meta.get("generator", {}).get("gt_version") == GT_VERSION
            and meta.get("seeds") == list(protocol.seeds))


def shipped_scratch(protocol: WorldProtocol) -> dict[str, dict[int, float]]:
    """The from-scratch reference ``{target: {seed: mIoU}}`` of a shipped ground truth."""
    meta = json.loads(protocol.shipped.with_suffix(".json").read_text())
    return {t: {int(k): float(v) for k, v in by.items()}
            for t, by in meta["scratch"]["miou"].items()}


def regenerate(protocol: WorldProtocol, root: Path, out: Path, workers: int) -> Path:
    """Compute ``protocol``'s ground truth from scratch and write ``out`` + ``.json``."""
    world_root, zoo = _world_zoo(protocol, root, workers)
    t0 = time.perf_counter()
    rows, scratch = compute_ground_truth(zoo, world_root, protocol.config, protocol.seed,
                                         protocol.recipe, workers, protocol.target_images,
                                         protocol.seeds)
    write_csv(rows, out)
    meta = provenance(protocol, zoo, time.perf_counter() - t0, scratch)
    out.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"{protocol.name}: per target (mIoU %; spread = mean per-pair std over seeds)")
    print(format_summary(target_summary(rows, scratch)))
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m segotce_ray.demo.worlds --world NAME``: regenerate a shipped ground truth."""
    p = argparse.ArgumentParser(description="Regenerate a benchmark world's ground truth.")
    p.add_argument("--world", required=True, choices=sorted(WORLDS))
    p.add_argument("--workdir", default=".segotce_worlds", help="where worlds and zoos are cached")
    p.add_argument("--out", default=None, help="CSV to write (default: the shipped file)")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    protocol = WORLDS[a.world]
    out = regenerate(protocol, Path(a.workdir).absolute(), Path(a.out or protocol.shipped), a.workers)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
