"""Pixel sampling and feature sampling: pure functions, no Ray, no files.

Per image, ``k`` valid (non-ignore) pixels are drawn with a generator seeded from a stable
hash of ``(seed, model, dataset, image_id)`` (:func:`stable_seed`, SHA-256 — never Python's
salted ``hash()``), so the same inputs give the same pixels on any worker, in any order.

Features are then bilinearly sampled from the (low-resolution) feature map at the label
coordinates, without upsampling the map. For a label map of size ``H×W`` and a feature
map of size ``h×w``, the pixel centre ``(r, c)`` maps to the feature-map position

    y = (r + ½)·h/H − ½,    x = (c + ½)·w/W − ½        (clamped to [0, h−1], [0, w−1])

which is exactly what ``F.interpolate(f, (H, W), mode="bilinear", align_corners=False)``
computes at ``[r, c]`` — i.e. ``grid_sample(..., align_corners=False,
padding_mode="border")`` at the normalised pixel centre. Memory is ``O(k·D)`` instead of
``O(H·W·D)`` (a 1024×2048 image × 256 channels would be 2 GB upsampled).
"""


from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

SamplingMode = Literal["uniform", "balanced"]
SAMPLING_MODES: tuple[str, ...] = ("uniform", "balanced")


def sample_pixels(label: np.ndarray, k: int, *, seed: int, ignore_index: int = 255,
                  mode: SamplingMode = "uniform") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw up to ``k`` valid pixels of one label map, without replacement.

    label: (H, W) integer train ids (``ignore_index`` = void). ``mode="uniform"`` draws
    uniformly among valid pixels; ``"balanced"`` splits ``k`` as evenly as possible between
    the classes present (water-filling: a class with fewer pixels than its share gives its
    rest to the others). When the image has ``≤ k`` valid pixels all of them are taken.

    Returns ``rows, cols`` (n,) int32 and ``labels`` (n,) int16, ordered by raster position.
    """
    if mode not in SAMPLING_MODES:
        raise ValueError(f"sampling mode {mode!r}: expected one of {SAMPLING_MODES}")
    if k < 1:
        raise ValueError(f"pixels per image must be >= 1, got {k}")
    lab = np.asarray(label)
    if lab.ndim != 2:
        raise ValueError(f"label map must be (H, W), got shape {lab.shape}")
    flat = lab.reshape(-1)
    valid = np.flatnonzero(flat != ignore_index)
    rng = np.random.default_rng(seed)
    if valid.size <= k:
        chosen = valid
    elif mode == "uniform":
        chosen = rng.choice(valid, size=k, replace=False)
    else:
        classes, inverse, counts = np.unique(flat[valid], return_inverse=True, return_counts=True)
        alloc = _water_fill(counts, k, rng)
        order = np.argsort(inverse, kind="stable")           # valid pixels grouped by class
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        picks = [rng.choice(valid[order[s:s + n]], size=a, replace=False)
                 for s, n, a in zip(starts, counts, alloc) if a > 0]
        chosen = np.concatenate(picks) if picks else valid[:0]
    chosen = np.sort(chosen)
    width = lab.shape[1]
    rows = (chosen // width).astype(np.int32)
    cols = (chosen % width).astype(np.int32)
    return rows, cols, flat[chosen].astype(np.int16)


def _water_fill(counts: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``k ≤ counts.sum()`` into per-class amounts ``≤ counts``, as equal as possible."""
    alloc = np.zeros_like(counts)
    remaining = int(min(k, counts.sum()))
    while remaining > 0:
        open_ = np.flatnonzero(alloc < counts)
        share = remaining // open_.size
        if share == 0:                                       # fewer left than open classes
            alloc[rng.choice(open_, size=remaining, replace=False)] += 1
            break
        add = np.minimum(share, counts[open_] - alloc[open_])
        alloc[open_] += add
        remaining -= int(add.sum())
    return alloc


def sample_feature_map(feature_map: torch.Tensor, rows: np.ndarray | torch.Tensor,
                       cols: np.ndarray | torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear samples of a ``(D, h, w)`` map at pixel centres of an ``height×width`` grid.

    Equal to ``F.interpolate(feature_map[None], (height, width), mode="bilinear",
    align_corners=False)[0, :, rows, cols].T`` without building the upsampled map.
    Returns ``(n, D)`` float32 on the map's device.
    """
    if feature_map.ndim != 3:
        raise ValueError(f"feature map must be (D, h, w), got shape {tuple(feature_map.shape)}")
    dev = feature_map.device
    r = torch.as_tensor(np.asarray(rows), dtype=torch.float32, device=dev)
    c = torch.as_tensor(np.asarray(cols), dtype=torch.float32, device=dev)
    if r.numel() == 0:
        return torch.zeros((0, feature_map.shape[0]), dtype=torch.float32, device=dev)
    gx = (2.0 * (c + 0.5) / width) - 1.0
    gy = (2.0 * (r + 0.5) / height) - 1.0
    grid = torch.stack([gx, gy], dim=-1).view(1, 1, -1, 2)
    out = F.grid_sample(feature_map[None].float(), grid, mode="bilinear",
                        padding_mode="border", align_corners=False)   # (1, D, 1, n)
    return out[0, :, 0, :].T.contiguous()


def sample_feature_maps(feature_maps: torch.Tensor, rows: list[np.ndarray], cols: list[np.ndarray],
                        height: int, width: int) -> torch.Tensor:
    """Batched :func:`sample_feature_map`: one ``grid_sample`` for a ``(B, D, h, w)`` batch.

    ``rows[b]``, ``cols[b]``: pixel coordinates of image ``b`` (lengths may differ; shorter
    lists are padded and the padding is dropped by the caller). Returns ``(B, n_max, D)``
    float32 on the maps' device; row ``b`` holds image ``b``'s samples in its first
    ``len(rows[b])`` entries.
    """
    if feature_maps.ndim != 4 or len(rows) != feature_maps.shape[0] or len(cols) != len(rows):
        raise ValueError(f"need (B, D, h, w) maps and B coordinate lists, got {tuple(feature_maps.shape)} "
                         f"and {len(rows)}/{len(cols)} lists")
    b, d = feature_maps.shape[:2]
    n_max = max((len(r) for r in rows), default=0)
    dev = feature_maps.device
    if n_max == 0:
        return torch.zeros((b, 0, d), dtype=torch.float32, device=dev)
    pix = np.zeros((b, n_max, 2), dtype=np.float32)             # (col, row) per sample, zero-padded
    for i, (r, c) in enumerate(zip(rows, cols)):
        pix[i, :len(r), 0] = c
        pix[i, :len(r), 1] = r
    grid = torch.from_numpy(pix).to(dev)
    grid[..., 0] = 2.0 * (grid[..., 0] + 0.5) / width - 1.0
    grid[..., 1] = 2.0 * (grid[..., 1] + 0.5) / height - 1.0
    out = F.grid_sample(feature_maps.float(), grid[:, None], mode="bilinear",
                        padding_mode="border", align_corners=False)    # (B, D, 1, n_max)
    return out[:, :, 0, :].permute(0, 2, 1)
