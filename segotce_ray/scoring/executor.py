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
pruning of models that cannot reach a target's top-k); :class:`Interleave` runs several policies
(one adaptive schedule per metric) in one loop. Given a :class:`segotce_ray.scoring.feed.PoolFeed`
— pools still being extracted — the loop admits a unit only once every pool it reads has
arrived, wakes up for each publication (it waits for tasks at most ``_Gate.POLL_S`` at a
time while the feed is open) and keeps at most ``feed.limit`` tasks in flight until the feed
closes. Tasks, pool references and task resources: :mod:`segotce_ray.scoring.tasks`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import pandas as pd

from segotce_ray.cluster.progress import Progress
from segotce_ray.scoring.adapters import MetricSpec
from segotce_ray.scoring.feed import PoolFeed
from segotce_ray.scoring.rows import RESULT_COLUMNS, ScorePair, ROW_KEY
from segotce_ray.scoring.tasks import PairScorer

log = logging.getLogger(__name__)

__all__ = ["Interleave", "SchedulePolicy", "done_rows", "open_scorer", "run_fanout"]


def as_pair(p: ScorePair | Sequence[str]) -> ScorePair:
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
    pair_list = sorted({as_pair(p) for p in pairs})
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


class Interleave:
    """Several policies as one — e.g. one adaptive schedule per metric — so that every metric
    shares one fan-out: units are taken from each policy in turn, each row goes back to the
    policy of its metric."""

    def __init__(self, policies: Mapping[str, SchedulePolicy]) -> None:
        if not policies:
            raise ValueError("Interleave needs at least one policy")
        self.policies = dict(policies)
        self._order = list(self.policies)
        self._turn = 0

    def start(self, scorer: PairScorer) -> None:
        for p in self.policies.values():
            p.start(scorer)

    def next_unit(self) -> tuple[ScorePair, MetricSpec, list[int]] | None:
        for i in range(len(self._order)):
            name = self._order[(self._turn + i) % len(self._order)]
            unit = self.policies[name].next_unit()
            if unit is not None:
                self._turn = (self._turn + i + 1) % len(self._order)
                return unit
        return None

    def on_rows(self, rows: list[dict[str, Any]]) -> None:
        for name, p in self.policies.items():
            mine = [r for r in rows if r["metric"] == name]
            if mine:
                p.on_rows(mine)

    def waiting(self) -> bool:
        return any(p.waiting() for p in self.policies.values())

    def close(self) -> None:
        for p in self.policies.values():
            p.close()


class _Gate:
    """Units wait here until every pool they read has arrived through ``feed`` (none wait
    without a feed: all pools were given up front). Released units go first, in the order
    they were parked; the results never depend on that order (each repetition is seeded)."""

    #: seconds the loop waits for a task before it looks at the feed again
    POLL_S = 0.25

    def __init__(self, scorer: PairScorer, feed: PoolFeed | None) -> None:
        self.scorer, self.feed = scorer, feed
        self.parked: list[tuple[Any, set[tuple[str, str]]]] = []
        self.ready: deque[Any] = deque()
        if feed is not None:
            scorer.add_pools(feed.known)

    def next(self, policy: SchedulePolicy) -> Any:
        """The next unit whose pools are all in, or None."""
        if self.ready:
            return self.ready.popleft()
        while (unit := policy.next_unit()) is not None:
            missing = self._missing(unit)
            if not missing:
                return unit
            self.parked.append((unit, missing))
        return None

    def _missing(self, unit: Any) -> set[tuple[str, str]]:
        if self.feed is None or not self.feed.open:
            return set()
        return {p for p in self.scorer.pools_of(unit[0], unit[1]) if not self.feed.has(p)}

    def bound(self, max_in_flight: int) -> int:
        """Tasks in flight at most now: the feed's limit while extraction runs."""
        if self.feed is not None and self.feed.open and self.feed.limit is not None:
            return min(max_in_flight, self.feed.limit)
        return max_in_flight

    @property
    def waiting(self) -> bool:
        """Pools may still arrive."""
        return self.feed is not None and self.feed.open

    def poll(self, timeout: float | None) -> None:
        """Take what arrived (waiting up to ``timeout`` for it), release the units it completes."""
        if self.feed is None:
            return
        arrived = self.feed.take(timeout)
        if not arrived and self.feed.open:
            return
        self.scorer.add_pools(arrived)
        still = []
        for unit, missing in self.parked:
            missing = {p for p in missing if not self.feed.has(p)} if self.feed.open else set()
            if missing:
                still.append((unit, missing))
            else:
                self.ready.append(unit)
        self.parked = still


def run_fanout(scorer: PairScorer, policy: SchedulePolicy, *, max_in_flight: int,
               on_result: Callable[[dict[str, Any]], None] | None,
               bar: Progress, feed: PoolFeed | None = None) -> list[dict[str, Any]]:
    """The one fan-out loop: submit what ``policy`` wants while fewer than ``max_in_flight``
    tasks run, collect each finished task, hand its rows to ``on_result`` (persisted first),
    the progress bar and the policy. A pair that cannot run comes back as failed rows at once.

    feed: pools still being extracted (:class:`PoolFeed`): a unit waits until its pools have
    arrived, and while the feed is open at most ``feed.limit`` tasks run. Interrupted, it
    cancels what is still running. Returns the new rows in arrival order."""
    import ray

    new_rows: list[dict[str, Any]] = []

    def finish(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            new_rows.append(row)
            if on_result is not None:
                on_result(row)
        bar.update(rows)
        policy.on_rows(rows)

    gate = _Gate(scorer, feed)
    in_flight: list[Any] = []
    policy.start(scorer)
    try:
        while True:
            while len(in_flight) < gate.bound(max_in_flight):
                unit = gate.next(policy)
                if unit is None:
                    break
                out = scorer.submit(*unit)
                if isinstance(out, list):
                    finish(out)
                else:
                    in_flight.append(out)
            if not in_flight:
                if gate.waiting:
                    gate.poll(1.0)
                    continue
                if policy.waiting():
                    continue
                break
            ready, in_flight = ray.wait(in_flight, num_returns=1,
                                        timeout=gate.POLL_S if gate.waiting else None)
            for ref in ready:
                finish(scorer.collect(ref))
            gate.poll(0)
    finally:
        bar.close()
        for ref in in_flight:  # interrupted: do not leave work running for nobody
            ray.cancel(ref)
        policy.close()
    return new_rows
