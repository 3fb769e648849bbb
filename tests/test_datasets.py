"""Dataset readers on tiny fixtures written in each native layout (tests/fixtures_layouts.py)."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from segotce_ray.inputs.datasets import CITYSCAPES_CLASSES, DatasetError, Sample, SegmentationDataset, open_dataset
from tests.fixtures_layouts import (CS_TRAIN_TO_ID, CS_VOID_IDS, make_bdd100k, make_cityscapes,
                                    make_folder, make_gta5)


def _load_all(ds: SegmentationDataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s.image_id: ds.load(s) for s in ds.samples}


def _raises_naming(fn, *names: object) -> DatasetError:
    """fn() raises DatasetError whose message contains every one of ``names``."""
    with pytest.raises(DatasetError) as info:
        fn()
    for name in names:
        assert str(name) in str(info.value), f"{name!s} not in: {info.value}"
    return info.value


# ----------------------------------------------------------------------------- Cityscapes

def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path):
    layout = make_cityscapes(tmp_path / "cs", label_kind="labelIds")
    ds = open_dataset("cs", layout.spec)
    assert ds.format == "cityscapes" and ds.class_names == list(CITYSCAPES_CLASSES)
    assert ds.num_classes == 19 and ds.ignore_index == 255
    assert [s.image_id for s in ds.samples] == layout.image_ids
    assert all(s.label_path.name.endswith("_gtFine_labelIds.png") for s in ds.samples)
    for image_id, (image, label) in _load_all(ds).items():
        assert image.dtype == np.uint8 and image.shape == (32, 64, 3)
        assert label.dtype == np.int64 and label.shape == (32, 64)
        assert image.flags.writeable and label.flags.writeable  # torch.from_numpy-safe
        np.testing.assert_array_equal(label, layout.train_labels[image_id])
        assert (label == 255).any() and (label < 19).any()


def test_cityscapes_every_label_id_maps_per_official_table(tmp_path):
    layout = make_cityscapes(tmp_path / "cs", cities=("aachen",), n_per_city=1, size=(16, 16))
    sample_id = layout.image_ids[0]
    raw = np.arange(256, dtype=np.uint8).reshape(16, 16)  # every possible byte once
    Image.fromarray(raw).save(layout.label_paths[sample_id])
    ds = open_dataset("cs", layout.spec)
    _, label = ds.load(ds.samples[0])
    expected = np.full(256, 255)
    expected[CS_TRAIN_TO_ID] = np.arange(19)
    np.testing.assert_array_equal(label.ravel(), expected)
    assert set(label.ravel()[CS_VOID_IDS]) == {255}


def test_cityscapes_prefers_label_train_ids_and_label_kind_forces(tmp_path):
    layout = make_cityscapes(tmp_path / "cs", label_kind="both")
    ds = open_dataset("cs", layout.spec)
    assert all(s.label_path.name.endswith("_gtFine_labelTrainIds.png") for s in ds.samples)
    # make one train-id file differ from its labelIds twin: the loader must read it
    first = ds.samples[0]
    train = layout.train_labels[first.image_id].copy()
    train[:8, :8] = 5
    Image.fromarray(train.astype(np.uint8)).save(first.label_path)
    np.testing.assert_array_equal(ds.load(first)[1], train)
    forced = open_dataset("cs", {**layout.spec, "label_kind": "labelIds"})
    assert all(s.label_path.name.endswith("_gtFine_labelIds.png") for s in forced.samples)
    np.testing.assert_array_equal(forced.load(forced.samples[0])[1],
                                  layout.train_labels[first.image_id])


def test_cityscapes_label_train_ids_only(tmp_path):
    layout = make_cityscapes(tmp_path / "cs", label_kind="labelTrainIds")
    ds = open_dataset("cs", layout.spec)
    for image_id, (_, label) in _load_all(ds).items():
        np.testing.assert_array_equal(label, layout.train_labels[image_id])
    bad = ds.samples[1]
    arr = np.asarray(Image.open(bad.label_path)).copy()
    arr[0, 0] = 19  # not a train id
    Image.fromarray(arr).save(bad.label_path)
    _raises_naming(lambda: ds.load(bad), "'cs'", bad.label_path, "id(s) 19 ")


def test_cityscapes_city_selection(tmp_path):
    layout = make_cityscapes(tmp_path / "cs", cities=("aachen", "bochum", "bremen"), n_per_city=2)
    only = open_dataset("cs", {**layout.spec, "cities": ["bremen", "aachen"]})
    assert [s.image_id.split("_")[0] for s in only.samples] == ["aachen"] * 2 + ["bremen"] * 2
    one = open_dataset("cs", {**layout.spec, "cities": "bochum"})
    assert {s.image_id.split("_")[0] for s in one.samples} == {"bochum"}
    everything = open_dataset("cs", layout.spec)
    assert len(everything) == 6 and everything.options["cities"] == ["aachen", "bochum", "bremen"]
    err = _raises_naming(lambda: open_dataset("cs", {**layout.spec, "cities": ["zurich"]}),
                         "'cs'", "zurich", tmp_path / "cs" / "leftImg8bit" / "train" / "zurich")
    assert "aachen" in str(err)  # lists what is available


def test_split_list_with_cityscapes_paths_and_nested_folder_ids(tmp_path):
    cs = make_cityscapes(tmp_path / "cs", cities=("aachen", "bochum"), n_per_city=2)
    keep = cs.image_ids[1]
    (tmp_path / "cs.txt").write_text(f"leftImg8bit/train/aachen/{keep}_leftImg8bit.png\n")
    ds = open_dataset("cs", {**cs.spec, "split_list": "cs.txt"}, base_dir=tmp_path)
    assert [s.image_id for s in ds.samples] == [keep]
    f = make_folder(tmp_path / "f", n=4, nested=True)
    (tmp_path / "f.txt").write_text("part_b/img_003.png\nimg_000\n")
    ds = open_dataset("f", {**f.spec, "split_list": str(tmp_path / "f.txt")})
    assert [s.image_id for s in ds.samples] == ["img_000", "part_b/img_003"]


def test_cityscapes_split_selection_and_missing_split(tmp_path):
    root = tmp_path / "cs"
    make_cityscapes(root, split="train", cities=("aachen",), n_per_city=2)
    val = make_cityscapes(root, split="val", cities=("frankfurt",), n_per_city=3)
    ds = open_dataset("cs", val.spec)
    assert [s.image_id for s in ds.samples] == val.image_ids
    assert all("/val/" in s.image_path.as_posix() for s in ds.samples)
    _raises_naming(lambda: open_dataset("cs", {**val.spec, "split": "test"}),
                   "'cs'", root / "leftImg8bit" / "test", "test")


# ----------------------------------------------------------------------------- BDD100K

def test_bdd100k_pairs_by_stem_and_keeps_train_ids(tmp_path):
    layout = make_bdd100k(tmp_path / "bdd", n=3)
    ds = open_dataset("bdd", layout.spec)
    assert ds.format == "bdd100k" and ds.num_classes == 19
    assert [s.image_id for s in ds.samples] == layout.image_ids
    for s in ds.samples:
        assert s.image_path.stem == s.label_path.stem == s.image_id
        image, label = ds.load(s)
        assert image.shape == (32, 64, 3)
        np.testing.assert_array_equal(label, layout.train_labels[s.image_id])


def test_bdd100k_value_outside_train_ids_is_an_error(tmp_path):
    layout = make_bdd100k(tmp_path / "bdd", n=2)
    ds = open_dataset("bdd", layout.spec)
    bad = ds.samples[0]
    arr = np.asarray(Image.open(bad.label_path)).copy()
    arr[3, 4] = 40
    Image.fromarray(arr).save(bad.label_path)
    _raises_naming(lambda: ds.load(bad), "'bdd'", bad.label_path, "id(s) 40 ")
    ds.load(ds.samples[1])  # the other file still loads


def test_bdd100k_2018_seg_layout(tmp_path):
    src = make_bdd100k(tmp_path / "new", n=2)
    root = tmp_path / "old"
    for image_id in src.image_ids:
        img = root / "seg" / "images" / "val" / f"{image_id}.jpg"
        lab = root / "seg" / "labels" / "val" / f"{image_id}_train_id.png"
        img.parent.mkdir(parents=True, exist_ok=True)
        lab.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src.image_paths[image_id], img)
        shutil.copy(src.label_paths[image_id], lab)
    ds = open_dataset("bdd", {"format": "bdd100k", "root": str(root), "split": "val"})
    assert [s.image_id for s in ds.samples] == src.image_ids
    np.testing.assert_array_equal(ds.load(ds.samples[0])[1], src.train_labels[src.image_ids[0]])


# ----------------------------------------------------------------------------- GTA5

def test_gta5_palette_labels_in_cityscapes_ids(tmp_path):
    layout = make_gta5(tmp_path / "gta", n=3)
    ds = open_dataset("gta", layout.spec)
    assert Image.open(ds.samples[0].label_path).mode == "P"  # like the released files
    assert [s.image_id for s in ds.samples] == ["00001", "00002", "00003"]
    for image_id, (_, label) in _load_all(ds).items():
        np.testing.assert_array_equal(label, layout.train_labels[image_id])
    np.testing.assert_array_equal(ds.load_label(ds.samples[0]), ds.load(ds.samples[0])[1])
    # 16-bit label ids: unknown and out-of-table ids are void, like 8-bit ones
    s = ds.samples[0]
    raw = np.asarray(Image.open(s.label_path)).astype(np.uint16)
    raw[0, :3] = [26, 300, 40000]
    Image.fromarray(raw).save(s.label_path)
    label = ds.load(s)[1]
    assert label[0, :3].tolist() == [13, 255, 255]
    np.testing.assert_array_equal(label[1:], layout.train_labels[s.image_id][1:])


def test_gta5_split_list(tmp_path):
    layout = make_gta5(tmp_path / "gta", n=5, split_list=["00004", "00002"])
    ds = open_dataset("gta", layout.spec)
    assert [s.image_id for s in ds.samples] == ["00002", "00004"]
    # comments, blank lines, stems or paths; relative to base_dir
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "val.txt").write_text("# val\n\n00005\nimages/00001.png  # first\n")
    ds2 = open_dataset("gta", {"format": "gta5", "root": "gta", "split_list": "lists/val.txt"},
                       base_dir=tmp_path)
    assert [s.image_id for s in ds2.samples] == ["00001", "00005"]
    (tmp_path / "lists" / "pairs.txt").write_text("images/00003.png labels/00003.png\n./00001\n")
    ds3 = open_dataset("gta", {**layout.spec, "split_list": str(tmp_path / "lists" / "pairs.txt")})
    assert [s.image_id for s in ds3.samples] == ["00001", "00003"]
    (tmp_path / "lists" / "bad.txt").write_text("00001\n00042\n")
    _raises_naming(lambda: open_dataset("gta", {**layout.spec, "split_list": str(tmp_path / "lists" / "bad.txt")}),
                   "'gta'", tmp_path / "lists" / "bad.txt", "00042")
    _raises_naming(lambda: open_dataset("gta", {**layout.spec, "split_list": str(tmp_path / "nope.txt")}),
                   "'gta'", tmp_path / "nope.txt")


# ----------------------------------------------------------------------------- folder

def test_folder_label_map_is_made_contiguous_in_sorted_id_order(tmp_path):
    layout = make_folder(tmp_path / "f", n=4, label_map={7: "person", 1: "road", 3: "car"})
    ds = open_dataset("f", layout.spec)
    assert ds.class_names == ["road", "car", "person"]  # ids 1, 3, 7 -> 0, 1, 2
    for s in ds.samples:
        raw = np.asarray(Image.open(s.label_path))
        _, label = ds.load(s)
        np.testing.assert_array_equal(label, layout.train_labels[s.image_id])
        for raw_id, train_id in ((1, 0), (3, 1), (7, 2), (255, 255)):
            assert (label[raw == raw_id] == train_id).all()


def test_folder_options(tmp_path):
    # nested sub-folders, jpg images, string keys (JSON), shared class name, list ignore
    layout = make_folder(tmp_path / "f", n=4, nested=True, image_ext="jpg",
                         label_map={2: "tree", 5: "tree", 9: "car"}, ignore_index=255)
    spec = {**layout.spec, "label_map": {"2": "tree", "5": "tree", "9": "car"},
            "ignore_index": [255, 0]}
    ds = open_dataset("f", spec)
    assert [s.image_id for s in ds.samples] == ["img_000", "img_002", "part_b/img_001", "part_b/img_003"]
    assert ds.class_names == ["tree", "car"]
    s = ds.samples[0]
    raw = np.asarray(Image.open(s.label_path)).copy()
    raw[0, :4] = [0, 2, 5, 9]
    Image.fromarray(raw).save(s.label_path)
    label = ds.load(s)[1]
    assert label[0, :4].tolist() == [255, 0, 0, 1]  # 0 ignored; 2 and 5 both "tree"
    # list form: ids 0..n-1 kept as given
    ds_list = open_dataset("f", {**layout.spec, "label_map": ["bg", "x", "tree", "y", "z", "tree2",
                                                              "a", "b", "c", "car"]})
    assert ds_list.class_names[9] == "car"
    np.testing.assert_array_equal(ds_list.load(ds_list.samples[1])[1],
                                  np.asarray(Image.open(ds_list.samples[1].label_path)).astype(np.int64))


def test_folder_sixteen_bit_labels(tmp_path):
    layout = make_folder(tmp_path / "f", n=2, label_map={10: "a", 1000: "b"}, ignore_index=65535)
    assert Image.open(layout.label_paths["img_000"]).mode.startswith("I")
    ds = open_dataset("f", layout.spec)
    for image_id, (_, label) in _load_all(ds).items():
        np.testing.assert_array_equal(label, layout.train_labels[image_id])
    s = ds.samples[0]
    raw = np.asarray(Image.open(s.label_path)).copy()
    raw[1, 1] = 999
    Image.fromarray(raw).save(s.label_path)
    _raises_naming(lambda: ds.load(s), "'f'", s.label_path, "id(s) 999 ")


def test_folder_label_id_outside_map_names_dataset_file_and_id(tmp_path):
    layout = make_folder(tmp_path / "f", n=3)
    ds = open_dataset("f", layout.spec)
    bad = ds.samples[2]
    raw = np.asarray(Image.open(bad.label_path)).copy()
    raw[5, 5], raw[6, 6] = 2, 42
    Image.fromarray(raw).save(bad.label_path)
    err = _raises_naming(lambda: ds.load(bad), "'f'", bad.label_path, "id(s) 2, 42 ")
    assert err.dataset == "f" and err.path == str(bad.label_path)
    ds.load(ds.samples[0])


def test_folder_bad_label_maps(tmp_path):
    layout = make_folder(tmp_path / "f", n=1)
    for bad_map, word in (({"x": "a"}, "'x'"), ({-1: "a"}, "-1"), ({1: ""}, "class name"),
                          ({}, "label_map"), (None, "label_map")):
        spec = {**layout.spec, "label_map": bad_map}
        _raises_naming(lambda: open_dataset("f", spec), "'f'", word)
    _raises_naming(lambda: open_dataset("f", {**layout.spec, "ignore_index": 3}), "'f'", "[3]")


# ----------------------------------------------------------------------------- order, subsets, resize

def test_sorted_order_and_max_images(tmp_path):
    layout = make_cityscapes(tmp_path / "cs", cities=("zurich", "aachen", "bochum"), n_per_city=4)
    ds = open_dataset("cs", layout.spec)
    ids = [s.image_id for s in ds.samples]
    assert ids == sorted(ids) and len(ids) == 12 and ds.total_images == 12
    first = open_dataset("cs", {**layout.spec, "max_images": 5, "subset": "first"})
    assert [s.image_id for s in first.samples] == ids[:5]
    spread = open_dataset("cs", {**layout.spec, "max_images": 3})
    assert [s.image_id for s in spread.samples] == [ids[0], ids[4], ids[8]]
    assert {s.image_id.split("_")[0] for s in spread.samples} == {"aachen", "bochum", "zurich"}
    assert len(open_dataset("cs", {**layout.spec, "max_images": 100})) == 12
    again = open_dataset("cs", {**layout.spec, "max_images": 3})
    assert again.samples == spread.samples
    for bad in (0, -2, 1.5, True):
        _raises_naming(lambda: open_dataset("cs", {**layout.spec, "max_images": bad}), "max_images")


def test_resize_policy(tmp_path):
    layout = make_bdd100k(tmp_path / "bdd", n=2, size=(32, 64))
    image_id = layout.image_ids[0]
    train = layout.train_labels[image_id]
    native = open_dataset("b", {**layout.spec, "resize": "none"})
    image0, label0 = native.load(native.samples[0])
    assert image0.shape == (32, 64, 3) and native.output_shape(32, 64) == (32, 64)

    short = open_dataset("b", {**layout.spec, "resize": 16})
    image, label = short.load(short.samples[0])
    assert image.shape == (16, 32, 3) and label.shape == (16, 32)
    np.testing.assert_array_equal(label, train[1::2, 1::2])  # nearest, pixel centres
    assert np.abs(image.astype(float).mean((0, 1)) - image0.astype(float).mean((0, 1))).max() < 4

    exact = open_dataset("b", {**layout.spec, "resize": [64, 128]})
    image, label = exact.load(exact.samples[0])
    assert image.shape == (64, 128, 3)
    np.testing.assert_array_equal(label, np.repeat(np.repeat(train, 2, 0), 2, 1))

    odd = open_dataset("b", {**layout.spec, "resize": [20, 30]})
    image, label = odd.load(odd.samples[0])
    assert image.shape == (20, 30, 3) and label.shape == (20, 30)
    assert set(np.unique(label)) <= set(np.unique(train))  # no new label values
    assert open_dataset("b", {**layout.spec, "resize": 20}).output_shape(32, 64) == (20, 40)
    for bad in ("big", [32], [0, 4], -3, 2.5):
        _raises_naming(lambda: open_dataset("b", {**layout.spec, "resize": bad}), "'b'", "resize")


# ----------------------------------------------------------------------------- fingerprint

def test_fingerprint_stable_and_sensitive(tmp_path):
    layout = make_gta5(tmp_path / "gta", n=3)
    fp = open_dataset("gta", layout.spec).fingerprint()
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert open_dataset("other-name", layout.spec).fingerprint() == fp  # stable, name-free
    # a copy elsewhere with preserved mtimes keeps the key (paths are relative to root)
    shutil.copytree(tmp_path / "gta", tmp_path / "copy", copy_function=shutil.copy2)
    assert open_dataset("gta", {**layout.spec, "root": str(tmp_path / "copy")}).fingerprint() == fp
    # options that change the output change the key
    assert open_dataset("gta", {**layout.spec, "resize": 16}).fingerprint() != fp
    assert open_dataset("gta", {**layout.spec, "max_images": 2}).fingerprint() != fp
    # a touched file (same bytes, new mtime) changes the stat key but not the content key
    content = open_dataset("gta", {**layout.spec, "fingerprint": "content"}).fingerprint()
    assert content != fp
    path = layout.image_paths["00002"]
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert open_dataset("gta", layout.spec).fingerprint() != fp
    assert open_dataset("gta", {**layout.spec, "fingerprint": "content"}).fingerprint() == content
    # the copy's content key equals the original's even though mtimes now differ
    assert open_dataset("gta", {**layout.spec, "root": str(tmp_path / "copy"),
                                "fingerprint": "content"}).fingerprint() == content
    # changed bytes change both
    label = layout.label_paths["00003"]
    arr = np.asarray(Image.open(label)).copy()
    arr[0, 0] = (int(arr[0, 0]) + 1) % 34
    Image.fromarray(arr).save(label)
    assert open_dataset("gta", {**layout.spec, "fingerprint": "content"}).fingerprint() != content
    # a new image changes the file list
    make_gta5(tmp_path / "gta", n=4)
    assert len(open_dataset("gta", layout.spec)) == 4


def test_fingerprint_changes_when_file_changes_same_size(tmp_path):
    layout = make_folder(tmp_path / "f", n=2)
    before = open_dataset("f", layout.spec).fingerprint()
    path = layout.image_paths["img_001"]
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    st = path.stat()
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert path.stat().st_size == st.st_size
    assert open_dataset("f", layout.spec).fingerprint() != before


# ----------------------------------------------------------------------------- bad input

def test_truncated_and_garbage_images_raise_at_load(tmp_path):
    layout = make_folder(tmp_path / "f", n=3)
    ds = open_dataset("f", layout.spec)
    trunc, garbage = ds.samples[0], ds.samples[1]
    data = trunc.image_path.read_bytes()
    trunc.image_path.write_bytes(data[: len(data) // 2])
    garbage.image_path.write_bytes(b"not an image at all" * 10)
    _raises_naming(lambda: ds.load(trunc), "'f'", trunc.image_path)
    _raises_naming(lambda: ds.load(garbage), "'f'", garbage.image_path)
    ds.load(ds.samples[2])  # others unaffected


def test_truncated_jpeg_raises(tmp_path):
    layout = make_bdd100k(tmp_path / "bdd", n=1, size=(64, 64))
    ds = open_dataset("bdd", layout.spec)
    s = ds.samples[0]
    data = s.image_path.read_bytes()
    s.image_path.write_bytes(data[: len(data) // 3])
    _raises_naming(lambda: ds.load(s), "'bdd'", s.image_path)


def test_bad_label_files_raise_at_load(tmp_path):
    layout = make_cityscapes(tmp_path / "cs", cities=("aachen",), n_per_city=4)
    ds = open_dataset("cs", layout.spec)
    s_trunc, s_size, s_rgb, s_gone = ds.samples
    data = s_trunc.label_path.read_bytes()
    s_trunc.label_path.write_bytes(data[: len(data) // 2])
    Image.fromarray(np.zeros((30, 64), np.uint8)).save(s_size.label_path)
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(s_rgb.label_path)
    s_gone.label_path.unlink()
    _raises_naming(lambda: ds.load(s_trunc), "'cs'", s_trunc.label_path)
    err = _raises_naming(lambda: ds.load(s_size), "'cs'", s_size.label_path, "64x30", "64x32")
    assert err.path == str(s_size.label_path)
    _raises_naming(lambda: ds.load(s_rgb), "'cs'", s_rgb.label_path, "single-channel")
    _raises_naming(lambda: ds.load(s_gone), "'cs'", s_gone.label_path, "not found")


def test_unpaired_image(tmp_path):
    layout = make_folder(tmp_path / "f", n=3)
    layout.label_paths["img_001"].unlink()
    _raises_naming(lambda: open_dataset("f", layout.spec), "'f'", layout.image_paths["img_001"],
                   "no label")
    ds = open_dataset("f", {**layout.spec, "unpaired": "skip"})
    assert [s.image_id for s in ds.samples] == ["img_000", "img_002"]
    cs = make_cityscapes(tmp_path / "cs", cities=("aachen",), n_per_city=2)
    cs.label_paths[cs.image_ids[1]].unlink()
    _raises_naming(lambda: open_dataset("cs", cs.spec), "'cs'", cs.image_paths[cs.image_ids[1]])


def test_layout_problems_raise_at_open(tmp_path):
    _raises_naming(lambda: open_dataset("x", {"format": "gta5", "root": str(tmp_path / "nope")}),
                   "'x'", tmp_path / "nope")
    _raises_naming(lambda: open_dataset("x", {"format": "gta5"}), "'x'", "root")
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "labels").mkdir()
    _raises_naming(lambda: open_dataset("x", {"format": "gta5", "root": str(tmp_path / "empty")}),
                   "'x'", "no samples", tmp_path / "empty")
    _raises_naming(lambda: open_dataset("x", {"format": "cityscapes", "root": str(tmp_path / "empty")}),
                   "'x'", tmp_path / "empty" / "leftImg8bit")
    _raises_naming(lambda: open_dataset("x", {"format": "bdd100k", "root": str(tmp_path / "empty")}),
                   "'x'", "images/10k")
    bdd = make_bdd100k(tmp_path / "bdd", n=1)
    _raises_naming(lambda: open_dataset("x", {**bdd.spec, "split": "val"}),
                   "'x'", tmp_path / "bdd" / "images" / "10k" / "val")
    _raises_naming(lambda: open_dataset("x", {"format": "coco", "root": str(tmp_path)}), "'x'", "coco")
    _raises_naming(lambda: open_dataset("x", {**bdd.spec, "citys": ["a"]}), "'x'", "citys")
    _raises_naming(lambda: open_dataset("x", {**bdd.spec, "fingerprint": "md5"}), "'x'", "md5")
    _raises_naming(lambda: open_dataset("x", "bdd"), "'x'")


def test_duplicate_stems_and_hidden_files(tmp_path):
    layout = make_folder(tmp_path / "f", n=2)
    (tmp_path / "f" / "images" / "._img_000.png").write_bytes(b"\x00\x05AppleDouble")
    (tmp_path / "f" / "images" / "notes.txt").write_text("ignored")
    assert [s.image_id for s in open_dataset("f", layout.spec).samples] == ["img_000", "img_001"]
    shutil.copy(layout.image_paths["img_001"], tmp_path / "f" / "images" / "img_001.jpg")
    _raises_naming(lambda: open_dataset("f", layout.spec), "'f'", "img_001")


def test_relative_root_and_base_dir(tmp_path):
    make_gta5(tmp_path / "data" / "gta", n=2)
    ds = open_dataset("gta", {"format": "gta5", "root": "data/gta"}, base_dir=tmp_path)
    assert ds.root == (tmp_path / "data" / "gta").resolve()
    assert ds.samples[0].image_path.is_absolute()


def test_pickles_for_ray(tmp_path):
    layout = make_folder(tmp_path / "f", n=2)
    ds = open_dataset("f", {**layout.spec, "resize": 16})
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.samples == ds.samples and clone.fingerprint() == ds.fingerprint()
    for a, b in zip(ds.load(ds.samples[1]), clone.load(clone.samples[1])):
        np.testing.assert_array_equal(a, b)
    err = DatasetError("label file has id 42", "f", "/x/y.png")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ValueError) and str(back) == str(err) and back.path == "/x/y.png"
    assert isinstance(ds.samples[0], Sample)


def test_fixtures_are_deterministic(tmp_path):
    a = make_cityscapes(tmp_path / "a", n_per_city=1)
    b = make_cityscapes(tmp_path / "b", n_per_city=1)
    for image_id in a.image_ids:
        assert a.image_paths[image_id].read_bytes() == b.image_paths[image_id].read_bytes()
        assert a.label_paths[image_id].read_bytes() == b.label_paths[image_id].read_bytes()
