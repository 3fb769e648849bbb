"""Fan-out scoring on Ray: (model, target) pairs × K repetitions → one long results table.

For each pair (model m with source dataset s, target t) the metric compares the pool of
(m, s) with the pool of (m, t). Every repetition k of every pair is one unit of work with
its own seed ``repetition_seed(job_seed, m, t, k)`` (SHA-256 of the names fed to NumPy's
``SeedSequence``; never Python's ``hash()``), so the table is exactly the same whatever the
number of workers, the completion order, or the retries.

Tasks
-----
One Ray task per (pair, k) by default (``reps_per_task=1``); ``reps_per_task=K`` groups a
pair's repetitions in one task. Measured with ``benchmarks/bench_fanout.py`` on a 2-core VM
(N = 1000, D = 64, ~0.25 s per repetition on one core): one worker ran at +6.4 % of the
serial time with a task per (pair, k) and +5.0 % grouped per pair (best of 4 alternating
rounds); the fan-out's wall time outside the solves is ~8 ms per task, 3 % of the solve
time. At the paper's N = 10⁴ a repetition takes ~3.3 s on an H100, so that cost is < 0.3 %.
Per-(pair, k) tasks were kept: K× more units to balance over workers, a dead worker loses one
repetition, and they are what resumption and adaptive schedules need. Use
``reps_per_task=K`` only when a repetition takes well under 100 ms (N ≲ 300 on a CPU).

Pools named by a key of a :class:`~segotce_ray.store.PoolStore` (a path every node mounts)
are read by the tasks themselves: a task receives a :class:`StoredPool` (root, key), reads
the shards memory-mapped and keeps the pool in a small per-worker LRU, so the repetitions and
metrics of a pair that land on one worker share one read, and no pool byte passes through the
driver (it reads the manifests only, for sizes). Pools given in memory (or through another
store object) go into the object store once (``ray.put``), loaded lazily in submission order
and released when their last task is done.

Each task declares ``num_cpus`` (1), ``memory`` from :func:`task_memory_bytes` (the N×N
float32 cost, coupling and kernel, ≈ 3·N²·4 bytes, plus the sampled features and a working
copy of the pools), and ``num_gpus`` (:data:`DEFAULT_GPU_FRACTION` when the cluster has GPUs
and ``num_gpus`` is not given; any fraction can be passed); a task holding a GPU solves on
``cuda``. ``max_retries`` covers system failures (a worker that dies is retried with the
same seed); an error inside a repetition (a failed solve) is recorded as
``status="failed"`` with its error text and is not retried. A pair whose pool
is missing, unreadable or invalid gets failed rows for each of its repetitions; every other
pair completes.

Results
-------
A pandas DataFrame with :data:`RESULT_COLUMNS` (one row per (model, target, metric, k)),
sorted by those keys. ``done=`` takes rows finished earlier (e.g. read back from disk) and
skips their ok repetitions; ``on_result`` is called in the driver with each finished row the
moment it arrives, so a job can persist it before anything else happens.

Adding a metric
---------------
A :class:`MetricSpec` names a module-level function ``repetition(source, target, seed,
**params) -> Mapping`` that scores one repetition of two :class:`PixelPool` objects and
returns at least ``score`` (higher = more transferable); optional keys are ``w_t``, ``w_d``,
``iterations``, ``converged``, ``n_source``, ``n_target``. Pass several specs in
``metrics=``; each gets its own rows under its ``metric`` name, with the same per-k seeds.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from segotce_ray.metrics.otce import otce_score
from segotce_ray.pools import PixelPool

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GPU_FRACTION",
    "feature_memory_bytes",
    "RESULT_COLUMNS",
    "MetricSpec",
    "StoredPool",
    "check_pool",
    "OTCESettings",
    "PairScorer",
    "ScorePair",
    "otce_metric",
    "otce_repetition",
    "peer_metric",
    "peer_repetition",
    "probs_as_features",
    "ProbsView",
    "repetition_seed",
    "results_frame",
    "score_pairs",
    "task_memory_bytes",
]

#: Columns of the long results table, in order.
RESULT_COLUMNS = ["model", "target", "metric", "k", "score", "w_t", "w_d", "iterations",
                  "converged", "n_source", "n_target", "seconds", "status", "error",
                  "source", "seed", "solver", "passes", "degenerate"]
#: GPU share per task when the cluster has GPUs and ``num_gpus`` is not given. One task per
#: GPU: on an H100 at N = 10⁴ one repetition already saturates the card (2 or 4 processes
#: sharing it gave 0.85–0.88× the throughput of one; ``bench_fanout.py --gpu-share``). Pass
#: ``num_gpus=0.25`` or so for small N, where a single solve leaves the GPU idle.
DEFAULT_GPU_FRACTION = 1.0
_KEY = ["model", "target", "metric", "k"]
_WORKER_BASE_BYTES = 128 * 1024**2


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, order=True)
class ScorePair:
    """One (model, target) pair: the model's pools on its ``source`` and on ``target``."""

    model: str
    source: str
    target: str


@dataclass(frozen=True)
class OTCESettings:
    """SEG-OTCE settings for :func:`otce_score` (one repetition per task).

    ``options`` is passed through to :func:`otce_score` as extra keyword arguments.
    """

    n_pixels: int = 10_000
    repetitions: int = 10
    epsilon: float = 0.1
    solver: str = "auto"
    sampling: str = "uniform"
    ignore_index: int = 255
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_pixels < 1:
            raise ValueError(f"otce n_pixels must be >= 1, got {self.n_pixels}")
        if self.repetitions < 1:
            raise ValueError(f"otce repetitions must be >= 1, got {self.repetitions}")
        if not self.epsilon > 0:
            raise ValueError(f"otce epsilon must be > 0, got {self.epsilon}")


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the fan-out runs it.

    repetition: module-level ``fn(source: PixelPool | None, target: PixelPool, seed: int,
    **params) -> Mapping`` (picklable by reference); repetitions: K; n_pixels: pixels drawn
    per side; memory_bytes: ``(n_pixels, dim, pool_rows) -> bytes`` for Ray's ``memory=``
    (default :func:`task_memory_bytes`); needs_source: False for metrics that only read the
    target pool (``source`` is then None and the source pool is never loaded);
    higher_is_better: orientation for rankings.
    """

    name: str
    repetition: Callable[..., Mapping[str, Any]]
    repetitions: int
    n_pixels: int
    params: Mapping[str, Any] = field(default_factory=dict)
    memory_bytes: Callable[[int, int, int], int] | None = None
    needs_source: bool = True
    higher_is_better: bool = True


def otce_repetition(source: PixelPool, target: PixelPool, seed: int, *, n_pixels: int,
                    epsilon: float, solver: str, sampling: str, ignore_index: int,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One SEG-OTCE repetition: ``otce_score(..., repetitions=1, seed=seed)`` as a row dict.

    When the task was given a GPU (Ray sets ``CUDA_VISIBLE_DEVICES``; torch sees CUDA) and
    ``options`` names no ``device``, the solve runs on ``cuda``.
    """
    opts = dict(options or {})
    if "device" not in opts and _task_has_gpu():
        opts["device"] = "cuda"
    res = otce_score(source.features, source.labels, target.features, target.labels,
                     n_pixels=n_pixels, repetitions=1, epsilon=epsilon, seed=seed,
                     ignore_index=ignore_index, solver=solver, sampling=sampling, **opts)
    return {"score": float(np.asarray(res.scores).reshape(-1)[0]),
            "w_t": float(np.asarray(res.w_t).reshape(-1)[0]),
            "w_d": float(np.asarray(res.w_d).reshape(-1)[0]),
            "iterations": int(np.asarray(res.iterations).reshape(-1)[0]),
            "converged": bool(np.asarray(res.converged).reshape(-1)[0]),
            "n_source": int(res.n_source), "n_target": int(res.n_target),
            "solver": str(res.solvers[0]), "passes": float(res.passes[0])}


def _task_has_gpu() -> bool:
    """True inside a Ray task that holds a GPU (share) that torch can use."""
    try:
        import ray

        if not ray.is_initialized() or not ray.get_gpu_ids():
            return False
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no Ray context, no torch: CPU
        return False


def otce_metric(settings: OTCESettings | None = None) -> MetricSpec:
    """The :class:`MetricSpec` of SEG-OTCE under ``settings``."""
    s = settings or OTCESettings()
    params = {"n_pixels": s.n_pixels, "epsilon": s.epsilon, "solver": s.solver,
              "sampling": s.sampling, "ignore_index": s.ignore_index,
              "options": dict(s.options)}
    return MetricSpec("otce", otce_repetition, s.repetitions, s.n_pixels, params)


def peer_repetition(source: PixelPool | None, target: PixelPool, seed: int, *, name: str,
                    n_pixels: int, ignore_index: int = 255,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One repetition of peer metric ``name`` on ``n_pixels`` target pixels drawn with ``seed``.

    Draws min(n_pixels, labelled pixels) pixels of the target pool uniformly without
    replacement and calls :func:`segotce_ray.metrics.peers.compute_metric` on their features
    (or source-head probabilities) and labels.
    """
    from segotce_ray.metrics.peers import compute_metric

    labelled = np.flatnonzero(np.asarray(target.labels) != ignore_index)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(labelled, size=min(n_pixels, labelled.size), replace=False))
    probs = None if target.probs is None else target.probs[take]
    score = compute_metric(name, labels=target.labels[take], features=target.features[take],
                           probs=probs, ignore_index=ignore_index, **dict(options or {}))
    return {"score": float(score), "n_target": int(take.size)}


def feature_memory_bytes(n_pixels: int, dim: int, pool_rows: int) -> int:
    """Heap of a metric linear in N: 16·N·D·8 (float64 work arrays) + P·D·4 + 128 MiB."""
    return int(16 * n_pixels * max(dim, 1) * 8 + pool_rows * dim * 4 + _WORKER_BASE_BYTES)


def peer_metric(name: str, n_pixels: int = 10_000, repetitions: int = 10,
                ignore_index: int = 255, **options: Any) -> MetricSpec:
    """The :class:`MetricSpec` of a peer metric from :data:`segotce_ray.metrics.peers.PEER_METRICS`."""
    from segotce_ray.metrics.peers import PEER_METRICS

    if name not in PEER_METRICS:
        raise KeyError(f"unknown peer metric {name!r}; known: {sorted(PEER_METRICS)}")
    params = {"name": name, "n_pixels": n_pixels, "ignore_index": ignore_index,
              "options": options}
    return MetricSpec(name, peer_repetition, repetitions, n_pixels, params,
                      memory_bytes=feature_memory_bytes, needs_source=False,
                      higher_is_better=PEER_METRICS[name].higher_is_better)


def repetition_seed(job_seed: int, model: str, target: str, k: int) -> int:
    """Seed of repetition k of (model, target): stable across processes, platforms, runs.

    SeedSequence(entropy = [job_seed, sha256(model ␀ target) as 8 uint32 words, k]) → the
    first 64-bit word of its state, shifted to 63 bits (fits any RNG's seed argument).
    """
    if job_seed < 0 or k < 0:
        raise ValueError(f"seeds need job_seed >= 0 and k >= 0, got {job_seed}, {k}")
    digest = hashlib.sha256(f"{model}\x00{target}".encode()).digest()
    words = [int(w) for w in np.frombuffer(digest, dtype="<u4")]
    state = np.random.SeedSequence([int(job_seed), *words, int(k)]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))


def task_memory_bytes(n_pixels: int, dim: int, pool_rows: int) -> int:
    """Heap a repetition task may use, for Ray's ``memory=`` resource.

    3·N²·4 (cost, coupling, kernel as float32) + 2·N·D·8 (sampled features as float64)
    + P·D·4 (a float32 working copy of both pools, P = rows of source + target pool)
    + 128 MiB for the worker itself.
    """
    n = int(n_pixels)
    return int(3 * n * n * 4 + 2 * n * dim * 8 + pool_rows * dim * 4 + _WORKER_BASE_BYTES)


# --------------------------------------------------------------------------- rows


def _row(pair: ScorePair, metric: str, k: int, seed: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"model": pair.model, "target": pair.target, "metric": metric,
                           "k": int(k), "score": math.nan, "w_t": math.nan, "w_d": math.nan,
                           "iterations": None, "converged": None, "n_source": None,
                           "n_target": None, "seconds": math.nan, "status": "ok",
                           "error": None, "source": pair.source, "seed": int(seed),
                           "solver": None, "passes": math.nan, "degenerate": None}
    row.update(values)
    return row


def _failed(pair: ScorePair, metric: str, k: int, seed: int, error: str) -> dict[str, Any]:
    return _row(pair, metric, k, seed, status="failed", error=error)


def results_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows (or a frame, e.g. read from Parquet) → the long results table.

    Columns :data:`RESULT_COLUMNS` (missing ones filled with nulls, others dropped), typed
    (str columns as object, ``Int64``/``boolean`` for nullable ints/bools), sorted by
    (model, target, metric, k).
    """
    if isinstance(rows, pd.DataFrame):
        df = rows.reindex(columns=RESULT_COLUMNS).copy()
    else:
        df = pd.DataFrame(list(rows), columns=RESULT_COLUMNS)
    for col in ("model", "target", "metric", "status", "source", "solver"):
        df[col] = df[col].astype(object)
    for col in ("error", "degenerate"):
        df[col] = df[col].astype(object).where(df[col].notna(), None)
    df["k"] = df["k"].astype("int64")
    for col in ("score", "w_t", "w_d", "seconds", "passes"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("iterations", "n_source", "n_target", "seed"):
        df[col] = pd.array(pd.to_numeric(df[col], errors="coerce"), dtype="Int64")
    df["converged"] = pd.array([None if pd.isna(v) else bool(v) for v in df["converged"]],
                               dtype="boolean")
    return df.sort_values(_KEY, kind="stable").reset_index(drop=True)


def _run_repetitions(source: "PixelPool | StoredPool | None", target: "PixelPool | StoredPool",
                     spec: MetricSpec, pair: ScorePair, ks: Sequence[int],
                     seeds: Sequence[int]) -> list[dict[str, Any]]:
    """Task body: repetitions ``ks`` of one pair; an error fails that repetition only. Pools
    given as :class:`StoredPool` are read here, on the worker (a bad one fails the task's rows)."""
    try:
        source = source.open() if isinstance(source, StoredPool) else source
        target = target.open() if isinstance(target, StoredPool) else target
    except Exception as exc:  # noqa: BLE001 - the reason names the pool
        return [_failed(pair, spec.name, k, s, str(exc)) for k, s in zip(ks, seeds)]
    rows = []
    for k, seed in zip(ks, seeds):
        t0 = time.perf_counter()
        try:
            values = dict(spec.repetition(source, target, seed, **spec.params))
            score = float(values.get("score", math.nan))
            if not math.isfinite(score):
                raise FloatingPointError(f"non-finite score {score}")
        except Exception as exc:  # noqa: BLE001 - recorded, the other pairs go on
            row = _failed(pair, spec.name, k, seed, f"{spec.name} repetition {k} of "
                          f"{pair.model!r} → {pair.target!r}: {type(exc).__name__}: {exc}")
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            continue
        rows.append(_row(pair, spec.name, k, seed, seconds=time.perf_counter() - t0,
                         **{key: values[key] for key in ("score", "w_t", "w_d", "iterations",
                                                         "converged", "n_source", "n_target",
                                                         "solver", "passes")
                            if key in values}))
    return rows


# --------------------------------------------------------------------------- pools


@dataclass(frozen=True)
class ProbsView:
    """A pool read in the ``probs`` feature space (``layer: probs``): every metric sees the
    source head's softmax column as the pool's features. ``pool``: a PixelPool or store key."""

    pool: PixelPool | str


def probs_as_features(pool: PixelPool) -> PixelPool:
    """``pool`` with its ``probs`` (P, C) as ``features``; a ValueError if it has none."""
    if pool.probs is None:
        raise ValueError("layer 'probs' needs the pool's probs column (the source head's "
                         "softmax) and this pool has none; re-extract it with keep_probs")
    return PixelPool(features=pool.probs, labels=pool.labels, image_ids=pool.image_ids,
                     rows=pool.rows, cols=pool.cols, probs=pool.probs,
                     meta={**pool.meta, "space": "probs"})


PoolSource = PixelPool | str | ProbsView | BaseException


def check_pool(pool: PixelPool, ignore_index: int) -> None:
    """Raise ValueError if ``pool`` cannot be scored: empty, unlabelled, non-finite features."""
    if len(pool) == 0:
        raise ValueError("pool is empty")
    if not np.any(pool.labels != ignore_index):
        raise ValueError(f"pool has no labelled pixel (all labels are {ignore_index})")
    bad = int(np.size(pool.features) - np.count_nonzero(np.isfinite(pool.features)))
    if bad:
        raise ValueError(f"pool has {bad} non-finite feature values")


_CHECKED: set[tuple[str, str, int]] = set()   # stored pools this process has checked


@dataclass(frozen=True)
class StoredPool:
    """A published pool as a task receives it: where it is, not its bytes (~200 bytes to ship).

    :meth:`open` reads it on the worker through :func:`segotce_ray.store.load_cached` (shards
    memory-mapped, kept in a small per-process LRU) and checks it once per process.
    """

    root: str
    key: str
    ignore_index: int
    description: str

    def open(self) -> PixelPool:
        from segotce_ray.store import load_cached

        try:
            pool = load_cached(self.root, self.key)
            if (self.root, self.key, self.ignore_index) not in _CHECKED:
                check_pool(pool, self.ignore_index)
                _CHECKED.add((self.root, self.key, self.ignore_index))
        except Exception as exc:  # noqa: BLE001 - named, then failed rows
            raise RuntimeError(f"{self.description}: {type(exc).__name__}: {exc}") from exc
        return pool


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
        from segotce_ray.store import PoolStore

        src = self.pools.get(key)
        if not (isinstance(src, str) and isinstance(self.store, PoolStore)):
            return None
        if not self.store.has(src):
            raise LookupError("missing from the store")
        self.info[key] = self.store.shape(src)
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

        from segotce_ray.placement import autoscaler_node_types, memory_limit

        if not ray.is_initialized():
            raise RuntimeError("Ray is not initialised: call segotce_ray.runtime.init_ray() first")
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
            return [_failed(pair, spec.name, k, s, str(exc)) for k, s in zip(ks, seeds)]
        memory = (spec.memory_bytes or task_memory_bytes)(spec.n_pixels, dim, s_rows + t_rows)
        if self.fail_infeasible and memory > self.max_node_memory:
            self._release(pair, spec)
            msg = (f"{spec.name} for {pair.model!r} → {pair.target!r} needs "
                   f"{memory / 2**30:.1f} GiB per task (n_pixels={spec.n_pixels}), more than "
                   f"the largest node offers ({self.max_node_memory / 2**30:.1f} GiB): "
                   f"lower n_pixels or add bigger nodes (resources.autoscaling: on if an "
                   f"autoscaler can add them)")
            return [_failed(pair, spec.name, k, s, msg) for k, s in zip(ks, seeds)]
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
            rows = [_failed(unit.pair, unit.spec.name, k, s, msg[:2000])
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


def _as_pair(p: ScorePair | Sequence[str]) -> ScorePair:
    if isinstance(p, ScorePair):
        return p
    if len(p) != 3:
        raise ValueError(f"a pair is (model, source dataset, target), got {p!r}")
    return ScorePair(str(p[0]), str(p[1]), str(p[2]))


def _done_keys(done: pd.DataFrame | Iterable[Mapping[str, Any]] | None,
               wanted: set[tuple[str, str, str, int]]) -> tuple[list[dict], set]:
    """The ok rows of ``done`` that belong to this request, and their keys."""
    if done is None:
        return [], set()
    frame = done if isinstance(done, pd.DataFrame) else pd.DataFrame(list(done))
    if frame.empty:
        return [], set()
    if missing := set(_KEY + ["status"]) - set(frame.columns):
        raise ValueError(f"finished rows lack column(s) {sorted(missing)}")
    ok = frame[frame["status"] == "ok"].drop_duplicates(_KEY, keep="last")
    rows, keys = [], set()
    for r in ok.reindex(columns=RESULT_COLUMNS).to_dict("records"):
        key = (str(r["model"]), str(r["target"]), str(r["metric"]), int(r["k"]))
        if key in wanted:
            rows.append(r)
            keys.add(key)
    return rows, keys


def _chunks(ks: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(ks), size):
        yield ks[i:i + size]


def open_scorer(pairs: Iterable[ScorePair | Sequence[str]], pools: Mapping[str, Any],
                store: Any, *, seed: int, ignore_index: int, num_gpus: float | None,
                max_retries: int, fail_infeasible: bool, max_in_flight: int | None,
                autoscaling: str = "auto") -> tuple[list[ScorePair], "PairScorer", int]:
    """Sorted unique pairs (a (model, target) with two sources is a ValueError), a
    :class:`PairScorer` over ``pools``, and the in-flight bound (default 4 tasks per CPU, ≥ 16)."""
    pair_list = sorted({_as_pair(p) for p in pairs})
    clash = pd.Series([(p.model, p.target) for p in pair_list], dtype=object).duplicated()
    if clash.any():
        m, t = [(p.model, p.target) for p in pair_list][int(np.argmax(clash.to_numpy()))]
        raise ValueError(f"model {m!r} → target {t!r} is listed with two source datasets")
    scorer = PairScorer(pools, store, seed=seed, ignore_index=ignore_index, num_gpus=num_gpus,
                        max_retries=max_retries, fail_infeasible=fail_infeasible,
                        autoscaling=autoscaling)
    if max_in_flight is None:
        import ray

        max_in_flight = max(16, 4 * int(ray.cluster_resources().get("CPU", 1)))
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    return pair_list, scorer, max_in_flight


def score_pairs(pairs: Iterable[ScorePair | Sequence[str]],
                pools: Mapping[tuple[str, str], PoolSource] | None = None,
                settings: OTCESettings | None = None, *, store: Any = None, seed: int = 0,
                metrics: Sequence[MetricSpec] | None = None,
                done: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None,
                on_result: Callable[[dict[str, Any]], None] | None = None,
                max_in_flight: int | None = None, reps_per_task: int = 1,
                num_gpus: float | None = None, max_retries: int = 3,
                fail_infeasible: bool = True, autoscaling: str = "auto",
                progress: bool | None = None) -> pd.DataFrame:
    """Score every pair K times on Ray and return the long results table.

    pairs: (model, source dataset, target) triples or :class:`ScorePair`.
    pools: ``{(model, dataset): PixelPool | store key | exception}`` (an exception, e.g. from
    extraction, fails the pairs that need that pool); store keys are read with
    ``store.load(key)``. settings: OTCE settings (ignored when ``metrics`` is given).
    seed: the job seed. done: rows finished earlier; their ok (model, target, metric, k) are
    skipped and returned as they are (rows of other pairs, metrics or k ≥ K are ignored). on_result: called with each newly finished row (dict
    with :data:`RESULT_COLUMNS`). max_in_flight: tasks submitted at once (default 4 × cluster
    CPUs, at least 16); 1 runs one task at a time. reps_per_task: repetitions per task.
    num_gpus: GPU share per task (default: :data:`DEFAULT_GPU_FRACTION` on a cluster with
    GPUs, else 0). max_retries: retries of a task whose worker died. fail_infeasible: fail a
    pair at once when its task needs more memory than any live node or any node the
    autoscaler can add has; autoscaling: ``auto`` | ``on`` | ``off``, how the autoscaler's
    node types count (:mod:`segotce_ray.placement`). progress: tqdm bar over repetitions
    (default: when stderr is a terminal; otherwise INFO log lines every 30 s and per finished pair, :mod:`segotce_ray.progress`).
    """
    import ray

    from segotce_ray.progress import RepetitionProgress

    specs = list(metrics) if metrics is not None else [otce_metric(settings)]
    if not specs:
        raise ValueError("no metric to score")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"metric names repeat: {[s.name for s in specs]}")
    if reps_per_task < 1:
        raise ValueError(f"reps_per_task must be >= 1, got {reps_per_task}")
    pair_list, scorer, max_in_flight = open_scorer(
        pairs, pools, store, seed=seed, ignore_index=int(specs[0].params.get("ignore_index", 255)),
        num_gpus=num_gpus, max_retries=max_retries, fail_infeasible=fail_infeasible,
        max_in_flight=max_in_flight, autoscaling=autoscaling)

    wanted = {(p.model, p.target, spec.name, k) for p in pair_list for spec in specs
              for k in range(spec.repetitions)}
    old_rows, finished = _done_keys(done, wanted)
    units: list[tuple[ScorePair, MetricSpec, list[int]]] = []
    for pair in pair_list:
        for spec in specs:
            todo = [k for k in range(spec.repetitions)
                    if (pair.model, pair.target, spec.name, k) not in finished]
            for ks in _chunks(todo, reps_per_task):
                units.append((pair, spec, ks))
                scorer.reserve(pair, spec)
    total = sum(len(ks) for _, _, ks in units)
    log.info("scoring %d pair(s) × %s: %d repetition(s) to run, %d already done",
             len(pair_list), ", ".join(f"{s.name}(K={s.repetitions})" for s in specs),
             total, len(old_rows))

    new_rows: list[dict[str, Any]] = []
    per_pair: dict[tuple[str, str, str], int] = {}
    for pair, spec, ks in units:
        key = (spec.name, pair.model, pair.target)
        per_pair[key] = per_pair.get(key, 0) + len(ks)
    bar = RepetitionProgress(total, "scoring", progress, per_pair)

    def finish(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            new_rows.append(row)
            if on_result is not None:
                on_result(row)
        bar.update(rows)

    in_flight: list[Any] = []
    queue = iter(units)
    exhausted = False
    try:
        while True:
            while not exhausted and len(in_flight) < max_in_flight:
                nxt = next(queue, None)
                if nxt is None:
                    exhausted = True
                    break
                out = scorer.submit(*nxt)
                if isinstance(out, list):
                    finish(out)
                else:
                    in_flight.append(out)
            if not in_flight:
                break
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            for ref in ready:
                finish(scorer.collect(ref))
    finally:
        bar.close()
        for ref in in_flight:  # interrupted: do not leave work running for nobody
            ray.cancel(ref)
    table = results_frame([*old_rows, *new_rows])
    failed = int((table["status"] != "ok").sum())
    if failed:
        log.warning("%d of %d repetition(s) failed", failed, len(table))
    return table
