"""Pools that arrive while scoring runs: extraction's publications, handed to the fan-out loop.

A job extracts its missing pools in a driver thread while :func:`segotce_ray.scoring.executor.run_fanout`
scores; the thread :meth:`PoolFeed.put` s each pool's outcome (its store key the moment it is
published, or its error) and :meth:`PoolFeed.close` s the feed when extraction is over. The
loop admits a unit only once every pool it reads has arrived, so a pair's repetitions start as
soon as its pools are published. Only outcomes travel (a store key is ~64 bytes): the tasks
read the pools from the store themselves.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["PoolFeed"]

PoolId = tuple[str, str]          # (model, dataset)


class _Closed:
    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class PoolFeed:
    """Outcomes of pools as they are produced: ``(model, dataset) → store key | ProbsView |
    exception``.

    known: outcomes settled before scoring starts (cached pools, pools that failed in the
    plan). expected: the pools still being produced; one that has not arrived when the feed
    closes fails its pairs with the reason. limit: the most scoring tasks in flight while the
    feed is open (None: the loop's own bound), so scoring leaves room for extraction's
    readers and actors. Thread-safe between one producer and the loop.
    """

    def __init__(self, known: Mapping[PoolId, Any] | None = None,
                 expected: Iterable[PoolId] = (), *, limit: int | None = None) -> None:
        self.known: dict[PoolId, Any] = dict(known or {})
        self.expected = set(expected) - set(self.known)
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.arrived_at: dict[PoolId, float] = {}     # epoch seconds, as the loop took them
        self.closed_at: float | None = None
        self._queue: queue.Queue = queue.Queue()
        self._open = True

    # -- the producer
    def put(self, pool: PoolId, outcome: Any) -> None:
        """A pool's outcome: its store key (published), a view of it, or an exception."""
        self._queue.put((tuple(pool), outcome))

    def close(self, error: BaseException | None = None) -> None:
        """No more pools will come (``error``: why the producer stopped, if it broke)."""
        self._queue.put(_Closed(error))

    # -- the consumer
    @property
    def open(self) -> bool:
        """True until the loop has taken the producer's :meth:`close`."""
        return self._open

    def has(self, pool: PoolId) -> bool:
        return pool in self.known

    def take(self, timeout: float | None = 0.0) -> dict[PoolId, Any]:
        """The outcomes that arrived since the last call. ``timeout``: seconds to wait for the
        first one (0: do not wait; None: until one arrives or the feed closes)."""
        got: dict[PoolId, Any] = {}
        block = timeout != 0 and self._open
        while True:
            try:
                item = self._queue.get(block=block, timeout=timeout if block else None)
            except queue.Empty:
                return got
            block = False
            if isinstance(item, _Closed):
                got.update(self._close_missing(item.error))
                continue
            pool, outcome = item
            self.known[pool] = outcome
            self.arrived_at.setdefault(pool, time.time())
            got[pool] = outcome

    def _close_missing(self, error: BaseException | None) -> dict[PoolId, Any]:
        self._open = False
        self.closed_at = time.time()
        why = f": {type(error).__name__}: {error}" if error is not None else ""
        missing = {p: RuntimeError(f"pool {p[0]}@{p[1]}: extraction ended without "
                                   f"producing it{why}")
                   for p in sorted(self.expected - set(self.known))}
        self.known.update(missing)
        return missing
