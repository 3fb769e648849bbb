"""The demo world: deterministic by seed, readable by the dataset readers, domains differ."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from segotce_ray.inputs.datasets import open_dataset
from segotce_ray.demo.world import (COARSE_CLASSES, DOMAINS, HUE_SOURCES, TRAIN_IDS, WorldConfig,
                                    _image_rng, dataset_specs, load_split, render, write_world)

SMALL = WorldConfig(sources=("alderbrook", "cinderfall"), targets=("kestrel", "lumen"),
                    n_source=3, n_target_train=2, n_target_val=2)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_world_is_deterministic_by_seed(tmp_path):
    a = write_world(tmp_path / "a", SMALL)
    b = write_world(tmp_path / "b", SMALL)
    c = write_world(tmp_path / "c", WorldConfig(**{**SMALL.__dict__, "seed": 1}))
    da, db, dc = _digest(a.root), _digest(b.root), _digest(c.root)
    # 2 sources x 3 + cityscapes target (2 + 2) x (image, trainIds, labelIds) + coarse 4 x 2
    assert len(da) == (2 * 3 + 4) * 3 + 4 * 2
    assert da == db
    assert set(dc) == set(da) and dc != da
    assert a.fingerprint == b.fingerprint != c.fingerprint


def test_world_is_cached_by_manifest(tmp_path):
    layout = write_world(tmp_path, SMALL)
    probe = next((layout.root / "cityscapes").rglob("*_leftImg8bit.png"))
    mtime = probe.stat().st_mtime_ns
    write_world(tmp_path, SMALL)
    assert probe.stat().st_mtime_ns == mtime  # reused, not rewritten
    bigger = WorldConfig(**{**SMALL.__dict__, "n_source": 4})
    write_world(tmp_path, bigger)
    assert len(list((tmp_path / "cityscapes" / "leftImg8bit" / "train" / "alderbrook").glob("*.png"))) == 4


def test_layout_is_readable_by_the_dataset_readers(tmp_path):
    layout = write_world(tmp_path, SMALL)
    specs = dataset_specs(layout.root, SMALL)
    src = open_dataset("src", specs["src_alderbrook"])
    assert len(src.samples) == 3 and src.num_classes == 19
    image, label = src.load(src.samples[0])
    assert image.shape == (64, 128, 3) and image.dtype == np.uint8
    assert set(np.unique(label)) <= set(TRAIN_IDS.values()) | {255}
    assert {TRAIN_IDS["road"], TRAIN_IDS["sky"]} <= set(np.unique(label))
    # the pipeline reader and the demo's own reader agree pixel for pixel
    x, y = load_split(layout.root, SMALL, "alderbrook", "train")
    assert np.array_equal(x[0], image) and np.array_equal(y[0], label)
    val = open_dataset("kestrel_val", specs["tgt_kestrel_val"])
    assert len(val.samples) == 2
    coarse = open_dataset("lumen", specs["tgt_lumen"])
    assert coarse.format == "folder" and coarse.class_names == COARSE_CLASSES
    _, lab = coarse.load(coarse.samples[0])
    assert lab.max() < len(COARSE_CLASSES) or lab.max() == 255
    _, fine = load_split(layout.root, SMALL, "lumen", "train")
    assert np.array_equal(fine[0], lab)
    # the coarse domain has no separate person/car: dynamic (6) is where objects are
    assert (lab == COARSE_CLASSES.index("dynamic")).any()


def _stats(domain: str, n: int = 12) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean RGB, class frequencies (over the 8 world classes) and per-class mean RGB
    (8, 3) of n rendered images."""
    ims, labs = zip(*(render(DOMAINS[domain], _image_rng(0, domain, "train", i)) for i in range(n)))
    pix = np.stack(ims).reshape(-1, 3) / 255
    ids = sorted(TRAIN_IDS.values())
    lab = np.stack(labs).ravel()
    freq = np.array([(lab == i).mean() for i in ids])
    per_class = np.array([pix[lab == i].mean(0) if (lab == i).any() else np.zeros(3) for i in ids])
    return pix.mean(0), freq, per_class


def test_domains_differ_in_colour_and_class_statistics():
    names = list(DOMAINS)
    stats = {n: _stats(n) for n in names}
    # every pair of domains differs in colour statistics, class colours or class frequencies
    # (hue rotations of +-1/8 turn have nearly the same mean colour, not the same classes')
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            d_rgb = np.abs(stats[a][0] - stats[b][0]).max()
            d_freq = np.abs(stats[a][1] - stats[b][1]).sum()
            d_cls = np.abs(stats[a][2] - stats[b][2]).max()
            assert d_rgb > 0.02 or d_freq > 0.05 or d_cls > 0.1, (a, b, d_rgb, d_freq, d_cls)
    # the controlled shifts point the right way
    brightness = {n: stats[n][0].mean() for n in names}
    assert brightness["cinderfall"] < 0.6 * brightness["alderbrook"]   # night
    assert brightness["juniper"] < 0.7 * brightness["ironvale"]        # dusk vs haze
    car = sorted(TRAIN_IDS.values()).index(TRAIN_IDS["car"])
    veg = sorted(TRAIN_IDS.values()).index(TRAIN_IDS["vegetation"])
    assert stats["frostholm"][1][car] > 2 * stats["glimmerport"][1][car]   # dense traffic
    assert stats["glimmerport"][1][veg] > 2 * stats["frostholm"][1][veg]   # leafy suburb
    # hue-rotated palette: vegetation is not green any more
    pal = DOMAINS["duskmoor"].palette()["vegetation"]
    assert pal[1] < max(pal[0], pal[2])


def test_render_is_a_pure_function_of_the_rng():
    a = render(DOMAINS["emberton"], _image_rng(3, "emberton", "train", 5))
    b = render(DOMAINS["emberton"], _image_rng(3, "emberton", "train", 5))
    c = render(DOMAINS["emberton"], _image_rng(3, "emberton", "train", 6))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_missing_split_names_the_domain(tmp_path):
    with pytest.raises(FileNotFoundError, match="alderbrook"):
        load_split(tmp_path, SMALL, "alderbrook", "val")


def test_default_world_has_sources_at_graded_hue_distances():
    """Each default target sees its sources at distinct hue distances (no two tie within
    0.02 of a turn), with the nearest within 1/16 turn: a graded, unambiguous ranking."""
    from segotce_ray.demo.world import LEGACY_WORLD

    config = WorldConfig()
    assert config.sources == HUE_SOURCES and len(config.sources) == 8
    assert all(DOMAINS[t].label_space == "cityscapes" for t in config.targets)
    for t in config.targets:
        d = sorted(min(abs(DOMAINS[s].hue_shift - DOMAINS[t].hue_shift) % 1,
                       1 - abs(DOMAINS[s].hue_shift - DOMAINS[t].hue_shift) % 1)
                   for s in config.sources)
        assert d[0] < 1 / 16 and min(np.diff(d)) > 0.02, (t, d)
    # the legacy world keeps its identity: its shipped ground truths name it
    import json

    from segotce_ray.demo.worlds import WORLDS

    meta = json.loads(WORLDS["few_shot"].shipped.with_suffix(".json").read_text())
    assert LEGACY_WORLD.fingerprint() == meta["generator"]["world"]
