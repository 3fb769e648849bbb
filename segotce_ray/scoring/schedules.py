"""The ``full`` schedule: every repetition of every pair, as a policy of the fan-out loop.

:func:`score_pairs` is the entry point (the ``adaptive`` schedule's is
:func:`segotce_ray.scoring.adaptive.score_pairs_adaptive`): pairs × metrics × K repetitions
→ the long results table (:data:`segotce_ray.scoring.rows.RESULT_COLUMNS`, one row per
(model, target, metric, k), sorted by those keys).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pandas as pd

from segotce_ray.cluster.progress import Progress
from segotce_ray.pools.views import PoolSource
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.adapters import MetricSpec, otce_metric
from segotce_ray.scoring.executor import as_pair, done_rows, open_scorer, run_fanout
from segotce_ray.scoring.feed import PoolFeed
from segotce_ray.scoring.rows import ScorePair, results_frame
from segotce_ray.scoring.tasks import PairScorer

log = logging.getLogger(__name__)

__all__ = ["FullSchedule", "score_pairs"]

Unit = tuple[ScorePair, MetricSpec, list[int]]


def _chunks(ks: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(ks), size):
        yield ks[i:i + size]


class FullSchedule:
    """Every unit, in order: pairs sorted, then metrics, then repetitions in chunks."""

    def __init__(self, units: list[Unit]) -> None:
        self.units = units
        self._queue = iter(units)

    @classmethod
    def of(cls, work: Sequence[tuple[MetricSpec, list[ScorePair]]],
           finished: set[tuple[str, str, str, int]], reps_per_task: int) -> "FullSchedule":
        """Units of every (metric, its pairs) in ``work``, minus the ``finished`` repetitions:
        pairs in order, then the metrics, then repetitions in chunks of ``reps_per_task``."""
        units = []
        order = {spec.name: i for i, (spec, _) in enumerate(work)}
        for pair, spec in sorted(((p, spec) for spec, plist in work for p in plist),
                                 key=lambda ps: (ps[0], order[ps[1].name])):
            todo = [k for k in range(spec.repetitions)
                    if (pair.model, pair.target, spec.name, k) not in finished]
            units += [(pair, spec, ks) for ks in _chunks(todo, reps_per_task)]
        return cls(units)

    def per_pair(self) -> dict[tuple[str, str, str], int]:
        """Repetitions per (metric, model, target): the progress bar's units."""
        out: dict[tuple[str, str, str], int] = {}
        for pair, spec, ks in self.units:
            key = (spec.name, pair.model, pair.target)
            out[key] = out.get(key, 0) + len(ks)
        return out

    def start(self, scorer: PairScorer) -> None:
        for pair, spec, _ in self.units:
            scorer.reserve(pair, spec)

    def next_unit(self) -> Unit | None:
        return next(self._queue, None)

    def on_rows(self, rows: list[dict[str, Any]]) -> None:
        return None

    def waiting(self) -> bool:
        return False

    def close(self) -> None:
        return None


def _check_args(specs: list[MetricSpec], reps_per_task: int) -> None:
    if not specs:
        raise ValueError("no metric to score")
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"metric names repeat: {[s.name for s in specs]}")
    if reps_per_task < 1:
        raise ValueError(f"reps_per_task must be >= 1, got {reps_per_task}")


def metric_pairs(pairs: Iterable[ScorePair | Sequence[str]] | Mapping[str, Iterable[Any]],
                 specs: Sequence[MetricSpec]) -> list[tuple[MetricSpec, list[ScorePair]]]:
    """(metric, its sorted pairs) for each metric: the same pairs for all, or per metric name
    when ``pairs`` is a mapping (a metric it does not name has no pair)."""
    if isinstance(pairs, Mapping):
        if unknown := set(pairs) - {s.name for s in specs}:
            raise ValueError(f"pairs given for metric(s) {sorted(unknown)} that are not scored")
        return [(spec, sorted({as_pair(p) for p in pairs.get(spec.name, ())})) for spec in specs]
    common = sorted({as_pair(p) for p in pairs})
    return [(spec, common) for spec in specs]


def score_pairs(pairs: Iterable[ScorePair | Sequence[str]] | Mapping[str, Iterable[Any]],
                pools: Mapping[tuple[str, str], PoolSource] | None = None,
                settings: OTCESettings | None = None, *, store: Any = None, seed: int = 0,
                metrics: Sequence[MetricSpec] | None = None,
                done: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None,
                on_result: Callable[[dict[str, Any]], None] | None = None,
                max_in_flight: int | None = None, reps_per_task: int = 1,
                num_gpus: float | None = None, max_retries: int = 3,
                fail_infeasible: bool = True, autoscaling: str = "auto",
                progress: bool | None = None, feed: PoolFeed | None = None) -> pd.DataFrame:
    """Score every pair K times on Ray and return the long results table.

    pairs: (model, source dataset, target) triples or :class:`ScorePair` — scored with every
    metric — or ``{metric name: pairs}`` when the metrics score different pairs (all in one
    fan-out). pools: ``{(model, dataset): PixelPool | store key | ProbsView | exception}`` (an
    exception fails the pairs that need that pool). settings: OTCE settings (when
    ``metrics`` is not given). seed: the job seed. done: rows finished earlier; their ok
    (model, target, metric, k) are skipped and returned as they are. on_result: called with
    each newly finished row. max_in_flight: tasks submitted at once. reps_per_task:
    repetitions per task. num_gpus: GPU share per task. max_retries: retries of a task whose
    worker died. fail_infeasible: fail a pair at once when its task needs more memory than
    any node offers; autoscaling: how an autoscaler's node types count
    (:mod:`segotce_ray.cluster.placement`). progress: a bar (default: when stderr is a
    terminal; otherwise INFO log lines). feed: pools still being extracted
    (:class:`segotce_ray.scoring.feed.PoolFeed`); a pair starts once its pools arrived.
    """
    specs = list(metrics) if metrics is not None else [otce_metric(settings)]
    _check_args(specs, reps_per_task)
    work = metric_pairs(pairs, specs)
    pair_list, scorer, max_in_flight = open_scorer(
        {p for _, plist in work for p in plist}, pools, store, seed=seed,
        ignore_index=int(specs[0].params.get("ignore_index", 255)),
        num_gpus=num_gpus, max_retries=max_retries, fail_infeasible=fail_infeasible,
        max_in_flight=max_in_flight, autoscaling=autoscaling)
    wanted = {(p.model, p.target, spec.name, k) for spec, plist in work for p in plist
              for k in range(spec.repetitions)}
    old_rows, finished = done_rows(done, wanted)
    policy = FullSchedule.of(work, finished, reps_per_task)
    total = sum(len(ks) for _, _, ks in policy.units)
    log.info("scoring %d pair(s) × %s: %d repetition(s) to run, %d already done",
             len(pair_list), ", ".join(f"{s.name}(K={s.repetitions})" for s in specs),
             total, len(old_rows))
    bar = Progress(total, "scoring", progress, policy.per_pair())
    new_rows = run_fanout(scorer, policy, max_in_flight=max_in_flight, on_result=on_result,
                          bar=bar, feed=feed)
    table = results_frame([*old_rows, *new_rows])
    failed = int((table["status"] != "ok").sum())
    if failed:
        log.warning("%d of %d repetition(s) failed", failed, len(table))
    return table
