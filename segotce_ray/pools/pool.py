"""Pixel pools: the sampled, labelled per-pixel features of one model on one dataset.

A pool is what every metric consumes. On disk it is a set of Parquet shards with the
explicit Arrow schema of :func:`pool_schema`; in memory it is a :class:`PixelPool`.

Columns (P = number of pixels in the pool, D = feature dimension, C = source classes):

- ``image_id``  string              — which image the pixel came from
- ``label``     int16               — target-side label (train id), never the ignore index
- ``row``/``col`` int32             — pixel coordinates in the label map
- ``feature``   fixed_size_list<float16>[D] — the model's feature at that pixel
- ``probs``     fixed_size_list<float16>[C] — optional: the source head's softmax there

Schema metadata (all strings): ``model``, ``dataset``, ``layer``, ``dim``,
``fingerprint``, ``schema_version``, ``package_version``, ``num_classes`` (of the
dataset's label space), ``class_names`` (JSON list), ``ignore_index``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

POOL_SCHEMA_VERSION = 1


def pool_schema(dim: int, num_probs: int | None = None,
                metadata: dict[str, str] | None = None) -> pa.Schema:
    """The Arrow schema of a pool shard with ``dim``-dim features (and ``num_probs`` probs)."""
    fields = [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("label", pa.int16(), nullable=False),
        pa.field("row", pa.int32(), nullable=False),
        pa.field("col", pa.int32(), nullable=False),
        pa.field("feature", pa.list_(pa.float16(), dim), nullable=False),
    ]
    if num_probs:
        fields.append(pa.field("probs", pa.list_(pa.float16(), num_probs), nullable=False))
    md = {k: str(v) for k, v in (metadata or {}).items()}
    return pa.schema(fields, metadata=md or None)


@dataclass
class PixelPool:
    """In-memory pixel pool.

    features: (P, D) float16; labels: (P,) int16; image_ids: (P,) str;
    rows, cols: (P,) int32; probs: (P, C) float16 or None; meta: schema metadata.
    """

    features: np.ndarray
    labels: np.ndarray
    image_ids: np.ndarray | None = None
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    probs: np.ndarray | None = None
    meta: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.features = np.asarray(self.features)
        self.labels = np.asarray(self.labels)
        if self.features.ndim != 2:
            raise ValueError(f"pool {self.name!r}: features must be (P, D), got shape {self.features.shape}")
        p = self.features.shape[0]
        if self.labels.shape != (p,):
            raise ValueError(f"pool {self.name!r}: labels shape {self.labels.shape} != ({p},)")
        if self.image_ids is None:
            self.image_ids = np.array([""] * p, dtype=object)
        if self.rows is None:
            self.rows = np.zeros(p, dtype=np.int32)
        if self.cols is None:
            self.cols = np.zeros(p, dtype=np.int32)
        if self.probs is not None and self.probs.shape[0] != p:
            raise ValueError(f"pool {self.name!r}: probs has {self.probs.shape[0]} rows, features {p}")

    @property
    def name(self) -> str:
        return f"{self.meta.get('model', '?')}@{self.meta.get('dataset', '?')}"

    def __len__(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])

    @property
    def class_names(self) -> list[str] | None:
        raw = self.meta.get("class_names")
        return json.loads(raw) if raw else None

    def to_table(self) -> pa.Table:
        """Arrow table with the pool schema (features/probs cast to float16)."""
        feats = np.ascontiguousarray(self.features, dtype=np.float16)
        p, d = feats.shape
        cols = [
            pa.array(self.image_ids.astype(str).tolist() if p else [], type=pa.string()),
            pa.array(self.labels.astype(np.int16), type=pa.int16()),
            pa.array(self.rows.astype(np.int32), type=pa.int32()),
            pa.array(self.cols.astype(np.int32), type=pa.int32()),
            pa.FixedSizeListArray.from_arrays(pa.array(feats.reshape(-1), type=pa.float16()), d),
        ]
        nprobs = None
        if self.probs is not None:
            probs = np.ascontiguousarray(self.probs, dtype=np.float16)
            nprobs = probs.shape[1]
            cols.append(pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1), type=pa.float16()), nprobs))
        meta = dict(self.meta)
        meta.setdefault("dim", str(d))
        meta.setdefault("schema_version", str(POOL_SCHEMA_VERSION))
        return pa.Table.from_arrays(cols, schema=pool_schema(d, nprobs, meta))

    @classmethod
    def from_table(cls, table: pa.Table) -> "PixelPool":
        """Inverse of :meth:`to_table` (concatenates chunks; features stay float16)."""
        md = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        table = table.combine_chunks()

        def fixed(name: str) -> np.ndarray:
            col = table.column(name).chunk(0) if table.num_rows else None
            width = table.schema.field(name).type.list_size
            if col is None:
                return np.zeros((0, width), dtype=np.float16)
            return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)

        probs = fixed("probs") if "probs" in table.column_names else None
        return cls(
            features=fixed("feature"),
            labels=table.column("label").to_numpy().astype(np.int16),
            image_ids=np.asarray(table.column("image_id").to_pylist(), dtype=object),
            rows=table.column("row").to_numpy().astype(np.int32),
            cols=table.column("col").to_numpy().astype(np.int32),
            probs=probs,
            meta=md,
        )
