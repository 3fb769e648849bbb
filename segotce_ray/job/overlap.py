"""Extraction and scoring at once: the extraction thread that feeds the fan-out, and the run's
timeline.

:class:`ExtractionThread` runs the plan's Ray Data pipeline in a driver thread; each pool's
outcome goes into a :class:`segotce_ray.scoring.feed.PoolFeed` the moment it is known (a
store key once published, a ``ProbsView`` of it for ``layer: probs`` models, or the
extraction error), and the fan-out loop, in the main thread, starts a pair's repetitions as
soon as its pools are in. :func:`scoring_limit` bounds the scoring tasks in flight while
extraction runs, so they leave the pipeline the CPUs of its readers (and of its CPU actors).
:func:`timeline` reads, after the run, when pools were published and repetitions ran.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

from segotce_ray.extract.pipeline import LOADER_CPUS, PoolOrder, READERS_MAX, extract_planned
from segotce_ray.pools.views import ProbsView
from segotce_ray.scoring.feed import PoolFeed
from segotce_ray.spec.model import JobSpec

log = logging.getLogger(__name__)

__all__ = ["ExtractionThread", "scoring_limit", "timeline"]

#: Seconds an interrupted run waits for the extraction thread to stop.
STOP_WAIT_S = 30.0


class ExtractionThread:
    """The plan's missing pools, extracted in a driver thread while the main thread scores.

    ``errors`` gets ``"pool model@dataset" → reason`` for every pool that failed. The feed is
    closed when the thread ends, whatever happened (an error of the pipeline as a whole fails
    every pool not yet published, with that error).
    """

    def __init__(self, spec: JobSpec, orders: list[PoolOrder], store: Any,
                 progress: bool | None, feed: PoolFeed, errors: dict[str, str],
                 probs_models: set[str]) -> None:
        self.spec, self.orders, self.store, self.progress = spec, orders, store, progress
        self.feed, self.errors, self.probs_models = feed, errors, probs_models
        self.stop = threading.Event()
        self.started_at = self.finished_at = math.nan
        self.error: BaseException | None = None
        self.stats: dict[str, float] = {}         # the pipeline's figures (driver_bytes, ...)
        self._thread = threading.Thread(target=self._run, name="segotce-extract", daemon=True)

    def _on_pool(self, pool: tuple[str, str], outcome: Any) -> None:
        if isinstance(outcome, BaseException):
            self.errors[f"pool {pool[0]}@{pool[1]}"] = str(outcome)
        elif pool[0] in self.probs_models:        # layer: probs reads that column
            outcome = ProbsView(outcome)
        self.feed.put(pool, outcome)

    def _run(self) -> None:
        self.started_at = time.time()
        per_model: dict[str, dict[str, float]] = {}     # the one pipeline's figures, per model
        try:
            e, r = self.spec.extraction, self.spec.resources
            extract_planned(
                self.orders, self.store, batch_size=e.batch_size, num_actors=r.actors,
                use_gpu=None if r.gpus_per_actor is None else r.gpus_per_actor > 0,
                cpu_threads=r.cpu_threads, bad_images=e.bad_images, progress=self.progress,
                n_draws=self.spec.otce.n_pixels, autoscaling=r.autoscaling,
                on_pool=self._on_pool, stop=self.stop, stats=per_model)
        except BaseException as exc:  # noqa: BLE001 - fails every unpublished pool (feed.close)
            self.error = exc
            self.errors["extraction"] = f"{type(exc).__name__}: {exc}"
            log.error("extraction failed: %s: %s", type(exc).__name__, exc)
        finally:
            self.stats = next(iter(per_model.values()), {})
            self.finished_at = time.time()
            self.feed.close(self.error)

    def join(self) -> None:
        """Wait until extraction is over (the staged order: score afterwards)."""
        self._thread.join()

    def __enter__(self) -> "ExtractionThread":
        self._thread.start()
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self._thread.join()
            return
        # scoring broke (Ctrl-C...): stop consuming (checked after each chunk) and publish
        # nothing more; a pipeline that does not answer is left to die with the process
        self.stop.set()
        self._thread.join(timeout=STOP_WAIT_S)


def scoring_limit(cluster: Mapping[str, float], actors: int | None, gpu: bool) -> int:
    """Scoring tasks in flight at most while extraction runs on a cluster with ``cluster``
    resources (``ray.cluster_resources()``): the CPUs the pipeline does not hold (its CPU
    actors take one CPU each, its read tasks a quarter), at least one. GPU actors hold their
    GPUs for the whole pipeline (a fixed actor pool, started before any pool is published);
    scoring tasks that ask a GPU queue in Ray until one is free."""
    cpus = float(cluster.get("CPU", 1))
    n_actors = actors or (max(1, int(cluster.get("GPU", 0))) if gpu else 1)
    readers = max(1, min(READERS_MAX, int(cpus)))
    held = readers * LOADER_CPUS + (0 if gpu else n_actors * min(1.0, max(0.1, (cpus - LOADER_CPUS) / n_actors)))
    return max(1, int(cpus - held))


def timeline(store: Any, table: Any, pools: Mapping[tuple[str, str], Any],
             window: tuple[float, float]) -> dict[str, Any]:
    """When things happened (epoch seconds), for ``run.json`` and the report's timing line.

    ``window``: (start of extraction, end of scoring) of this run. ``last_pool_published_at``:
    the latest ``published_at`` of the pools this run published (read from their manifests,
    no shard is opened; None when every pool was cached); ``score_started_at`` /
    ``score_finished_at``: the first start and last finish of the repetitions computed in this
    run (``repetitions_run``); ``started_before_last_pool``: how many of them started before
    the last pool was published; ``overlap_s``: how long extraction and scoring ran at once.
    """
    import pandas as pd

    t0, t_end = window
    published = []
    for key in pools.values():
        key = key.pool if isinstance(key, ProbsView) else key
        if not isinstance(key, str):
            continue
        try:
            at = store.manifest(key).get("published_at")
        except Exception:  # noqa: BLE001 - an unreadable manifest fails elsewhere
            continue
        if isinstance(at, (int, float)) and t0 <= at <= t_end:
            published.append(float(at))
    last = max(published) if published else None
    started = pd.to_numeric(table["started_at"], errors="coerce").to_numpy(float)
    finished = pd.to_numeric(table["finished_at"], errors="coerce").to_numpy(float)
    ran = (started >= t0) & (started <= t_end) & _ran(table)
    s0 = float(started[ran].min()) if ran.any() else None
    s1 = float(finished[ran].max()) if ran.any() else None
    t1 = last if last is not None else t0
    return {"extract_started_at": t0, "extract_finished_at": t1, "score_started_at": s0,
            "score_finished_at": s1, "pools_published": len(published),
            "last_pool_published_at": last, "repetitions_run": int(ran.sum()),
            "started_before_last_pool": int((started[ran] < last).sum()) if last else 0,
            "overlap_s": max(0.0, min(t1, s1) - max(t0, s0)) if s0 is not None else 0.0}


def _ran(table: Any) -> Any:
    """Rows whose repetition ran (it has a duration; a row failed before running has none)."""
    import numpy as np

    seconds = np.asarray(table["seconds"], dtype=float)
    return np.isfinite(seconds)
