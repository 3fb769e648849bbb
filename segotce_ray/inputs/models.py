"""Segmentation models from real checkpoints, with per-pixel feature taps.

A :class:`ModelSpec` says what to build and which layer to read; :func:`load_model` turns
it into a :class:`SegmentationModel` whose :meth:`~SegmentationModel.features` maps images
``(B, 3, H, W)`` in ``[0, 1]`` to ``(feat (B, D, h, w), logits (B, C, h', w'))`` at the
network's native (low) resolution — nothing is upsampled here; pixels are sampled from
these maps afterwards (:mod:`segotce_ray.extract.sampling`).

Architectures (``ModelSpec.architecture``):

- a torchvision constructor name: ``deeplabv3_resnet50``, ``deeplabv3_resnet101``,
  ``deeplabv3_mobilenet_v3_large``, ``fcn_resnet50``, ``fcn_resnet101``,
  ``lraspp_mobilenet_v3_large`` — built with ``weights=None, weights_backbone=None``,
  ``aux_loss=False`` and ``num_classes`` (nothing is downloaded);
- ``"torchscript"``: ``checkpoint`` is a TorchScript file (``torch.jit.load``). Its
  ``forward(x)`` takes the *normalised* ``(B, 3, H, W)`` batch and returns either the
  logits tensor ``(B, C, h, w)`` or a dict with ``"out"`` (the logits, torchvision's
  convention) and optionally ``"features"`` ``(B, D, h, w)``. ``layer="penultimate"``
  needs ``"features"``; ``layer="logits"`` works with either form;
- ``"package.module:function"``: a Python factory, imported with :mod:`importlib` (never
  ``eval``), called as ``function(num_classes=..., **spec.kwargs)`` (``num_classes`` only if
  the function accepts it), returning an ``nn.Module`` whose forward follows the same
  convention as above.

Checkpoints (``checkpoint``; for torchvision/factory models) load with
``torch.load(path, map_location="cpu", weights_only=True)``: a state dict, or a dict
holding one under ``"state_dict"`` or ``"model"``; a DataParallel ``"module."`` prefix is
stripped; ``aux_classifier.*`` keys are dropped (the auxiliary head is never built); keys
are strict and shapes are checked, with errors naming the model and the first offending
keys. Without a checkpoint the weights are a random initialisation seeded from the model's
name (so every worker builds the same network).

Layers (``ModelSpec.layer``):

- ``"penultimate"``: the input of the final classifier, found automatically —
  DeepLabV3/FCN: the input of ``classifier[-1]`` (the last 1×1 conv; 256 / 512 channels);
  LR-ASPP: its head computes ``logits = W_low·low + W_high·x`` with ``low`` the stride-8
  backbone features (40 ch) and ``x`` the gated, upsampled high branch (128 ch), so the
  penultimate feature is the concatenation ``[low, x]`` (168 ch, stride 8) — the logits are
  exactly linear in it, as for the other heads. Other ``nn.Module`` models: the input of the
  last ``Conv2d`` with ``num_classes`` output channels, unless forward returns ``"features"``.
- ``"logits"``: the final ``C``-channel logits (what the SEG-OTCE authors' code scores).
- any name from ``module.named_modules()``: that module's output (a 4-D tensor, or a dict
  with ``"out"``).

Input normalisation is per model: ``x = (image − mean) / std`` (default ImageNet),
optionally after resizing to ``input_size``.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import logging
import re
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from segotce_ray.seeds import stable_seed

log = logging.getLogger(__name__)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "TORCHVISION_ARCHITECTURES", "ModelError", "ModelSpec",
           "SegmentationModel", "build_module", "load_model", "model_weights_hash"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TORCHVISION_ARCHITECTURES: tuple[str, ...] = (
    "deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
    "fcn_resnet50", "fcn_resnet101", "lraspp_mobilenet_v3_large",
)
TORCHSCRIPT = "torchscript"
LAYER_PENULTIMATE = "penultimate"
LAYER_LOGITS = "logits"
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


class ModelError(ValueError):
    """A model cannot be built, loaded or run; the message names the model."""

    def __init__(self, model: str, message: str) -> None:
        super().__init__(f"model {model!r}: {message}")
        self.model, self.reason = model, message

    def __reduce__(self):  # picklable across Ray processes
        return (ModelError, (self.model, self.reason))


@dataclass
class ModelSpec:
    """What to build and which layer to read.

    name: unique model name in the zoo; architecture: torchvision constructor name,
    ``"torchscript"`` or ``"package.module:function"``; checkpoint: weights file (the
    TorchScript file itself for ``"torchscript"``); num_classes: source classes C;
    layer: ``"penultimate"`` | ``"logits"`` | module name; mean/std: input normalisation;
    source: name of the source dataset (informational); input_size: optional (H, W) the
    images are resized to before the forward pass; kwargs: extra factory/constructor kwargs.
    """

    name: str
    architecture: str
    checkpoint: str | Path | None = None
    num_classes: int = 19
    layer: str = LAYER_PENULTIMATE
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    source: str | None = None
    input_size: tuple[int, int] | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ModelError(str(self.name), "a model needs a non-empty string name")
        arch = self.architecture
        if not (arch in TORCHVISION_ARCHITECTURES or arch == TORCHSCRIPT or _FACTORY_RE.match(str(arch))):
            raise ModelError(self.name, f"unknown architecture {arch!r}: expected one of "
                             f"{list(TORCHVISION_ARCHITECTURES)}, 'torchscript' or 'package.module:function'")
        if arch == TORCHSCRIPT and not self.checkpoint:
            raise ModelError(self.name, "a 'torchscript' model needs `checkpoint` (the TorchScript file)")
        if int(self.num_classes) < 1:
            raise ModelError(self.name, f"num_classes must be >= 1, got {self.num_classes}")
        self.num_classes = int(self.num_classes)
        self.mean = tuple(float(v) for v in self.mean)  # type: ignore[assignment]
        self.std = tuple(float(v) for v in self.std)  # type: ignore[assignment]
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ModelError(self.name, f"mean/std must be 3 numbers (std > 0), got {self.mean}, {self.std}")
        if self.input_size is not None:
            self.input_size = (int(self.input_size[0]), int(self.input_size[1]))
        if self.checkpoint is not None:
            self.checkpoint = Path(self.checkpoint)
        if not self.layer:
            raise ModelError(self.name, "layer must be 'penultimate', 'logits' or a module name")

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: Path | None = None) -> "ModelSpec":
        """Build from a job-spec mapping; a relative ``checkpoint`` resolves against ``base_dir``."""
        name = str(d.get("name", "?"))
        known = {f for f in cls.__dataclass_fields__}
        extra = sorted(set(d) - known)
        if extra:
            raise ModelError(name, f"unknown model keys {extra}; known: {sorted(known)}")
        if "architecture" not in d:
            raise ModelError(name, "missing `architecture`")
        d = dict(d)
        ck = d.get("checkpoint")
        if ck is not None and base_dir is not None and not Path(ck).is_absolute():
            d["checkpoint"] = Path(base_dir) / ck
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form (paths as strings, tuples as lists)."""
        d = asdict(self)
        d["checkpoint"] = str(self.checkpoint) if self.checkpoint is not None else None
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d


# --------------------------------------------------------------------------- building

def _import_factory(spec: ModelSpec):
    module_name, func_name = str(spec.architecture).split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - any import failure is the model's fault
        raise ModelError(spec.name, f"cannot import factory module {module_name!r}: {exc}") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ModelError(spec.name, f"factory {spec.architecture!r}: {module_name} has no callable {func_name!r}")
    return func


def build_module(spec: ModelSpec) -> nn.Module:
    """The bare network of ``spec`` (random init seeded from the model name; no checkpoint)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(stable_seed("init", spec.name, spec.architecture) % (2**63))
        if spec.architecture in TORCHVISION_ARCHITECTURES:
            import torchvision.models.segmentation as tvseg

            kwargs: dict[str, Any] = {"weights": None, "weights_backbone": None,
                                      "num_classes": spec.num_classes}
            if not spec.architecture.startswith("lraspp"):
                kwargs["aux_loss"] = False
            kwargs.update(spec.kwargs)
            try:
                module = getattr(tvseg, spec.architecture)(**kwargs)
            except Exception as exc:  # noqa: BLE001
                raise ModelError(spec.name, f"cannot build torchvision {spec.architecture}: {exc}") from exc
        elif spec.architecture == TORCHSCRIPT:
            path = Path(spec.checkpoint)  # type: ignore[arg-type]
            if not path.is_file():
                raise ModelError(spec.name, f"TorchScript file not found: {path}")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)   # "jit.load is deprecated"
                    module = torch.jit.load(str(path), map_location="cpu")
            except Exception as exc:  # noqa: BLE001
                raise ModelError(spec.name, f"cannot load TorchScript file {path}: {exc}") from exc
        else:
            func = _import_factory(spec)
            kwargs = dict(spec.kwargs)
            try:
                params = inspect.signature(func).parameters
                takes_nc = "num_classes" in params or any(
                    p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            except (TypeError, ValueError):
                takes_nc = False
            if takes_nc:
                kwargs.setdefault("num_classes", spec.num_classes)
            try:
                module = func(**kwargs)
            except Exception as exc:  # noqa: BLE001
                raise ModelError(spec.name, f"factory {spec.architecture!r} failed: {exc}") from exc
    if not isinstance(module, nn.Module):
        raise ModelError(spec.name, f"{spec.architecture!r} returned {type(module).__name__}, not an nn.Module")
    return module


def read_state_dict(spec: ModelSpec) -> "OrderedDict[str, torch.Tensor]":
    """Load ``spec.checkpoint`` safely and return the (prefix-stripped) state dict."""
    path = Path(spec.checkpoint)  # type: ignore[arg-type]
    if not path.is_file():
        raise ModelError(spec.name, f"checkpoint not found: {path}")
    kind = checkpoint_format(path)
    if kind is None:
        raise ModelError(spec.name, f"cannot read checkpoint {path}: not a PyTorch checkpoint "
                         f"(neither a zip archive nor a pickle; it starts with {_head(path)!r})")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a checkpoint, unsafe pickle...
        raise ModelError(spec.name, f"cannot read checkpoint {path} ({kind}): "
                         f"{type(exc).__name__}: {exc}") from exc
    state: Any = obj
    if isinstance(obj, dict) and not _is_tensor_dict(obj):
        for k in ("state_dict", "model"):
            if isinstance(obj.get(k), dict) and _is_tensor_dict(obj[k]):
                state = obj[k]
                break
        else:
            raise ModelError(spec.name, f"checkpoint {path} holds no state dict (a dict of tensors, "
                             f"or one under 'state_dict'/'model'); top-level keys: {sorted(map(str, obj))[:8]}")
    if not isinstance(state, dict) or not _is_tensor_dict(state):
        raise ModelError(spec.name, f"checkpoint {path} is a {type(obj).__name__}, not a state dict")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return OrderedDict(state)


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def checkpoint_format(path: Path) -> str | None:
    """``"zip"`` (``torch.save``'s default), ``"pickle"`` (legacy format: a pickle protocol
    2+ header) or None for anything else — a text file, an empty file, an image. Read from
    the first bytes, so a text file is named as such instead of failing deep in unpickling."""
    head = _head(path, 4)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return None


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items())


def load_checkpoint_into(spec: ModelSpec, module: nn.Module, state: dict[str, torch.Tensor],
                         assign: bool = False) -> None:
    """Strict load with errors that name the model, the keys and the shapes.

    ``assign=True`` (for a network built on ``meta``) makes the checkpoint's tensors, cast to
    the network's dtypes, the network's own.
    """
    own = module.state_dict()
    if getattr(module, "aux_classifier", "absent") is None:
        dropped = [k for k in state if k.startswith("aux_classifier.")]
        if dropped:
            log.info("model %r: ignoring %d aux_classifier.* checkpoint keys", spec.name, len(dropped))
            state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
        raise ModelError(spec.name, f"checkpoint {spec.checkpoint} does not match {spec.architecture}: "
                         + "; ".join(parts))
    for k, v in own.items():
        got = tuple(state[k].shape)
        if got != tuple(v.shape):
            hint = ""
            if v.ndim >= 1 and got and got[0] != v.shape[0] and v.shape[0] == spec.num_classes:
                hint = (f" — the checkpoint has {got[0]} classes but num_classes={spec.num_classes}")
            raise ModelError(spec.name, f"checkpoint {spec.checkpoint}: shape mismatch for {k!r}: "
                             f"checkpoint {got} vs model {tuple(v.shape)}{hint}")
    if assign:
        state = {k: v.to(own[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (streamed)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hex SHA-256 over (name, dtype, shape, bytes) of every tensor, in key order."""
    h = hashlib.sha256()
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_weights_hash(spec: ModelSpec) -> str:
    """The cache identity of the weights: SHA-256 of the checkpoint (or TorchScript) file's
    bytes, or of the seeded random-init state dict when there is no checkpoint. Runs no
    forward pass; only builds the network when there is no checkpoint."""
    if spec.checkpoint is not None:
        path = Path(spec.checkpoint)
        if not path.is_file():
            raise ModelError(spec.name, f"checkpoint not found: {path}")
        return file_sha256(path)
    return state_dict_sha256(build_module(spec).state_dict())


# --------------------------------------------------------------------------- running

def _torchvision_kind(module: nn.Module) -> str | None:
    from torchvision.models.segmentation.deeplabv3 import DeepLabV3
    from torchvision.models.segmentation.fcn import FCN
    from torchvision.models.segmentation.lraspp import LRASPP

    if isinstance(module, (DeepLabV3, FCN)):
        return "simple"
    if isinstance(module, LRASPP):
        return "lraspp"
    return None


class SegmentationModel:
    """A loaded network plus a feature tap.

    ``features(images)`` → ``(feat (B, D, h, w), logits (B, C, h', w'))`` at native
    resolution; ``images`` (B, 3, H, W) float in [0, 1]. Attributes: ``spec``, ``name``,
    ``layer``, ``weights_hash``, ``module`` (eval mode), ``device``.
    """

    def __init__(self, spec: ModelSpec, module: nn.Module, weights_hash: str) -> None:
        self.spec = spec
        self.name = spec.name
        self.layer = spec.layer
        self.weights_hash = weights_hash
        self.module = module.eval()
        #: the model's capacity: its parameter count (buffers not counted)
        self.n_parameters = int(sum(p.numel() for p in module.parameters()))
        self.device = torch.device("cpu")
        self._kind = None if isinstance(module, torch.jit.ScriptModule) else _torchvision_kind(module)
        self._captured: list[torch.Tensor] = []
        self._hooks: list[Any] = []
        self._mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std).view(1, 3, 1, 1)
        self._tap = self._install_tap()

    # The tap is one of: "logits", "returned" (forward's "features"), "hooks" (captured).
    def _install_tap(self) -> str:
        layer, module = self.layer, self.module
        if layer == LAYER_LOGITS:
            return "logits"
        scripted = isinstance(module, torch.jit.ScriptModule)
        if layer == LAYER_PENULTIMATE:
            if self._kind == "simple":
                last = module.classifier[-1]
                self._hooks.append(last.register_forward_pre_hook(self._capture_input))
                return "hooks"
            if self._kind == "lraspp":
                head = module.classifier
                self._hooks.append(head.low_classifier.register_forward_pre_hook(self._capture_input))
                self._hooks.append(head.high_classifier.register_forward_pre_hook(self._capture_input))
                return "hooks"
            if scripted:
                return "returned"      # checked on the first forward: needs a "features" output
            convs = [m for _, m in module.named_modules()
                     if isinstance(m, nn.Conv2d) and m.out_channels == self.spec.num_classes]
            if not convs:
                return "returned"
            self._hooks.append(convs[-1].register_forward_pre_hook(self._capture_input))
            return "auto"              # a returned "features" entry wins over the found conv
        named = dict(module.named_modules())
        if layer not in named or layer == "":
            names = [n for n in named if n]
            raise ModelError(self.name, f"layer {layer!r} does not exist; use 'penultimate', 'logits' or a "
                             f"module name such as {names[-12:]} ({len(names)} modules in all)")
        if scripted:
            raise ModelError(self.name, f"layer {layer!r}: named layers of a TorchScript model cannot be "
                             "tapped; return a 'features' entry from forward and use layer='penultimate'")
        self._hooks.append(named[layer].register_forward_hook(self._capture_output))
        return "hooks"

    def _capture_input(self, _mod: nn.Module, inputs: tuple) -> None:
        self._captured.append(inputs[0])

    def _capture_output(self, _mod: nn.Module, _inputs: tuple, output: Any) -> None:
        if isinstance(output, dict):
            output = output.get("out")
        elif isinstance(output, (tuple, list)):
            output = output[0] if output else None
        if not isinstance(output, torch.Tensor) or output.ndim != 4:
            raise ModelError(self.name, f"layer {self.layer!r} does not output a (B, D, h, w) tensor "
                             f"(got {type(output).__name__} {getattr(output, 'shape', '')})")
        self._captured.append(output)

    def to(self, device: str | torch.device) -> "SegmentationModel":
        self.device = torch.device(device)
        self.module.to(self.device)
        self._mean, self._std = self._mean.to(self.device), self._std.to(self.device)
        return self

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → resized to ``input_size`` (if set) and standardised."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ModelError(self.name, f"expected images (B, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device, dtype=torch.float32)
        if self.spec.input_size and tuple(x.shape[-2:]) != tuple(self.spec.input_size):
            x = F.interpolate(x, size=self.spec.input_size, mode="bilinear", align_corners=False)
        return (x - self._mean) / self._std

    def _forward_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.module
        if self._kind == "simple":
            return m.classifier(m.backbone(x)["out"]), None      # no final upsampling
        if self._kind == "lraspp":
            return m.classifier(m.backbone(x)), None
        out = m(x)
        if isinstance(out, torch.Tensor):
            return out, None
        if isinstance(out, dict) and isinstance(out.get("out"), torch.Tensor):
            feats = out.get("features")
            return out["out"], feats if isinstance(feats, torch.Tensor) else None
        raise ModelError(self.name, "forward must return a logits tensor or a dict with 'out' "
                         f"(and optionally 'features'); got {type(out).__name__}")

    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature map of the chosen layer and the logits, both (B, ·, h, w) at native resolution."""
        x = self.normalise(images)
        self._captured.clear()
        try:
            logits, returned = self._forward_logits(x)
            captured = list(self._captured)
        finally:
            self._captured.clear()
        if logits.ndim != 4 or logits.shape[0] != x.shape[0]:
            raise ModelError(self.name, f"logits must be (B, C, h, w), got {tuple(logits.shape)}")
        if logits.shape[1] != self.spec.num_classes:
            raise ModelError(self.name, f"the network outputs {logits.shape[1]} classes but "
                             f"num_classes={self.spec.num_classes}")
        if self._tap == "logits":
            feat = logits
        elif self._tap == "returned" or (self._tap == "auto" and returned is not None):
            if returned is None:
                raise ModelError(self.name, "cannot find the penultimate layer: forward returns no "
                                 "'features' entry and no final Conv2d with num_classes outputs was found; "
                                 "use layer='logits' or a module name")
            feat = returned
        else:
            if not captured:
                raise ModelError(self.name, f"layer {self.layer!r} was not run by the forward pass")
            if self._kind == "lraspp" and self.layer == LAYER_PENULTIMATE:
                feat = torch.cat(captured[-2:], dim=1)            # [low (40 ch), x (128 ch)]
            else:
                feat = captured[-1]
        if feat.ndim != 4 or feat.shape[0] != x.shape[0]:
            raise ModelError(self.name, f"layer {self.layer!r} gives shape {tuple(feat.shape)}, not (B, D, h, w)")
        return feat, logits

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()


def _build_on_meta(spec: ModelSpec) -> nn.Module | None:
    """The network with shapes only (``meta`` tensors): no random init, which for a ResNet-101
    head costs seconds per process. None when the factory cannot build on ``meta``."""
    try:
        with torch.device("meta"):
            return build_module(spec)
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - a factory that touches real data while building
        return None


def load_model(spec: ModelSpec, device: str | torch.device = "cpu",
               weights_hash: str | None = None) -> SegmentationModel:
    """Build the network, load its checkpoint strictly, install the layer tap, move to ``device``.

    With a checkpoint, the network is built on the ``meta`` device and the checkpoint's
    tensors are assigned (cast to the network's dtypes), skipping the random init; a network
    that cannot be built that way is built normally and loaded by copy. ``weights_hash`` may
    be passed when already known (it is the SHA-256 of the checkpoint file, or of the seeded
    random-init state dict without one).
    """
    if spec.architecture == TORCHSCRIPT:
        module = build_module(spec)
        wh = weights_hash or file_sha256(Path(spec.checkpoint))  # type: ignore[arg-type]
    elif spec.checkpoint is not None:
        state = read_state_dict(spec)
        module = _build_on_meta(spec)
        if module is not None:
            load_checkpoint_into(spec, module, state, assign=True)
            if any(t.is_meta for t in [*module.parameters(), *module.buffers()]):
                module = None                  # a non-persistent buffer stayed unset: build normally
        if module is None:
            module = build_module(spec)
            load_checkpoint_into(spec, module, state)
        wh = weights_hash or file_sha256(Path(spec.checkpoint))
    else:
        module = build_module(spec)
        wh = weights_hash or state_dict_sha256(module.state_dict())
    for p in module.parameters():
        p.requires_grad_(False)
    return SegmentationModel(spec, module, wh).to(device)
