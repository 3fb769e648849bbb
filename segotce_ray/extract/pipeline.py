"""Pixel-pool extraction on Ray: (model, dataset) requests → Parquet pools in a PoolStore.

Plan (per call of :func:`extract_pools`)::

    weights hash per model (driver, no forward) ─► pool key per request ─► cached? done
    missing pools of every model: ONE Ray Data pipeline for the whole zoo
      from_items(chunks) ─► map_batches(load_chunk)           CPU tasks: read + resize images,
                                                              draw pixels
                         ─► map_batches(ChunkFeatureExtractor) actor pool (num_gpus=1 each on a
                                                              GPU cluster); an actor loads each
                                                              model on first use, keeps an LRU of
                                                              MODEL_CACHE, and writes each chunk's
                                                              shard into the store itself
                         ─► driver: iter_batches of shard metadata (file, rows, sha256, bytes,
                                   errors) ─► manifest + rename once a pool's last chunk is in

Why chunks: the driver cuts every dataset's sorted sample list into fixed chunks of
``batch_size`` images and each chunk is one forward batch and one shard
(``part-<chunk>.parquet``, listed in chunk order by the manifest), so the batches — and hence
the floating-point results and the pool — are the same whatever the number of actors, the
completion order or a chunk redone after a lost node (a shard is written under a tmp name and
renamed). No pool byte passes through the driver: it receives a few hundred bytes per chunk.
The store must be a path every node mounts (see the README's cluster section).

Pixel draws are seeded from ``(seed, model, dataset, image_id)`` (see
:mod:`segotce_ray.extract.sampling`) and made in the read step, so only the image and the sampled
coordinates travel to the actor. There, under ``torch.inference_mode`` (and float16
autocast on a GPU), one forward pass per chunk gives the native-resolution feature map and
logits; one ``grid_sample`` per chunk samples both at the label coordinates (no
upsampled map), the source head's softmax at those points is kept (``probs``) when
``keep_probs``, and the rows go back as float16 in one device→host copy.

Resources: with GPUs in the cluster each actor takes ``num_gpus=1``; otherwise CPU actors
take (at most) one logical CPU each and set ``torch`` to ``cpu_threads`` threads, and the
read tasks take a quarter CPU each, so N actors on N CPUs still leave room to read.
Progress: a tqdm bar over images on a tty, a log line every 30 s otherwise (Ray Data's own
bars are switched off for the run).

Failures: a model that cannot be built/loaded/tapped fails its own requests only (the actor
reports it per chunk, the failure is remembered, the pipeline goes on for the others); a
dataset whose fingerprint cannot be taken fails its own requests only. A bad image file
(unreadable, truncated, label/image size mismatch, unknown label id) fails its pool by
default (``bad_images="fail"``: a pool keyed as complete must hold every image); with
``bad_images="skip"`` it is logged, skipped and listed in the pool's manifest under
``skipped``. NaN/inf in a feature map always fails the pool (the model is at fault).
Results: ``{(model, dataset): key}`` for pools that exist, ``ExtractionError`` otherwise.
Pools already in the store cost zero forward passes.
"""


from __future__ import annotations

import json
import logging
import math
import pickle
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from segotce_ray.inputs.models import ModelError, ModelSpec, model_weights_hash
from segotce_ray.pools.degeneracy import combine_stats
from segotce_ray.pools.pool import POOL_SCHEMA_VERSION, PixelPool
from segotce_ray.extract.sampling import SAMPLING_MODES
from segotce_ray.pools.store import PoolStore, pool_key
from segotce_ray.extract.actor import ChunkFeatureExtractor, load_chunk
from segotce_ray.cluster.progress import Progress

log = logging.getLogger(__name__)

BadImagePolicy = Literal["fail", "skip"]
TARGET_DRAWS = 10_000   # SEG-OTCE draws N = 10^4 pixels per side
LOADER_CPUS = 0.25      # logical CPUs per read task (image decode + pixel draw)
READERS_MAX = 16        # read tasks in flight at most (one per CPU below that)


class ExtractionError(RuntimeError):
    """Why a (model, dataset) pool was not produced; names both."""

    def __init__(self, model: str, dataset: str, message: str) -> None:
        super().__init__(f"pool {model}@{dataset}: {message}")
        self.model, self.dataset, self.reason = model, dataset, message

    def __reduce__(self):
        return (ExtractionError, (self.model, self.dataset, self.reason))


@dataclass
class ExtractionRequest:
    """One pool to produce: ``model`` run on ``dataset`` (a ``SegmentationDataset``).

    pixels_per_image: pixels drawn per image (all valid ones if fewer); pool size ≈
    ``pixels_per_image × images`` (≥ 10⁴ for SEG-OTCE's N); sampling: ``"uniform"`` |
    ``"balanced"``; seed: job seed; keep_probs: store the source head's softmax.
    """

    model: ModelSpec
    dataset: Any
    pixels_per_image: int = 1000
    sampling: str = "uniform"
    seed: int = 0
    keep_probs: bool = True

    def __post_init__(self) -> None:
        if self.sampling not in SAMPLING_MODES:
            raise ValueError(f"sampling {self.sampling!r}: expected one of {SAMPLING_MODES}")
        if int(self.pixels_per_image) < 1:
            raise ValueError(f"pixels_per_image must be >= 1, got {self.pixels_per_image}")

    @property
    def pair(self) -> tuple[str, str]:
        return (self.model.name, self.dataset.name)

    def sampling_params(self) -> dict[str, Any]:
        return {"pixels_per_image": int(self.pixels_per_image), "mode": self.sampling,
                "probs": bool(self.keep_probs), "ignore_index": int(self.dataset.ignore_index)}


def request_key(req: ExtractionRequest, weights_hash: str, fingerprint: str | None = None) -> str:
    """The store key of a request (see :func:`segotce_ray.pools.store.pool_key`)."""
    spec = req.model
    return pool_key(
        model=spec.name, architecture=spec.architecture, weights_hash=weights_hash,
        dataset=req.dataset.name, fingerprint=fingerprint or req.dataset.fingerprint(),
        layer=spec.layer, sampling=req.sampling_params(), seed=req.seed,
        preprocessing={"mean": list(spec.mean), "std": list(spec.std),
                       "input_size": list(spec.input_size) if spec.input_size else None,
                       "num_classes": spec.num_classes},
    )


def _weights_hash_or_error(spec: ModelSpec) -> dict[str, str]:
    """``{"hash": ...}`` or ``{"error": ...}`` (errors travel as text, not as Ray exceptions)."""
    try:
        return {"hash": model_weights_hash(spec)}
    except Exception as exc:  # noqa: BLE001
        return {"error": str(exc) if isinstance(exc, ModelError) else
                str(ModelError(spec.name, f"{type(exc).__name__}: {exc}"))}


def extract_in_process(req: ExtractionRequest, batch_size: int = 8) -> PixelPool:
    """One pool computed in this process, without Ray or a store: the same read step and
    actor chunk code as :func:`extract_pools`, chunk by chunk (the reference that tests and
    benchmarks compare a cluster's pools with). Any bad image or model raises
    :class:`ExtractionError`."""

    m, d = req.pair
    weights_hash = model_weights_hash(req.model)
    fingerprint = req.dataset.fingerprint()
    key = request_key(req, weights_hash, fingerprint)
    jobs = {0: {"dataset": req.dataset, "model": m, "seed": req.seed,
                "pixels_per_image": int(req.pixels_per_image), "sampling": req.sampling}}
    info = {"model": m, "meta": _pool_meta(req, key, fingerprint, weights_hash),
            "keep_probs": bool(req.keep_probs), "staging": None}
    extractor = ChunkFeatureExtractor({0: info}, {m: (req.model, weights_hash)})
    tables = []
    n = len(req.dataset.samples)
    for c in range(math.ceil(n / batch_size)):
        batch = {"request": np.array([0]), "chunk": np.array([c]), "start": np.array([c * batch_size]),
                 "stop": np.array([min(n, (c + 1) * batch_size)])}
        loaded = load_chunk(batch, jobs=jobs)
        try:
            table, errors = extractor._chunk(info, pickle.loads(loaded["payload"][0]))
        except Exception as exc:  # noqa: BLE001
            raise ExtractionError(m, d, str(exc)) from exc
        if errors:
            raise ExtractionError(m, d, f"image {errors[0]['image_id']!r}: {errors[0]['error']}")
        if table is not None:
            tables.append(table)
    if not tables:
        raise ExtractionError(m, d, "no valid pixels in any image")
    return PixelPool.from_table(pa.concat_tables(tables))


# --------------------------------------------------------------------------- driver

@dataclass
class _PendingPool:
    index: int
    request: ExtractionRequest
    key: str
    fingerprint: str
    chunks: int
    staging: Any = None
    meta: dict[str, str] = field(default_factory=dict)
    received: int = 0
    shards: dict[int, dict[str, Any]] = field(default_factory=dict)
    facts: dict[int, dict[str, Any]] = field(default_factory=dict)   # chunk → partial_stats
    dims: set[tuple[int, int]] = field(default_factory=set)
    skipped: list[dict[str, str]] = field(default_factory=list)
    images: int = 0
    failed: ExtractionError | None = None
    committed: bool = False
    started: float = field(default_factory=time.time)
    draws: int = TARGET_DRAWS      # SEG-OTCE's N: a smaller pool is used whole (warned)
    report: Callable[[tuple[str, str], Any], None] | None = None   # told once: key or error
    reported: bool = False

    @property
    def rows(self) -> int:
        return sum(int(sh["rows"]) for sh in self.shards.values())


def _cluster_gpus(autoscaling: str = "auto") -> int:
    """GPUs up now, or those an autoscaler can add when none is up (see placement)."""
    import ray

    from segotce_ray.cluster.placement import autoscaler_node_types, cluster_gpus

    live = ray.cluster_resources().get("GPU", 0)
    return cluster_gpus(live, None if live or autoscaling == "off" else autoscaler_node_types(),
                        autoscaling)


@dataclass(frozen=True)
class PoolOrder:
    """One pool to produce as a plan decided it: the request, its store key and the facts the
    key was derived from (weights hash, dataset fingerprint). Extraction takes orders as they
    are: nothing is hashed or keyed again."""

    request: ExtractionRequest
    key: str
    weights_hash: str
    fingerprint: str


def plan_orders(requests: list[ExtractionRequest]
                ) -> tuple[list[PoolOrder], dict[tuple[str, str], ExtractionError]]:
    """Orders for ``requests`` (weights hashed once per model, in the driver: a hash is a file
    read, a worker for it costs more), and the requests that cannot be ordered, with why."""
    pairs = [r.pair for r in requests]
    dup = sorted({p for p in pairs if pairs.count(p) > 1})
    if dup:
        raise ValueError(f"duplicate (model, dataset) requests: {dup}")
    specs: dict[str, ModelSpec] = {}
    for r in requests:
        if r.model.name in specs and specs[r.model.name] != r.model:
            raise ValueError(f"two different model specs share the name {r.model.name!r}")
        specs[r.model.name] = r.model
    hashes = {name: _weights_hash_or_error(spec) for name, spec in specs.items()}
    orders, errors = [], {}
    for r in requests:
        m, d = r.pair
        if "error" in hashes[m]:
            errors[r.pair] = ExtractionError(m, d, hashes[m]["error"])
            continue
        try:
            fp = r.dataset.fingerprint()
            orders.append(PoolOrder(r, request_key(r, hashes[m]["hash"], fp), hashes[m]["hash"], fp))
        except Exception as exc:  # noqa: BLE001 - a dataset that cannot be fingerprinted
            errors[r.pair] = ExtractionError(m, d, f"dataset {d!r}: {exc}")
    return orders, errors


def extract_pools(requests: list[ExtractionRequest], store: PoolStore, **options: Any
                  ) -> dict[tuple[str, str], str | ExtractionError]:
    """Produce every requested pool that is not in ``store`` yet, on Ray: :func:`plan_orders`
    then :func:`extract_planned` (``options``: its keyword arguments).

    Returns ``{(model name, dataset name): pool key | ExtractionError}``, one entry per
    request, in request order; pools finished before a failure are kept.
    """
    orders, errors = plan_orders(requests)
    done = extract_planned(orders, store, **options) if orders else {}
    results = {**errors, **done}
    return {r.pair: results[r.pair] for r in requests}


def _check_options(bad_images: str, batch_size: int) -> None:
    if bad_images not in ("fail", "skip"):
        raise ValueError(f"bad_images must be 'fail' or 'skip', got {bad_images!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def extract_planned(orders: list[PoolOrder], store: PoolStore, *, batch_size: int = 8,
                    num_actors: int | None = None, use_gpu: bool | None = None,
                    cpu_threads: int | None = None, bad_images: BadImagePolicy = "fail",
                    progress: bool | None = None, address: str | None = None,
                    autoscaling: str = "auto", stats: dict[str, dict[str, float]] | None = None,
                    n_draws: int = TARGET_DRAWS,
                    on_pool: Callable[[tuple[str, str], Any], None] | None = None,
                    stop: Any = None) -> dict[tuple[str, str], str | ExtractionError]:
    """Produce the ordered pools that are not in ``store`` yet, in one Ray Data pipeline.

    batch_size: images per forward pass (one chunk); num_actors: extraction actors (default:
    the cluster's GPUs, or 1 on CPU — one actor using all cores' threads is the fastest CPU
    setup); use_gpu: default = the cluster has GPUs (``num_gpus=1`` per actor, autocast
    float16); cpu_threads: torch threads per CPU actor (default: cluster CPUs // actors);
    bad_images: ``"fail"`` | ``"skip"`` (module docstring); autoscaling: ``auto`` | ``on`` |
    ``off``: with no GPU up yet, ``auto``/``on`` plan for the GPUs an autoscaler can add
    (:mod:`segotce_ray.cluster.placement`); progress: a bar (default: when stderr is a tty;
    otherwise log lines); stats: if a dict, each model extracted gets the figures of the one
    pipeline that served them all (``pipeline_s``, ``first_output_s``, ``images``,
    ``after_first_images_per_s``, ``driver_bytes``, ``pool_bytes``). n_draws: the job's
    ``otce.n_pixels``; a smaller pool is warned about (SEG-OTCE then uses it whole).
    on_pool: called once per order, as soon as its outcome is known — ``(pair, key)`` the
    moment the pool is published (cached pools first), ``(pair, ExtractionError)`` when it
    failed — from the calling thread (so a caller can score while extraction goes on).
    stop: a ``threading.Event``; once set, the pipeline stops consuming and every pool not
    yet published fails ("extraction stopped").

    Returns ``{(model, dataset): pool key | ExtractionError}`` for every order.
    """
    _check_options(bad_images, batch_size)
    results: dict[tuple[str, str], str | ExtractionError] = {}
    pending: dict[str, list[_PendingPool]] = defaultdict(list)
    for i, o in enumerate(orders):
        (m, d), n = o.request.pair, len(o.request.dataset.samples)
        if store.has(o.key):
            log.info("pool %s@%s: cached (%s)", m, d, o.key[:12])
            results[(m, d)] = o.key
        elif n == 0:
            results[(m, d)] = ExtractionError(m, d, f"dataset {d!r} has no samples")
        else:
            pending[m].append(_PendingPool(i, o.request, o.key, o.fingerprint,
                                           math.ceil(n / batch_size), draws=n_draws, report=on_pool))
    if on_pool is not None:
        for pair, out in results.items():
            on_pool(pair, out)
    if not pending:
        return results
    from segotce_ray.cluster.runtime import init_ray

    init_ray(address)
    pools = [p for m in pending for p in pending[m]]
    hashes = {o.request.model.name: o.weights_hash for o in orders}
    run_stats: dict[str, float] = {}
    _run_pipeline(pools, {m: (pending[m][0].request.model, hashes[m]) for m in pending}, store,
                  batch_size=batch_size, **_actor_setup(num_actors, use_gpu, cpu_threads, autoscaling),
                  bad_images=bad_images, progress=progress, stats=run_stats, stop=stop)
    for p in pools:
        results[p.request.pair] = p.failed if p.failed is not None else p.key
    if stats is not None:
        stats.update({m: run_stats for m in pending})
    return results


def _actor_setup(num_actors: int | None, use_gpu: bool | None, cpu_threads: int | None,
                 autoscaling: str) -> dict[str, Any]:
    """Actors, GPU use and torch threads of the pipeline (see :func:`extract_planned`)."""
    import ray

    gpus = _cluster_gpus(autoscaling)
    gpu = bool(gpus) if use_gpu is None else bool(use_gpu)
    if gpu and not gpus:
        raise ValueError("use_gpu=True but the Ray cluster has no GPUs")
    actors = num_actors or (max(1, gpus) if gpu else 1)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return {"actors": actors, "gpu": gpu,
            "threads": None if gpu else (cpu_threads or max(1, cpus // actors))}


def _unwrap(exc: BaseException) -> BaseException:
    """The user-facing cause of a Ray task error (ModelError etc.), else the error itself."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


def _pool_meta(req: ExtractionRequest, key: str, fingerprint: str, weights_hash: str) -> dict[str, str]:
    from segotce_ray import __version__

    ds = req.dataset
    return {
        "model": req.model.name, "dataset": ds.name, "layer": req.model.layer,
        "architecture": req.model.architecture, "source": req.model.source or "",
        "fingerprint": fingerprint, "schema_version": str(POOL_SCHEMA_VERSION),
        "package_version": __version__, "num_classes": str(ds.num_classes),
        "class_names": json.dumps(list(ds.class_names)), "ignore_index": str(ds.ignore_index),
        "source_num_classes": str(req.model.num_classes), "pool_key": key, "weights_hash": weights_hash,
        "sampling": json.dumps(req.sampling_params(), sort_keys=True), "seed": str(req.seed),
    }


def _run_pipeline(pools: list[_PendingPool], models: dict[str, tuple[ModelSpec, str]], store: PoolStore, *,
                  batch_size: int, actors: int, gpu: bool, threads: int | None, bad_images: str,
                  progress: bool | None, stats: dict[str, float], stop: Any = None) -> None:
    """One Ray Data pipeline for ``pools`` (of the ``models``); fills ``p.failed`` on error.

    The actors write the shards into each pool's staging folder; the driver receives one
    small metadata row per chunk and publishes a pool's manifest after its last chunk.
    ``stats`` gets ``pipeline_s``, ``first_output_s``, ``images``, ``after_first_images_per_s``,
    ``driver_bytes`` (what the driver received) and ``pool_bytes`` (shard bytes written).
    ``stop`` (an Event) ends the consumption early: what is unpublished fails.
    """
    import ray

    items, jobs, requests = [], {}, {}
    for p in pools:
        ds, r = p.request.dataset, p.request
        p.staging = store.staging(p.key)
        jobs[p.index] = {"dataset": ds, "model": r.model.name, "seed": r.seed,
                         "pixels_per_image": int(r.pixels_per_image), "sampling": r.sampling}
        p.meta = _pool_meta(r, p.key, p.fingerprint, models[r.model.name][1])
        requests[p.index] = {"model": r.model.name, "keep_probs": bool(r.keep_probs),
                             "staging": str(p.staging), "meta": p.meta,
                             "ignore_index": int(ds.ignore_index)}
        n = len(ds.samples)
        items += [{"request": p.index, "chunk": c, "start": c * batch_size, "stop": min(n, (c + 1) * batch_size)}
                  for c in range(p.chunks)]
    by_index = {p.index: p for p in pools}
    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    ctx.enable_progress_bars = False
    bar = Progress(sum(len(p.request.dataset.samples) for p in pools), "extract", progress,
                   interval=30.0, noun=("img", "image"))
    t0 = time.perf_counter()
    seen = {"t_first": None, "first_images": 0, "driver_bytes": 0, "stopped": False}
    try:
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        cpus = float(ray.cluster_resources().get("CPU", 1))
        # at most one read task per CPU at a time: each new worker process is a Python + torch start-up
        readers = max(1, min(READERS_MAX, int(cpus), len(items)))
        ds = ds.map_batches(load_chunk, batch_size=1, fn_kwargs={"jobs": jobs}, num_cpus=LOADER_CPUS,
                            compute=ray.data.TaskPoolStrategy(size=readers))
        # CPU actors leave room for the read tasks (else N actors on N CPUs would starve them)
        actor_opts: dict[str, Any] = ({"num_gpus": 1} if gpu else
                                      {"num_cpus": max(0.1, min(1.0, (cpus - LOADER_CPUS) / actors))})
        ds = ds.map_batches(
            ChunkFeatureExtractor, batch_size=1,
            fn_constructor_kwargs={"requests": requests, "models": models,
                                   "device": "cuda" if gpu else "cpu", "threads": threads},
            compute=ray.data.ActorPoolStrategy(size=actors), **actor_opts)
        _drain(ds, by_index, store, bad_images, bar, seen, stop)
    except Exception as exc:  # noqa: BLE001 - the whole pipeline broke: fail what is unfinished
        err = _unwrap(exc)
        log.error("extraction pipeline failed: %s", err)
        for p in pools:
            if p.failed is None and not p.committed:
                p.failed = ExtractionError(p.request.model.name, p.request.dataset.name,
                                           f"{type(err).__name__}: {err}")
    finally:
        t_end, t_first = time.perf_counter(), seen["t_first"]
        stats.update(pipeline_s=t_end - t0, images=float(bar.done),
                     driver_bytes=float(seen["driver_bytes"]),
                     pool_bytes=float(sum(int(sh["bytes"]) for p in pools for sh in p.shards.values())))
        if t_first is not None:
            stats["first_output_s"] = t_first - t0
            if t_end > t_first and bar.done > seen["first_images"]:
                stats["after_first_images_per_s"] = (bar.done - seen["first_images"]) / (t_end - t_first)
        ctx.enable_progress_bars = saved
        bar.close()
        for p in pools:
            if not p.committed:
                _abandon(p)
                if p.failed is None:
                    p.failed = ExtractionError(p.request.model.name, p.request.dataset.name,
                                               "extraction stopped before the pool was complete"
                                               if seen["stopped"] else "extraction did not complete")
            _settle(p)


def _drain(ds: Any, by_index: dict[int, _PendingPool], store: PoolStore, bad_images: str,
           bar: Progress, seen: dict[str, Any], stop: Any) -> None:
    """Consume the pipeline's chunk rows (a few hundred bytes each): record, publish, count."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        seen["driver_bytes"] += sum(a.nbytes if a.dtype != object else sum(len(str(x)) for x in a)
                                    for a in batch.values())
        for row in _rows(batch):
            _consume_chunk(by_index[int(row["request"])], row, store, bad_images)
            bar.advance(int(row["images"]))
            if seen["t_first"] is None:
                seen["t_first"], seen["first_images"] = time.perf_counter(), int(row["images"])
        if stop is not None and stop.is_set():
            seen["stopped"] = True
            log.info("extraction stopped after %d image(s)", bar.done)
            return


def _rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    keys = list(batch)
    return [dict(zip(keys, vals)) for vals in zip(*(batch[k] for k in keys))]


def _abandon(p: _PendingPool) -> None:
    """Drop a pool's staging folder (nothing of it is published)."""
    import shutil

    if p.staging is not None:
        shutil.rmtree(p.staging, ignore_errors=True)


def _fail(p: _PendingPool, message: str) -> None:
    p.failed = ExtractionError(*p.request.pair, message)
    log.error("%s", p.failed)
    _abandon(p)
    _settle(p)


def _settle(p: _PendingPool) -> None:
    """Tell ``p.report`` (once) the pool's outcome: its key once published, else its error."""
    if p.reported or p.report is None or not (p.committed or p.failed is not None):
        return
    p.reported = True
    p.report(p.request.pair, p.key if p.committed else p.failed)


def _consume_chunk(p: _PendingPool, row: dict[str, Any], store: PoolStore, bad_images: str) -> None:
    """Record one chunk's shard (already in the staging folder); publish after the last chunk."""
    p.received += 1
    if p.failed is not None:
        return
    m, d = p.request.pair
    for e in json.loads(row["errors"]):
        if e.get("kind") == "load":
            return _fail(p, e["error"])
        if e.get("kind") == "model" or bad_images == "fail":
            return _fail(p, f"dataset {d!r}, image {e['image_id']!r}: {e['error']}")
        log.warning("pool %s@%s: skipping image %r: %s", m, d, e["image_id"], e["error"])
        p.skipped.append(e)
    if row["file"]:
        p.shards[int(row["chunk"])] = {k: row[k] for k in ("file", "rows", "sha256", "bytes")}
        p.facts[int(row["chunk"])] = json.loads(row["facts"])
        p.dims.add((int(row["dim"]), int(row["num_probs"])))
        p.images += int(row["kept_images"])
    if p.received < p.chunks:
        return
    if not p.shards:
        return _fail(p, "no valid pixels in any image (everything ignored or skipped)")
    if len(p.dims) > 1:
        return _fail(p, f"feature sizes differ between chunks: {sorted(p.dims)}")
    if p.rows < p.draws:
        log.warning("pool %s@%s has %d pixels, fewer than the N=%d draws of SEG-OTCE "
                    "(otce.n_pixels); raise pixels_per_image or the number of images",
                    m, d, p.rows, p.draws)
    r = p.request
    dim, num_probs = p.dims.pop()
    meta = dict(p.meta, dim=str(dim))
    if num_probs:
        meta["num_probs"] = str(num_probs)
    shards = [{k: int(v) if k in ("rows", "bytes") else str(v) for k, v in p.shards[c].items()}
              for c in sorted(p.shards)]
    try:
        store.publish(p.key, p.staging, shards, {
            "model": r.model.to_dict(), "dataset": d, "dataset_format": getattr(r.dataset, "format", ""),
            "fingerprint": p.fingerprint, "layer": r.model.layer, "sampling": r.sampling_params(),
            "seed": r.seed, "images": p.images, "images_requested": len(r.dataset.samples),
            "skipped": p.skipped, "seconds": round(time.time() - p.started, 3),
            "facts": combine_stats([p.facts[c] for c in sorted(p.shards)]),
            "model_parameters": next((f["parameters"] for f in p.facts.values() if "parameters" in f),
                                     None)}, meta)
    except Exception as exc:  # noqa: BLE001 - a store failure (disk full...) fails this pool only
        return _fail(p, f"writing the pool failed: {type(exc).__name__}: {exc}")
    p.committed = True
    log.info("pool %s@%s: %d pixels from %d images -> %s", m, d, p.rows, p.images, p.key[:12])
    _settle(p)


