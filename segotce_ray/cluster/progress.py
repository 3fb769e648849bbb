"""Progress of anything a person waits for: a tqdm bar on a terminal, log lines otherwise.

``Progress(total, desc, enabled, units, noun=...)``: ``enabled=None`` shows a bar when stderr
is a terminal; without a bar (cron, CI, a log file) it logs at INFO through ``logging`` —
one line at most every ``interval`` seconds (done/total, elapsed, the remaining time
extrapolated from the rate so far). Scoring calls ``update(rows)`` with finished result rows
(dicts with ``model``, ``target``, ``metric``, ``status``) and also gets one line each time a
unit (a (model, target, metric) pair) has all its scheduled repetitions back; extraction
calls ``advance(n)`` with a count of images.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger("segotce_ray.progress")

__all__ = ["Progress"]

#: Seconds between two periodic progress lines off a terminal.
INTERVAL_S = 30.0

UnitKey = tuple[str, str, str]


class Progress:
    """A bar on a terminal, else log lines (see the module docstring).

    noun: what is counted, as (bar unit, word): ``("rep", "repetition")`` or
    ``("img", "image")``.
    """

    def __init__(self, total: int, desc: str, enabled: bool | None,
                 units: Mapping[UnitKey, int] | None = None, interval: float | None = None,
                 clock=time.monotonic, noun: tuple[str, str] = ("rep", "repetition")) -> None:
        self.total, self.desc, self.clock, self.noun = total, desc, clock, noun
        self.interval = INTERVAL_S if interval is None else interval
        self.done = 0
        self.left = dict(units or {})
        self.failed: dict[UnitKey, int] = {}
        self.started = self.last = clock()
        self.bar = None
        if enabled if enabled is not None else sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=noun[0], dynamic_ncols=True)
        elif total:
            log.info("%s: %d %s(s) to run", desc, total, noun[1])

    def advance(self, n: int) -> None:
        """``n`` more done (a count, no rows)."""
        self.done = min(self.total, self.done + max(0, n))
        if self.bar is not None:
            self.bar.update(n)
            return
        self._periodic()

    def update(self, rows: Iterable[Mapping[str, Any]]) -> None:
        rows = list(rows)
        self.done += len(rows)
        if self.bar is not None:
            self.bar.update(len(rows))
            return
        for row in rows:
            key = (str(row.get("metric")), str(row.get("model")), str(row.get("target")))
            if row.get("status") != "ok":
                self.failed[key] = self.failed.get(key, 0) + 1
            if key in self.left:
                self.left[key] -= 1
                if self.left[key] <= 0:
                    del self.left[key]
                    self._pair_done(key)
        self._periodic()

    def _periodic(self) -> None:
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s", self.line(now))

    def _pair_done(self, key: UnitKey) -> None:
        metric, model, target = key
        bad = self.failed.get(key, 0)
        log.info("%s: %s %s → %s finished%s (%d/%d repetitions)", self.desc, metric, model, target,
                 f", {bad} repetition(s) failed" if bad else "", self.done, self.total)

    def line(self, now: float | None = None) -> str:
        """``desc: done/total <noun> (p%), elapsed, ~left``."""
        elapsed = (self.clock() if now is None else now) - self.started
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = ""
        if 0 < self.done < self.total:
            eta = f", ~{elapsed / self.done * (self.total - self.done):.0f} s left"
        return (f"{self.desc}: {self.done}/{self.total} {self.noun[1]}s ({pct:.0f}%), "
                f"{elapsed:.0f} s elapsed{eta}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.total:
            log.info("%s", self.line())
