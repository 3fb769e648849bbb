"""Peer transferability metrics on pixel pools, called generically through the registry.

Every sampled pixel is one sample: ``features`` are the model's per-pixel vectors ``(N, D)``,
``source_probs`` the source head's per-pixel softmax ``(N, C_s)`` and ``target_labels`` the
target train ids ``(N,)``. Each peer lives in a file of its own (``metrics/<name>.py``) and
returns one float, **higher = more transferable for every metric** (NCE, LEEP and N-LEEP are
log-likelihoods <= 0, GBC is a negated class overlap <= 0; LogME, H-score and TransRate are
used as published). Shared conventions (all of them):

* ``target_labels`` are integers; pixels equal to ``ignore_index`` (default 255, the same
  convention as :func:`segotce_ray.metrics.otce.otce_score`) are dropped first; the remaining
  label values may be any integers (relabelled ``0..C-1`` in sorted order, so every score is
  invariant to renaming target classes). Only classes present count.
* Fewer than two target classes (or fewer than two pixels) raises :class:`MetricInputError`
  (a ``ValueError``), as do shape mismatches, NaN/inf values, empty arrays and
  non-probability rows; the message names the metric and the argument at fault.
* Features are computed in float64 (float16 pools are upcast). Constant features are not an
  error; each docstring states the value returned (that of an uninformative representation).
* Pure numpy/scipy; deterministic for the same inputs (N-LEEP's mixture uses a fixed seed).
* Cost: NCE and LEEP O(N·C_s·C_t); LogME, H-scores, GBC and TransRate one or two D×D Gram
  matrices plus a D×D factorisation, O(N·D² + D³); N-LEEP adds EM over a Gaussian mixture.

:data:`PEER_METRICS` is the registry's view of the peers (runner ``peer``), in registry order.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from segotce_ray.metrics import registry
from segotce_ray.metrics.peer_inputs import MetricInputError
from segotce_ray.metrics.registry import MetricRecord

__all__ = ["PEER_METRICS", "call_peer", "compute_metric", "metrics_for_inputs"]


class _PeerView(Mapping[str, MetricRecord]):
    """The registry's peer records, live (a metric registered later is seen)."""

    def _names(self) -> list[str]:
        return [n for n, r in registry.METRICS.items() if r.runner == "peer"]

    def __getitem__(self, name: str) -> MetricRecord:
        rec = registry.METRICS.get(name)
        if rec is None or rec.runner != "peer":
            raise KeyError(name)
        return rec

    def __iter__(self):
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())


PEER_METRICS: Mapping[str, MetricRecord] = _PeerView()


def metrics_for_inputs(*, has_probs: bool, has_features: bool = True) -> list[str]:
    """Names of the peer metrics computable from a pool (registry order)."""
    ok = {"probs": has_probs, "features": has_features}
    return [name for name, rec in PEER_METRICS.items() if ok[rec.inputs]]


def compute_metric(name: str, *, labels: Any, features: Any = None, probs: Any = None,
                   ignore_index: int | None = 255, **options: Any) -> float:
    """Peer metric ``name`` from whichever pool arrays it needs.

    labels: (N,) int target labels; features: (N, D) for ``inputs == "features"`` metrics;
    probs: (N, C_s) source-head probabilities for ``inputs == "probs"`` metrics; options:
    metric-specific keyword arguments. A KeyError names the known peers for an unknown name;
    a :class:`MetricInputError` says which array is missing.
    """
    try:
        rec = PEER_METRICS[name]
    except KeyError:
        raise KeyError(f"unknown peer metric {name!r}; known: {sorted(PEER_METRICS)}") from None
    return call_peer(rec, labels=labels, features=features, probs=probs,
                     ignore_index=ignore_index, **options)


def call_peer(rec: MetricRecord, *, labels: Any, features: Any = None, probs: Any = None,
              ignore_index: int | None = 255, **options: Any) -> float:
    """The peer metric of record ``rec`` (the record travels to Ray workers, so a metric
    registered in the driver only is still found there by its ``function`` path)."""
    data = probs if rec.inputs == "probs" else features
    if data is None:
        what = "source probabilities (probs)" if rec.inputs == "probs" else "features"
        raise MetricInputError(f"{rec.name}: needs {what}, which were not given (the pool has none)")
    module, _, attr = str(rec.function).partition(":")
    fn = getattr(importlib.import_module(module), attr)
    return fn(data, labels, ignore_index=ignore_index, **options)
