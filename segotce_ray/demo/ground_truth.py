"""Ground-truth transfer of every (zoo model, target domain) pair of the demo world.

Recipe (fixed): start from the zoo checkpoint; when the target's label set differs from
the model's (the coarse target) put a new, seeded classifier head on it; fine-tune every
layer with :data:`FINETUNE_RECIPE` on the target's small labelled split (``train``);
measure mIoU (percent) on the held-out split (``val``):

    IoU_c = TP_c / (TP_c + FP_c + FN_c),  mIoU = 100 · mean_c IoU_c

over the classes present in the held-out labels (void 255 ignored).

Regenerate the shipped CSV with::

    python -m segotce_ray.demo.ground_truth --out segotce_ray/demo/data/ground_truth.csv
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from segotce_ray.demo.world import (IGNORE, WorldConfig, load_split, num_classes_of,
                                    write_world)
from segotce_ray.demo.zoo import (TrainRecipe, Zoo, ZooMember, build_architecture, build_zoo,
                                  deterministic_torch, forward_logits, member_seed, normalise,
                                  replace_head, train)

log = logging.getLogger(__name__)

GT_VERSION = 1
FINETUNE_RECIPE = TrainRecipe(steps=20, batch=8, lr=1e-3)
SHIPPED_CSV = Path(__file__).parent / "data" / "ground_truth.csv"
SHIPPED_META = Path(__file__).parent / "data" / "ground_truth.json"


def confusion(pred: np.ndarray, label: np.ndarray, num_classes: int,
              ignore_index: int = IGNORE) -> np.ndarray:
    """(C, C) counts, rows = true class, cols = predicted class, void pixels dropped."""
    m = label != ignore_index
    idx = label[m].astype(np.int64) * num_classes + pred[m].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(conf: np.ndarray) -> float:
    """mIoU in percent over classes with at least one true pixel."""
    tp = np.diag(conf).astype(np.float64)
    present = conf.sum(1) > 0
    union = conf.sum(1) + conf.sum(0) - tp
    return float(100.0 * np.mean(tp[present] / np.maximum(union[present], 1)))


@torch.no_grad()
def predict(model: torch.nn.Module, images: np.ndarray, batch: int = 16) -> np.ndarray:
    """Arg-max predictions (N, H, W) int64 of an eval-mode model on uint8 images."""
    with deterministic_torch():
        out = [forward_logits(model, normalise(images[i:i + batch])).argmax(1)
               for i in range(0, len(images), batch)]
    return torch.cat(out).numpy()


def transfer_miou(model: torch.nn.Module, member: ZooMember, target: str, world_root: str | Path,
                  config: WorldConfig, seed: int, recipe: TrainRecipe = FINETUNE_RECIPE,
                  train_images: int | None = None) -> float:
    """Fine-tune ``model`` (in place) on ``target``'s train split, mIoU on its val split.

    train_images: fine-tune on the first this many train images only (a few-shot protocol;
    the same images a dataset spec selects with ``max_images`` and ``subset: first``).
    """
    x_tr, y_tr = load_split(world_root, config, target, "train")
    if train_images is not None:
        x_tr, y_tr = x_tr[:train_images], y_tr[:train_images]
    x_va, y_va = load_split(world_root, config, target, "val")
    s = member_seed(seed, f"gt/{member.name}/{target}")
    n_target = num_classes_of(target)
    if n_target != num_classes_of(member.source):
        with deterministic_torch():
            torch.manual_seed(s)
            replace_head(model, n_target)
    train(model, x_tr, y_tr, recipe, s)
    return mean_iou(confusion(predict(model, x_va), y_va, n_target))


def pair_job(member: dict, ckpt: str, targets: list[str], world_root: str, config: dict,
             seed: int, recipe: dict, train_images: int | None = None) -> list[tuple[str, str, float]]:
    """Ground truth of one zoo member on ``targets`` (JSON args; a worker-process job)."""
    member, config = ZooMember(**member), WorldConfig.from_dict(config)
    recipe = TrainRecipe(**recipe)
    rows = []
    for target in targets:
        model = build_architecture(member.architecture, num_classes_of(member.source))
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        rows.append((member.name, target,
                     round(transfer_miou(model, member, target, world_root, config, seed, recipe,
                                           train_images), 4)))
    return rows


def compute_ground_truth(zoo: Zoo, world_root: str | Path, config: WorldConfig, seed: int = 0,
                         recipe: TrainRecipe = FINETUNE_RECIPE, workers: int = 2,
                         train_images: int | None = None) -> list[tuple[str, str, float]]:
    """Rows ``(model, target, mIoU %)`` for every zoo member × target, sorted."""
    from segotce_ray.demo.workers import run_jobs

    jobs = [{"member": asdict(m), "ckpt": str(zoo.checkpoints[m.name]),
             "targets": list(config.targets), "world_root": str(world_root),
             "config": config.to_dict(), "seed": seed, "recipe": asdict(recipe),
             "train_images": train_images}
            for m in zoo.members]
    out = run_jobs("ground_truth", jobs, workers)
    return sorted((m, t, float(v)) for rows in out for m, t, v in rows)


def gt_fingerprint(zoo: Zoo, config: WorldConfig, seed: int, recipe: TrainRecipe,
                   train_images: int | None = None) -> str:
    """Hash of what determines the ground truth: zoo weights, world, seed, recipe (and the
    number of fine-tuning images when it is not the whole train split)."""
    fields = {"version": GT_VERSION, "zoo": zoo.hashes, "world": config.fingerprint(),
              "seed": seed, "recipe": asdict(recipe)}
    if train_images is not None:
        fields["train_images"] = train_images
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_csv(rows: list[tuple[str, str, float]], path: str | Path) -> Path:
    """Write ``model,target,value`` rows (value = mIoU in percent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "target", "value"])
        for model, target, value in rows:
            w.writerow([model, target, f"{value:.4f}"])
    tmp.replace(path)
    return path


def read_csv(path: str | Path) -> list[tuple[str, str, float]]:
    with Path(path).open() as fh:
        return [(r["model"], r["target"], float(r["value"])) for r in csv.DictReader(fh)]


def ground_truth_csv(zoo: Zoo, world_root: str | Path, config: WorldConfig, out: str | Path,
                     seed: int = 0, recipe: TrainRecipe = FINETUNE_RECIPE, workers: int = 2,
                     use_shipped: bool = True, shipped: Path = SHIPPED_CSV,
                     train_images: int | None = None) -> Path:
    """Write the ground-truth CSV to ``out``: the shipped one (``shipped`` and its ``.json``)
    when it was computed from this very zoo/world/seed/recipe (fingerprint match), else
    computed now (and cached beside ``out`` with its fingerprint)."""
    fp = gt_fingerprint(zoo, config, seed, recipe, train_images)
    shipped_meta = Path(shipped).with_suffix(".json")
    out = Path(out)
    meta = out.with_suffix(".json")
    if out.exists() and meta.exists() and json.loads(meta.read_text()).get("fingerprint") == fp:
        return out
    if use_shipped and Path(shipped).exists() and shipped_meta.exists():
        if json.loads(shipped_meta.read_text()).get("fingerprint") == fp:
            write_csv(read_csv(shipped), out)
            meta.write_text(json.dumps({"fingerprint": fp, "source": "shipped"}))
            return out
        log.info("shipped ground truth does not match this zoo (other torch build or recipe): "
                 "recomputing")
    t0 = time.perf_counter()
    rows = compute_ground_truth(zoo, world_root, config, seed, recipe, workers, train_images)
    write_csv(rows, out)
    meta.write_text(json.dumps({"fingerprint": fp, "source": "computed",
                                "seconds": round(time.perf_counter() - t0, 1)}))
    return out


def main(argv: list[str] | None = None) -> int:
    """Regenerate the ground truth: ``python -m segotce_ray.demo.ground_truth --out X``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(SHIPPED_CSV), help="CSV to write (model,target,value)")
    p.add_argument("--workdir", default=".segotce_demo", help="where the world and zoo live")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = WorldConfig(seed=a.seed)
    work = Path(a.workdir)
    layout = write_world(work / "world", config)
    zoo = build_zoo(work / "store", layout.root, config, seed=a.seed, workers=a.workers)
    t0 = time.perf_counter()
    rows = compute_ground_truth(zoo, layout.root, config, a.seed, FINETUNE_RECIPE, a.workers)
    out = write_csv(rows, a.out)
    fp = gt_fingerprint(zoo, config, a.seed, FINETUNE_RECIPE)
    out.with_suffix(".json").write_text(json.dumps(
        {"fingerprint": fp, "torch": torch.__version__, "seconds": round(time.perf_counter() - t0, 1),
         "recipe": asdict(FINETUNE_RECIPE), "seed": a.seed}, indent=2) + "\n")
    print(f"wrote {out} ({len(rows)} rows, fingerprint {fp})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
