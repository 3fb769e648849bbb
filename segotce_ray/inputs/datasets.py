"""Segmentation datasets in the layouts users already have on disk.

``open_dataset(name, spec, base_dir)`` reads one dataset entry of a job spec and returns a
:class:`SegmentationDataset`: a sorted list of :class:`Sample` (image + label file) and a
``load(sample)`` that gives ``image: (H, W, 3) uint8`` and ``label: (H, W) int64`` in train
ids, with ``dataset.ignore_index`` (255) on void/ignored pixels (``load_label`` reads only
the label). ``fingerprint()`` is the dataset's cache key. Datasets and their errors pickle,
so they can be shipped to Ray workers.

Formats (``spec["format"]``) and their native layouts under ``root``:

``cityscapes``
    ``leftImg8bit/{split}/{city}/{id}_leftImg8bit.png`` with
    ``gtFine/{split}/{city}/{id}_gtFine_labelTrainIds.png`` (preferred when present) or
    ``{id}_gtFine_labelIds.png``, mapped by the official Cityscapes table to the 19 train
    ids; every other label id becomes 255. Keys: ``split`` (default ``train``), ``cities``
    (list or one name; default all cities of the split), ``annotations`` (``gtFine`` default,
    or ``gtCoarse``), ``label_kind`` (``auto`` default | ``labelTrainIds`` | ``labelIds``).
``bdd100k``
    ``images/10k/{split}/{id}.jpg`` with ``labels/sem_seg/masks/{split}/{id}.png`` (train
    ids 0..18, 255 = ignore; any other value is an error). The 2018 release layout
    ``seg/images/{split}/{id}.jpg`` + ``seg/labels/{split}/{id}_train_id.png`` is also read.
``gta5``
    ``images/{id}.png`` with ``labels/{id}.png`` in Cityscapes label ids (the released
    palette PNGs; the palette index is the id), mapped to the 19 train ids like Cityscapes.
    GTA5 has no split folders: give ``split_list`` (a text file, see below) to select one.
``folder``
    ``images/**/{stem}.{png,jpg,jpeg}`` with ``labels/**/{stem}{label_suffix}.png``, paired
    by their path relative to ``images/`` / ``labels/`` (``image_id`` = that relative stem,
    ``/``-separated). ``label_map: {id: class_name}`` names the ids found in the label files
    (a list of names means ids 0..n-1); ``ignore_index`` (int or list, default 255) are the
    file values to ignore. Train ids are **contiguous in sorted id order**: the smallest id
    becomes 0, the next 1, ... (ids that share a class name share a train id, ordered by
    their smallest id), so ``class_names[train_id]`` is the class; a map whose ids are
    already 0..n-1 is kept as given. Any other id in a label file is an error.
    ``images``/``labels`` rename the two sub-folders.

Keys shared by every format:

- ``root`` (required): dataset root; relative paths (``root``, ``split_list``) are resolved
  against ``base_dir`` (the job spec's folder), ``~`` is expanded.
- ``split_list``: text file naming the images to keep, one per line (``#`` comments and
  blank lines skipped; only the first whitespace-separated token counts, so two-column
  ``image label`` lists work). An entry is an image id, or a file name / path whose stem is
  one (``00001.png``, ``images/00001.png``, ``.../frankfurt_000000_000294_leftImg8bit.png``).
  An entry that matches no image is an error.
- ``max_images``: keep at most this many samples; ``subset`` picks which: ``spread``
  (default) takes ``max_images`` samples evenly spaced over the sorted list, so a capped
  Cityscapes run still covers every city; ``first`` takes the head of the sorted list.
- ``resize``: ``none`` (default, native size) | ``[H, W]`` (exact size) | ``S`` (int: scale
  so that the short side is S, the long side rounded). The image is resampled bilinearly
  (PIL, antialiased when shrinking), the label by nearest neighbour (pixel-centre rule), so
  no new label values appear.
- ``unpaired``: ``error`` (default) | ``skip``: an image with no label file raises at open
  time, or is dropped with a warning. Label files with no image are ignored.
- ``fingerprint``: ``stat`` (default) hashes each file's relative path, size and
  ``mtime_ns``; ``content`` hashes the bytes of every file instead. Use ``content`` when the
  same data is seen through copies or shared filesystems that do not preserve mtimes (rsync
  without ``-t``, re-extracted archives, object-store mounts): the key then depends on the
  data only, at the price of reading every file once.

Label files are single-channel PNGs (``L``, ``P`` — the palette index is the id — or 16-bit);
a colour label is an error. Samples are sorted by ``image_id`` (code-point order), so the
order never depends on the filesystem. Files whose names start with ``.`` (e.g. macOS ``._x.png``) are skipped. Image
EXIF orientation is ignored: labels are aligned with the stored pixels.

Errors: layout problems (missing root / split / city / split-list entry, no samples, an
unpaired image, a bad spec) raise :class:`DatasetError` when the dataset is opened; per-file
problems (unreadable or truncated image, a label that is not single-channel, label/image
size mismatch, a label id outside the label map) raise it from ``load(sample)``, so a caller
can record the file and go on. Every message names the dataset and the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IGNORE_INDEX = 255
FINGERPRINT_VERSION = 1
FORMATS = ("cityscapes", "bdd100k", "gta5", "folder")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

#: The 19 Cityscapes train classes; index = train id (also used by BDD100K and GTA5).
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car", "truck",
    "bus", "train", "motorcycle", "bicycle",
)

#: Official Cityscapes labelId -> trainId (cityscapesScripts ``labels.py``); ids that are
#: absent (0-6, 9, 10, 14-16, 18, 29, 30, license plate -1) are void and become 255.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}

_COMMON_KEYS = frozenset({
    "format", "root", "split_list", "max_images", "subset", "resize", "unpaired",
    "fingerprint",
})
#: Spec keys each format accepts (anything else is a DatasetError, to catch typos).
DATASET_SPEC_KEYS: dict[str, frozenset[str]] = {
    "cityscapes": _COMMON_KEYS | {"split", "cities", "annotations", "label_kind"},
    "bdd100k": _COMMON_KEYS | {"split"},
    "gta5": _COMMON_KEYS,
    "folder": _COMMON_KEYS | {"label_map", "ignore_index", "images", "labels", "label_suffix"},
}


class DatasetError(ValueError):
    """A dataset problem; the message names the dataset and, when there is one, the file."""

    def __init__(self, message: str, dataset: str | None = None,
                 path: str | os.PathLike | None = None) -> None:
        self.dataset = dataset
        self.path = None if path is None else str(path)
        prefix = f"dataset {dataset!r}: " if dataset is not None else ""
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{prefix}{where}{message}")
        self.reason = message

    def __reduce__(self):  # keep it picklable (Ray ships exceptions between processes)
        return (type(self), (self.reason, self.dataset, self.path))


@dataclass(frozen=True, order=True)
class Sample:
    """One labelled image: ``image_id`` is unique within its dataset and orders samples."""

    image_id: str
    image_path: Path
    label_path: Path


@dataclass(frozen=True)
class LabelTable:
    """Maps raw label-file values to train ids: ``train = lut[raw]``.

    lut: (L,) int64, entry ``-1`` = not an allowed value. ``strict``: an unknown value
    (``-1`` or ``raw >= L``) is an error; otherwise it becomes the ignore index.
    """

    lut: np.ndarray
    strict: bool


def _table(mapping: Mapping[int, int], allowed_ignore: Sequence[int], strict: bool,
           size: int = 256) -> LabelTable:
    size = max(size, max([*mapping, *allowed_ignore, 0]) + 1)
    lut = np.full(size, -1 if strict else IGNORE_INDEX, dtype=np.int64)
    for raw in allowed_ignore:
        lut[raw] = IGNORE_INDEX
    for raw, train in mapping.items():
        lut[raw] = train
    lut.setflags(write=False)
    return LabelTable(lut, strict)


_CITYSCAPES_IDS = _table(CITYSCAPES_ID_TO_TRAIN_ID, (), strict=False)
_TRAIN_IDS_19 = _table({i: i for i in range(19)}, (IGNORE_INDEX,), strict=True)


# ----------------------------------------------------------------------------- spec parsing

def _parse_resize(value: Any, name: str) -> tuple[int, int] | int | None:
    """``None``/``"none"`` -> None; int -> short side; ``[H, W]`` -> (H, W)."""
    if value is None or (isinstance(value, str) and value.lower() == "none"):
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise DatasetError(f"resize short side must be > 0, got {value}", name)
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise DatasetError(f"resize must be 'none', a short-side int or [H, W], got {value!r}", name)


def _resized_shape(height: int, width: int, resize: tuple[int, int] | int | None) -> tuple[int, int]:
    if resize is None:
        return height, width
    if isinstance(resize, tuple):
        return resize
    short = min(height, width)
    return (max(1, round(height * resize / short)), max(1, round(width * resize / short)))


def _nearest(label: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize, pixel-centre rule: src = floor((dst + 0.5) * in / out)."""
    h, w = label.shape
    if (h, w) == shape:
        return label
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * (h / shape[0])).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * (w / shape[1])).astype(np.int64), w - 1)
    return label[rows[:, None], cols[None, :]]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _read_split_list(path: Path, name: str) -> list[str]:
    """Entries of a split list: first whitespace token of each line, comments/blanks skipped."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise DatasetError(f"cannot read split list: {exc.strerror or exc}", name, path) from exc
    entries = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            entries.append(line.split()[0].replace("\\", "/"))
    if not entries:
        raise DatasetError("split list is empty", name, path)
    return entries


def _match_list_entry(entry: str, ids: Mapping[str, Any]) -> str | None:
    """The image id a split-list entry names: the entry itself, its path without an image
    suffix, its file stem, or that stem without Cityscapes' ``_leftImg8bit``."""
    stripped = entry[2:] if entry.startswith("./") else entry
    if stripped.lower().endswith(IMAGE_SUFFIXES):
        stripped = stripped.rsplit(".", 1)[0]
    stem = stripped.rsplit("/", 1)[-1]
    for candidate in (entry, stripped, stem, stem.removesuffix("_leftImg8bit")):
        if candidate in ids:
            return candidate
    return None


# ----------------------------------------------------------------------------- dataset

class SegmentationDataset:
    """A sorted list of labelled images of one dataset, plus their reader.

    Attributes: ``name``, ``format``, ``root`` (absolute), ``class_names`` (index = train
    id), ``num_classes``, ``ignore_index`` (value of void pixels in returned labels: 255),
    ``samples`` (sorted by image id, ``max_images`` applied), ``options`` (the normalised
    spec that determines the output; part of the fingerprint).
    """

    format: str = ""

    def __init__(self, name: str, spec: Mapping[str, Any], base_dir: Path | None) -> None:
        self.name = name
        unknown = set(spec) - DATASET_SPEC_KEYS[self.format]
        if unknown:
            raise DatasetError(
                f"unknown spec key(s) {sorted(unknown)} for format {self.format!r}; "
                f"allowed: {sorted(DATASET_SPEC_KEYS[self.format])}", name)
        base = Path(base_dir) if base_dir is not None else Path.cwd()
        if not spec.get("root"):
            raise DatasetError("spec has no 'root'", name)
        self.root = self._path(spec["root"], base)
        if not self.root.is_dir():
            raise DatasetError("dataset root does not exist or is not a directory", name, self.root)
        self.ignore_index = IGNORE_INDEX
        self.resize = _parse_resize(spec.get("resize"), name)
        self.fingerprint_mode = spec.get("fingerprint", "stat")
        if self.fingerprint_mode not in ("stat", "content"):
            raise DatasetError(f"fingerprint must be 'stat' or 'content', got {self.fingerprint_mode!r}", name)
        unpaired = spec.get("unpaired", "error")
        if unpaired not in ("error", "skip"):
            raise DatasetError(f"unpaired must be 'error' or 'skip', got {unpaired!r}", name)
        self._skip_unpaired = unpaired == "skip"
        max_images = spec.get("max_images")
        if max_images is not None and (isinstance(max_images, bool) or not isinstance(max_images, int)
                                       or max_images <= 0):
            raise DatasetError(f"max_images must be a positive int, got {max_images!r}", name)
        subset = spec.get("subset", "spread")
        if subset not in ("spread", "first"):
            raise DatasetError(f"subset must be 'spread' or 'first', got {subset!r}", name)
        self.class_names: list[str] = list(CITYSCAPES_CLASSES)
        self.options: dict[str, Any] = {"resize": self.resize, "max_images": max_images,
                                        "subset": subset}
        self._configure(spec)  # format-specific keys -> self.options, class names, tables

        self._listings: dict[Path, frozenset[str]] = {}
        samples = self._discover()
        del self._listings
        split_list = spec.get("split_list")
        if split_list is not None:
            list_path = self._path(split_list, base)
            entries = _read_split_list(list_path, name)
            by_id = {s.image_id: s for s in samples}
            matched = [_match_list_entry(e, by_id) for e in entries]
            missing = [e for e, m in zip(entries, matched) if m is None]
            if missing:
                raise DatasetError(f"split list names {len(missing)} image(s) not in the dataset, "
                                   f"first: {missing[:3]}", name, list_path)
            samples = [by_id[i] for i in dict.fromkeys(matched)]
            self.options["split_list"] = sorted(s.image_id for s in samples)
        samples.sort()
        if not samples:
            raise DatasetError(f"no samples found for {self.format} layout "
                               f"({self._describe_selection()})", name, self.root)
        for a, b in zip(samples, samples[1:]):
            if a.image_id == b.image_id:
                raise DatasetError(f"two images share id {a.image_id!r}: {a.image_path.name} and "
                                   f"{b.image_path.name}", name, b.image_path)
        self.total_images = len(samples)
        if max_images is not None and max_images < len(samples):
            if subset == "first":
                samples = samples[:max_images]
            else:  # evenly spaced over the sorted list: index floor(i * n / k)
                n = len(samples)
                samples = [samples[(i * n) // max_images] for i in range(max_images)]
        self.samples: list[Sample] = samples
        self._fingerprint: str | None = None
        log.info("dataset %r: %s (%s): %d of %d images, %d classes", name, self.format,
                 self._describe_selection(), len(samples), self.total_images, self.num_classes)

    # -- hooks for formats
    def _configure(self, spec: Mapping[str, Any]) -> None:
        """Read format-specific spec keys."""

    def _discover(self) -> list[Sample]:
        """All samples of the selection (unsorted), layout errors raised here."""
        raise NotImplementedError

    def _label_table(self, sample: Sample) -> LabelTable:
        raise NotImplementedError

    def _describe_selection(self) -> str:
        return f"root={self.root}"

    # -- shared helpers
    @staticmethod
    def _path(value: Any, base: Path) -> Path:
        p = Path(os.path.expanduser(str(value)))
        return (p if p.is_absolute() else base / p).resolve()

    def _error(self, message: str, path: Path | str | None = None) -> DatasetError:
        return DatasetError(message, self.name, path)

    def _require_dir(self, path: Path, what: str) -> Path:
        if not path.is_dir():
            raise self._error(f"{what} directory not found", path)
        return path

    def _files_in(self, directory: Path) -> frozenset[str]:
        """Names of the files in ``directory``, listed once per directory during discovery."""
        listing = self._listings.get(directory)
        if listing is None:
            try:
                with os.scandir(directory) as entries:
                    listing = frozenset(e.name for e in entries if e.is_file())
            except OSError:
                listing = frozenset()
            self._listings[directory] = listing
        return listing

    def _pair(self, image_id: str, image_path: Path, candidates: Sequence[Path],
              out: list[Sample]) -> None:
        """Append the sample with the first existing label candidate, or handle the unpaired image."""
        for label_path in candidates:
            if label_path.name in self._files_in(label_path.parent):
                out.append(Sample(image_id, image_path, label_path))
                return
        expected = " or ".join(str(c) for c in candidates)
        if self._skip_unpaired:
            log.warning("dataset %r: %s has no label (%s); skipped", self.name, image_path, expected)
            return
        raise self._error(f"image has no label file (expected {expected}); "
                          "set unpaired: skip to drop such images", image_path)

    # -- public API
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, "
                f"images={len(self.samples)}, classes={self.num_classes})")

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) that ``load`` returns for a file of native size (height, width)."""
        return _resized_shape(height, width, self.resize)

    def load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        """Read one sample: ``image (H, W, 3) uint8``, ``label (H, W) int64`` in train ids.

        Void pixels are ``self.ignore_index``; the resize policy is applied to both.
        Raises :class:`DatasetError` naming the file for any per-file problem.
        """
        image = self._open_image(sample.image_path)
        raw = self._open_label(sample.label_path)
        if raw.shape != (image.height, image.width):
            raise self._error(f"label size {raw.shape[1]}x{raw.shape[0]} (WxH) does not match image "
                              f"{sample.image_path.name} size {image.width}x{image.height}",
                              sample.label_path)
        shape = self.output_shape(image.height, image.width)
        if shape != (image.height, image.width):
            image = image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
            raw = _nearest(raw, shape)
        pixels = np.array(image, dtype=np.uint8)  # a writable copy (asarray is read-only)
        return pixels, self._map_label(raw, sample)

    def load_label(self, sample: Sample) -> np.ndarray:
        """Only the label: ``(H, W) int64`` train ids, resize applied (the image is not read,
        so its size is not checked against the label's; use ``load`` for that)."""
        raw = self._open_label(sample.label_path)
        return self._map_label(_nearest(raw, self.output_shape(*raw.shape)), sample)

    def _decode(self, path: Path, what: str) -> Image.Image:
        """Open and fully decode ``path`` (truncated / corrupt files fail here, not later)."""
        try:
            with Image.open(path) as img:
                img.load()
                return img
        except FileNotFoundError as exc:
            raise self._error(f"{what} file not found", path) from exc
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise self._error(f"cannot read {what} ({type(exc).__name__}: {exc})", path) from exc

    def _open_image(self, path: Path) -> Image.Image:
        img = self._decode(path, "image")
        return img if img.mode == "RGB" else img.convert("RGB")

    def _open_label(self, path: Path) -> np.ndarray:
        """Raw label values (H, W): uint8 for L/P (palette index), uint16/int32 for 16-bit."""
        img = self._decode(path, "label")
        if img.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L"):
            return np.asarray(img)
        if img.mode in ("LA", "PA"):
            return np.asarray(img)[..., 0]
        raise self._error(f"label image must be single-channel (L, P or 16-bit), got mode "
                          f"{img.mode}", path)

    def _map_label(self, raw: np.ndarray, sample: Sample) -> np.ndarray:
        """train = lut[raw] (vectorised); unknown values -> error (strict) or ignore."""
        table = self._label_table(sample)
        lut = table.lut
        if raw.dtype != np.uint8 or len(lut) < 256:  # values may fall outside the table
            outside = (raw < 0) | (raw >= len(lut))
            if outside.any():
                if table.strict:
                    raise self._bad_ids(np.unique(raw[outside]), sample)
                out = lut[np.where(outside, 0, raw)]
                out[outside] = IGNORE_INDEX
                return out
        out = lut[raw]
        if table.strict and (out < 0).any():
            raise self._bad_ids(np.unique(raw[out < 0]), sample)
        return out

    def _bad_ids(self, bad: np.ndarray, sample: Sample) -> DatasetError:
        shown = ", ".join(str(int(v)) for v in bad[:10])
        more = f" (+{len(bad) - 10} more)" if len(bad) > 10 else ""
        return self._error(f"label file has id(s) {shown}{more} not in the label map of format "
                           f"{self.format!r} (allowed: {self._allowed_ids()})", sample.label_path)

    def _allowed_ids(self) -> str:
        return "0..18 and 255"

    def info(self) -> dict[str, Any]:
        """JSON-able summary (for manifests and reports)."""
        return {"name": self.name, "format": self.format, "root": str(self.root),
                "num_images": len(self.samples), "total_images": self.total_images,
                "class_names": list(self.class_names), "ignore_index": self.ignore_index,
                "options": self.options, "fingerprint": self.fingerprint()}

    def fingerprint(self) -> str:
        """sha256 hex over (format, options, per sample: relative paths + size + mtime_ns).

        With ``fingerprint: content`` the file bytes' sha256 replace (size, mtime_ns). Paths
        are relative to ``root``, so a moved dataset keeps its key; the dataset name is not
        part of it. Computed once per object.
        """
        if self._fingerprint is None:
            files = [p for s in self.samples for p in (s.image_path, s.label_path)]
            if self.fingerprint_mode == "content":
                with ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2)) as ex:
                    stamps = list(ex.map(self._content_stamp, files))
            else:
                stamps = [self._stat_stamp(p) for p in files]
            rel = [self._relative(p) for p in files]
            payload = {"version": FINGERPRINT_VERSION, "format": self.format,
                       "fingerprint": self.fingerprint_mode, "options": self.options,
                       "class_names": self.class_names, "ignore_index": self.ignore_index,
                       "files": [[r, *s] for r, s in zip(rel, stamps)]}
            blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
            self._fingerprint = hashlib.sha256(blob.encode()).hexdigest()
        return self._fingerprint

    def _relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def _stat_stamp(self, path: Path) -> list[int]:
        try:
            st = path.stat()
        except OSError as exc:
            raise self._error(f"cannot stat file for the fingerprint: {exc.strerror or exc}", path) from exc
        return [st.st_size, st.st_mtime_ns]

    def _content_stamp(self, path: Path) -> list[str]:
        h = hashlib.sha256()
        try:
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        except OSError as exc:
            raise self._error(f"cannot read file for the fingerprint: {exc.strerror or exc}", path) from exc
        return [h.hexdigest()]


# ----------------------------------------------------------------------------- formats

def _image_files(directory: Path) -> list[Path]:
    """Visible image files directly in ``directory`` (png/jpg/jpeg, any case).

    ``os.scandir`` reads the file type with the listing: no stat per file (network disks)."""
    with os.scandir(directory) as entries:
        return [directory / e.name for e in entries
                if _visible(e.name) and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
                and e.is_file()]


def _subdirs(directory: Path) -> list[str]:
    with os.scandir(directory) as entries:
        return sorted(e.name for e in entries if _visible(e.name) and e.is_dir())


class CityscapesDataset(SegmentationDataset):
    """``leftImg8bit/{split}/{city}/`` + ``gtFine/{split}/{city}/``; selectable by city."""

    format = "cityscapes"
    IMAGE_SUFFIX = "_leftImg8bit.png"

    def _configure(self, spec: Mapping[str, Any]) -> None:
        self.split = str(spec.get("split", "train"))
        cities = spec.get("cities")
        if isinstance(cities, str):
            cities = [cities]
        if cities is not None and (not isinstance(cities, (list, tuple)) or not cities
                                   or not all(isinstance(c, str) and c for c in cities)):
            raise self._error(f"cities must be a non-empty list of city names, got {cities!r}")
        self.cities: list[str] | None = sorted(set(cities)) if cities is not None else None
        self.annotations = str(spec.get("annotations", "gtFine"))
        if self.annotations not in ("gtFine", "gtCoarse"):
            raise self._error(f"annotations must be 'gtFine' or 'gtCoarse', got {self.annotations!r}")
        self.label_kind = spec.get("label_kind", "auto")
        if self.label_kind not in ("auto", "labelTrainIds", "labelIds"):
            raise self._error("label_kind must be 'auto', 'labelTrainIds' or 'labelIds', "
                              f"got {self.label_kind!r}")
        self.options.update(split=self.split, annotations=self.annotations,
                            label_kind=self.label_kind)

    def _discover(self) -> list[Sample]:
        images_root = self._require_dir(self.root / "leftImg8bit", "Cityscapes 'leftImg8bit'")
        split_dir = images_root / self.split
        if not split_dir.is_dir():
            raise self._error(f"split {self.split!r} not found (available: {_subdirs(images_root)})",
                              split_dir)
        labels_split = self._require_dir(self.root / self.annotations / self.split,
                                         f"Cityscapes '{self.annotations}/{self.split}'")
        available = _subdirs(split_dir)
        cities = self.cities if self.cities is not None else available
        for city in cities:
            if city not in available:
                raise self._error(f"city {city!r} not in split {self.split!r} "
                                  f"(available: {available})", split_dir / city)
        self.options["cities"] = list(cities)
        kinds = {"auto": ("labelTrainIds", "labelIds"), "labelTrainIds": ("labelTrainIds",),
                 "labelIds": ("labelIds",)}[self.label_kind]
        samples: list[Sample] = []
        for city in cities:
            label_dir = self._require_dir(labels_split / city, f"label city {city!r}")
            for image_path in _image_files(split_dir / city):
                if not image_path.name.endswith(self.IMAGE_SUFFIX):
                    continue
                image_id = image_path.name[: -len(self.IMAGE_SUFFIX)]
                candidates = [label_dir / f"{image_id}_{self.annotations}_{k}.png" for k in kinds]
                self._pair(image_id, image_path, candidates, samples)
        return samples

    def _label_table(self, sample: Sample) -> LabelTable:
        if sample.label_path.name.endswith("_labelTrainIds.png"):
            return _TRAIN_IDS_19
        return _CITYSCAPES_IDS

    def _describe_selection(self) -> str:
        cities = self.options.get("cities", self.cities)
        return f"split={self.split}, cities={cities if cities is not None else 'all'}"


class BDD100KDataset(SegmentationDataset):
    """``images/10k/{split}/*.jpg`` + ``labels/sem_seg/masks/{split}/*.png`` (train ids)."""

    format = "bdd100k"

    def _configure(self, spec: Mapping[str, Any]) -> None:
        self.split = str(spec.get("split", "train"))
        self.options.update(split=self.split)

    def _discover(self) -> list[Sample]:
        if (self.root / "images" / "10k").is_dir():
            images_base = self.root / "images" / "10k"
            label_dir = self.root / "labels" / "sem_seg" / "masks" / self.split
            label_name = "{}.png"
        elif (self.root / "seg" / "images").is_dir():  # 2018 release layout
            images_base = self.root / "seg" / "images"
            label_dir = self.root / "seg" / "labels" / self.split
            label_name = "{}_train_id.png"
        else:
            raise self._error("BDD100K layout not found: expected 'images/10k/{split}' "
                              "(or the 2018 'seg/images/{split}')", self.root)
        image_dir = images_base / self.split
        if not image_dir.is_dir():
            raise self._error(f"split {self.split!r} not found (available: {_subdirs(images_base)})",
                              image_dir)
        self._require_dir(label_dir, f"BDD100K label split {self.split!r}")
        samples: list[Sample] = []
        for image_path in _image_files(image_dir):
            stem = image_path.stem
            self._pair(stem, image_path, [label_dir / label_name.format(stem)], samples)
        return samples

    def _label_table(self, sample: Sample) -> LabelTable:
        return _TRAIN_IDS_19

    def _describe_selection(self) -> str:
        return f"split={self.split}"


class GTA5Dataset(SegmentationDataset):
    """``images/*.png`` + ``labels/*.png`` in Cityscapes label ids; ``split_list`` selects."""

    format = "gta5"

    def _discover(self) -> list[Sample]:
        image_dir = self._require_dir(self.root / "images", "GTA5 'images'")
        label_dir = self._require_dir(self.root / "labels", "GTA5 'labels'")
        samples: list[Sample] = []
        for image_path in _image_files(image_dir):
            self._pair(image_path.stem, image_path, [label_dir / f"{image_path.stem}.png"], samples)
        return samples

    def _label_table(self, sample: Sample) -> LabelTable:
        return _CITYSCAPES_IDS


class FolderDataset(SegmentationDataset):
    """``images/`` + ``labels/`` paired by relative stem, with a label map and ignore ids."""

    format = "folder"

    def _configure(self, spec: Mapping[str, Any]) -> None:
        raw_map = spec.get("label_map")
        if raw_map is None:
            raise self._error("format 'folder' needs a label_map {id: class_name}")
        if isinstance(raw_map, (list, tuple)):
            raw_map = dict(enumerate(raw_map))
        if not isinstance(raw_map, Mapping) or not raw_map:
            raise self._error(f"label_map must be a non-empty {{id: class_name}} mapping, got {raw_map!r}")
        id_to_name: dict[int, str] = {}
        for key, value in raw_map.items():
            try:
                label_id = int(key)
            except (TypeError, ValueError):
                raise self._error(f"label_map key {key!r} is not an integer id") from None
            if isinstance(key, bool) or label_id < 0 or str(label_id) != str(key).strip():
                raise self._error(f"label_map key {key!r} is not a non-negative integer id")
            if not isinstance(value, str) or not value:
                raise self._error(f"label_map[{key!r}] must be a class name, got {value!r}")
            if label_id in id_to_name:
                raise self._error(f"label_map lists id {label_id} twice")
            id_to_name[label_id] = value
        ignore = spec.get("ignore_index", IGNORE_INDEX)
        ignore_ids = list(ignore) if isinstance(ignore, (list, tuple)) else [ignore]
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ignore_ids):
            raise self._error(f"ignore_index must be a non-negative int or a list of them, got {ignore!r}")
        clash = sorted(set(ignore_ids) & set(id_to_name))
        if clash:
            raise self._error(f"ignore_index {clash} also in label_map")
        # contiguous train ids in sorted id order; a shared name shares a train id
        name_to_train: dict[str, int] = {}
        for label_id in sorted(id_to_name):
            name_to_train.setdefault(id_to_name[label_id], len(name_to_train))
        if len(name_to_train) >= IGNORE_INDEX:
            raise self._error(f"label_map has {len(name_to_train)} classes; at most "
                              f"{IGNORE_INDEX - 1} are supported ({IGNORE_INDEX} marks ignore)")
        self.class_names = list(name_to_train)
        mapping = {i: name_to_train[n] for i, n in id_to_name.items()}
        self._table = _table(mapping, sorted(set(ignore_ids)), strict=True)
        self._ignore_ids = sorted(set(ignore_ids))
        self.images_dir = str(spec.get("images", "images"))
        self.labels_dir = str(spec.get("labels", "labels"))
        self.label_suffix = str(spec.get("label_suffix", ""))
        self.options.update(label_map=sorted(mapping.items()), ignore_ids=self._ignore_ids,
                            images=self.images_dir, labels=self.labels_dir,
                            label_suffix=self.label_suffix)

    def _discover(self) -> list[Sample]:
        image_dir = self._require_dir(self.root / self.images_dir, f"folder {self.images_dir!r}")
        label_dir = self._require_dir(self.root / self.labels_dir, f"folder {self.labels_dir!r}")
        samples: list[Sample] = []
        seen: dict[str, Path] = {}
        for dirpath, dirnames, filenames in os.walk(image_dir):
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for fname in sorted(filenames):
                path = Path(dirpath) / fname
                if not _visible(fname) or path.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                rel = path.relative_to(image_dir).with_suffix("").as_posix()
                if rel in seen:
                    raise self._error(f"two images share the stem {rel!r}: {seen[rel].name} and "
                                      f"{path.name}", path)
                seen[rel] = path
                self._pair(rel, path, [label_dir / f"{rel}{self.label_suffix}.png"], samples)
        return samples

    def _label_table(self, sample: Sample) -> LabelTable:
        return self._table

    def _allowed_ids(self) -> str:
        ids = [int(i) for i, _ in self.options["label_map"]]
        return f"label_map ids {ids}, ignore {self._ignore_ids}"


DATASET_FORMATS: dict[str, type[SegmentationDataset]] = {
    "cityscapes": CityscapesDataset,
    "bdd100k": BDD100KDataset,
    "gta5": GTA5Dataset,
    "folder": FolderDataset,
}


def open_dataset(name: str, spec: Mapping[str, Any], base_dir: Path | str | None = None) -> SegmentationDataset:
    """Open dataset ``name`` described by ``spec`` (see the module docstring for keys).

    Relative paths resolve against ``base_dir`` (default: the current directory). Layout
    problems raise :class:`DatasetError` here; per-file problems surface in ``load``.
    """
    if not isinstance(spec, Mapping):
        raise DatasetError(f"spec must be a mapping, got {type(spec).__name__}", name)
    fmt = spec.get("format")
    if fmt not in DATASET_FORMATS:
        raise DatasetError(f"unknown format {fmt!r}; known: {list(DATASET_FORMATS)}", name)
    return DATASET_FORMATS[fmt](name, spec, Path(base_dir) if base_dir is not None else None)
