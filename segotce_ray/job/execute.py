"""Execute a plan: extract its missing pools while its missing repetitions are scored (a pair
starts once both of its pools are published: :mod:`segotce_ray.job.overlap`), write the matrix.
"""


from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


import numpy as np

from segotce_ray.cluster.runtime import init_ray
from segotce_ray.io import write_json
from segotce_ray.job.overlap import ExtractionThread, scoring_limit, timeline
from segotce_ray.metrics import registry
from segotce_ray.job.derived import add_model_facts, capacity_rows, model_facts, recommended_rows
from segotce_ray.job.plan import PROBS_SPACE, PairPlan, Plan
from segotce_ray.metrics.calibration import CalibrationError, calibrated_rows, read_calibration
from segotce_ray.pools.degeneracy import STATS_VERSION, degenerate_reason, pool_stats
from segotce_ray.pools.score_log import ScoreLog
from segotce_ray.pools.store import PoolStore, load_cached
from segotce_ray.pools.views import ProbsView
from segotce_ray.results.matrix import TransferabilityMatrix
from segotce_ray.scoring.adapters import metric_spec
from segotce_ray.scoring.adaptive import AdaptiveSettings, score_pairs_adaptive
from segotce_ray.scoring.feed import PoolFeed
from segotce_ray.scoring.rows import ScorePair, results_frame
from segotce_ray.scoring.schedules import score_pairs
from segotce_ray.seeds import repetition_seed
from segotce_ray.spec.model import JobSpec, needs_source

log = logging.getLogger(__name__)

def skipped_images(spec: JobSpec, plan: Plan) -> dict[str, list[dict[str, str]]]:
    """``{"model@dataset": [{image_id, error}, ...]}``: images the job's pools left out
    (``extraction.bad_images: skip``), read from the pool manifests (cached pools included)."""

    store = PoolStore(spec.store)
    out: dict[str, list[dict[str, str]]] = {}
    for p in plan.pools:
        if p.key is None or not store.has(p.key):
            continue
        try:
            skipped = store.manifest(p.key).get("skipped") or []
        except Exception:  # noqa: BLE001 - an unreadable manifest fails elsewhere, not here
            continue
        if skipped:
            out[f"{p.model}@{p.dataset}"] = [{"image_id": str(e.get("image_id")),
                                               "error": str(e.get("error", ""))} for e in skipped]
    return out


def _metric_specs(spec: JobSpec) -> dict[str, Any]:
    """Scoring :class:`MetricSpec` per selected metric."""
    return {metric: metric_spec(metric, spec.otce) for metric in spec.metrics}


def _unavailable_row(spec: JobSpec, p: PairPlan, k: int) -> dict[str, Any]:
    """A failed row for repetition k of a pair that cannot run (its reason in ``error``;
    ``started_at``/``finished_at``: now, as it never ran)."""
    now = time.time()

    return {"model": p.model, "target": p.target, "metric": p.metric, "k": k,
            "score": math.nan, "w_t": math.nan, "w_d": math.nan, "iterations": None,
            "converged": None, "n_source": None, "n_target": None, "seconds": math.nan,
            "started_at": now, "finished_at": now,
            "status": "unavailable" if p.not_applicable else "failed", "error": p.error,
            "source": p.source,
            "seed": repetition_seed(spec.seed, p.model, p.target, k)}


def execute(spec: JobSpec, plan: Plan, run_dir: Path, timings: dict[str, Any], *,
            address: str | None, num_cpus: int | None, progress: bool | None,
            on_row: Callable[[dict[str, Any]], None] | None,
            when: dict[str, Any] | None = None, overlap: bool = True) -> tuple[Any, dict[str, str], Any]:
    """Run ``plan``: extract its missing pools in a driver thread while its repetitions are
    scored (a pair starts as soon as its pools are published; each row persisted as it
    arrives), then write the matrix files.

    Returns (long table, extraction errors, decisions of an adaptive schedule or None);
    ``timings`` gets the stages' seconds (``extract`` and ``score`` both from the start of
    extraction: they overlap) and ``when`` the run's timeline
    (:func:`segotce_ray.job.overlap.timeline`) with the extraction's ``driver_bytes`` and
    ``pool_bytes``. ``overlap=False`` waits for every pool before scoring (the staged order).
    """
    t0 = time.perf_counter()
    init_ray(address=address, num_cpus=num_cpus)
    timings["ray_init"] = time.perf_counter() - t0
    store = PoolStore(spec.store)
    errors: dict[str, str] = {}
    feed, orders = _pool_feed(spec, plan)
    probs_models = {m for m, e in spec.models.items() if e.layer == PROBS_SPACE}
    started = time.time()
    with ExtractionThread(spec, orders, store, progress, feed, errors, probs_models) as extraction:
        if not overlap:
            extraction.join()
        table, decisions = _score(spec, plan, feed, store, progress, on_row)
        scored = time.time()
    ended = extraction.finished_at if orders else started
    timings["extract"] = ended - started
    timings["score"] = scored - started
    t0 = time.perf_counter()
    table = add_model_facts(table, facts := model_facts(spec, plan, store))
    table = _calibrate(spec, table, run_dir, errors)
    extra = capacity_rows(plan, facts) if spec.ground_truth else []
    extra += recommended_rows(spec, table, run_dir, errors)
    if extra:
        table = results_frame([*table.to_dict("records"), *extra])
    table = mark_degenerate(table, pool_checks(store, feed.known), spec.otce.n_pixels)
    schedule = _schedule_frame(decisions, plan) if spec.schedule.mode == "adaptive" else None
    TransferabilityMatrix(table).save(run_dir, ground_truth=spec.ground_truth, schedule=schedule)
    timings["matrix"] = time.perf_counter() - t0
    if when is not None:
        when.update(timeline(store, table, feed.known, (started, max(ended, scored))),
                    **{k: extraction.stats.get(k) for k in ("driver_bytes", "pool_bytes")})
    return table, errors, schedule


def _pool_feed(spec: JobSpec, plan: Plan) -> tuple[PoolFeed, list[Any]]:
    """The feed of every pool of the plan — cached ones and those the plan already failed
    known at once, the plan's orders to extract expected — and those orders."""
    import ray

    known: dict[tuple[str, str], Any] = {}
    probs_models = {m for m, e in spec.models.items() if e.layer == PROBS_SPACE}
    for p in plan.pools:
        if p.error:
            known[(p.model, p.dataset)] = RuntimeError(p.error)
        elif p.cached:
            known[(p.model, p.dataset)] = ProbsView(p.key) if p.model in probs_models else p.key
    orders = plan.orders_to_extract()
    gpus = spec.resources.gpus_per_actor
    limit = scoring_limit(ray.cluster_resources(), spec.resources.actors,
                          bool(ray.cluster_resources().get("GPU")) if gpus is None else gpus > 0)
    return PoolFeed(known, [o.request.pair for o in orders], limit=limit), orders


def _score(spec: JobSpec, plan: Plan, feed: PoolFeed, store: PoolStore, progress: bool | None,
           on_row: Callable[[dict[str, Any]], None] | None) -> tuple[Any, list[Any]]:
    """The long table of every pair of the plan (rows of pairs that cannot run included) and
    the adaptive decisions per metric (empty under the full schedule). Every metric shares
    one fan-out, fed by ``feed`` as pools are published."""
    scores = ScoreLog(spec.store)
    key_of = {(p.model, p.target, p.metric): p.key for p in plan.pairs}

    def persist(row: dict[str, Any]) -> None:
        key = key_of.get((row["model"], row["target"], row["metric"]))
        if key is not None:
            scores.append(key, row)
        if on_row is not None:
            on_row(row)

    specs = _metric_specs(spec)
    work: dict[str, list[ScorePair]] = {}
    done: list[dict[str, Any]] = []
    for metric, mspec in specs.items():
        runnable = [p for p in plan.pairs if p.metric == metric and p.error is None]
        done += [r for p in runnable for r in scores.rows(p.key) if int(r["k"]) < mspec.repetitions]
        # metrics without source data (the peers) never read the source pool
        work[metric] = [ScorePair(p.model, p.source or spec.models[p.model].source or "", p.target)
                        for p in runnable]
    used = [specs[m] for m in specs if work[m]]
    unavailable = [_unavailable_row(spec, p, k) for p in plan.pairs if p.error
                   for k in range(p.repetitions)]
    if not used:
        return results_frame(unavailable), []
    common = dict(store=store, seed=spec.seed, on_result=persist, progress=progress, done=done,
                  num_gpus=spec.resources.gpus_per_task, autoscaling=spec.resources.autoscaling,
                  feed=feed)
    work = {m: work[m] for m in specs if work[m]}
    if spec.schedule.mode == "adaptive":
        sched = spec.schedule
        run = score_pairs_adaptive(work, dict(feed.known), metrics=used, **common,
                                   schedule=AdaptiveSettings(min_repetitions=sched.min_repetitions,
                                                             top_k=sched.top_k, alpha=float(sched.alpha)))
        reps = {m.name: m.repetitions for m in used}
        decisions = [run.decisions.assign(repetitions_full=run.decisions["metric"].map(reps))]
        return results_frame([*run.table.to_dict("records"), *unavailable]), decisions
    table = score_pairs(work, dict(feed.known), metrics=used, **common)
    return results_frame([*table.to_dict("records"), *unavailable]), []


def _calibrate(spec: JobSpec, table: Any, run_dir: Path, errors: dict[str, str]) -> Any:
    """The table plus the ``otce_calibrated`` rows when ``otce.calibration`` is set.

    The calibration file is copied to ``run_dir/calibration_applied.json`` (the report shows its
    LOTO figures). A file that no longer reads is an error of the job (``otce.calibration``),
    never of the raw results.
    """
    if not spec.otce.calibration or "otce" not in spec.metrics:
        return table
    try:
        cal = read_calibration(spec.otce.calibration)
    except CalibrationError as exc:
        errors["otce.calibration"] = str(exc)
        return table
    data = {**cal.to_dict(), "path": spec.otce.calibration}
    write_json(run_dir / "calibration_applied.json", data)
    extra = calibrated_rows(table, cal)
    return results_frame([*table.to_dict("records"), *extra.to_dict("records")])


def pool_checks(store: Any, pool_results: Mapping[tuple[str, str], Any]) -> dict[tuple[str, str], dict]:
    """:func:`segotce_ray.pools.degeneracy.pool_stats` of every committed pool, as its
    manifest states them (``facts``, computed where the pool was written): the driver opens
    no pool shard. A pool published before manifests carried facts is checked once by a Ray
    task on a worker, memoised in ``<store>/checks/<key[:2]>/<key>.json``. A pool that cannot
    be read is left out (its pairs fail on their own).
    """
    out: dict[tuple[str, str], dict] = {}
    late: dict[tuple[str, str], str] = {}
    for pool, key in pool_results.items():
        if not isinstance(key, str):   # failed pools, and probs views (as before)
            continue
        try:
            facts = store.manifest(key).get("facts")
        except Exception as exc:  # noqa: BLE001 - a bad manifest fails its pairs elsewhere
            log.warning("pool %s@%s: degeneracy check skipped: %s", *pool, exc)
            continue
        memo = _read_memo(Path(store.root), key)
        if facts and facts.get("version") == STATS_VERSION:
            out[pool] = facts
        elif memo is not None:
            out[pool] = memo
        else:
            late[pool] = key
    if late:
        out.update(_stats_on_workers(str(store.root), late))
    return out


def _read_memo(root: Path, key: str) -> dict | None:
    try:
        stats = json.loads((root / "checks" / key[:2] / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stats if stats.get("version") == STATS_VERSION else None


def _pool_stats_task(root: str, key: str) -> dict | str:
    """On a worker: the pool's statistics (memoised next to the store), or why not."""
    try:
        pool = load_cached(root, key)
        stats = pool_stats(np.asarray(pool.features), np.asarray(pool.labels))
    except Exception as exc:  # noqa: BLE001 - a bad pool fails its pairs elsewhere
        return f"{type(exc).__name__}: {exc}"
    try:  # the memo only saves time: two runs writing it at once may both lose
        write_json(Path(root) / "checks" / key[:2] / f"{key}.json", stats, indent=None)
    except OSError:
        pass
    return stats


def _stats_on_workers(root: str, keys: Mapping[tuple[str, str], str]) -> dict[tuple[str, str], dict]:
    import ray

    task = ray.remote(num_cpus=1)(_pool_stats_task)
    refs = {pool: task.remote(root, key) for pool, key in keys.items()}
    out = {}
    for pool, ref in refs.items():
        got = ray.get(ref)
        if isinstance(got, dict):
            out[pool] = got
        else:
            log.warning("pool %s@%s: degeneracy check skipped: %s", *pool, got)
    return out


def mark_degenerate(table: Any, stats: Mapping[tuple[str, str], dict], n_pixels: int) -> Any:
    """``table`` with column ``degenerate``: per row, the reasons of the pools its metric reads.

    SEG-OTCE rows (and ``otce_calibrated``) read the model's source and target pools, the
    peers the target pool; the cell reads ``model@dataset: why`` (several joined by `` | ``;
    None when all are fine).
    """

    reasons = {pool: degenerate_reason(s, n_pixels) for pool, s in stats.items()}

    def why(model: str, target: str, metric: str, source: Any) -> str | None:
        rec = registry.METRICS.get(metric)
        if rec is not None and rec.inputs in ("parameters", "metrics"):
            return None                  # capacity, recommended: read no pool
        pools = [(model, target)]
        if needs_source(metric) and isinstance(source, str) and source:
            pools.insert(0, (model, source))
        found = [f"{m}@{d}: {reasons[(m, d)]}" for m, d in pools if reasons.get((m, d))]
        return " | ".join(found) or None

    out = table.copy()
    out["degenerate"] = [why(str(r.model), str(r.target), str(r.metric), r.source)
                         for r in out[["model", "target", "metric", "source"]].itertuples()]
    return out


#: Columns of ``schedule.csv`` (an adaptive run's decisions, one row per pair).
SCHEDULE_FILE_COLUMNS = ["metric", "model", "target", "schedule_status", "repetitions_done",
                         "repetitions_full", "scheduled", "mean", "lower", "upper", "threshold",
                         "snapshot", "reason"]


def _schedule_frame(decisions: list[Any], plan: Plan) -> Any:
    """The adaptive decisions of every metric, plus the pairs that could not run.

    A pair that could not be scheduled (a pool failed: ``failed``; a source metric without a
    source: ``unavailable``) has 0 repetitions and ``scheduled`` False, so every (metric,
    model, target) of the plan has a row; repetition counts (spent vs full) cover the
    scheduled pairs only.
    """
    import pandas as pd

    frames = [d.assign(scheduled=True) for d in decisions if not d.empty]
    extra = [{"metric": p.metric, "model": p.model, "target": p.target,
              "schedule_status": "unavailable" if p.not_applicable else "failed",
              "repetitions_done": 0, "repetitions_full": p.repetitions, "scheduled": False,
              "reason": p.error}
             for p in plan.pairs if p.error is not None]
    if extra:
        frames.append(pd.DataFrame(extra))
    if not frames:
        return pd.DataFrame(columns=SCHEDULE_FILE_COLUMNS)
    out = pd.concat(frames, ignore_index=True).reindex(columns=SCHEDULE_FILE_COLUMNS)
    out["repetitions_done"] = out["repetitions_done"].astype("int64")
    out["repetitions_full"] = out["repetitions_full"].astype("int64")
    out["scheduled"] = out["scheduled"].astype(bool)
    out["snapshot"] = pd.array(pd.to_numeric(out["snapshot"], errors="coerce"), dtype="Int64")
    return out.sort_values(["metric", "model", "target"], kind="stable").reset_index(drop=True)
