"""``segotce-ray validate`` catches what ``run`` would fail on (issue 15, item 1): every
checkpoint is loaded on CPU, every image/label header verified, ``--deep`` decodes them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from segotce_ray.cli import EXIT_INVALID, EXIT_OK, main
from tests.fixtures_layouts import make_folder
from tests.tiny_segmodels import TinySegNet


class _Payload:
    """Unpickling this runs a command: ``weights_only`` must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _good_state(num_classes: int = 2) -> dict:
    torch.manual_seed(0)
    return TinySegNet(num_classes=num_classes).state_dict()


def _write_checkpoint(path: Path, kind: str) -> None:
    if kind == "good":
        torch.save(_good_state(), path)
    elif kind == "not_a_state_dict":
        torch.save({"epoch": 3, "lr": 0.1}, path)
    elif kind == "truncated":
        torch.save(_good_state(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not a checkpoint\nsee README\n")
    elif kind == "wrong_num_classes":
        torch.save(_good_state(num_classes=5), path)
    elif kind == "code_payload":
        torch.save({"w": _Payload()}, path)
    else:  # pragma: no cover
        raise AssertionError(kind)


def _job(tmp_path: Path, ckpt_kind: str = "good", n: int = 3) -> tuple[Path, object]:
    layout = make_folder(tmp_path / "data" / "mine", n=n, label_map={0: "road", 1: "car"})
    ckpt = tmp_path / "m.pt"
    _write_checkpoint(ckpt, ckpt_kind)
    spec = {"name": "j", "datasets": {"mine": {"format": "folder", "root": "data/mine",
                                               "label_map": {0: "road", 1: "car"}}},
            "models": {"m": {"architecture": "tests.tiny_segmodels:tiny_segnet",
                             "num_classes": 2, "source": "mine", "checkpoint": "m.pt"}},
            "targets": ["mine"]}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, layout


def test_good_job_validates(tmp_path, capsys):
    path, _ = _job(tmp_path)
    assert main(["validate", str(path)]) == EXIT_OK
    assert main(["validate", "--deep", str(path)]) == EXIT_OK
    assert "ok — job 'j'" in capsys.readouterr().out


@pytest.mark.parametrize("kind, fragment", [
    ("not_a_state_dict", "holds no state dict"),
    ("truncated", "cannot read checkpoint"),
    ("text", "not a PyTorch checkpoint (neither a zip archive nor a pickle"),
    ("wrong_num_classes", "the checkpoint has 5 classes but num_classes=2"),
    ("code_payload", "cannot read checkpoint"),
])
def test_bad_checkpoint_fails_validate_naming_the_model(tmp_path, capsys, kind, fragment):
    path, _ = _job(tmp_path, kind)
    assert main(["validate", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "models.m: model 'm'" in err and fragment in err, err
    assert "pop from empty list" not in err and "KeyError" not in err
    # the spec-only pass does not load checkpoints
    assert main(["validate", "--shallow", str(path)]) == EXIT_OK


def test_code_payload_is_refused_not_run(tmp_path, capsys, monkeypatch):
    path, _ = _job(tmp_path, "code_payload")
    ran = []
    monkeypatch.setattr(os, "system", lambda cmd: ran.append(cmd) or 0)
    assert main(["validate", str(path)]) == EXIT_INVALID
    assert ran == []
    assert "weights" in capsys.readouterr().err.lower()


def test_truncated_png_fails_validate_naming_the_file(tmp_path, capsys):
    path, layout = _job(tmp_path)
    image = layout.image_paths["img_001"]
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    assert main(["validate", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert "datasets.mine: dataset 'mine'" in err and str(image) in err, err
    assert "1 problem(s)" in err


def _bad_id(layout, image_id: str) -> Path:
    import numpy as np
    from PIL import Image

    label = layout.label_paths[image_id]
    raw = np.array(Image.open(label))
    raw[0, 0] = 7                                       # not in label_map {0, 1}, not ignore
    Image.fromarray(raw).save(label)
    return label


def test_label_id_outside_label_map_in_an_unsampled_file_needs_deep(tmp_path, capsys):
    """Plain validate decodes 3 of the 8 label files (img_000, _002, _005) and says so."""
    path, layout = _job(tmp_path, n=8)
    label = _bad_id(layout, "img_001")
    assert main(["validate", str(path)]) == EXIT_OK       # headers are fine, not sampled
    out = capsys.readouterr().out
    assert "label ids decoded in 3 of 8 label file(s) (a sample; --deep checks them all)" in out
    assert main(["validate", "--deep", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert str(label) in err and "id(s) 7 not in the label map" in err, err


def test_label_id_outside_label_map_in_a_sampled_file_fails_plain_validate(tmp_path, capsys):
    path, layout = _job(tmp_path, n=8)
    label = _bad_id(layout, "img_005")
    assert main(["validate", str(path)]) == EXIT_INVALID
    err = capsys.readouterr().err
    assert str(label) in err and "id(s) 7 not in the label map" in err, err
    assert main(["validate", "--shallow", str(path)]) == EXIT_OK
    assert "spec only (--shallow: no file opened" in capsys.readouterr().out
