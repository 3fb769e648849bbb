"""Ray tasks that score repetitions of a pair, and the pool references they share.
"""


from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segotce_ray.pools.pool import PixelPool
from segotce_ray.pools.views import PoolSource, ProbsView, StoredPool, check_pool, probs_as_features
from segotce_ray.scoring.adapters import MetricSpec, task_memory_bytes
from segotce_ray.scoring.rows import ScorePair, failed_row, result_row
from segotce_ray.seeds import repetition_seed

log = logging.getLogger(__name__)

#: GPU share per task when the cluster has GPUs and ``num_gpus`` is not given. One task per
#: GPU: on an H100 at N = 10⁴ one repetition already saturates the card (2 or 4 processes
#: sharing it gave 0.85–0.88× the throughput of one; ``bench_fanout.py --gpu-share``). Pass
#: ``num_gpus=0.25`` or so for small N, where a single solve leaves the GPU idle.
DEFAULT_GPU_FRACTION = 1.0


def _run_repetitions(source: "PixelPool | StoredPool | None", target: "PixelPool | StoredPool",
                     spec: MetricSpec, pair: ScorePair, ks: Sequence[int],
                     seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Task body: repetitions ``ks`` of one pair; an error fails that repetition only. Pools
    given as :class:`StoredPool` are read here, on the worker (a bad one fails the task's rows)."""
    try:
        source = source.open() if isinstance(source, StoredPool) else source
        target = target.open() if isinstance(target, StoredPool) else target
    except Exception as exc:  # noqa: BLE001 - the reason names the pool
        return [failed_row(pair, spec.name, k, s, str(exc)) for k, s in zip(ks, seeds)]
    rows = []
    for k, seed in zip(ks, seeds):
        t0, started = time.perf_counter(), time.time()
        try:
            values = dict(spec.repetition(source, target, seed, **spec.params))
            score = float(values.get("score", math.nan))
            if not math.isfinite(score):
                raise FloatingPointError(f"non-finite score {score}")
        except Exception as exc:  # noqa: BLE001 - recorded, the other pairs go on
            row = failed_row(pair, spec.name, k, seed, f"{spec.name} repetition {k} of "
                             f"{pair.model!r} → {pair.target!r}: {type(exc).__name__}: {exc}",
                             started_at=started)
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            continue
        rows.append(result_row(pair, spec.name, k, seed, seconds=time.perf_counter() - t0,
                               started_at=started, finished_at=time.time(),
                               **{key: values[key] for key in ("score", "w_t", "w_d", "iterations",
                                                               "converged", "n_source", "n_target",
                                                               "solver", "passes", "joint")
                                  if key in values}))
    return rows


def _shape_on_worker(root: str, key: str) -> tuple[int, int]:
    """(rows, dim) of a stored pool, read on a worker (the driver opens no shard)."""
    from segotce_ray.pools.store import PoolStore

    return PoolStore(root).shape(key)


class _PoolRefs:
    """Loads each pool at most once, puts it in the object store, releases it when unused."""

    def __init__(self, pools: Mapping[tuple[str, str], PoolSource] | None, store: Any,
                 ignore_index: int) -> None:
        self.pools = dict(pools or {})
        self.store = store
        self.ignore_index = ignore_index
        self.refs: dict[tuple[str, str], Any] = {}
        self.info: dict[tuple[str, str], tuple[int, int]] = {}  # rows, dim
        self.errors: dict[tuple[str, str], str] = {}
        self.users: dict[tuple[str, str], int] = {}

    def describe(self, key: tuple[str, str]) -> str:
        src = self.pools.get(key)
        if isinstance(src, ProbsView):
            src = src.pool
        where = f" (store key {src})" if isinstance(src, str) else ""
        return f"pool of model {key[0]!r} on dataset {key[1]!r}{where}"

    def _load(self, key: tuple[str, str]) -> PixelPool:
        if key not in self.pools:
            raise LookupError("no pool was given for it")
        src = self.pools[key]
        if isinstance(src, ProbsView):
            return probs_as_features(self._load_source(src.pool))
        return self._load_source(src)

    def _load_source(self, src: Any) -> PixelPool:
        if isinstance(src, BaseException):
            raise RuntimeError(f"extraction failed: {type(src).__name__}: {src}")
        if isinstance(src, PixelPool):
            return src
        if isinstance(src, str):
            if self.store is None:
                raise LookupError("a store key was given but no store")
            if hasattr(self.store, "has") and not self.store.has(src):
                raise LookupError("missing from the store")
            pool = self.store.load(src)
            if not isinstance(pool, PixelPool):
                raise TypeError(f"store returned {type(pool).__name__}, not a PixelPool")
            return pool
        raise TypeError(f"expected a PixelPool, a store key or an error, got {type(src).__name__}")

    def _stored(self, key: tuple[str, str]) -> "StoredPool | None":
        """A :class:`StoredPool` for a store key in a :class:`PoolStore` (read by the tasks
        themselves: no pool byte passes through the driver), else None."""
        from segotce_ray.pools.store import PoolStore

        src = self.pools.get(key)
        if not (isinstance(src, str) and isinstance(self.store, PoolStore)):
            return None
        if not self.store.has(src):
            raise LookupError("missing from the store")
        man = self.store.manifest(src)
        dim = man.get("metadata", {}).get("dim")
        if dim is None:   # a pool from before manifests named the dim: a worker reads its schema
            import ray

            self.info[key] = ray.get(ray.remote(num_cpus=0)(_shape_on_worker).remote(
                str(self.store.root), src))
        else:
            self.info[key] = (int(man["rows"]), int(dim))
        return StoredPool(str(self.store.root), src, self.ignore_index, self.describe(key))

    def acquire(self, key: tuple[str, str]) -> Any:
        """What a task gets for the pool: a :class:`StoredPool` (store keys of a PoolStore) or
        an ObjectRef (pools given in memory or through another store, put once); raises with
        the reason if the pool is unavailable."""
        if key in self.errors:
            raise RuntimeError(self.errors[key])
        if key not in self.refs:
            import ray

            try:
                stored = self._stored(key)
                if stored is None:
                    pool = self._load(key)
                    check_pool(pool, self.ignore_index)
                    self.info[key] = (len(pool), pool.dim)
            except Exception as exc:  # noqa: BLE001 - recorded per pool
                self.errors[key] = f"{self.describe(key)}: {type(exc).__name__}: {exc}"
                log.warning("%s", self.errors[key])
                raise RuntimeError(self.errors[key]) from exc
            self.refs[key] = stored if stored is not None else ray.put(_shareable(pool))
        return self.refs[key]

    def add_users(self, key: tuple[str, str], n: int) -> None:
        self.users[key] = self.users.get(key, 0) + n

    def release(self, key: tuple[str, str], n: int = 1) -> None:
        self.users[key] = self.users.get(key, 0) - n
        if self.users[key] <= 0:
            self.refs.pop(key, None)  # the object store may now evict it


def _shareable(pool: PixelPool) -> PixelPool:
    """The pool with image ids as a fixed-width array: all columns travel zero-copy."""
    ids = pool.image_ids
    if ids is not None and ids.dtype == object:
        ids = np.asarray(ids, dtype=str)
    return PixelPool(features=pool.features, labels=pool.labels, image_ids=ids, rows=pool.rows,
                     cols=pool.cols, probs=pool.probs, meta=dict(pool.meta))


# --------------------------------------------------------------------------- fan-out


@dataclass
class _Unit:
    pair: ScorePair
    spec: MetricSpec
    ks: list[int]
    seeds: list[int]


class PairScorer:
    """Submits repetition tasks for pairs; holds the shared pool references.

    The scheduling loop is the caller's (:func:`score_pairs` runs all repetitions; an adaptive
    schedule can call :meth:`submit` for the repetitions it still wants and :meth:`collect`
    each finished reference from ``ray.wait``).
    """

    def __init__(self, pools: Mapping[tuple[str, str], PoolSource] | None = None, store: Any = None,
                 *, seed: int = 0, ignore_index: int = 255, num_cpus: float = 1,
                 num_gpus: float | None = None, max_retries: int = 3,
                 fail_infeasible: bool = True, autoscaling: str = "auto") -> None:
        import ray

        from segotce_ray.cluster.placement import autoscaler_node_types, memory_limit

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call segotce_ray.cluster.runtime.init_ray() first")
        # A task asking more memory than any node has (or than any node the autoscaler can
        # add) would wait forever: see segotce_ray.placement.
        limit = memory_limit(ray.nodes(), None if autoscaling == "off" else autoscaler_node_types(),
                             autoscaling)
        self.max_node_memory = limit or 0
        self.fail_infeasible = fail_infeasible and limit is not None
        if num_gpus is None:
            num_gpus = DEFAULT_GPU_FRACTION if ray.cluster_resources().get("GPU", 0) > 0 else 0
        self.seed = int(seed)
        self.num_cpus = num_cpus
        self.num_gpus = float(num_gpus)
        self.max_retries = int(max_retries)
        self.pool_refs = _PoolRefs(pools, store, ignore_index)
        self._remote = ray.remote(_run_repetitions)
        self._pending: dict[Any, _Unit] = {}

    def add_pools(self, pools: Mapping[tuple[str, str], PoolSource]) -> None:
        """Pools that became available (e.g. published while scoring runs); a pool already
        given keeps its first outcome."""
        for key, src in pools.items():
            self.pool_refs.pools.setdefault(key, src)

    def pools_of(self, pair: ScorePair, spec: MetricSpec) -> list[tuple[str, str]]:
        """The (model, dataset) pools a unit of (pair, spec) reads."""
        return self._keys(pair, spec)

    def seeds(self, pair: ScorePair, ks: Sequence[int]) -> list[int]:
        return [repetition_seed(self.seed, pair.model, pair.target, k) for k in ks]

    @staticmethod
    def _keys(pair: ScorePair, spec: MetricSpec) -> list[tuple[str, str]]:
        keys = [(pair.model, pair.target)]
        if spec.needs_source:
            keys.insert(0, (pair.model, pair.source))
        return keys

    def reserve(self, pair: ScorePair, spec: MetricSpec, n_tasks: int = 1) -> None:
        """Declare that ``n_tasks`` tasks of (pair, spec) will be submitted (keeps pools alive)."""
        for key in self._keys(pair, spec):
            self.pool_refs.add_users(key, n_tasks)

    def submit(self, pair: ScorePair, spec: MetricSpec, ks: Sequence[int]) -> Any:
        """Submit repetitions ``ks`` of ``pair`` as one task.

        Returns the task's ObjectRef, or the list of failed rows when the pair cannot run
        (bad pool, feature dimensions that differ); either way the reservation is consumed.
        """
        ks = [int(k) for k in ks]
        seeds = self.seeds(pair, ks)
        skey, tkey = (pair.model, pair.source), (pair.model, pair.target)
        try:
            src, s_rows = None, 0
            if spec.needs_source:  # first: a model whose source pool is bad loads nothing else
                src = self.pool_refs.acquire(skey)
                s_rows, s_dim = self.pool_refs.info[skey]
            tgt = self.pool_refs.acquire(tkey)
            t_rows, dim = self.pool_refs.info[tkey]
            if spec.needs_source:
                if s_dim != dim:
                    raise ValueError(f"{self.pool_refs.describe(skey)} has {s_dim}-dim features "
                                     f"but {self.pool_refs.describe(tkey)} has {dim}")
        except Exception as exc:  # noqa: BLE001 - the pair fails, the job goes on
            self._release(pair, spec)
            return [failed_row(pair, spec.name, k, s, str(exc)) for k, s in zip(ks, seeds)]
        memory = (spec.memory_bytes or task_memory_bytes)(spec.n_pixels, dim, s_rows + t_rows)
        if self.fail_infeasible and memory > self.max_node_memory:
            self._release(pair, spec)
            msg = (f"{spec.name} for {pair.model!r} → {pair.target!r} needs "
                   f"{memory / 2**30:.1f} GiB per task (n_pixels={spec.n_pixels}), more than "
                   f"the largest node offers ({self.max_node_memory / 2**30:.1f} GiB): "
                   f"lower n_pixels or add bigger nodes (resources.autoscaling: on if an "
                   f"autoscaler can add them)")
            return [failed_row(pair, spec.name, k, s, msg) for k, s in zip(ks, seeds)]
        ref = self._remote.options(
            num_cpus=self.num_cpus, num_gpus=self.num_gpus, memory=memory,
            max_retries=self.max_retries, retry_exceptions=False,
            name=f"{spec.name}:{pair.model}->{pair.target}:k{ks[0]}",
        ).remote(src, tgt, spec, pair, ks, seeds)
        self._pending[ref] = _Unit(pair, spec, ks, seeds)
        return ref

    def collect(self, ref: Any) -> list[dict[str, Any]]:
        """Rows of a finished task; a task lost for good (retries spent) gives failed rows."""
        import ray

        unit = self._pending.pop(ref)
        try:
            rows = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - worker crash after retries, OOM, lost object
            msg = f"task for {unit.pair.model!r} → {unit.pair.target!r} lost: {type(exc).__name__}: {exc}"
            rows = [failed_row(unit.pair, unit.spec.name, k, s, msg[:2000])
                    for k, s in zip(unit.ks, unit.seeds)]
        self._release(unit.pair, unit.spec)
        return rows

    def release(self, pair: ScorePair, spec: MetricSpec) -> None:
        """Drop one reservation of (pair, spec) without submitting (e.g. a pruned candidate).

        :meth:`submit` and :meth:`collect` consume reservations themselves; a pool leaves the
        object store when its last reservation is gone.
        """
        for key in self._keys(pair, spec):
            self.pool_refs.release(key)

    _release = release
