"""The demo model zoo: small segmentation models trained on the world's source domains.

One fixed, deterministic, CPU-friendly recipe (:class:`TrainRecipe`) trains every
member; members differ only in architecture and source domain. Architectures:

- ``segotce_ray.demo.zoo:tiny_segnet`` — a small fully convolutional net (a
  ``package.module:function`` factory, as the models contract supports). Forward
  returns logits ``(B, C, H, W)`` at input resolution; ``.classifier`` is the final
  1×1 conv, so the penultimate features are its input ``(B, 2w, H/4, W/4)``.
- ``torchvision/lraspp_mobilenet_v3_large`` (``weights=None``) so the torchvision
  adapter is exercised.

Checkpoints are plain state dicts (``torch.save``) that load with
``torch.load(path, weights_only=True)``. The zoo is built on first use and cached under
``<store>/demo_zoo/<fingerprint>/``, where the fingerprint hashes the recipe version, the
recipe, the world and the seed; a ``zoo.json`` manifest written last marks it complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from segotce_ray.demo.workers import run_jobs
from segotce_ray.demo.world import IGNORE, WorldConfig, load_split, num_classes_of

log = logging.getLogger(__name__)

ZOO_VERSION = 1
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
TINY_FACTORY = "segotce_ray.demo.zoo:tiny_segnet"
LRASPP = "torchvision/lraspp_mobilenet_v3_large"


class TinySegNet(nn.Module):
    """Conv-BN-ReLU encoder at 1/4 resolution, a dilated context block, a 1×1 classifier.

    x: (B, 3, H, W) normalised -> logits (B, C, H, W) (bilinear upsampling of the
    (B, C, H/4, W/4) classifier output). Penultimate = input of ``classifier``.
    """

    def __init__(self, num_classes: int = 19, width: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, dilation, dilation, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.backbone = nn.Sequential(block(3, width // 2), block(width // 2, width, 2),
                                      block(width, 2 * width, 2), block(2 * width, 2 * width),
                                      block(2 * width, 2 * width, dilation=2))
        self.classifier = nn.Conv2d(2 * width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def tiny_segnet(num_classes: int = 19) -> TinySegNet:
    """Factory of the zoo's small convnet (``segotce_ray.demo.zoo:tiny_segnet``)."""
    return TinySegNet(num_classes=num_classes, width=32)


def build_architecture(architecture: str, num_classes: int) -> nn.Module:
    """A freshly initialised (seed-dependent) model of one of the zoo's architectures."""
    if architecture == TINY_FACTORY:
        return tiny_segnet(num_classes)
    if architecture == LRASPP:
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=num_classes)
    raise ValueError(f"demo zoo: unknown architecture {architecture!r}")


def forward_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (B, C, H, W) of either architecture (torchvision returns ``{'out': ...}``)."""
    out = model(x)
    return out["out"] if isinstance(out, dict) else out


def replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the classifier for a new one with ``num_classes`` outputs (new label set)."""
    if isinstance(model, TinySegNet):
        old = model.classifier
        model.classifier = nn.Conv2d(old.in_channels, num_classes, 1)
        return
    head = getattr(model, "classifier", None)
    if head is not None and hasattr(head, "low_classifier"):  # torchvision LRASPPHead
        head.low_classifier = nn.Conv2d(head.low_classifier.in_channels, num_classes, 1)
        head.high_classifier = nn.Conv2d(head.high_classifier.in_channels, num_classes, 1)
        return
    raise ValueError(f"demo zoo: cannot replace the head of {type(model).__name__}")


@dataclass(frozen=True)
class TrainRecipe:
    """The one training recipe of the zoo (and, with other numbers, of the ground truth).

    Adam(lr, weight_decay) for ``steps`` steps of ``batch`` images drawn by a seeded
    generator, random horizontal flips, per-pixel cross-entropy ignoring 255; then the
    batch-norm statistics are recomputed over the training images (exact averages: a few
    steps with torchvision's momentum 0.01 leave them near their initial values). One CPU
    thread and ``torch.use_deterministic_algorithms(True)``: same seed => same weights.
    """

    steps: int = 150
    batch: int = 8
    lr: float = 3e-3
    weight_decay: float = 1e-4
    flip: bool = True


#: zoo recipe per architecture (the LR-ASPP: fewer, larger steps — it costs ~2.5x a tiny net per step)
ZOO_RECIPES: dict[str, TrainRecipe] = {TINY_FACTORY: TrainRecipe(),
                                       LRASPP: TrainRecipe(steps=80, lr=5e-3)}


@dataclass(frozen=True)
class ZooMember:
    """One zoo model: its name, architecture and the source domain it is trained on."""

    name: str
    architecture: str
    source: str


def default_members(config: WorldConfig = WorldConfig()) -> list[ZooMember]:
    """One tiny net per source domain plus one LR-ASPP on the first source domain."""
    members = [ZooMember(f"tiny_{c}", TINY_FACTORY, c) for c in config.sources]
    members.append(ZooMember(f"lraspp_{config.sources[0]}", LRASPP, config.sources[0]))
    return members


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), ImageNet mean/std normalised."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


class deterministic_torch:
    """Context: one thread, deterministic algorithms; restores the previous settings."""

    def __enter__(self) -> "deterministic_torch":
        self._threads = torch.get_num_threads()
        self._det = torch.are_deterministic_algorithms_enabled()
        torch.set_num_threads(1)
        torch.use_deterministic_algorithms(True, warn_only=True)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self._threads)
        torch.use_deterministic_algorithms(self._det)


def train(model: nn.Module, images: np.ndarray, labels: np.ndarray, recipe: TrainRecipe,
          seed: int) -> nn.Module:
    """Train ``model`` in place with ``recipe``: images (N, H, W, 3) uint8, labels (N, H, W).

    Batches are drawn with a ``torch.Generator`` seeded by ``seed``; returns the model in
    eval mode.
    """
    with deterministic_torch():
        gen = torch.Generator().manual_seed(seed)
        x_all = normalise(images)
        y_all = torch.from_numpy(labels.astype(np.int64))
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        model.train()
        n = x_all.shape[0]
        for _ in range(recipe.steps):
            idx = torch.randint(0, n, (min(recipe.batch, n),), generator=gen)
            x, y = x_all[idx], y_all[idx]
            if recipe.flip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
                y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
            loss = F.cross_entropy(forward_logits(model, x), y, ignore_index=IGNORE)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        recalibrate_batchnorm(model, x_all, recipe.batch)
    return model


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, x_all: torch.Tensor, batch: int) -> nn.Module:
    """Reset every BatchNorm's running mean/var to the exact average over ``x_all``
    (normalised (N, 3, H, W)), in fixed batches; returns the model in eval mode."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = exact mean over batches
    model.train()
    for i in range(0, x_all.shape[0], batch):
        forward_logits(model, x_all[i:i + batch])
    for m, mom in zip(norms, saved):
        m.momentum = mom
    return model.eval()


def state_dict_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the sorted (name, dtype, shape, bytes) of a state dict."""
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(k.encode()); h.update(str(t.dtype).encode()); h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def member_seed(seed: int, name: str) -> int:
    """A 63-bit seed derived from the zoo seed and the member's name."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{name}".encode()).digest()[:8], "little") >> 1


def train_member(member: ZooMember, world_root: str, config: WorldConfig, seed: int,
                 out_path: str, recipe: TrainRecipe | None = None) -> dict:
    """Train one zoo member from scratch and save its state dict to ``out_path`` (atomic).

    recipe: default ``ZOO_RECIPES[member.architecture]``.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    s = member_seed(seed, member.name)
    images, labels = load_split(world_root, config, member.source, "train")
    with deterministic_torch():
        torch.manual_seed(s)
        model = build_architecture(member.architecture, num_classes_of(member.source))
    train(model, images, labels, recipe or ZOO_RECIPES[member.architecture], s)
    state = model.state_dict()
    tmp = out_path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, out_path)
    return {"name": member.name, "sha256": state_dict_hash(state),
            "seconds": round(time.perf_counter() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2)}


def train_member_job(member: dict, world_root: str, config: dict, seed: int, out_path: str,
                     recipe: dict) -> dict:
    """JSON-args form of :func:`train_member` (a worker-process job)."""
    return train_member(ZooMember(**member), world_root, WorldConfig.from_dict(config), seed,
                        out_path, TrainRecipe(**recipe))


@dataclass
class Zoo:
    """A built zoo: where its checkpoints are and what each member is."""

    root: Path
    fingerprint: str
    members: list[ZooMember]
    checkpoints: dict[str, Path]
    hashes: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def subset(self, members: list[ZooMember]) -> "Zoo":
        """The same zoo restricted to ``members`` (checkpoints, hashes and times kept)."""
        names = [m.name for m in members]
        return Zoo(self.root, self.fingerprint, list(members),
                   {n: self.checkpoints[n] for n in names},
                   {n: self.hashes[n] for n in names if n in self.hashes},
                   {n: self.seconds[n] for n in names if n in self.seconds})

    def load(self, name: str) -> nn.Module:
        """The member ``name`` as an eval-mode module (weights_only load)."""
        member = next(m for m in self.members if m.name == name)
        model = build_architecture(member.architecture, num_classes_of(member.source))
        model.load_state_dict(torch.load(self.checkpoints[name], weights_only=True))
        return model.eval()


def zoo_fingerprint(config: WorldConfig, members: list[ZooMember], seed: int,
                    recipes: dict[str, TrainRecipe] | None = None) -> str:
    """Hex digest of the zoo version, world, seed, members and recipes."""
    recipes = {**ZOO_RECIPES, **(recipes or {})}
    blob = json.dumps({"version": ZOO_VERSION, "world": config.fingerprint(), "seed": seed,
                       "members": [asdict(m) for m in members],
                       "recipes": {k: asdict(v) for k, v in sorted(recipes.items())}},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_zoo(store: str | Path, world_root: str | Path, config: WorldConfig = WorldConfig(),
              members: list[ZooMember] | None = None, seed: int = 0,
              workers: int = 2, recipes: dict[str, TrainRecipe] | None = None) -> Zoo:
    """Train (or reuse) every member; checkpoints under ``<store>/demo_zoo/<fingerprint>/``.

    ``recipes`` overrides :data:`ZOO_RECIPES` per architecture (e.g. fewer steps in tests).
    Members train in ``workers`` worker processes (:mod:`segotce_ray.demo.workers`), one
    thread each: the result does not depend on ``workers``. Cached members are reused; ``zoo.json`` is written last.
    """
    members = members or default_members(config)
    recipes = {**ZOO_RECIPES, **(recipes or {})}
    fp = zoo_fingerprint(config, members, seed, recipes)
    root = Path(store) / "demo_zoo" / fp
    root.mkdir(parents=True, exist_ok=True)
    ckpts = {m.name: root / f"{m.name}.pth" for m in members}
    manifest = root / "zoo.json"
    if manifest.exists():
        info = json.loads(manifest.read_text())
        if all(ckpts[m.name].exists() for m in members):
            return Zoo(root, fp, members, ckpts, info.get("hashes", {}), info.get("seconds", {}))
    todo = [m for m in members if not ckpts[m.name].exists()]
    results: list[dict] = []
    if todo:
        log.info("training %d demo zoo models (%s)", len(todo), ", ".join(m.name for m in todo))
        # slowest first so the two workers finish together
        todo.sort(key=lambda m: m.architecture != LRASPP)
        results = run_jobs([(train_member_job, {
            "member": asdict(m), "world_root": str(world_root), "config": config.to_dict(),
            "seed": seed, "out_path": str(ckpts[m.name]),
            "recipe": asdict(recipes[m.architecture])}) for m in todo], workers)
    hashes = {r["name"]: r["sha256"] for r in results}
    seconds = {r["name"]: r["seconds"] for r in results}
    cpu = {r["name"]: r["cpu_seconds"] for r in results}
    for m in members:
        if m.name not in hashes:
            hashes[m.name] = state_dict_hash(torch.load(ckpts[m.name], weights_only=True))
    manifest.write_text(json.dumps({"fingerprint": fp, "hashes": hashes, "seconds": seconds,
                                    "cpu_seconds": cpu, "members": [asdict(m) for m in members]}, indent=2))
    return Zoo(root, fp, members, ckpts, hashes, seconds)
