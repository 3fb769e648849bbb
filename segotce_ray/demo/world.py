"""A procedurally generated, multi-domain street-scene world with pixel labels.

Every image is drawn from a :class:`DomainStyle` (a "city"): palette, textures,
lighting and fog, object scale and density, class frequencies. Labels use the
Cityscapes train ids of the eight classes the world draws (road 0, sidewalk 1,
building 2, traffic sign 7, vegetation 8, sky 10, person 11, car 13; sign poles are
void, 255), so the Cityscapes reader loads the world as it is. One target domain of the
legacy world (``lumen``) changes the label granularity (person and car merge into
``dynamic``) and is written in the folder layout with its own label map.

Two worlds are defined: the default one (the demo's and the ``paper`` benchmark world:
eight sources on a grid of hue rotations, three targets each at its own hue, few labelled
target images) and :data:`LEGACY_WORLD` (the first demo's: seven sources of assorted looks).

Layouts written under ``root``::

    cityscapes/leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    cityscapes/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelTrainIds.png
    cityscapes/gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png
    {folder_name}/{split}/images/{name}.png   {folder_name}/{split}/labels/{name}.png

Everything is a pure function of ``(seed, domain, split, frame)``: each image has its
own ``numpy.random.Generator`` seeded from those four numbers.
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

WORLD_VERSION = 1
IMAGE_SIZE = (64, 128)  # (H, W)
IGNORE = 255

#: class name -> Cityscapes train id (the world's label space in the Cityscapes layout)
TRAIN_IDS: dict[str, int] = {"road": 0, "sidewalk": 1, "building": 2, "traffic sign": 7,
                             "vegetation": 8, "sky": 10, "person": 11, "car": 13}
#: Cityscapes train id -> Cityscapes label id (for the ``_gtFine_labelIds.png`` files)
TRAIN_TO_LABEL_ID: dict[int, int] = {0: 7, 1: 8, 2: 11, 7: 20, 8: 21, 10: 23, 11: 24, 13: 26}
NUM_CITYSCAPES_CLASSES = 19

#: the coarse label space of the granularity-shifted target: person + car -> dynamic
COARSE_CLASSES: list[str] = ["road", "sidewalk", "building", "traffic sign", "vegetation",
                             "sky", "dynamic"]
FINE_TO_COARSE: dict[int, int] = {0: 0, 1: 1, 2: 2, 7: 3, 8: 4, 10: 5, 11: 6, 13: 6}

_BASE_PALETTE: dict[str, tuple[float, float, float]] = {
    "road": (0.42, 0.40, 0.42), "sidewalk": (0.72, 0.62, 0.58), "building": (0.55, 0.45, 0.38),
    "traffic sign": (0.95, 0.80, 0.10), "vegetation": (0.25, 0.55, 0.18),
    "sky": (0.45, 0.65, 0.95), "person": (0.70, 0.20, 0.25), "car": (0.20, 0.25, 0.65),
}


@dataclass(frozen=True)
class DomainStyle:
    """The knobs of one domain (city). Colours are RGB in [0, 1].

    hue_shift: rotation of every class colour on the hue circle (turns, 0..1);
    saturation: factor on every class colour's saturation; texture_amp/texture_cell:
    amplitude and cell size (px) of the multiplicative texture noise; gain, gamma, tint:
    lighting ``img <- gain * tint * img ** gamma``; fog: blend weight toward ``fog_colour``
    at the horizon (decays with distance); horizon: mean horizon row as a fraction of H;
    building_height: (min, max) fraction of the horizon height; trees, cars, persons,
    signs: (min, max) counts per image; object_scale: size factor for cars and persons;
    sidewalk: sidewalk width as a fraction of the road width at the bottom;
    noise: sensor noise std; windows: probability that a building has lit windows.
    """

    name: str
    hue_shift: float = 0.0
    saturation: float = 1.0
    texture_amp: float = 0.10
    texture_cell: int = 8
    gain: float = 1.0
    gamma: float = 1.0
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    fog: float = 0.0
    fog_colour: tuple[float, float, float] = (0.75, 0.75, 0.78)
    horizon: float = 0.45
    building_height: tuple[float, float] = (0.3, 0.9)
    trees: tuple[int, int] = (1, 3)
    cars: tuple[int, int] = (1, 3)
    persons: tuple[int, int] = (1, 3)
    signs: tuple[int, int] = (0, 2)
    object_scale: float = 1.0
    sidewalk: float = 0.35
    noise: float = 0.02
    windows: float = 0.6
    label_space: str = "cityscapes"  # or "coarse" (person + car merged)

    def palette(self) -> dict[str, np.ndarray]:
        """Class name -> RGB after this domain's hue rotation and saturation."""
        out = {}
        for name, rgb in _BASE_PALETTE.items():
            h, s, v = colorsys.rgb_to_hsv(*rgb)
            h = (h + self.hue_shift) % 1.0
            s = float(np.clip(s * self.saturation, 0.0, 1.0))
            out[name] = np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)
        return out


#: the sources of the default (demo, ``paper``) world: one per eighth of the hue circle
#: (``alderbrook`` at 0, then 1/8, 2/8, ...), all else the standard style, so each target
#: (at its own hue) has sources at graded distances from it
HUE_SOURCES: tuple[str, ...] = ("alderbrook", "ambergate", "fernhill", "tealmouth", "azurine",
                                "violetmoor", "rosehaven", "copperfield")


@dataclass(frozen=True)
class WorldConfig:
    """Which domains exist, what each is for, and how many images each split holds.

    ``sources``: domains a zoo model is trained on (``train`` split, ``n_source`` images).
    ``targets``: domains to rank the zoo for; ``train`` split = the small labelled set
    (``n_target_train`` images, the scoring pool and the fine-tuning set), ``val`` split =
    the held-out set of the ground truth (``n_target_val`` images).
    """

    seed: int = 0
    sources: tuple[str, ...] = HUE_SOURCES
    targets: tuple[str, ...] = ("mossgate", "kestrel", "larkspur")
    n_source: int = 48
    n_target_train: int = 8
    n_target_val: int = 32
    image_size: tuple[int, int] = IMAGE_SIZE

    def to_dict(self) -> dict:
        """JSON-able form (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "WorldConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def fingerprint(self) -> str:
        """Hex digest of everything that determines the written world."""
        styles = {n: asdict(DOMAINS[n]) for n in (*self.sources, *self.targets)}
        blob = json.dumps({"version": WORLD_VERSION, "config": asdict(self), "styles": styles},
                          sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _domains() -> dict[str, DomainStyle]:
    d = [
        # legacy sources: a spread from "close to every target" to "far from all of them"
        DomainStyle("alderbrook"),                                        # clear, standard
        DomainStyle("brightwater", fog=0.55, gain=1.05, texture_amp=0.06),  # foggy day
        DomainStyle("cinderfall", gain=0.35, gamma=1.3, tint=(0.8, 0.85, 1.2), noise=0.04,
                    windows=0.9),                                           # night
        DomainStyle("duskmoor", hue_shift=0.45, saturation=1.2),            # alien palette
        DomainStyle("emberton", texture_amp=0.35, texture_cell=3, noise=0.06,
                    saturation=0.6),                                        # grainy, faded
        DomainStyle("frostholm", saturation=0.25, gain=1.2, gamma=0.8, horizon=0.35,
                    building_height=(0.6, 1.0), cars=(3, 6), persons=(3, 6),
                    object_scale=1.3, trees=(0, 1)),                         # dense, washed out
        DomainStyle("glimmerport", hue_shift=0.12, trees=(3, 6), building_height=(0.2, 0.5),
                    cars=(0, 2), persons=(0, 1), object_scale=0.8, horizon=0.5),  # leafy suburb
        # the hue-grid sources of the default world (alderbrook is the one at hue 0)
        *[DomainStyle(name, hue_shift=k / 8) for k, name in enumerate(HUE_SOURCES) if k],
        # targets of the default world: each at its own hue, with its own look
        DomainStyle("mossgate", hue_shift=0.03, fog=0.35, saturation=0.9, texture_amp=0.08,
                    persons=(2, 4)),                                          # hazy, crowded
        DomainStyle("larkspur", hue_shift=0.71, gain=0.5, gamma=1.2, tint=(0.85, 0.85, 1.15),
                    noise=0.035, cars=(2, 4), windows=0.8),                    # dusk, busy road
        # targets of the legacy world (kestrel is a target of both)
        DomainStyle("ironvale", fog=0.4, saturation=0.8, texture_amp=0.08),     # hazy city
        DomainStyle("juniper", gain=0.45, gamma=1.2, tint=(0.85, 0.85, 1.15), noise=0.035,
                    cars=(2, 4), windows=0.8),                                  # dusk/night
        DomainStyle("kestrel", hue_shift=0.40, saturation=1.0, trees=(2, 5),
                    texture_amp=0.15),                                         # alien suburb
        DomainStyle("lumen", saturation=0.5, horizon=0.38, building_height=(0.5, 1.0),
                    cars=(3, 6), persons=(2, 5), object_scale=1.2,
                    label_space="coarse"),                                     # coarse labels
    ]
    return {s.name: s for s in d}


#: every domain the demo world knows, by name
DOMAINS: dict[str, DomainStyle] = _domains()

#: the world of the first demo and of the legacy benchmark worlds (same_arch, few_shot,
#: long_ft): seven sources of assorted looks, four targets (one with coarse labels), 16
#: labelled target images
LEGACY_WORLD = WorldConfig(
    sources=("alderbrook", "brightwater", "cinderfall", "duskmoor", "emberton", "frostholm",
             "glimmerport"),
    targets=("ironvale", "juniper", "kestrel", "lumen"), n_source=48, n_target_train=16,
    n_target_val=32)


# ----------------------------------------------------------------------------- rendering


def _image_rng(seed: int, domain: str, split: str, frame: int) -> np.random.Generator:
    key = hashlib.sha256(f"{seed}/{domain}/{split}/{frame}".encode()).digest()
    return np.random.default_rng(np.frombuffer(key[:16], dtype=np.uint32).tolist())


def _noise_field(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1], (h, w): a coarse random grid bilinearly upsampled."""
    gh, gw = h // cell + 2, w // cell + 2
    grid = rng.uniform(-1.0, 1.0, size=(gh, gw)).astype(np.float32)
    ys = np.arange(h, dtype=np.float32) / cell
    xs = np.arange(w, dtype=np.float32) / cell
    y0, x0 = ys.astype(int), xs.astype(int)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    g00 = grid[y0][:, x0]; g01 = grid[y0][:, x0 + 1]
    g10 = grid[y0 + 1][:, x0]; g11 = grid[y0 + 1][:, x0 + 1]
    return (g00 * (1 - fy) * (1 - fx) + g01 * (1 - fy) * fx + g10 * fy * (1 - fx) + g11 * fy * fx)


def _jitter(rng: np.random.Generator, rgb: np.ndarray, amount: float) -> np.ndarray:
    return np.clip(rgb * (1.0 + rng.uniform(-amount, amount, 3)), 0.0, 1.0).astype(np.float32)


class _Canvas:
    """One scene being painted: colours ``img`` (H, W, 3) float, labels ``lab`` (H, W),
    the pixel grid, the style's palette, the horizon row and the road's vanishing point."""

    def __init__(self, style: DomainStyle, rng: np.random.Generator, size: tuple[int, int]) -> None:
        h, w = size
        self.style, self.rng, self.h, self.w = style, rng, h, w
        self.pal = style.palette()
        self.img = np.zeros((h, w, 3), np.float32)
        self.lab = np.full((h, w), TRAIN_IDS["sky"], np.uint8)
        self.rows = np.arange(h, dtype=np.float32)[:, None]
        self.cols = np.arange(w, dtype=np.float32)[None, :]
        self.hz = int(np.clip(round(h * (style.horizon + rng.uniform(-0.05, 0.05))), 8, h - 12))
        self.vx = self.half_bottom = 0.0  # set by _paint_ground

    def paint(self, mask: np.ndarray, cls: str | int, colour: np.ndarray) -> None:
        self.lab[mask] = TRAIN_IDS[cls] if isinstance(cls, str) else cls
        self.img[mask] = colour

    def count(self, bounds: tuple[int, int]) -> int:
        return int(self.rng.integers(bounds[0], bounds[1] + 1))

    def ground_point(self) -> tuple[int, float]:
        """A random ground row and its depth (0 at the horizon, 1 at the bottom)."""
        yb = int(self.rng.integers(self.hz + 2, self.h))
        return yb, (yb - self.hz) / (self.h - self.hz)

    def road_centre(self, d: float) -> float:
        return self.vx + d * (self.w / 2 - self.vx)


def _paint_sky_and_buildings(c: _Canvas) -> None:
    """Sky (a vertical gradient toward a paler horizon), then a skyline of boxes."""
    rng, rows, cols, hz, h, w = c.rng, c.rows, c.cols, c.hz, c.h, c.w
    t = (rows / max(hz, 1)).clip(0, 1)[..., None]
    sky = _jitter(rng, c.pal["sky"], 0.08)
    c.img[:] = sky * (1 - 0.35 * t) + 0.35 * t * np.array([0.9, 0.9, 0.9], np.float32)
    x = int(rng.integers(-10, 0))
    while x < w:
        bw = int(rng.integers(10, 30))
        bh = int(hz * rng.uniform(*c.style.building_height))
        if rng.random() < 0.85:
            top = max(hz - bh, 0)
            col = _jitter(rng, c.pal["building"], 0.25)
            m = np.zeros((h, w), bool); m[top:hz + 2, max(x, 0):min(x + bw, w)] = True
            c.paint(m, "building", col)
            if rng.random() < c.style.windows:  # window grid, still "building"
                win = np.clip(col * rng.uniform(0.4, 1.8), 0, 1)
                wm = m & ((rows - top) % 5 < 2) & ((cols - x) % 4 < 2) & (rows < hz - 1)
                c.img[wm] = win
        x += bw


def _paint_trees(c: _Canvas) -> None:
    """Trunk + canopy, both vegetation."""
    rng, rows, cols, hz = c.rng, c.rows, c.cols, c.hz
    for _ in range(c.count(c.style.trees)):
        cx = rng.uniform(0, c.w); r = rng.uniform(5, 12); cy = hz - rng.uniform(r * 0.6, r * 1.6)
        col = _jitter(rng, c.pal["vegetation"], 0.2)
        m = ((rows - cy) / (r * 0.9)) ** 2 + ((cols - cx) / r) ** 2 < 1.0
        m |= (np.abs(cols - cx) < max(1.0, r / 6)) & (rows >= cy) & (rows < hz + 3)
        c.paint(m, "vegetation", col)


def _paint_ground(c: _Canvas) -> None:
    """Sidewalk everywhere below the horizon, road as a trapezoid to a vanishing point."""
    rng, rows, cols, hz, h, w = c.rng, c.rows, c.cols, c.hz, c.h, c.w
    c.vx = w * rng.uniform(0.35, 0.65)
    c.half_bottom = w * rng.uniform(0.30, 0.45)
    depth = ((rows - hz) / (h - hz)).clip(0, 1)  # 0 at horizon, 1 at the bottom
    ground = rows >= hz
    c.paint(ground & np.ones((1, w), bool), "sidewalk", _jitter(rng, c.pal["sidewalk"], 0.1))
    half = 1.0 + depth * c.half_bottom
    centre = c.vx + depth * (w / 2 - c.vx)
    road = ground & (np.abs(cols - centre) < half)
    c.paint(road, "road", _jitter(rng, c.pal["road"], 0.1))
    curb = ground & (np.abs(cols - centre) >= half * (1 + c.style.sidewalk)) & (depth > 0.05)
    c.img[curb] = np.clip(c.img[curb] * 0.85, 0, 1)  # the far side of the sidewalk, darker
    lane = road & (np.abs(cols - centre) < 0.5 + depth * 1.2) & (((rows - hz) // 3) % 2 == 0)
    c.img[lane] = np.array([0.92, 0.92, 0.88], np.float32)


def _paint_signs(c: _Canvas) -> None:
    """A plate on a void pole at the sidewalk."""
    rng, rows, cols, st = c.rng, c.rows, c.cols, c.style
    for _ in range(c.count(st.signs)):
        yb, d = c.ground_point()
        side = rng.choice([-1, 1])
        xb = c.road_centre(d) + side * (1.0 + d * c.half_bottom) * (1 + st.sidewalk / 2)
        ph = max(4, int(6 + 18 * d)); pw = max(2, int(2 + 6 * d))
        pole = (np.abs(cols - xb) < 0.6 + 0.4 * d) & (rows > yb - ph) & (rows <= yb)
        c.paint(pole, IGNORE, np.array([0.5, 0.5, 0.5], np.float32))
        plate = (np.abs(cols - xb) < pw) & (rows > yb - ph - pw) & (rows <= yb - ph + pw // 2)
        c.paint(plate, "traffic sign", _jitter(rng, c.pal["traffic sign"], 0.1))


def _paint_persons(c: _Canvas) -> None:
    """Body + head on the sidewalk, nearer = bigger."""
    rng, rows, cols, st = c.rng, c.rows, c.cols, c.style
    for _ in range(c.count(st.persons)):
        yb, d = c.ground_point()
        side = rng.choice([-1, 1])
        xb = c.road_centre(d) + side * (1.0 + d * c.half_bottom) * rng.uniform(1.05, 1.3)
        ph = max(3.0, (4 + 20 * d) * st.object_scale); pw = max(1.0, ph / 5)
        col = _jitter(rng, c.pal["person"], 0.5)
        body = (np.abs(cols - xb) < pw) & (rows > yb - ph * 0.8) & (rows <= yb)
        head = ((rows - (yb - ph * 0.88)) ** 2 + (cols - xb) ** 2) < (pw * 0.9) ** 2
        c.paint(body, "person", col)
        c.paint(head, "person", np.clip(np.array([0.85, 0.7, 0.6], np.float32) * col.mean() * 2, 0, 1))


def _paint_cars(c: _Canvas) -> None:
    """Box + darker window band, on the road, nearer = bigger."""
    rng, rows, cols, st = c.rng, c.rows, c.cols, c.style
    for _ in range(c.count(st.cars)):
        yb, d = c.ground_point()
        xb = c.road_centre(d) + rng.uniform(-0.7, 0.7) * (1.0 + d * c.half_bottom)
        cw = max(2.0, (3 + 22 * d) * st.object_scale); ch = cw * 0.55
        col = _jitter(rng, c.pal["car"], 0.6)
        body = (np.abs(cols - xb) < cw / 2) & (rows > yb - ch) & (rows <= yb)
        c.paint(body, "car", col)
        band = body & (rows > yb - ch * 0.85) & (rows < yb - ch * 0.5)
        c.img[band] = col * 0.35


def _finish(c: _Canvas) -> np.ndarray:
    """Texture, lighting, distance fog and sensor noise (colours only) -> uint8 image."""
    rng, rows, st, h, w, hz = c.rng, c.rows, c.style, c.h, c.w, c.hz
    img = c.img
    img *= 1.0 + st.texture_amp * _noise_field(rng, h, w, st.texture_cell)[..., None]
    img *= 1.0 + 0.5 * st.texture_amp * _noise_field(rng, h, w, max(1, st.texture_cell // 3))[..., None]
    img = np.clip(img, 0, 1) ** st.gamma * st.gain * np.asarray(st.tint, np.float32)
    if st.fog > 0:
        dist = np.where(rows >= hz, 1.0 - ((rows - hz) / (h - hz)).clip(0, 1), 1.0)
        fw = (st.fog * dist ** 1.5)[..., None].astype(np.float32)
        img = img * (1 - fw) + fw * np.asarray(st.fog_colour, np.float32)
    img += rng.normal(0.0, st.noise, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def render(style: DomainStyle, rng: np.random.Generator,
           size: tuple[int, int] = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """Draw one scene: ``image`` (H, W, 3) uint8 and ``label`` (H, W) uint8 train ids.

    Painter's order: sky, buildings, trees, ground (sidewalk + road with lane marks),
    signs on void poles, persons on the sidewalk, cars on the road. Then per-pixel texture,
    lighting, distance fog and sensor noise are applied to the colours only.
    """
    c = _Canvas(style, rng, size)
    for step in (_paint_sky_and_buildings, _paint_trees, _paint_ground, _paint_signs,
                 _paint_persons, _paint_cars):
        step(c)
    return _finish(c), c.lab


# ----------------------------------------------------------------------------- layouts


def cityscapes_stem(city: str, frame: int, seq: int = 0) -> str:
    """Cityscapes file stem ``{city}_{seq:06d}_{frame:06d}``."""
    return f"{city}_{seq:06d}_{frame:06d}"


def _write_png(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)


def _write_cityscapes(root: Path, split: str, city: str, frame: int,
                      image: np.ndarray, label: np.ndarray) -> None:
    stem = cityscapes_stem(city, frame)
    img_dir = root / "leftImg8bit" / split / city
    gt_dir = root / "gtFine" / split / city
    img_dir.mkdir(parents=True, exist_ok=True); gt_dir.mkdir(parents=True, exist_ok=True)
    _write_png(img_dir / f"{stem}_leftImg8bit.png", image)
    _write_png(gt_dir / f"{stem}_gtFine_labelTrainIds.png", label)
    lut = np.zeros(256, np.uint8)  # label id 0 = unlabeled (void) in Cityscapes
    for tid, lid in TRAIN_TO_LABEL_ID.items():
        lut[tid] = lid
    _write_png(gt_dir / f"{stem}_gtFine_labelIds.png", lut[label])


def _write_folder(root: Path, split: str, domain: str, frame: int,
                  image: np.ndarray, label: np.ndarray) -> None:
    lut = np.full(256, IGNORE, np.uint8)
    for fine, coarse in FINE_TO_COARSE.items():
        lut[fine] = coarse
    name = f"{domain}_{frame:06d}"
    (root / split / "images").mkdir(parents=True, exist_ok=True)
    (root / split / "labels").mkdir(parents=True, exist_ok=True)
    _write_png(root / split / "images" / f"{name}.png", image)
    _write_png(root / split / "labels" / f"{name}.png", lut[label])


@dataclass
class WorldLayout:
    """Where a written world lives and how to open each domain as a dataset spec."""

    root: Path
    config: WorldConfig
    fingerprint: str
    dataset_specs: dict[str, dict] = field(default_factory=dict)

    @property
    def cityscapes_root(self) -> Path:
        return self.root / "cityscapes"


def folder_root(root: Path, domain: str) -> Path:
    return Path(root) / f"folder_{domain}"


def dataset_specs(root: Path, config: WorldConfig) -> dict[str, dict]:
    """Dataset specs (issue-5 job-spec syntax) for every domain split of the world.

    Keys: ``src_<city>`` (source training set), ``tgt_<city>`` (small labelled target set),
    ``tgt_<city>_val`` (held-out target set). Roots are absolute.
    """
    root = Path(root)
    specs: dict[str, dict] = {}
    for city in config.sources:
        specs[f"src_{city}"] = {"format": "cityscapes", "root": str(root / "cityscapes"),
                                "split": "train", "cities": [city]}
    for city in config.targets:
        for key, split in ((f"tgt_{city}", "train"), (f"tgt_{city}_val", "val")):
            if DOMAINS[city].label_space == "coarse":
                specs[key] = {"format": "folder", "root": str(folder_root(root, city) / split),
                              "label_map": dict(enumerate(COARSE_CLASSES)),
                              "ignore_index": IGNORE}
            else:
                specs[key] = {"format": "cityscapes", "root": str(root / "cityscapes"),
                              "split": split, "cities": [city]}
    return specs


def write_world(root: str | Path, config: WorldConfig = WorldConfig(),
                force: bool = False) -> WorldLayout:
    """Write every domain of ``config`` under ``root`` (skipped when already complete).

    A ``world.json`` manifest written last holds the config fingerprint; a world whose
    manifest matches is reused, otherwise it is rewritten from scratch.
    """
    root = Path(root)
    fp = config.fingerprint()
    manifest = root / "world.json"
    layout = WorldLayout(root, config, fp, dataset_specs(root, config))
    if not force and manifest.exists():
        try:
            if json.loads(manifest.read_text()).get("fingerprint") == fp:
                return layout
        except (OSError, json.JSONDecodeError):
            pass
    for sub in ["cityscapes", *[folder_root(root, c).name for c in config.targets]]:
        if (root / sub).exists():
            shutil.rmtree(root / sub)
    root.mkdir(parents=True, exist_ok=True)
    plan = [(c, "train", config.n_source) for c in config.sources]
    plan += [(c, s, n) for c in config.targets
             for s, n in (("train", config.n_target_train), ("val", config.n_target_val))]
    for city, split, count in plan:
        style = DOMAINS[city]
        for frame in range(count):
            image, label = render(style, _image_rng(config.seed, city, split, frame), config.image_size)
            if style.label_space == "coarse":
                _write_folder(folder_root(root, city), split, city, frame, image, label)
            else:
                _write_cityscapes(root / "cityscapes", split, city, frame, image, label)
    manifest.write_text(json.dumps({"fingerprint": fp, "version": WORLD_VERSION,
                                    "config": asdict(config)}, indent=2, default=list))
    log.info("demo world %s written under %s", fp, root)
    return layout


def load_split(root: str | Path, config: WorldConfig, domain: str,
               split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one written split back: images (N, H, W, 3) uint8, labels (N, H, W) int64.

    Labels are in the domain's own label space (Cityscapes train ids, or coarse ids for a
    coarse domain), void = 255. This is the demo's own reader for training and ground
    truth; the pipeline reads the same files through :mod:`segotce_ray.inputs.datasets`.
    """
    root = Path(root)
    if DOMAINS[domain].label_space == "coarse":
        base = folder_root(root, domain) / split
        imgs = sorted((base / "images").glob("*.png"))
        labs = [base / "labels" / p.name for p in imgs]
    else:
        imgs = sorted((root / "cityscapes" / "leftImg8bit" / split / domain).glob("*_leftImg8bit.png"))
        labs = [root / "cityscapes" / "gtFine" / split / domain /
                p.name.replace("_leftImg8bit.png", "_gtFine_labelTrainIds.png") for p in imgs]
    if not imgs:
        raise FileNotFoundError(f"demo world: no images for domain {domain!r} split {split!r} under {root}")
    x = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in imgs])
    y = np.stack([np.asarray(Image.open(p)) for p in labs]).astype(np.int64)
    return x, y


def num_classes_of(domain: str) -> int:
    """Size of the label space a model for ``domain`` predicts (19 or the coarse 7)."""
    return len(COARSE_CLASSES) if DOMAINS[domain].label_space == "coarse" else NUM_CITYSCAPES_CLASSES


def with_counts(config: WorldConfig, **counts: int) -> WorldConfig:
    """A copy of ``config`` with other split sizes (for reduced test settings)."""
    return replace(config, **counts)
