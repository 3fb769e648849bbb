"""The demo zoo: deterministic recipe, state-dict checkpoints, loadable by the model adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segotce_ray.demo.world import WorldConfig, load_split, write_world
from segotce_ray.demo.zoo import (LRASPP, TINY_FACTORY, TinySegNet, TrainRecipe, ZooMember,
                                  build_architecture, build_zoo, replace_head, state_dict_hash,
                                  tiny_segnet, train)
from segotce_ray.inputs.models import ModelSpec, load_model

SMALL = WorldConfig(sources=("alderbrook", "duskmoor"), targets=("kestrel",),
                    n_source=4, n_target_train=2, n_target_val=2)
FEW = TrainRecipe(steps=3, batch=2)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return write_world(tmp_path_factory.mktemp("world"), SMALL)


def _trained(images, labels, seed: int, recipe: TrainRecipe = FEW) -> dict:
    torch.manual_seed(seed)
    model = tiny_segnet(19)
    return train(model, images, labels, recipe, seed).state_dict()


def test_recipe_is_deterministic(world):
    x, y = load_split(world.root, SMALL, "alderbrook", "train")
    a, b = _trained(x, y, 7), _trained(x, y, 7)
    assert state_dict_hash(a) == state_dict_hash(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = _trained(x, y, 8)
    assert state_dict_hash(c) != state_dict_hash(a)
    # training moved the weights and recomputed the batch-norm statistics
    torch.manual_seed(7)
    init = tiny_segnet(19).state_dict()
    assert not torch.equal(init["classifier.weight"], a["classifier.weight"])
    assert not torch.equal(init["backbone.0.1.running_mean"], a["backbone.0.1.running_mean"])


def test_recipe_does_not_leak_torch_settings(world):
    x, y = load_split(world.root, SMALL, "alderbrook", "train")
    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    _trained(x, y, 0, TrainRecipe(steps=1, batch=2))
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before


def test_zoo_builds_caches_and_loads_weights_only(world, tmp_path):
    members = [ZooMember("tiny_a", TINY_FACTORY, "alderbrook"),
               ZooMember("tiny_d", TINY_FACTORY, "duskmoor")]
    recipes = {TINY_FACTORY: FEW}
    zoo = build_zoo(tmp_path, world.root, SMALL, members, seed=0, workers=2, recipes=recipes)
    manifest = json.loads((zoo.root / "zoo.json").read_text())
    assert set(manifest["hashes"]) == {"tiny_a", "tiny_d"}
    for m in members:
        state = torch.load(zoo.checkpoints[m.name], weights_only=True)
        assert state_dict_hash(state) == zoo.hashes[m.name]
    # one worker in this process gives the same weights as two worker processes
    again = build_zoo(tmp_path / "one", world.root, SMALL, members, seed=0, workers=1,
                      recipes=recipes)
    assert again.hashes == zoo.hashes and again.fingerprint == zoo.fingerprint
    # cached: a second build reuses the files
    mtime = zoo.checkpoints["tiny_a"].stat().st_mtime_ns
    build_zoo(tmp_path, world.root, SMALL, members, seed=0, workers=2, recipes=recipes)
    assert zoo.checkpoints["tiny_a"].stat().st_mtime_ns == mtime
    # another seed is another zoo
    other = build_zoo(tmp_path, world.root, SMALL, members[:1], seed=1, workers=1, recipes=recipes)
    assert other.fingerprint != zoo.fingerprint and other.hashes["tiny_a"] != zoo.hashes["tiny_a"]

    # the pipeline's model adapter loads the checkpoint through the factory
    spec = ModelSpec(name="tiny_a", architecture=TINY_FACTORY, checkpoint=zoo.checkpoints["tiny_a"],
                     num_classes=19, layer="penultimate")
    model = load_model(spec)
    x, _ = load_split(world.root, SMALL, "alderbrook", "train")
    images = torch.from_numpy(x[:2]).permute(0, 3, 1, 2).float() / 255
    feat, logits = model.features(images)
    assert feat.shape == (2, 64, 16, 32) and logits.shape[:2] == (2, 19)
    ref = zoo.load("tiny_a")
    with torch.no_grad():
        direct = ref.classifier(ref.backbone((images - torch.tensor(spec.mean).view(1, 3, 1, 1))
                                             / torch.tensor(spec.std).view(1, 3, 1, 1)))
    up = torch.nn.functional.interpolate(direct, size=logits.shape[-2:], mode="bilinear",
                                         align_corners=False)
    assert torch.allclose(up, logits, atol=1e-4)


def test_lraspp_member_is_a_plain_torchvision_state_dict(world, tmp_path):
    members = [ZooMember("lraspp_a", LRASPP, "alderbrook")]
    zoo = build_zoo(tmp_path, world.root, SMALL, members, seed=0, workers=1,
                    recipes={LRASPP: TrainRecipe(steps=1, batch=2)})
    state = torch.load(zoo.checkpoints["lraspp_a"], weights_only=True)
    assert "classifier.low_classifier.weight" in state
    spec = ModelSpec(name="lraspp_a", architecture="lraspp_mobilenet_v3_large",
                     checkpoint=zoo.checkpoints["lraspp_a"], num_classes=19, layer="logits")
    feat, _ = load_model(spec).features(torch.rand(1, 3, 64, 128))
    assert feat.shape[:2] == (1, 19)


def test_replace_head_changes_the_label_space():
    tiny = build_architecture(TINY_FACTORY, 19)
    replace_head(tiny, 7)
    assert isinstance(tiny, TinySegNet) and tiny(torch.rand(1, 3, 64, 128)).shape == (1, 7, 64, 128)
    lr = build_architecture(LRASPP, 19).eval()
    replace_head(lr, 7)
    assert lr(torch.rand(1, 3, 64, 128))["out"].shape == (1, 7, 64, 128)
    with pytest.raises(ValueError, match="cannot replace"):
        replace_head(torch.nn.Conv2d(3, 3, 1), 4)
    with pytest.raises(ValueError, match="unknown architecture"):
        build_architecture("nope:nope", 19)


def test_train_ignores_void_pixels():
    x = np.zeros((2, 64, 128, 3), np.uint8)
    y = np.full((2, 64, 128), 255, np.int64)
    y[:, :8] = 10
    torch.manual_seed(0)
    model = train(tiny_segnet(19), x, y, TrainRecipe(steps=2, batch=2), 0)
    assert all(torch.isfinite(p).all() for p in model.parameters())
