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

Pools named by a key of a :class:`~segotce_ray.pools.store.PoolStore` (a path every node mounts)
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

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from segotce_ray.pools.views import PoolSource
from segotce_ray.scoring.adapters import MetricSpec, OTCESettings, otce_metric
from segotce_ray.scoring.rows import RESULT_COLUMNS, ScorePair, _KEY, results_frame
from segotce_ray.scoring.tasks import PairScorer

log = logging.getLogger(__name__)

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

    from segotce_ray.cluster.progress import Progress

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
    bar = Progress(total, "scoring", progress, per_pair)

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
