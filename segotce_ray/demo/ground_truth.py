"""Ground-truth transfer of every (zoo model, target domain) pair of a demo world.

Recipe (fixed): start from the zoo checkpoint; when the target's label set differs from
the model's (a coarse target) put a new, seeded classifier head on it; fine-tune every
layer with a :class:`~segotce_ray.demo.zoo.TrainRecipe` (the demo's:
:data:`FINETUNE_RECIPE`) on the target's small labelled split (``train``); measure mIoU
(percent) on the held-out split (``val``):

    IoU_c = TP_c / (TP_c + FP_c + FN_c),  mIoU = 100 · mean_c IoU_c

over the classes present in the held-out labels (void 255 ignored).

Repeats: every pair is fine-tuned once per fine-tuning seed (:data:`SEEDS`); the seed
draws the new head (when there is one), the batches and the flips. Each seed of each pair
is seeded on its own, so results do not depend on the number of worker processes. A
from-scratch reference (the zoo's main architecture, randomly initialised, trained with
the same recipe, images and seeds) is computed per target and kept in the metadata.

CSV: ``model,target,seed,value`` (value = mIoU in percent). Regenerate a shipped one with
``python -m segotce_ray.demo.worlds --world NAME`` (``demo`` for the demo's).
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from segotce_ray.demo.workers import run_jobs
from segotce_ray.demo.world import (IGNORE, WorldConfig, load_split, num_classes_of)
from segotce_ray.demo.zoo import (LRASPP, TINY_FACTORY, TrainRecipe, Zoo, ZooMember,
                                  build_architecture, deterministic_torch, forward_logits,
                                  member_seed, normalise, replace_head, train)

log = logging.getLogger(__name__)

GT_VERSION = 2
#: the demo's fine-tuning: short, on the few labelled target images
FINETUNE_RECIPE = TrainRecipe(steps=15, batch=4, lr=1e-3)
#: fine-tuning seeds of every shipped ground truth
SEEDS: tuple[int, ...] = (0, 1, 2)
#: the architecture of the from-scratch reference
SCRATCH_ARCHITECTURE = TINY_FACTORY
SHIPPED_CSV = Path(__file__).parent / "data" / "ground_truth.csv"
SHIPPED_META = Path(__file__).parent / "data" / "ground_truth.json"

#: a ground-truth row: model, target, fine-tuning seed, mIoU (%)
Row = tuple[str, str, int, float]


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


def _target_data(world_root: str | Path, config: WorldConfig, target: str,
                 train_images: int | None) -> tuple[np.ndarray, ...]:
    x_tr, y_tr = load_split(world_root, config, target, "train")
    if train_images is not None:
        x_tr, y_tr = x_tr[:train_images], y_tr[:train_images]
    x_va, y_va = load_split(world_root, config, target, "val")
    return x_tr, y_tr, x_va, y_va


def transfer_miou(model: torch.nn.Module, member: ZooMember, target: str, world_root: str | Path,
                  config: WorldConfig, seed: int, recipe: TrainRecipe = FINETUNE_RECIPE,
                  train_images: int | None = None, ft_seed: int = 0,
                  data: tuple[np.ndarray, ...] | None = None) -> float:
    """Fine-tune ``model`` (in place) on ``target``'s train split, mIoU on its val split.

    train_images: fine-tune on the first this many train images only (a few-shot protocol;
    the same images a dataset spec selects with ``max_images`` and ``subset: first``).
    ft_seed: the fine-tuning seed (head, batches, flips); data: the target's splits when
    already loaded.
    """
    x_tr, y_tr, x_va, y_va = data or _target_data(world_root, config, target, train_images)
    s = member_seed(seed, f"gt/{member.name}/{target}/{ft_seed}")
    n_target = num_classes_of(target)
    if n_target != num_classes_of(member.source):
        with deterministic_torch():
            torch.manual_seed(s)
            replace_head(model, n_target)
    train(model, x_tr, y_tr, recipe, s)
    return mean_iou(confusion(predict(model, x_va), y_va, n_target))


def scratch_miou(architecture: str, target: str, world_root: str | Path, config: WorldConfig,
                 seed: int, recipe: TrainRecipe = FINETUNE_RECIPE,
                 train_images: int | None = None, ft_seed: int = 0,
                 data: tuple[np.ndarray, ...] | None = None) -> float:
    """The from-scratch reference: a randomly initialised ``architecture`` trained with the
    fine-tuning recipe on the same target images; mIoU on the val split."""
    x_tr, y_tr, x_va, y_va = data or _target_data(world_root, config, target, train_images)
    s = member_seed(seed, f"scratch/{architecture}/{target}/{ft_seed}")
    n_target = num_classes_of(target)
    with deterministic_torch():
        torch.manual_seed(s)
        model = build_architecture(architecture, n_target)
    train(model, x_tr, y_tr, recipe, s)
    return mean_iou(confusion(predict(model, x_va), y_va, n_target))


def pair_job(member: dict, ckpt: str, target: str, world_root: str, config: dict, seed: int,
             recipe: dict, seeds: list[int], train_images: int | None = None) -> list[list]:
    """Ground truth of one (zoo member, target) pair for every fine-tuning seed (JSON args;
    a worker-process job): ``[[model, target, ft_seed, mIoU], ...]``."""
    member, config = ZooMember(**member), WorldConfig.from_dict(config)
    recipe = TrainRecipe(**recipe)
    data = _target_data(world_root, config, target, train_images)
    rows = []
    for ft_seed in seeds:
        model = build_architecture(member.architecture, num_classes_of(member.source))
        model.load_state_dict(torch.load(ckpt, weights_only=True))
        v = transfer_miou(model, member, target, world_root, config, seed, recipe, train_images,
                          ft_seed, data)
        rows.append([member.name, target, ft_seed, round(v, 4)])
    return rows


def scratch_job(architecture: str, target: str, world_root: str, config: dict, seed: int,
                recipe: dict, seeds: list[int], train_images: int | None = None) -> list[list]:
    """The from-scratch reference on one target for every seed (JSON args; a worker job):
    ``[[target, ft_seed, mIoU], ...]``."""
    config, recipe = WorldConfig.from_dict(config), TrainRecipe(**recipe)
    data = _target_data(world_root, config, target, train_images)
    return [[target, s, round(scratch_miou(architecture, target, world_root, config, seed, recipe,
                                           train_images, s, data), 4)] for s in seeds]


def compute_ground_truth(zoo: Zoo, world_root: str | Path, config: WorldConfig, seed: int = 0,
                         recipe: TrainRecipe = FINETUNE_RECIPE, workers: int = 2,
                         train_images: int | None = None, seeds: tuple[int, ...] = SEEDS,
                         scratch: str | None = SCRATCH_ARCHITECTURE
                         ) -> tuple[list[Row], dict[str, dict[int, float]]]:
    """``(rows, scratch)``: rows ``(model, target, ft_seed, mIoU %)`` for every zoo member ×
    target × seed, sorted; scratch ``{target: {ft_seed: mIoU %}}`` of the from-scratch
    reference (empty when ``scratch`` is None)."""
    common = {"world_root": str(world_root), "config": config.to_dict(), "seed": seed,
              "recipe": asdict(recipe), "seeds": list(seeds), "train_images": train_images}
    members = sorted(zoo.members, key=lambda m: m.architecture != LRASPP)  # slowest first
    jobs = [(pair_job, {"member": asdict(m), "ckpt": str(zoo.checkpoints[m.name]),
                        "target": t, **common}) for m in members for t in config.targets]
    if scratch is not None:
        jobs += [(scratch_job, {"architecture": scratch, "target": t, **common})
                 for t in config.targets]
    out = run_jobs(jobs, workers)
    n_pairs = len(members) * len(config.targets)
    rows = sorted((m, t, int(s), float(v)) for res in out[:n_pairs] for m, t, s, v in res)
    ref: dict[str, dict[int, float]] = {}
    for res in out[n_pairs:]:
        for t, s, v in res:
            ref.setdefault(t, {})[int(s)] = float(v)
    return rows, ref


def gt_fingerprint(zoo: Zoo, config: WorldConfig, seed: int, recipe: TrainRecipe,
                   train_images: int | None = None, seeds: tuple[int, ...] = SEEDS) -> str:
    """Hash of what determines the ground truth: zoo weights, world, seed, recipe,
    fine-tuning seeds (and the number of fine-tuning images when it is not the whole train
    split)."""
    fields = {"version": GT_VERSION, "zoo": zoo.hashes, "world": config.fingerprint(),
              "seed": seed, "recipe": asdict(recipe), "seeds": list(seeds),
              "scratch": SCRATCH_ARCHITECTURE}
    if train_images is not None:
        fields["train_images"] = train_images
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def write_csv(rows: list[Row], path: str | Path) -> Path:
    """Write ``model,target,seed,value`` rows (value = mIoU in percent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "target", "seed", "value"])
        for model, target, ft_seed, value in rows:
            w.writerow([model, target, ft_seed, f"{value:.4f}"])
    tmp.replace(path)
    return path


def read_csv(path: str | Path) -> list[Row]:
    """Rows ``(model, target, seed, value)`` of a ground-truth CSV (a CSV without a seed
    column reads as seed 0)."""
    with Path(path).open() as fh:
        return [(r["model"], r["target"], int(r.get("seed") or 0), float(r["value"]))
                for r in csv.DictReader(fh)]


def mean_over_seeds(rows: list[Row]) -> list[tuple[str, str, float]]:
    """``(model, target, mean mIoU over the seeds)``, sorted."""
    by: dict[tuple[str, str], list[float]] = {}
    for m, t, _, v in rows:
        by.setdefault((m, t), []).append(v)
    return sorted((m, t, float(np.mean(v))) for (m, t), v in by.items())


def write_mean_csv(rows: list[Row], path: str | Path) -> Path:
    """Write the seed means as ``model,target,value`` (the single-value layout)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "target", "value"])
        for model, target, value in mean_over_seeds(rows):
            w.writerow([model, target, f"{value:.4f}"])
    tmp.replace(path)
    return path


def mean_csv_path(path: str | Path) -> Path:
    """Where the seed means of the ground truth ``path`` are written (``<stem>_mean.csv``)."""
    path = Path(path)
    return path.with_name(path.stem + "_mean.csv")


def ground_truth_csv(zoo: Zoo, world_root: str | Path, config: WorldConfig, out: str | Path,
                     seed: int = 0, recipe: TrainRecipe = FINETUNE_RECIPE, workers: int = 2,
                     use_shipped: bool = True, shipped: Path = SHIPPED_CSV,
                     train_images: int | None = None, seeds: tuple[int, ...] = SEEDS) -> Path:
    """Write the ground-truth CSV (one row per seed) to ``out`` and its seed means to
    :func:`mean_csv_path`: the shipped one (``shipped`` and its ``.json``) when it was
    computed from this very zoo/world/seed/recipe/seeds (fingerprint match), else computed
    now (and cached beside ``out`` with its fingerprint and the scratch reference)."""
    fp = gt_fingerprint(zoo, config, seed, recipe, train_images, seeds)
    shipped_meta = Path(shipped).with_suffix(".json")
    out = Path(out)
    meta = out.with_suffix(".json")
    if (out.exists() and meta.exists() and mean_csv_path(out).exists()
            and json.loads(meta.read_text()).get("fingerprint") == fp):
        return out
    if use_shipped and Path(shipped).exists() and shipped_meta.exists():
        info = json.loads(shipped_meta.read_text())
        if info.get("fingerprint") == fp:
            rows = read_csv(shipped)
            write_csv(rows, out)
            write_mean_csv(rows, mean_csv_path(out))
            scratch = info.get("scratch", {})  # shipped: {"architecture", "miou": {...}}
            meta.write_text(json.dumps({"fingerprint": fp, "source": "shipped",
                                        "scratch": scratch.get("miou", scratch)}))
            return out
        log.info("shipped ground truth does not match this zoo (other torch build or recipe): "
                 "recomputing")
    t0 = time.perf_counter()
    rows, scratch = compute_ground_truth(zoo, world_root, config, seed, recipe, workers,
                                         train_images, seeds)
    write_csv(rows, out)
    write_mean_csv(rows, mean_csv_path(out))
    meta.write_text(json.dumps({"fingerprint": fp, "source": "computed", "scratch": scratch,
                                "seconds": round(time.perf_counter() - t0, 1)}))
    return out
