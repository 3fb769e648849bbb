"""Tiny datasets in each native on-disk layout, written at test time.

Every ``make_*`` writes under ``root`` and returns a :class:`FixtureLayout` whose ``spec``
can be passed straight to ``segotce_ray.inputs.datasets.open_dataset`` and whose
``train_labels[image_id]`` is the ground-truth train-id map (ignore = 255) at native size,
built independently of the loader. Images are coloured by class plus noise, so tiny models
see features that carry label information. Content is a pure function of the arguments
(``seed``): calling twice gives byte-identical files.

Usage from another test file::

    from tests.fixtures_layouts import make_cityscapes
    layout = make_cityscapes(tmp_path / "cs", cities=("aachen",), n_per_city=3)
    ds = open_dataset("cs", layout.spec)
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255

#: Cityscapes labelId -> trainId (written independently of segotce_ray.datasets on purpose).
CS_TRAIN_TO_ID = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
#: Cityscapes label ids that are void (train id 255).
CS_VOID_IDS = [0, 1, 2, 3, 4, 5, 6, 9, 10, 14, 15, 16, 18, 29, 30]

_PALETTE = np.array([[(37 * k) % 256, (91 * k + 40) % 256, (173 * k + 80) % 256]
                     for k in range(256)], dtype=np.int16)


@dataclass
class FixtureLayout:
    """A written fixture: its root, an ``open_dataset`` spec and the true train-id labels."""

    root: Path
    spec: dict
    train_labels: dict[str, np.ndarray] = field(default_factory=dict)
    image_paths: dict[str, Path] = field(default_factory=dict)
    label_paths: dict[str, Path] = field(default_factory=dict)

    @property
    def image_ids(self) -> list[str]:
        return sorted(self.train_labels)


def _rng(seed: int, *parts: object) -> np.random.Generator:
    key = zlib.crc32("/".join(map(str, parts)).encode())
    return np.random.default_rng([seed, key])


def train_label_map(rng: np.random.Generator, size: tuple[int, int], num_classes: int,
                    block: int = 8, ignore_fraction: float = 0.15) -> np.ndarray:
    """Blocky random train-id map (H, W) int64 with ~ignore_fraction of 255 blocks."""
    h, w = size
    bh, bw = -(-h // block), -(-w // block)
    blocks = rng.integers(0, num_classes, size=(bh, bw))
    blocks[rng.random((bh, bw)) < ignore_fraction] = IGNORE
    return np.kron(blocks, np.ones((block, block), dtype=np.int64))[:h, :w].astype(np.int64)


def image_for(train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8: a colour per class plus uniform noise in [-20, 20]."""
    base = _PALETTE[train]
    noise = rng.integers(-20, 21, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def _save(array: np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)
    return path


def _cs_ids_from_train(train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Cityscapes label ids whose official mapping gives ``train`` (void -> random void id)."""
    lut = np.array(CS_TRAIN_TO_ID + [0] * (256 - 19), dtype=np.uint8)
    ids = lut[np.where(train == IGNORE, 0, train)]
    void = train == IGNORE
    ids[void] = rng.choice(CS_VOID_IDS, size=int(void.sum()))
    return ids


def make_cityscapes(root: Path | str, split: str = "train",
                    cities: tuple[str, ...] = ("aachen", "bochum"), n_per_city: int = 2,
                    size: tuple[int, int] = (32, 64), label_kind: str = "labelIds",
                    seed: int = 0, extras: bool = True) -> FixtureLayout:
    """Cityscapes: leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png.

    label_kind: ``labelIds`` (as downloaded), ``labelTrainIds`` (only train-id files) or
    ``both`` (as after cityscapesScripts' createTrainIdLabelImgs). ``extras`` also writes
    the ``_color``/``_instanceIds`` files a real download has, which must be ignored.
    """
    if label_kind not in ("labelIds", "labelTrainIds", "both"):
        raise ValueError(f"label_kind {label_kind!r}")
    root = Path(root)
    layout = FixtureLayout(root, {"format": "cityscapes", "root": str(root), "split": split})
    for city in cities:
        for i in range(n_per_city):
            image_id = f"{city}_{i:06d}_{19 + i:06d}"
            rng = _rng(seed, "cityscapes", split, image_id)
            train = train_label_map(rng, size, 19)
            img = _save(image_for(train, rng),
                        root / "leftImg8bit" / split / city / f"{image_id}_leftImg8bit.png")
            gt = root / "gtFine" / split / city
            ids = _cs_ids_from_train(train, rng)
            if label_kind in ("labelIds", "both"):
                lab = _save(ids, gt / f"{image_id}_gtFine_labelIds.png")
            if label_kind in ("labelTrainIds", "both"):
                lab = _save(train.astype(np.uint8), gt / f"{image_id}_gtFine_labelTrainIds.png")
            if extras:
                _save(_PALETTE[train].astype(np.uint8), gt / f"{image_id}_gtFine_color.png")
                _save(ids.astype(np.uint16) * 1000, gt / f"{image_id}_gtFine_instanceIds.png")
            layout.train_labels[image_id] = train
            layout.image_paths[image_id] = img
            layout.label_paths[image_id] = lab
    return layout


def make_bdd100k(root: Path | str, split: str = "train", n: int = 3,
                 size: tuple[int, int] = (32, 64), seed: int = 0) -> FixtureLayout:
    """BDD100K: images/10k/{split}/{stem}.jpg + labels/sem_seg/masks/{split}/{stem}.png."""
    root = Path(root)
    layout = FixtureLayout(root, {"format": "bdd100k", "root": str(root), "split": split})
    for i in range(n):
        image_id = f"{(seed * 7919 + i * 104729) & 0xFFFFFFFF:08x}-{i * 2654435761 & 0xFFFFFFFF:08x}"
        rng = _rng(seed, "bdd100k", split, image_id)
        train = train_label_map(rng, size, 19)
        img = _save(image_for(train, rng), root / "images" / "10k" / split / f"{image_id}.jpg",
                    quality=95)
        lab = _save(train.astype(np.uint8),
                    root / "labels" / "sem_seg" / "masks" / split / f"{image_id}.png")
        layout.train_labels[image_id] = train
        layout.image_paths[image_id] = img
        layout.label_paths[image_id] = lab
    return layout


def make_gta5(root: Path | str, n: int = 4, size: tuple[int, int] = (32, 64), seed: int = 0,
              split_list: list[str] | None = None) -> FixtureLayout:
    """GTA5: images/{00001..}.png + labels/{...}.png as palette PNGs of Cityscapes ids.

    ``split_list``: image ids to write to ``root/split.txt`` (as ``00001.png`` lines, like the
    lists shipped with domain-adaptation code); the spec then selects them.
    """
    root = Path(root)
    layout = FixtureLayout(root, {"format": "gta5", "root": str(root)})
    palette = _PALETTE.astype(np.uint8).ravel().tolist()
    for i in range(1, n + 1):
        image_id = f"{i:05d}"
        rng = _rng(seed, "gta5", image_id)
        train = train_label_map(rng, size, 19)
        img = _save(image_for(train, rng), root / "images" / f"{image_id}.png")
        label = Image.fromarray(_cs_ids_from_train(train, rng))  # "L"; putpalette makes it "P"
        label.putpalette(palette)
        lab = root / "labels" / f"{image_id}.png"
        lab.parent.mkdir(parents=True, exist_ok=True)
        label.save(lab)
        layout.train_labels[image_id] = train
        layout.image_paths[image_id] = img
        layout.label_paths[image_id] = lab
    if split_list is not None:
        (root / "split.txt").write_text("".join(f"{s}.png\n" for s in split_list))
        layout.spec["split_list"] = str(root / "split.txt")
        layout.train_labels = {k: v for k, v in layout.train_labels.items() if k in split_list}
    return layout


def make_folder(root: Path | str, n: int = 4, size: tuple[int, int] = (32, 64), seed: int = 0,
                label_map: dict[int, str] | None = None, ignore_index: int = 255,
                image_ext: str = "png", nested: bool = False) -> FixtureLayout:
    """folder: images/{img_000}.{ext} + labels/{img_000}.png with raw ids of ``label_map``.

    Default label map ``{1: road, 3: car, 7: person}`` (non-contiguous ids, train ids 0, 1, 2
    in sorted id order). ``nested`` puts every other image in a sub-folder ``part_b/``.
    """
    root = Path(root)
    label_map = dict(label_map or {1: "road", 3: "car", 7: "person"})
    ids_sorted = sorted(label_map)
    names = list(dict.fromkeys(label_map[i] for i in ids_sorted))
    train_of_id = {i: names.index(label_map[i]) for i in ids_sorted}
    # representative raw id per train id (smallest id of that class)
    raw_of_train = {t: min(i for i, tt in train_of_id.items() if tt == t) for t in range(len(names))}
    layout = FixtureLayout(root, {"format": "folder", "root": str(root), "label_map": label_map,
                                  "ignore_index": ignore_index})
    for i in range(n):
        image_id = f"part_b/img_{i:03d}" if nested and i % 2 else f"img_{i:03d}"
        rng = _rng(seed, "folder", image_id)
        train = train_label_map(rng, size, len(names))
        raw = np.full(size, ignore_index, dtype=np.int64)
        for t, r in raw_of_train.items():
            raw[train == t] = r
        dtype = np.uint8 if raw.max() < 256 else np.uint16
        img = _save(image_for(train, rng), root / "images" / f"{image_id}.{image_ext}",
                    **({"quality": 95} if image_ext in ("jpg", "jpeg") else {}))
        lab = _save(raw.astype(dtype), root / "labels" / f"{image_id}.png")
        layout.train_labels[image_id] = train
        layout.image_paths[image_id] = img
        layout.label_paths[image_id] = lab
    return layout
