"""Models from checkpoints, layer taps, pixel sampling and feature sampling (no Ray)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from segotce_ray.inputs.models import ModelError, ModelSpec, SegmentationModel, load_model, model_weights_hash
from segotce_ray.extract.sampling import sample_feature_map, sample_feature_maps, sample_pixels
from segotce_ray.seeds import stable_seed

TINY = "tests.tiny_segmodels:tiny_segnet"
LRASPP = "lraspp_mobilenet_v3_large"


def images(b=2, h=64, w=64, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def lraspp():
    return load_model(ModelSpec(name="lr", architecture=LRASPP, num_classes=4))


# ------------------------------------------------------------------ pixel sampling

def test_uniform_sampling_takes_only_valid_pixels_and_k_of_them():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, size=(40, 60))
    label[rng.random((40, 60)) < 0.3] = 255
    rows, cols, labs = sample_pixels(label, 100, seed=1)
    assert len(rows) == 100 and len(set(zip(rows, cols))) == 100          # no replacement
    assert np.array_equal(labs, label[rows, cols]) and (labs != 255).all()
    assert rows.dtype == np.int32 and labs.dtype == np.int16
    flat = rows.astype(int) * 60 + cols
    assert np.all(np.diff(flat) > 0)                                     # raster order


def test_sampling_takes_every_valid_pixel_when_fewer_than_k():
    label = np.full((10, 10), 255)
    label[2, 3], label[7, 1], label[9, 9] = 0, 4, 2
    rows, cols, labs = sample_pixels(label, 50, seed=0)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(2, 3), (7, 1), (9, 9)]
    assert labs.tolist() == [0, 4, 2]
    r0, _, _ = sample_pixels(np.full((4, 4), 255), 5, seed=0)
    assert r0.size == 0


def test_sampling_is_seeded_and_seed_sensitive():
    label = np.random.default_rng(3).integers(0, 3, size=(50, 50))
    a = sample_pixels(label, 30, seed=stable_seed(0, "m", "d", "img1"))
    b = sample_pixels(label, 30, seed=stable_seed(0, "m", "d", "img1"))
    c = sample_pixels(label, 30, seed=stable_seed(0, "m", "d", "img2"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0] * 50 + a[1], c[0] * 50 + c[1])


def test_stable_seed_is_sha256_not_python_hash():
    expect = int.from_bytes(hashlib.sha256("7\x1fmodel\x1fds\x1fimg".encode()).digest()[:8], "little")
    assert stable_seed(7, "model", "ds", "img") == expect
    assert stable_seed(7, "model", "ds", "img") != stable_seed(7, "model", "ds", "img2")


def test_balanced_sampling_water_fills_small_classes():
    label = np.zeros((40, 40), dtype=np.int64)       # class 0: 1600 - 10 - 30 pixels
    label[0, :10] = 1                                # class 1: 10 pixels
    label[5, :30] = 2                                # class 2: 30 pixels
    label[39, :] = 255
    _, _, labs = sample_pixels(label, 90, seed=0, mode="balanced")
    counts = np.bincount(labs, minlength=3)
    assert counts[1] == 10 and counts.sum() == 90 and counts[0] == 50 and counts[2] == 30
    _, _, u = sample_pixels(label, 90, seed=0, mode="uniform")
    assert np.bincount(u, minlength=3)[1] < 10       # uniform rarely sees the small class
    with pytest.raises(ValueError, match="sampling mode"):
        sample_pixels(label, 10, seed=0, mode="stratified")


# ------------------------------------------------------------------ feature sampling

@pytest.mark.parametrize("h,w,H,W", [(7, 9, 37, 53), (8, 8, 64, 64), (5, 3, 5, 3), (4, 6, 97, 31)])
def test_sampled_features_equal_the_upsampled_map(h, w, H, W):
    fmap = torch.randn(6, h, w, generator=torch.Generator().manual_seed(h * w))
    full = F.interpolate(fmap[None], size=(H, W), mode="bilinear", align_corners=False)[0]
    rr, cc = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    rows, cols = rr.ravel().astype(np.int32), cc.ravel().astype(np.int32)
    got = sample_feature_map(fmap, rows, cols, H, W)
    assert got.shape == (H * W, 6)
    torch.testing.assert_close(got, full[:, rows, cols].T, atol=1e-5, rtol=1e-5)


def test_batched_sampling_matches_per_image_sampling():
    maps = torch.randn(3, 4, 6, 10, generator=torch.Generator().manual_seed(1))
    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 24, n).astype(np.int32) for n in (5, 0, 9)]
    cols = [rng.integers(0, 40, n).astype(np.int32) for n in (5, 0, 9)]
    out = sample_feature_maps(maps, rows, cols, 24, 40)
    assert out.shape == (3, 9, 4)
    for b in range(3):
        torch.testing.assert_close(out[b, :len(rows[b])], sample_feature_map(maps[b], rows[b], cols[b], 24, 40))


# ------------------------------------------------------------------ architectures and layers

def test_lraspp_penultimate_is_the_exact_linear_input_of_the_head(lraspp):
    with torch.inference_mode():
        feat, logits = lraspp.features(images())
    assert feat.shape == (2, 40 + 128, 8, 8) and logits.shape == (2, 4, 8, 8)
    head = lraspp.module.classifier
    with torch.inference_mode():
        again = head.low_classifier(feat[:, :40]) + head.high_classifier(feat[:, 40:])
    torch.testing.assert_close(again, logits)
    # native-resolution logits, upsampled, are the model's own output
    with torch.inference_mode():
        out = lraspp.module(lraspp.normalise(images()))["out"]
    torch.testing.assert_close(F.interpolate(logits, size=(64, 64), mode="bilinear", align_corners=False), out)


@pytest.mark.parametrize("head,dim", [("fcn", 4), ("deeplab", 256)])
def test_deeplab_and_fcn_penultimate_feed_the_last_classifier_conv(head, dim):
    m = load_model(ModelSpec(name=head, architecture="tests.tiny_segmodels:tiny_fcn", num_classes=3,
                             kwargs={"head": head}))
    with torch.inference_mode():
        feat, logits = m.features(images(1))
        torch.testing.assert_close(m.module.classifier[-1](feat), logits)
    assert feat.shape[1] == dim and logits.shape == (1, 3, 16, 16)     # native 1/4 resolution


@pytest.mark.slow
@pytest.mark.parametrize("arch,dim", [("deeplabv3_resnet50", 256), ("deeplabv3_resnet101", 256),
                                      ("deeplabv3_mobilenet_v3_large", 256), ("fcn_resnet50", 512),
                                      ("fcn_resnet101", 512), ("lraspp_mobilenet_v3_large", 168)])
def test_every_torchvision_constructor_by_name(arch, dim):
    m = load_model(ModelSpec(name=arch, architecture=arch, num_classes=3))
    with torch.inference_mode():
        feat, logits = m.features(images(1))
    assert feat.shape[1] == dim and logits.shape[1] == 3
    assert getattr(m.module, "aux_classifier", None) is None
    if not arch.startswith("lraspp"):
        torch.testing.assert_close(m.module.classifier[-1](feat), logits)


def _tap(model, layer):
    """Another tap on the fixture's network (no rebuild)."""
    spec = ModelSpec(name="lr", architecture=LRASPP, num_classes=4, layer=layer)
    return SegmentationModel(spec, model.module, model.weights_hash)


def test_logits_and_named_layers(lraspp):
    lg = _tap(lraspp, "logits")
    with torch.inference_mode():
        feat, logits = lg.features(images())
    assert feat is logits and feat.shape[1] == 4
    named = _tap(lraspp, "classifier.cbr")
    with torch.inference_mode():
        feat, _ = named.features(images())
    named.close()
    assert feat.shape == (2, 128, 4, 4)


def test_unknown_layer_names_the_model_and_lists_valid_names(lraspp):
    with pytest.raises(ModelError, match=r"model 'lr'.*layer 'classifier\.nope' does not exist.*high_classifier"):
        _tap(lraspp, "classifier.nope")


def test_same_name_same_random_init_and_hash():
    a = ModelSpec(name="tiny", architecture=TINY, num_classes=3)
    b = ModelSpec(name="tiny2", architecture=TINY, num_classes=3)
    assert model_weights_hash(a) == model_weights_hash(a) == load_model(a).weights_hash
    assert model_weights_hash(a) != model_weights_hash(b)


def test_normalisation_and_input_size_are_per_model():
    spec = ModelSpec(name="tiny", architecture=TINY, num_classes=3, mean=(0.5, 0.5, 0.5),
                     std=(0.25, 0.25, 0.25), input_size=(32, 40))
    m = load_model(spec)
    x = torch.ones(1, 3, 64, 64)
    assert torch.allclose(m.normalise(x), torch.full((1, 3, 32, 40), 2.0))
    with torch.inference_mode():
        feat, logits = m.features(x)
    assert feat.shape == (1, 16, 8, 10) and logits.shape == (1, 3, 8, 10)


# ------------------------------------------------------------------ checkpoints

def _tiny_checkpoint(tmp_path, name="ck.pt", num_classes=3, wrap=None, prefix="", edit=None):
    module = load_model(ModelSpec(name="src", architecture=TINY, num_classes=num_classes)).module
    state = OrderedDict((prefix + k, v.clone()) for k, v in module.state_dict().items())
    if edit:
        edit(state)
    obj = {wrap: state, "epoch": 3} if wrap else state
    path = tmp_path / name
    torch.save(obj, path)
    return path, module


@pytest.mark.parametrize("wrap,prefix", [(None, ""), ("state_dict", "module."), ("model", "")])
def test_checkpoint_forms_load_and_give_the_saved_network(tmp_path, wrap, prefix):
    path, src = _tiny_checkpoint(tmp_path, wrap=wrap, prefix=prefix)
    m = load_model(ModelSpec(name="tgt", architecture=TINY, num_classes=3, checkpoint=path))
    assert m.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    with torch.inference_mode():
        feat, logits = m.features(images(1))
        torch.testing.assert_close(logits, src(m.normalise(images(1))))
    assert feat.shape[1] == 16                    # auto penultimate: input of the last C-channel conv


def test_torchvision_checkpoint_roundtrip(tmp_path):
    src = load_model(ModelSpec(name="a", architecture="tests.tiny_segmodels:tiny_fcn", num_classes=3))
    path = tmp_path / "fcn.pth"
    state = dict(src.module.state_dict(), **{"aux_classifier.0.weight": torch.ones(2)})  # aux head: dropped
    torch.save({"state_dict": state}, path)
    other = load_model(ModelSpec(name="b", architecture="tests.tiny_segmodels:tiny_fcn", num_classes=3,
                                 checkpoint=path))
    assert src.weights_hash != other.weights_hash
    with torch.inference_mode():
        torch.testing.assert_close(other.features(images())[0], src.features(images())[0])


def test_bad_checkpoint_keys_name_the_model_and_the_keys(tmp_path):
    path, _ = _tiny_checkpoint(tmp_path, edit=lambda s: (s.pop("classifier.bias"), s.update(extra_w=torch.ones(1))))
    with pytest.raises(ModelError, match=r"model 'zoo-3'.*missing keys.*classifier\.bias.*unexpected keys.*extra_w"):
        load_model(ModelSpec(name="zoo-3", architecture=TINY, num_classes=3, checkpoint=path))


def test_wrong_num_classes_is_a_named_shape_mismatch(tmp_path):
    path, _ = _tiny_checkpoint(tmp_path, num_classes=5)
    with pytest.raises(ModelError, match=r"model 'm'.*shape mismatch for 'classifier\.weight'.*5 classes but num_classes=3"):
        load_model(ModelSpec(name="m", architecture=TINY, num_classes=3, checkpoint=path))


def test_missing_garbage_and_unsafe_checkpoints(tmp_path):
    with pytest.raises(ModelError, match=r"model 'm'.*checkpoint not found"):
        load_model(ModelSpec(name="m", architecture=TINY, checkpoint=tmp_path / "nope.pt"))
    with pytest.raises(ModelError, match=r"model 'm'.*checkpoint not found"):
        model_weights_hash(ModelSpec(name="m", architecture=TINY, checkpoint=tmp_path / "nope.pt"))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ModelError, match=r"model 'm'.*cannot read checkpoint"):
        load_model(ModelSpec(name="m", architecture=TINY, checkpoint=garbage))
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"state_dict": ModelSpec(name="x", architecture=TINY)}, unsafe)   # arbitrary object
    with pytest.raises(ModelError, match=r"model 'm'.*cannot read checkpoint"):
        load_model(ModelSpec(name="m", architecture=TINY, checkpoint=unsafe))
    no_state = tmp_path / "nostate.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, no_state)
    with pytest.raises(ModelError, match=r"holds no state dict"):
        load_model(ModelSpec(name="m", architecture=TINY, checkpoint=no_state))


# ------------------------------------------------------------------ torchscript and factories

@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_convention(tmp_path):
    from tests.tiny_segmodels import TinyDictNet, TinyLogitsNet

    src = TinyDictNet(3).eval()
    path = tmp_path / "m.ts"
    torch.jit.script(src).save(str(path))
    m = load_model(ModelSpec(name="ts", architecture="torchscript", checkpoint=path, num_classes=3))
    with torch.inference_mode():
        feat, logits = m.features(images(1))
        ref = src(m.normalise(images(1)))
    torch.testing.assert_close(feat, ref["features"])
    torch.testing.assert_close(logits, ref["out"])
    assert m.weights_hash == hashlib.sha256(path.read_bytes()).hexdigest()

    plain = tmp_path / "plain.ts"
    torch.jit.script(TinyLogitsNet(3).eval()).save(str(plain))
    with pytest.raises(ModelError, match=r"model 'ts2'.*no 'features' entry"):
        load_model(ModelSpec(name="ts2", architecture="torchscript", checkpoint=plain, num_classes=3)).features(images(1))
    lg = load_model(ModelSpec(name="ts3", architecture="torchscript", checkpoint=plain, num_classes=3, layer="logits"))
    assert lg.features(images(1))[0].shape == (1, 3, 16, 16)
    with pytest.raises(ModelError, match=r"model 'ts4'.*not found"):
        load_model(ModelSpec(name="ts4", architecture="torchscript", checkpoint=tmp_path / "x.ts"))


def test_factory_errors_name_the_model():
    with pytest.raises(ModelError, match=r"model 'f1'.*cannot import factory module 'no_such_pkg\.mod'"):
        load_model(ModelSpec(name="f1", architecture="no_such_pkg.mod:build"))
    with pytest.raises(ModelError, match=r"model 'f2'.*has no callable 'nothing'"):
        load_model(ModelSpec(name="f2", architecture="tests.tiny_segmodels:nothing"))
    with pytest.raises(ModelError, match=r"model 'f3'.*returned dict, not an nn.Module"):
        load_model(ModelSpec(name="f3", architecture="tests.tiny_segmodels:not_a_module"))
    with pytest.raises(ModelError, match=r"model 'f4'.*unknown architecture"):
        ModelSpec(name="f4", architecture="os.system('x')")
    with pytest.raises(ModelError, match=r"outputs 3 classes but num_classes=5"):
        load_model(ModelSpec(name="f5", architecture=TINY, num_classes=5, layer="logits",
                             kwargs={"num_classes": 3})).features(images(1))


def test_spec_from_dict_resolves_paths_and_rejects_unknown_keys(tmp_path):
    spec = ModelSpec.from_dict({"name": "a", "architecture": LRASPP, "checkpoint": "w/a.pt",
                                "num_classes": 19, "input_size": [512, 1024]}, base_dir=tmp_path)
    assert spec.checkpoint == tmp_path / "w" / "a.pt" and spec.input_size == (512, 1024)
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ModelError, match=r"model 'a'.*unknown model keys \['chekpoint'\]"):
        ModelSpec.from_dict({"name": "a", "architecture": LRASPP, "chekpoint": "x"})


def test_half_precision_checkpoint_loads_into_float32_network(tmp_path):
    src = load_model(ModelSpec(name="src", architecture=TINY, num_classes=3)).module
    path = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in src.state_dict().items()}, path)
    m = load_model(ModelSpec(name="h", architecture=TINY, num_classes=3, checkpoint=path))
    assert {p.dtype for p in m.module.parameters()} == {torch.float32}
    assert not any(t.is_meta for t in [*m.module.parameters(), *m.module.buffers()])
    for k, v in m.module.state_dict().items():
        torch.testing.assert_close(v, src.state_dict()[k].half().float())
