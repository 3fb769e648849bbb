"""Tiny segmentation networks for the model/extraction tests (importable by Ray workers as
``tests.tiny_segmodels``: the driver's working directory is on their ``sys.path``)."""

from __future__ import annotations

import os

import torch
import torch.nn as nn


class TinySegNet(nn.Module):
    """conv(3→8, /2) → conv(8→16, /2) → 1×1 classifier (16→C); logits at 1/4 resolution.

    ``counter``: a file that gets one byte appended per forward pass (counts forwards
    across processes); ``nan``: poison the features with NaN; ``returns``: ``"tensor"``
    (logits) or ``"dict"`` (``{"out": logits, "features": penultimate}``); ``delay``: seconds
    to sleep per forward pass (a slow model, for the overlap tests).
    """

    def __init__(self, num_classes: int = 3, counter: str | None = None, nan: bool = False,
                 returns: str = "tensor", delay: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(16, num_classes, 1)
        self.counter, self.nan, self.returns, self.delay = counter, nan, returns, delay

    def forward(self, x: torch.Tensor):
        if self.delay:
            import time

            time.sleep(self.delay)
        if self.counter:
            with open(self.counter, "ab") as fh:
                fh.write(b"x")
                fh.flush()
                os.fsync(fh.fileno())
        f = self.body(x)
        if self.nan:
            f = f * float("nan")
        out = self.classifier(f)
        if self.returns == "dict":
            return {"out": out, "features": f}
        return out


class TinyLogitsNet(nn.Module):
    """TorchScript-friendly twin of :class:`TinySegNet` returning the logits tensor."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.classifier = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class TinyDictNet(TinyLogitsNet):
    """TorchScript-friendly: returns ``{"out": logits, "features": penultimate}``."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        f = self.body(x)
        return {"out": self.classifier(f), "features": f}


def tiny_fcn(num_classes: int = 3, head: str = "fcn") -> nn.Module:
    """A torchvision FCN / DeepLabV3 with a 2-conv backbone (fast to build)."""
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
    from torchvision.models.segmentation.fcn import FCN, FCNHead

    backbone = IntermediateLayerGetter(
        nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                      nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()), {"3": "out"})
    if head == "fcn":
        return FCN(backbone, FCNHead(16, num_classes), None)
    return DeepLabV3(backbone, DeepLabHead(16, num_classes), None)


def tiny_segnet(num_classes: int = 3, counter: str | None = None, nan: bool = False,
                returns: str = "tensor", delay: float = 0.0) -> nn.Module:
    return TinySegNet(num_classes, counter, nan, returns, delay)


def not_a_module(num_classes: int = 3):
    return {"num_classes": num_classes}


def forward_count(path) -> int:
    """Forward passes recorded in a counter file (0 when it does not exist)."""
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
