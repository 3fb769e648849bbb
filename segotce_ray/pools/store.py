"""Content-addressed, crash-safe store of pixel pools (Parquet shards + manifest).

Layout under ``root``::

    root/pools/<key[:2]>/<key>/part-00000.parquet
                               part-00001.parquet ...
                               manifest.json          # written last
    root/tmp/<key>.<nonce>/                            # work in progress, never read

``key = pool_key(...)`` is the SHA-256 of everything that determines a pool (model name,
architecture and weights hash, dataset name and fingerprint, layer, sampling parameters,
seed, pool schema version). A pool is written into a private ``tmp`` folder — shards
first, ``manifest.json`` last — and published with one ``os.rename`` of the folder, so a
reader sees either nothing or the whole pool; :meth:`PoolStore.has` also requires the
manifest. A crash leaves only a ``tmp`` folder, which is invisible and is redone (and swept
by :meth:`PoolStore.sweep_tmp`). Shards are plain Parquet with the explicit Arrow schema of
:func:`segotce_ray.pools.pool.pool_schema`: pandas, polars, duckdb and Spark read them as is,
e.g. ``duckdb.sql("select label, count(*) from 'root/pools/ab/ab…/part-*.parquet' group by 1")``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from segotce_ray.io import atomic_write, write_text
from segotce_ray.pools.pool import POOL_SCHEMA_VERSION, PixelPool

log = logging.getLogger(__name__)

__all__ = ["PoolStore", "PoolWriter", "StoreError", "load_cached", "pool_key", "write_shard"]

MANIFEST = "manifest.json"
SHARD_PATTERN = "part-{:05d}.parquet"


class StoreError(RuntimeError):
    """A pool is missing or damaged; the message names the key and the file."""


def pool_key(*, model: str, weights_hash: str, dataset: str, fingerprint: str, layer: str,
             sampling: dict[str, Any], seed: int, architecture: str = "",
             preprocessing: dict[str, Any] | None = None,
             schema_version: int = POOL_SCHEMA_VERSION) -> str:
    """SHA-256 (hex) of the canonical JSON of every input that determines a pool.

    ``sampling`` holds e.g. ``{"pixels_per_image": 500, "mode": "uniform", "probs": True}``;
    ``preprocessing`` the model's input normalisation/size. Names are included because the
    pixel draws are seeded from them.
    """
    payload = {
        "model": model, "architecture": architecture, "weights": weights_hash,
        "dataset": dataset, "fingerprint": fingerprint, "layer": layer,
        "sampling": sampling, "seed": int(seed), "preprocessing": preprocessing or {},
        "schema_version": int(schema_version),
    }
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _check_key(key: str) -> str:
    if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
        raise StoreError(f"not a pool key: {key!r} (expected lowercase hex)")
    return key


class PoolWriter:
    """Streams one pool's shards into a private tmp folder; :meth:`commit` publishes it.

    ``write(table)`` appends rows (an Arrow table with the pool schema); rows are cut into
    shards of at most ``rows_per_shard``. Use as a context manager: leaving the block
    without :meth:`commit` (an exception) removes the tmp folder.
    """

    def __init__(self, store: "PoolStore", key: str, rows_per_shard: int = 262_144) -> None:
        self.store, self.key = store, _check_key(key)
        self.rows_per_shard = int(rows_per_shard)
        self.tmp = store.root / "tmp" / f"{key}.{uuid.uuid4().hex[:12]}"
        self.tmp.mkdir(parents=True)
        self.shards: list[dict[str, Any]] = []
        self.schema: pa.Schema | None = None
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        self.rows = 0
        self.committed = False

    def _open_shard(self) -> None:
        name = SHARD_PATTERN.format(len(self.shards))
        self._writer = pq.ParquetWriter(self.tmp / name, self.schema, compression="zstd")
        self.shards.append({"file": name, "rows": 0})
        self._rows_in_shard = 0

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def write(self, table: pa.Table) -> None:
        """Append rows; the first table fixes the schema (and its metadata)."""
        if self.committed:
            raise StoreError(f"pool {self.key}: write after commit")
        if self.schema is None:
            self.schema = table.schema
        elif not table.schema.equals(self.schema, check_metadata=False):
            raise StoreError(f"pool {self.key}: shard schema changed mid-pool:\n{table.schema}\n"
                             f"vs\n{self.schema}")
        else:
            table = table.replace_schema_metadata(self.schema.metadata)
        offset = 0
        while offset < table.num_rows:
            if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
                self._close_shard()
                self._open_shard()
            n = min(table.num_rows - offset, self.rows_per_shard - self._rows_in_shard)
            self._writer.write_table(table.slice(offset, n))  # type: ignore[union-attr]
            self._rows_in_shard += n
            self.shards[-1]["rows"] += n
            self.rows += n
            offset += n

    def commit(self, manifest: dict[str, Any]) -> Path:
        """Close shards, write ``manifest.json`` last, publish by renaming the folder."""
        self._close_shard()
        if self.schema is None:
            raise StoreError(f"pool {self.key}: nothing was written (an empty pool is not published)")
        for shard in self.shards:
            shard["sha256"] = _sha256(self.tmp / shard["file"])
        metadata = {k.decode(): v.decode() for k, v in (self.schema.metadata or {}).items()}
        final = self.store.publish(self.key, self.tmp, self.shards, manifest, metadata)
        self.committed = True
        return final

    def abort(self) -> None:
        """Drop the tmp folder (nothing is published)."""
        self._close_shard()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "PoolWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.committed:
            self.abort()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class PoolStore:
    """Content-addressed pool store under ``root`` (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        (self.root / "pools").mkdir(parents=True, exist_ok=True)
        self._manifests: dict[str, dict[str, Any]] = {}   # published ones never change

    def path(self, key: str) -> Path:
        """Folder of a published pool (it may not exist)."""
        key = _check_key(key)
        return self.root / "pools" / key[:2] / key

    def staging(self, key: str) -> Path:
        """A new private tmp folder for ``key``'s shards (written by any node that mounts the
        store; published by :meth:`publish`)."""
        folder = self.root / "tmp" / f"{_check_key(key)}.{uuid.uuid4().hex[:12]}"
        folder.mkdir(parents=True)
        return folder

    def publish(self, key: str, folder: Path, shards: list[dict[str, Any]], manifest: dict[str, Any],
                metadata: dict[str, str]) -> Path:
        """Write ``manifest.json`` last into ``folder`` (shards already there: ``{file, rows,
        sha256}``, in pool order) and publish it as ``key`` by one rename. A pool someone else
        published first wins (this copy is dropped). The manifest records ``published_at``
        (epoch seconds, float: the moment of publication, up to the rename)."""
        full = dict(manifest)
        now = time.time()
        full.update(key=key, rows=sum(int(s["rows"]) for s in shards), shards=shards,
                    schema_version=POOL_SCHEMA_VERSION, metadata=metadata,
                    created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
                    published_at=now)
        write_text(folder / MANIFEST, json.dumps(full, indent=2, sort_keys=True, default=str))
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(folder, final)
        except OSError:
            if self.has(key):                      # another writer published the same pool first
                log.info("pool %s already published by another writer; dropping this copy", key)
                shutil.rmtree(folder, ignore_errors=True)
            elif final.exists():                   # a manifest-less leftover (hand-made): replace it
                shutil.rmtree(final)
                os.rename(folder, final)
            else:
                raise
        return final

    def has(self, key: str) -> bool:
        """True only for a complete, published pool (its manifest is present)."""
        return (self.path(key) / MANIFEST).is_file()

    def manifest(self, key: str) -> dict[str, Any]:
        """A published pool's manifest (a copy); read once per store object, since a key
        names one content and a published pool is never rewritten."""
        if key not in self._manifests:
            path = self.path(key) / MANIFEST
            if not path.is_file():
                raise StoreError(f"pool {key} is not in the store at {self.root}")
            self._manifests[key] = json.loads(path.read_text())
        return dict(self._manifests[key])

    def shard_paths(self, key: str) -> list[Path]:
        folder = self.path(key)
        return [folder / s["file"] for s in self.manifest(key)["shards"]]

    def read_table(self, key: str, columns: list[str] | None = None,
                   memory_map: bool = False) -> pa.Table:
        """All shards of a pool as one Arrow table (schema metadata kept)."""
        man = self.manifest(key)
        tables = []
        for shard in man["shards"]:
            path = self.path(key) / shard["file"]
            if not path.is_file():
                raise StoreError(f"pool {key}: shard {path} listed in the manifest is missing")
            t = pq.read_table(path, columns=columns, memory_map=memory_map)
            if t.num_rows != shard["rows"]:
                raise StoreError(f"pool {key}: shard {path} has {t.num_rows} rows, manifest says {shard['rows']}")
            tables.append(t)
        return pa.concat_tables(tables)

    def load(self, key: str) -> PixelPool:
        """The pool as a :class:`PixelPool` (features float16)."""
        return PixelPool.from_table(self.read_table(key))

    def load_mapped(self, key: str) -> PixelPool:
        """:meth:`load` with the shards memory-mapped instead of read into buffers."""
        return PixelPool.from_table(self.read_table(key, memory_map=True))

    def shape(self, key: str) -> tuple[int, int]:
        """(rows, feature dim) of a published pool, from its manifest (no shard is read)."""
        man = self.manifest(key)
        dim = man.get("metadata", {}).get("dim")
        if dim is None:
            dim = pq.read_schema(self.path(key) / man["shards"][0]["file"]).field("feature").type.list_size
        return int(man["rows"]), int(dim)

    def writer(self, key: str, rows_per_shard: int = 262_144) -> PoolWriter:
        """A :class:`PoolWriter` for streaming a pool in shard by shard."""
        return PoolWriter(self, key, rows_per_shard)

    def write(self, key: str, pool_or_tables: PixelPool | pa.Table | Iterable[pa.Table],
              manifest: dict[str, Any] | None = None, rows_per_shard: int = 262_144) -> Path:
        """Write a whole pool (a PixelPool, a table, or an iterable of tables) and publish it."""
        if isinstance(pool_or_tables, PixelPool):
            tables: Iterable[pa.Table] = [pool_or_tables.to_table()]
        elif isinstance(pool_or_tables, pa.Table):
            tables = [pool_or_tables]
        else:
            tables = pool_or_tables
        with self.writer(key, rows_per_shard) as w:
            for t in tables:
                w.write(t)
            return w.commit(manifest or {})

    def keys(self) -> list[str]:
        """Keys of all published pools."""
        return sorted(p.parent.name for p in (self.root / "pools").glob(f"*/*/{MANIFEST}"))

    def delete(self, key: str) -> None:
        """Remove a published pool (manifest first, so it turns invisible at once)."""
        folder = self.path(key)
        (folder / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(folder, ignore_errors=True)

    def sweep_tmp(self, older_than_s: float = 24 * 3600) -> int:
        """Remove abandoned tmp folders older than ``older_than_s``; returns how many."""
        tmp = self.root / "tmp"
        if not tmp.is_dir():
            return 0
        now, n = time.time(), 0
        for d in tmp.iterdir():
            if d.is_dir() and now - d.stat().st_mtime > older_than_s:
                shutil.rmtree(d, ignore_errors=True)
                n += 1
        return n


def write_shard(table: pa.Table, folder: Path, name: str) -> dict[str, Any]:
    """Write one shard into a pool's staging folder (a tmp name, then one rename, so a retried
    writer never leaves half a file); returns ``{file, rows, sha256, bytes}``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"staging folder {folder} is gone (the pool was abandoned)")
    try:
        path = atomic_write(folder / name, lambda tmp: pq.write_table(table, tmp, compression="zstd"),
                            make_parents=False)
    except FileNotFoundError as exc:
        raise StoreError(f"staging folder {folder} is gone (the pool was abandoned)") from exc
    return {"file": name, "rows": int(table.num_rows), "sha256": _sha256(path),
            "bytes": int(path.stat().st_size)}


#: Per-process cache of pools read by :func:`load_cached`: (root, key) -> PixelPool.
_CACHE: "dict[tuple[str, str], PixelPool]" = {}
CACHE_BYTES = 2 * 1024**3
CACHE_POOLS = 4


def load_cached(root: str, key: str) -> PixelPool:
    """A published pool read once per worker process (shards memory-mapped) and kept in a
    small LRU (at most :data:`CACHE_POOLS` pools and :data:`CACHE_BYTES` of features), so the
    repetitions and metrics of a pair that land on the same worker share one read. Safe
    because keys are content addresses: a key's pool never changes."""
    cache_key = (str(root), key)
    pool = _CACHE.pop(cache_key, None)
    if pool is None:
        pool = PoolStore(root).load_mapped(key)
    _CACHE[cache_key] = pool                      # most recently used last
    while len(_CACHE) > 1 and (len(_CACHE) > CACHE_POOLS or
                               sum(p.features.nbytes for p in _CACHE.values()) > CACHE_BYTES):
        _CACHE.pop(next(iter(_CACHE)))
    return pool
