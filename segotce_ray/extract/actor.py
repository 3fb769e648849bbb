"""The extraction actor: loads models (LRU by weights hash), runs chunks of images, writes shards.
"""


from __future__ import annotations

import json
import logging
import os
import pickle
from collections import OrderedDict, defaultdict
from typing import Any

import numpy as np
import pyarrow as pa

from segotce_ray.inputs.models import ModelError, ModelSpec, load_model
from segotce_ray.pools.degeneracy import partial_stats
from segotce_ray.pools.pool import pool_schema
from segotce_ray.extract.sampling import sample_feature_maps, sample_pixels
from segotce_ray.seeds import stable_seed
from segotce_ray.pools.store import SHARD_PATTERN, write_shard


log = logging.getLogger(__name__)

MODEL_CACHE = 4         # loaded models an extraction actor keeps (LRU)


# --------------------------------------------------------------------------- Ray stages

def load_chunk(batch: dict[str, np.ndarray], *, jobs: dict[int, dict[str, Any]]) -> dict[str, np.ndarray]:
    """Read step (Ray Data task): load each chunk's images, draw their pixels.

    In: rows ``{request, chunk, start, stop}``. Out: the same rows plus ``payload`` —
    a pickled list of per-image dicts ``{image_id, image (H,W,3) uint8, rows, cols, labels,
    height, width}`` or ``{image_id, error}`` for a file that cannot be used.
    """
    payloads = []
    for req_i, start, stop in zip(batch["request"], batch["start"], batch["stop"]):
        job = jobs[int(req_i)]
        ds = job["dataset"]
        items = []
        for sample in ds.samples[int(start):int(stop)]:
            try:
                image, label = ds.load(sample)
                if image.shape[:2] != label.shape:
                    raise ValueError(f"image {sample.image_path} is {image.shape[:2]} but its label "
                                     f"{sample.label_path} is {label.shape}")
                seed = stable_seed(job["seed"], job["model"], ds.name, sample.image_id)
                rows, cols, labels = sample_pixels(label, job["pixels_per_image"], seed=seed,
                                                   ignore_index=ds.ignore_index, mode=job["sampling"])
                items.append({"image_id": sample.image_id, "image": np.ascontiguousarray(image, np.uint8),
                              "rows": rows, "cols": cols, "labels": labels,
                              "height": int(label.shape[0]), "width": int(label.shape[1])})
            except Exception as exc:  # noqa: BLE001 - recorded per file, policy decided in the driver
                items.append({"image_id": sample.image_id, "error": f"{type(exc).__name__}: {exc}",
                              "kind": "image"})
        payloads.append(pickle.dumps(items, protocol=5))
    out = {k: batch[k] for k in ("request", "chunk", "start", "stop")}
    out["payload"] = np.array(payloads, dtype=object)
    return out


class ChunkFeatureExtractor:
    """Actor-side callable: serves every model of the run, writes each chunk's pool rows as a
    Parquet shard into the pool's staging folder in the store, returns only small metadata.

    requests: ``{request index: {model, meta (schema metadata), keep_probs, staging}}``;
    models: ``{name: (ModelSpec, weights hash)}``. Models are loaded on first use and kept in
    an LRU of ``cache_size`` (keyed by name and weights hash), so one actor start-up serves the
    whole zoo. Out rows: ``{request, chunk, images, file, rows, sha256, bytes, kept_images,
    dim, num_probs, errors (JSON)}``; ``file`` is ``""`` when the chunk had no rows.
    Every error stays in its chunk's row (a model that fails to load is reported as
    ``kind="load"``), so one bad model never stops the pipeline.
    """

    def __init__(self, requests: dict[int, dict[str, Any]], models: dict[str, tuple[ModelSpec, str]],
                 device: str = "cpu", threads: int | None = None, amp: bool = True,
                 cache_size: int = MODEL_CACHE) -> None:
        import torch

        if threads:                                   # never more threads than this node has cores
            torch.set_num_threads(max(1, min(int(threads), os.cpu_count() or 1)))
        self.torch = torch
        self.device = device
        self.amp = amp and device.startswith("cuda")
        self.requests, self.models, self.cache_size = requests, models, max(1, int(cache_size))
        self.loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self.forward_images = 0
        log.info("extraction actor for %d model(s) on %s (%d torch threads, autocast %s)", len(models),
                 device, torch.get_num_threads(), self.amp)

    def model(self, name: str) -> Any:
        """The loaded model ``name`` (LRU); a load failure is cached and raised as ModelError."""
        spec, weights_hash = self.models[name]
        key = (name, weights_hash)
        if key not in self.loaded:
            try:
                self.loaded[key] = load_model(spec, device=self.device, weights_hash=weights_hash)
            except Exception as exc:  # noqa: BLE001 - remembered: the next chunk fails fast
                self.loaded[key] = exc if isinstance(exc, ModelError) else \
                    ModelError(spec.name, f"{type(exc).__name__}: {exc}")
            while len(self.loaded) > self.cache_size:
                self.loaded.popitem(last=False)
        self.loaded.move_to_end(key)
        got = self.loaded[key]
        if isinstance(got, BaseException):
            raise got
        return got

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        cols: dict[str, list] = defaultdict(list)
        for req_i, chunk, payload in zip(batch["request"], batch["chunk"], batch["payload"]):
            items = pickle.loads(payload)
            req = self.requests[int(req_i)]
            shard, dims, facts = {"file": "", "rows": 0, "sha256": "", "bytes": 0}, (0, 0), {}
            try:
                table, errors = self._chunk(req, items)
                if table is not None:
                    shard = write_shard(table, req["staging"], SHARD_PATTERN.format(int(chunk)))
                    dims = (int(table.schema.metadata[b"dim"]), int(table.schema.metadata.get(b"num_probs", 0)))
                    shard["kept_images"] = len(set(table.column("image_id").to_pylist()))
                    facts = _chunk_facts(table, dims[0], req.get("ignore_index", 255))
                    facts["parameters"] = self.model(req["model"]).n_parameters
            except ModelError as exc:
                errors = [{"image_id": "", "kind": "load", "error": str(exc)}]
            except Exception as exc:  # noqa: BLE001 - a forward or a store write failed: this chunk
                errors = [{"image_id": "", "kind": "load",
                           "error": str(ModelError(req["model"], f"{type(exc).__name__}: {exc}"))}]
            for k in ("file", "rows", "sha256", "bytes"):
                cols[k].append(shard[k])
            cols["kept_images"].append(shard.get("kept_images", 0))
            cols["dim"].append(dims[0])
            cols["num_probs"].append(dims[1])
            cols["images"].append(len(items))
            cols["errors"].append(json.dumps(errors))
            cols["facts"].append(json.dumps(facts))
        out = {"request": batch["request"], "chunk": batch["chunk"]}
        out.update({k: np.array(v, dtype=object if k in ("file", "sha256", "errors", "facts") else np.int64)
                    for k, v in cols.items()})
        return out

    def _chunk(self, req: dict[str, Any], items: list[dict[str, Any]]
               ) -> tuple[pa.Table | None, list[dict[str, str]]]:
        torch = self.torch
        errors = [{"image_id": it["image_id"], "error": it["error"], "kind": it["kind"]}
                  for it in items if "error" in it]
        good = [it for it in items if "error" not in it]
        model = self.model(req["model"]) if good else None
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, it in enumerate(good):
            by_shape[it["image"].shape[:2]].append(i)
        results: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        for idx in by_shape.values():
            batch = np.stack([good[i]["image"] for i in idx])               # (B, H, W, 3) uint8
            x = torch.from_numpy(batch).to(self.device, non_blocking=True).permute(0, 3, 1, 2)
            x = x.float().div_(255.0)
            height, width = good[idx[0]]["height"], good[idx[0]]["width"]
            rows = [good[i]["rows"] for i in idx]
            cols = [good[i]["cols"] for i in idx]
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                feat, logits = model.features(x)
                finite = torch.isfinite(feat).flatten(1).all(dim=1)
                # one grid_sample per batch, float16 on the device, one transfer back
                f16 = sample_feature_maps(feat, rows, cols, height, width).half()
                p16 = None
                if req["keep_probs"]:
                    p16 = torch.softmax(sample_feature_maps(logits, rows, cols, height, width), dim=2).half()
            finite = finite.cpu().numpy()
            f16 = f16.cpu().numpy()
            p16 = p16.cpu().numpy() if p16 is not None else None
            for b, i in enumerate(idx):
                it, n = good[i], len(rows[b])
                f = f16[b, :n]
                if not finite[b]:
                    errors.append({"image_id": it["image_id"], "kind": "model",
                                   "error": f"{str(ModelError(model.name, 'NaN/inf in the feature map'))}"
                                            f" of image {it['image_id']!r}"})
                    continue
                if not np.isfinite(f).all():
                    errors.append({"image_id": it["image_id"], "kind": "model",
                                   "error": f"model {model.name!r}: feature values overflow float16 "
                                            f"in image {it['image_id']!r}"})
                    continue
                results[i] = (f, p16[b, :n] if p16 is not None else None)
        self.forward_images += len(good)
        order = [i for i in range(len(good)) if i in results]
        return _pixel_table([good[i] for i in order], [results[i] for i in order], req["meta"]), errors


def _pixel_table(items: list[dict[str, Any]], results: list[tuple[np.ndarray, np.ndarray | None]],
                 meta: dict[str, str]) -> pa.Table | None:
    """Pool rows of a chunk as an Arrow table with the pool schema (None when no rows)."""
    if not items:
        return None
    counts = [len(it["rows"]) for it in items]
    feats = np.concatenate([r[0] for r in results])
    dim = feats.shape[1]
    probs = None
    if results[0][1] is not None:
        probs = np.concatenate([r[1] for r in results]).astype(np.float16)
    cols = [
        pa.array(np.repeat(np.array([it["image_id"] for it in items], dtype=object), counts).tolist(),
                 type=pa.string()),
        pa.array(np.concatenate([it["labels"] for it in items]).astype(np.int16), type=pa.int16()),
        pa.array(np.concatenate([it["rows"] for it in items]).astype(np.int32), type=pa.int32()),
        pa.array(np.concatenate([it["cols"] for it in items]).astype(np.int32), type=pa.int32()),
        pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), type=pa.float16()), dim),
    ]
    if probs is not None:
        cols.append(pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1), type=pa.float16()),
                                                      probs.shape[1]))
    md = dict(meta, dim=str(dim))
    if probs is not None:
        md["num_probs"] = str(probs.shape[1])
    return pa.Table.from_arrays(cols, schema=pool_schema(dim, probs.shape[1] if probs is not None else None, md))


def _chunk_facts(table: pa.Table, dim: int, ignore_index: int) -> dict[str, Any]:
    """:func:`segotce_ray.pools.degeneracy.partial_stats` of one shard's features."""
    feats = table.column("feature").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    return partial_stats(feats.reshape(-1, dim), table.column("label").to_numpy(), ignore_index)
