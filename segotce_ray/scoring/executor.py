"""The one fan-out loop: schedule policies decide what to submit, the loop does the rest.

For each pair (model m with source dataset s, target t) a metric compares the pool of (m, s)
with the pool of (m, t) (peers read (m, t) only). Every repetition k of every pair is one unit
of work with its own seed ``repetition_seed(job_seed, m, t, k)`` (:mod:`segotce_ray.seeds`),
so the table is exactly the same whatever the number of workers, the completion order, the
retries or the schedule.

:func:`run_fanout` submits the units a :class:`SchedulePolicy` asks for while fewer than
``max_in_flight`` tasks run (default 4 per cluster CPU, at least 16), collects each finished
task with ``ray.wait``, and hands its rows — once, in one place — to the caller's
``on_result`` (a job persists each row before anything else happens), to the progress bar and
back to the policy. Policies: :class:`segotce_ray.scoring.schedules.FullSchedule` (every
repetition of every pair) and :class:`segotce_ray.scoring.adaptive.AdaptiveSchedule` (early
pruning of models that cannot reach a target's top-k). Tasks, pool references and task
resources: :mod:`segotce_ray.scoring.tasks`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from segotce_ray.cluster.progress import Progress
from segotce_ray.scoring.adapters import MetricSpec
from segotce_ray.scoring.rows import RESULT_COLUMNS, ScorePair, ROW_KEY
from segotce_ray.scoring.tasks import PairScorer

log = logging.getLogger(__name__)

__all__ = ["SchedulePolicy", "done_rows", "open_scorer", "run_fanout"]


def _as_pair(p: ScorePair | Sequence[str]) -> ScorePair:
    if isinstance(p, ScorePair):
        return p
    if len(p) != 3:
        raise ValueError(f"a pair is (model, source dataset, target), got {p!r}")
    return ScorePair(str(p[0]), str(p[1]), str(p[2]))


def done_rows(done: pd.DataFrame | Iterable[Mapping[str, Any]] | None,
               wanted: set[tuple[str, str, str, int]]) -> tuple[list[dict], set]:
    """The ok rows of ``done`` that belong to this request, and their keys."""
    if done is None:
        return [], set()
    frame = done if isinstance(done, pd.DataFrame) else pd.DataFrame(list(done))
    if frame.empty:
        return [], set()
    if missing := set(ROW_KEY + ["status"]) - set(frame.columns):
        raise ValueError(f"finished rows lack column(s) {sorted(missing)}")
    ok = frame[frame["status"] == "ok"].drop_duplicates(ROW_KEY, keep="last")
    rows, keys = [], set()
    for r in ok.reindex(columns=RESULT_COLUMNS).to_dict("records"):
        key = (str(r["model"]), str(r["target"]), str(r["metric"]), int(r["k"]))
        if key in wanted:
            rows.append(r)
            keys.add(key)
    return rows, keys


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


class SchedulePolicy(Protocol):
    """What a schedule decides; the loop in :func:`run_fanout` does everything else.

    ``start``: take the pools' reservations it needs (keeps them alive); ``next_unit``: the next
    (pair, metric spec, repetitions) to submit now, or None when it wants nothing more until
    results arrive; ``on_rows``: finished rows (after they were persisted), which may make it
    want more; ``waiting``: whether it will still want something (a loop with nothing in
    flight and a waiting policy asks again); ``close``: drop what it still holds.
    """

    def start(self, scorer: PairScorer) -> None: ...

    def next_unit(self) -> tuple[ScorePair, MetricSpec, list[int]] | None: ...

    def on_rows(self, rows: list[dict[str, Any]]) -> None: ...

    def waiting(self) -> bool: ...

    def close(self) -> None: ...


def run_fanout(scorer: PairScorer, policy: SchedulePolicy, *, max_in_flight: int,
               on_result: Callable[[dict[str, Any]], None] | None,
               bar: Progress) -> list[dict[str, Any]]:
    """The one fan-out loop: submit what ``policy`` wants while fewer than ``max_in_flight``
    tasks run, collect each finished task, hand its rows to ``on_result`` (persisted first),
    the progress bar and the policy. A pair that cannot run comes back as failed rows at once.
    Interrupted, it cancels what is still running. Returns the new rows in arrival order."""
    import ray

    new_rows: list[dict[str, Any]] = []

    def finish(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            new_rows.append(row)
            if on_result is not None:
                on_result(row)
        bar.update(rows)
        policy.on_rows(rows)

    in_flight: list[Any] = []
    policy.start(scorer)
    try:
        while True:
            while len(in_flight) < max_in_flight:
                unit = policy.next_unit()
                if unit is None:
                    break
                out = scorer.submit(*unit)
                if isinstance(out, list):
                    finish(out)
                else:
                    in_flight.append(out)
            if not in_flight:
                if policy.waiting():
                    continue
                break
            ready, in_flight = ray.wait(in_flight, num_returns=1)
            for ref in ready:
                finish(scorer.collect(ref))
    finally:
        bar.close()
        for ref in in_flight:  # interrupted: do not leave work running for nobody
            ray.cancel(ref)
        policy.close()
    return new_rows
