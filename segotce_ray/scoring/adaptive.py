r"""Adaptive repetition schedule: early pruning of candidates that cannot reach a target's top-k.

For each target t, the candidates are the models m scored on t. The full schedule spends K
repetitions on every (m, t). This one spends ``min_repetitions`` (k₀) on every candidate and
further repetitions only on candidates that can still enter the top-k of t; the others are
*pruned* and keep their partial estimate (mean of the repetitions they got).

Repetitions are always taken in order k = 0, 1, 2, … with the seed
:func:`segotce_ray.seeds.repetition_seed` (job seed, model, target, k), so every repetition the
adaptive run computes is bit-for-bit the repetition k of the full schedule: a pruned candidate
holds a prefix of the full run's repetitions, a surviving one holds all K of them (its mean is
the full schedule's mean; the top-k therefore ranks exactly as the full run does whenever no true
top-k member was pruned).

Confidence intervals (per target; the noise model is a stated assumption)
--------------------------------------------------------------------------
A candidate's repetition scores s_m,0, s_m,1, … are i.i.d. with mean μ_m (they differ only by
the pixels drawn). With n repetitions, mean x̄_m and sample std s_m (ddof 1)::

    σ̂_m = max(s_p, s_m)          s_p² = Σ_j (n_j − 1) s_j² / Σ_j (n_j − 1)   (pooled over the
                                                                             target's candidates)
    CI_m = x̄_m ± q · σ̂_m / √n    q = t⁻¹_{df_p}(1 − δ / (2 · M · L))

where df_p = Σ_j (n_j − 1), M = candidates of the target, L = K − k₀ + 1 the number of looks a
candidate can get, and δ = ``alpha``. The pooled variance assumes the repetition noise has
about the same scale for every candidate of a target (true of pixel subsampling at fixed N;
``max(s_p, s_m)`` widens the interval of a candidate seen to be noisier). Bonferroni over the
M·L intervals: if they are t-intervals, all of them cover their μ_m with probability ≥ 1 − δ,
and then no candidate of the true top-k is ever pruned.

Pruning rule: candidate m with n repetitions is pruned when ``UCB_m < τ``, τ = the k-th
largest LCB of the target's snapshot (below). Under coverage, k candidates have μ > τ > μ_m, so
m is not in the top-k. Candidates never pruned run to K repetitions ("complete").

With ``min_repetitions = 1`` a candidate has no variance of its own after the first look; a
deterministic set of *variance probes* (a fraction ``variance_probes`` of the candidates,
chosen by a hash of the model name, at least 2) gets 2 repetitions at once so that s_p exists;
a 1-repetition candidate then relies on the pooled-variance assumption alone.

Determinism (same seed ⇒ same decisions and table, whatever the completion order)
--------------------------------------------------------------------------------
Decisions are never taken from "whatever has finished so far". A *snapshot* L of a target is
the statistics of every candidate over its first r_j(L) = min(max(L, init_j), final_j)
repetitions (init_j: its first batch, final_j: where it stopped); it is taken only once all of
those repetitions are in, and is cached. Decision D(m, n) — prune, complete, or run
repetition n — uses m's own first n repetitions and snapshot ``max(base, n − staleness)``
(base = k₀). Each decision is therefore a function of repetition results only (which are
fixed by their seeds), by induction over L: the same seed gives the same decisions for any
number of workers, ``max_in_flight``, completion order, retries, or resumption from ``done``.

Scheduling
----------
Not lock-step rounds: Ray's ``wait`` returns one finished task at a time; each result is
recorded, every decision it unblocks is taken at once and the survivors' next repetitions go
into a priority queue, which keeps up to ``max_in_flight`` tasks outstanding. The queue is
ordered by (target, repetition index, model): a target's work goes first, and the next
target's fills every slot the first one leaves while it waits for stragglers, so the cluster
stays busy while only a few targets' pools are in the object store at once (a candidate's
pools are released when it stops). With ``staleness = 1`` a candidate may run one repetition
ahead of its target's slowest candidate, so stragglers of one level overlap with the next
level.

Output
------
:class:`AdaptiveRun` with ``table`` — the long results table of
:func:`segotce_ray.scoring.rows.results_frame` plus ``schedule_status`` (``complete`` / ``pruned`` /
``failed``) and ``repetitions_done`` (ok repetitions of that pair) on each row — and
``decisions``: one row per (model, target): status, repetitions, mean, lower, upper, the
threshold τ it was judged against and the snapshot level used.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from segotce_ray.cluster.progress import Progress
from segotce_ray.scoring.settings import OTCESettings
from segotce_ray.scoring.adapters import MetricSpec, otce_metric
from segotce_ray.scoring.executor import Interleave, open_scorer, run_fanout
from segotce_ray.scoring.feed import PoolFeed
from segotce_ray.scoring.schedules import metric_pairs
from segotce_ray.scoring.rows import ScorePair, results_frame
from segotce_ray.scoring.tasks import PairScorer
from segotce_ray.seeds import pair_digest

log = logging.getLogger(__name__)

__all__ = ["AdaptiveRun", "AdaptiveSettings", "interval_quantile", "score_pairs_adaptive",
           "SCHEDULE_COLUMNS"]

#: Columns the adaptive schedule adds to the long results table.
SCHEDULE_COLUMNS = ["schedule_status", "repetitions_done"]
DECISION_COLUMNS = ["model", "target", "metric", "schedule_status", "repetitions_done", "mean",
                    "lower", "upper", "threshold", "snapshot", "reason"]


@dataclass(frozen=True)
class AdaptiveSettings:
    """Parameters of the adaptive schedule (``schedule:`` block of a job spec).

    min_repetitions: k₀, repetitions every candidate gets; top_k: the ranks that must stay
    right; alpha: δ, the chance per target that any true top-k member is pruned (under the
    noise model of the module docstring); staleness: how many levels a candidate may run
    ahead of its target's slowest one (0 = lock-step levels); variance_probes: share of
    candidates given 2 repetitions up front when k₀ = 1.
    """

    min_repetitions: int = 2
    top_k: int = 5
    alpha: float = 0.05
    staleness: int = 1
    variance_probes: float = 0.1

    def __post_init__(self) -> None:
        if self.min_repetitions < 1:
            raise ValueError(f"min_repetitions must be >= 1, got {self.min_repetitions}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {self.staleness}")
        if not 0 < self.variance_probes <= 1:
            raise ValueError(f"variance_probes must be in (0, 1], got {self.variance_probes}")


@dataclass
class AdaptiveRun:
    """Result of :func:`score_pairs_adaptive`.

    table: long table (RESULT_COLUMNS + SCHEDULE_COLUMNS), one row per computed repetition;
    decisions: one row per (model, target) (DECISION_COLUMNS); repetitions: rows in ``table``
    (computed now or taken from ``done``); full_repetitions: what the full schedule would run.
    """

    table: pd.DataFrame
    decisions: pd.DataFrame
    repetitions: int
    full_repetitions: int

    @property
    def savings(self) -> float:
        """full_repetitions / repetitions (×)."""
        return self.full_repetitions / max(self.repetitions, 1)


def interval_quantile(alpha: float, candidates: int, looks: int, df: int) -> float:
    """q = t⁻¹_df(1 − α / (2·candidates·looks)): Bonferroni over every interval of a target."""
    if df < 1:
        return math.inf
    return float(stats.t.ppf(1.0 - alpha / (2.0 * max(candidates, 1) * max(looks, 1)), df))


# --------------------------------------------------------------------------- state


@dataclass
class _Candidate:
    pair: ScorePair
    index: int                       # position in the target's sorted candidate list
    init: int                        # repetitions of its first batch
    results: dict[int, float | None] = field(default_factory=dict)  # k -> score (None: failed)
    next_k: int = 0                  # next repetition to submit
    decided: int = 0                 # n of its next decision D(m, n) (0: the first, at init)
    final: int | None = None         # repetitions at which it stopped
    status: str = "running"
    lower: float = math.nan
    upper: float = math.nan
    threshold: float = math.nan
    snapshot: int | None = None
    reason: str = ""

    def prefix(self) -> int:
        """Number of contiguous repetitions 0..n-1 that are in."""
        n = 0
        while n in self.results:
            n += 1
        return n

    def scores(self, n: int) -> np.ndarray:
        return np.array([self.results[k] for k in range(n)], dtype=np.float64)


@dataclass
class _Snapshot:
    pooled_sd: float
    df: int
    threshold: float                 # k-th largest LCB (−inf when fewer than k candidates)


class _Target:
    """Candidates of one (target, metric) and their cached snapshots."""

    def __init__(self, name: str, cands: list[_Candidate], settings: AdaptiveSettings, K: int,
                 sign: float) -> None:
        self.name = name
        self.cands = cands
        self.s = settings
        self.K = K
        self.sign = sign
        self.base = min(settings.min_repetitions, K)
        self.looks = K - self.base + 1
        self.snapshots: dict[int, _Snapshot] = {}
        self.version = 0                          # bumped on every new result or stop
        self._missing: dict[int, int] = {}        # level -> version at which it was incomplete

    def reps_at(self, c: _Candidate, level: int) -> int:
        r = max(level, c.init)
        return r if c.final is None else min(r, c.final)

    def snapshot(self, level: int) -> _Snapshot | None:
        """Snapshot ``level`` if every repetition it needs is in (else None); cached."""
        if level in self.snapshots:
            return self.snapshots[level]
        if self._missing.get(level) == self.version:
            return None                           # nothing changed since it was incomplete
        stats_ = []
        for c in self.cands:
            if c.status == "failed":
                continue
            r = self.reps_at(c, level)
            if (c.final is None and c.prefix() < r) or \
                    (c.final is None and any(c.results[k] is None for k in range(r))):
                self._missing[level] = self.version
                return None                       # still waiting for this candidate
            if any(c.results[k] is None for k in range(r)):
                continue
            stats_.append(self.sign * c.scores(r))
        num = sum((len(x) - 1) * float(np.var(x, ddof=1)) for x in stats_ if len(x) > 1)
        df = sum(len(x) - 1 for x in stats_)
        sd = math.sqrt(num / df) if df > 0 else math.inf
        q = interval_quantile(self.s.alpha, len(self.cands), self.looks, df)
        lcbs = sorted((self._bound(x, sd, q)[0] for x in stats_), reverse=True)
        thr = lcbs[self.s.top_k - 1] if len(lcbs) >= self.s.top_k else -math.inf
        snap = _Snapshot(sd, df, thr)
        self.snapshots[level] = snap
        return snap

    @staticmethod
    def _bound(x: np.ndarray, pooled_sd: float, q: float) -> tuple[float, float]:
        own = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
        sd = max(pooled_sd, own)
        half = q * sd / math.sqrt(len(x)) if math.isfinite(q) and math.isfinite(sd) else math.inf
        mean = float(np.mean(x))
        return mean - half, mean + half

    def decide(self, c: _Candidate) -> str | None:
        """Take decision D(c, n) for n = its repetitions in; 'next', 'stop' or None (wait)."""
        n = c.decided if c.decided else c.init
        if c.prefix() < n:
            return None
        if any(c.results[k] is None for k in range(n)):
            c.final, c.status = n, "failed"
            c.reason = "a repetition failed"
            return "stop"
        if n >= self.K:
            c.final, c.status, c.reason = n, "complete", "ran K repetitions"
            return "stop"            # its bounds are filled at the end (all snapshots known)
        level = max(self.base, n - self.s.staleness)
        snap = self.snapshot(level)
        if snap is None:
            return None
        lo, hi = self._fill_bounds(c, n, level)
        if hi < snap.threshold:
            c.final, c.status = n, "pruned"
            c.reason = (f"upper bound {self.sign * hi:.6g} below the top-{self.s.top_k} "
                        f"threshold {self.sign * snap.threshold:.6g}" if self.sign > 0 else
                        "interval entirely worse than the top-k threshold")
            return "stop"
        c.decided = n + 1
        return "next"

    def _fill_bounds(self, c: _Candidate, n: int, level: int | None) -> tuple[float, float]:
        level = max(self.base, n - self.s.staleness) if level is None else level
        snap = self.snapshots.get(level) or self.snapshot(level)
        if snap is None:
            return -math.inf, math.inf
        q = interval_quantile(self.s.alpha, len(self.cands), self.looks, snap.df)
        lo, hi = self._bound(self.sign * c.scores(n), snap.pooled_sd, q)
        lo_o, hi_o = (lo, hi) if self.sign > 0 else (-hi, -lo)
        c.lower, c.upper, c.snapshot = lo_o, hi_o, level
        c.threshold = self.sign * snap.threshold
        return lo, hi


def _probe_set(cands: Sequence[ScorePair], fraction: float) -> set[str]:
    """⌈fraction·M⌉ (≥ 2) models chosen by SHA-256 of (model, target): deterministic, score-blind."""
    n = min(len(cands), max(2, math.ceil(fraction * len(cands))))
    order = sorted(cands, key=lambda p: pair_digest(p.model, p.target))
    return {p.model for p in order[:n]}


# --------------------------------------------------------------------------- policy


class AdaptiveSchedule:
    """The adaptive schedule as a policy of :func:`segotce_ray.scoring.executor.run_fanout`.

    Units are single repetitions, taken by (target order, k, candidate): every target moves
    level by level. Rows finished earlier (``done``) are used, not rerun; each new row updates
    its candidate and the decisions its target's results allow (:meth:`advance`).
    """

    def __init__(self, pair_list: list[ScorePair], spec: MetricSpec, sched: AdaptiveSettings,
                 done: pd.DataFrame | Iterable[Mapping[str, Any]] | None) -> None:
        self.spec, self.K = spec, spec.repetitions
        sign = 1.0 if spec.higher_is_better else -1.0
        self.targets: dict[str, _Target] = {}
        self.cand_of: dict[tuple[str, str], _Candidate] = {}
        by_target: dict[str, list[ScorePair]] = {}
        for p in pair_list:
            by_target.setdefault(p.target, []).append(p)
        for tname, plist in sorted(by_target.items()):
            probes = _probe_set(plist, sched.variance_probes) if sched.min_repetitions == 1 else set()
            cands = []
            for i, p in enumerate(plist):
                c = _Candidate(p, i, min(self.K, max(sched.min_repetitions, 2 if p.model in probes else 1)))
                cands.append(c)
                self.cand_of[(p.model, p.target)] = c
            self.targets[tname] = _Target(tname, cands, sched, self.K, sign)
        self.t_order = {t: i for i, t in enumerate(sorted(self.targets))}
        self.rows = self._earlier_rows(done)
        self.reused = len(self.rows)
        self.queue: list[tuple[int, int, int, str]] = []   # (target order, k, candidate, target)
        self.dirty: set[str] = set(self.targets)            # targets with news since the last advance
        self.held: set[tuple[str, str]] = set()
        self.scorer: PairScorer | None = None

    def _earlier_rows(self, done: Any) -> dict[tuple[str, str, int], dict[str, Any]]:
        rows: dict[tuple[str, str, int], dict[str, Any]] = {}
        if done is None:
            return rows
        frame = done if isinstance(done, pd.DataFrame) else pd.DataFrame(list(done))
        if frame.empty:
            return rows
        ok = frame["status"] == "ok"
        if "metric" in frame.columns:
            ok &= frame["metric"] == self.spec.name
        for r in results_frame(frame[ok]).to_dict("records"):
            key = (str(r["model"]), str(r["target"]))
            if key in self.cand_of and 0 <= int(r["k"]) < self.K:
                rows[(*key, int(r["k"]))] = r
        return rows

    def _record(self, row: Mapping[str, Any]) -> None:
        c = self.cand_of[(row["model"], row["target"])]
        ok = row["status"] == "ok" and math.isfinite(float(row["score"]))
        c.results[int(row["k"])] = float(row["score"]) if ok else None
        self.targets[c.pair.target].version += 1
        self.dirty.add(c.pair.target)

    def _want(self, c: _Candidate, upto: int) -> None:
        """Make repetitions c.next_k .. upto-1 available (from ``done`` or the queue)."""
        while c.next_k < upto:
            k = c.next_k
            c.next_k += 1
            if (c.pair.model, c.pair.target, k) in self.rows:
                self._record(self.rows[(c.pair.model, c.pair.target, k)])
            else:
                heapq.heappush(self.queue, (self.t_order[c.pair.target], k, c.index, c.pair.target))

    def _release(self, c: _Candidate) -> None:
        if (c.pair.model, c.pair.target) in self.held:
            self.held.discard((c.pair.model, c.pair.target))
            self.scorer.release(c.pair, self.spec)   # type: ignore[union-attr] - drop the hold

    def advance(self) -> None:
        """Take every decision the results in hand allow (fixpoint; order-independent).
        Decisions of a target depend on its own candidates only: only targets with news are
        visited."""
        while self.dirty:
            tgt = self.targets[min(self.dirty)]
            self.dirty.discard(tgt.name)
            changed = True
            while changed:
                changed = False
                for c in tgt.cands:
                    while c.final is None:
                        verdict = tgt.decide(c)
                        if verdict is None:
                            break
                        changed = True
                        if verdict == "stop":
                            tgt.version += 1
                            self._release(c)
                        else:
                            self._want(c, c.decided)

    # -- the policy
    def start(self, scorer: PairScorer) -> None:
        self.scorer = scorer
        for (m, t), c in self.cand_of.items():
            scorer.reserve(c.pair, self.spec)        # a hold: keeps its pools while it runs
            self.held.add((m, t))
            self._want(c, c.init)
        self.advance()

    def next_unit(self) -> tuple[ScorePair, MetricSpec, list[int]] | None:
        if not self.queue:
            return None
        _, k, idx, tname = heapq.heappop(self.queue)
        c = self.targets[tname].cands[idx]
        self.scorer.reserve(c.pair, self.spec)      # type: ignore[union-attr]
        return c.pair, self.spec, [k]

    def on_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            self.rows[(row["model"], row["target"], int(row["k"]))] = row
            self._record(row)
        self.advance()

    def waiting(self) -> bool:
        return bool(self.queue)

    def close(self) -> None:
        for c in self.cand_of.values():
            self._release(c)

    # -- the outcome
    def result(self, pair_count: int) -> AdaptiveRun:
        """The table of the repetitions the schedule used and one decision per pair."""
        cands = list(self.cand_of.values())
        undecided = [c for c in cands if c.final is None]
        if undecided:  # cannot happen unless a result never came back; say so rather than hide it
            raise RuntimeError(f"adaptive schedule stalled with {len(undecided)} undecided "
                               f"pair(s), e.g. {undecided[0].pair}")
        for tgt in self.targets.values():
            for c in tgt.cands:
                if c.status == "complete":
                    tgt._fill_bounds(c, c.final, None)  # noqa: SLF001
        used = [self.rows[(c.pair.model, c.pair.target, k)] for c in cands
                for k in range(c.final or 0) if (c.pair.model, c.pair.target, k) in self.rows]
        decisions = pd.DataFrame([_decision(c, self.spec.name) for c in cands],
                                 columns=DECISION_COLUMNS).sort_values(["model", "target"]).reset_index(drop=True)
        table = results_frame(used).merge(decisions[["model", "target", *SCHEDULE_COLUMNS]],
                                          on=["model", "target"], how="left")
        log.info("adaptive schedule: %d repetition(s) (%d reused) instead of %d; %d pruned, "
                 "%d complete, %d failed", len(table), self.reused, pair_count * self.K,
                 int((decisions["schedule_status"] == "pruned").sum()),
                 int((decisions["schedule_status"] == "complete").sum()),
                 int((decisions["schedule_status"] == "failed").sum()))
        return AdaptiveRun(table, decisions, len(table), pair_count * self.K)


def _decision(c: _Candidate, metric: str) -> dict[str, Any]:
    """One row of ``decisions``: the candidate's status, repetitions and interval."""
    good = [c.results[k] for k in range(c.final or 0) if c.results.get(k) is not None]
    return {"model": c.pair.model, "target": c.pair.target, "metric": metric,
            "schedule_status": c.status, "repetitions_done": len(good),
            "mean": float(np.mean(good)) if good else math.nan,
            "lower": c.lower, "upper": c.upper, "threshold": c.threshold,
            "snapshot": c.snapshot, "reason": c.reason}


def score_pairs_adaptive(pairs: Iterable[ScorePair | Sequence[str]] | Mapping[str, Iterable[Any]],
                         pools: Mapping[tuple[str, str], Any] | None = None,
                         settings: OTCESettings | None = None, *,
                         schedule: AdaptiveSettings | None = None, store: Any = None,
                         seed: int = 0, metric: MetricSpec | None = None,
                         metrics: Sequence[MetricSpec] | None = None,
                         done: pd.DataFrame | Iterable[Mapping[str, Any]] | None = None,
                         on_result: Callable[[dict[str, Any]], None] | None = None,
                         max_in_flight: int | None = None, num_gpus: float | None = None,
                         max_retries: int = 3, fail_infeasible: bool = True,
                         autoscaling: str = "auto", progress: bool | None = None,
                         feed: PoolFeed | None = None) -> AdaptiveRun:
    """Score pairs with the adaptive schedule (module docstring) on Ray.

    Arguments as :func:`segotce_ray.scoring.schedules.score_pairs`: one metric (``metric``,
    or the OTCE ``settings``; K = its ``repetitions``) or several (``metrics``: one schedule
    each, every decision its own, all in one fan-out; ``pairs`` may then map a metric name to
    its pairs). ``schedule``: :class:`AdaptiveSettings`. ``done``: rows finished earlier (their
    ok repetitions are reused, not rerun; the decisions come out the same). ``on_result``
    sees each newly computed row as it arrives. ``feed``: pools still being extracted.
    """
    specs = list(metrics) if metrics else [metric or otce_metric(settings)]
    if len({s.name for s in specs}) != len(specs):
        raise ValueError(f"metric names repeat: {[s.name for s in specs]}")
    work = metric_pairs(pairs, specs)
    _, scorer, max_in_flight = open_scorer(
        {p for _, plist in work for p in plist}, pools, store, seed=seed,
        ignore_index=int(specs[0].params.get("ignore_index", 255)),
        num_gpus=num_gpus, max_retries=max_retries, fail_infeasible=fail_infeasible,
        max_in_flight=max_in_flight, autoscaling=autoscaling)
    policies = {spec.name: AdaptiveSchedule(plist, spec, schedule or AdaptiveSettings(), done)
                for spec, plist in work if plist}
    runs = []
    if policies:
        total = sum(len(plist) * spec.repetitions for spec, plist in work)
        bar = Progress(total, "scoring (adaptive)", progress)
        policy = next(iter(policies.values())) if len(policies) == 1 else Interleave(policies)
        run_fanout(scorer, policy, max_in_flight=max_in_flight, on_result=on_result, bar=bar,
                   feed=feed)
        runs = [policies[spec.name].result(len(plist)) for spec, plist in work if plist]
    if len(runs) == 1:
        return runs[0]
    frames = [r.table for r in runs] or [results_frame([]).assign(schedule_status=None,
                                                                  repetitions_done=None)]
    return AdaptiveRun(pd.concat(frames, ignore_index=True),
                       pd.concat([r.decisions for r in runs], ignore_index=True)
                       if runs else pd.DataFrame(columns=DECISION_COLUMNS),
                       sum(r.repetitions for r in runs), sum(r.full_repetitions for r in runs))
