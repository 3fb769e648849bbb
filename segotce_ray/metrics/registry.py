"""The metric registry: one record per metric, read by spec, scoring, job, matrix, report,
calibration and the command line. Nothing else spells a metric's identity.

A record says what a metric needs and how it is run, never how it is computed: the pure
function is named as ``"module:function"`` and imported on first use, so this module is
torch-free and cheap to import (the spec layer validates metric names through it).

Adding a peer metric is one file (its pure function ``f(features or probs, labels, *,
ignore_index) -> float``, higher = more transferable) plus one :class:`MetricRecord` in
:data:`METRICS` below (or :func:`register` at run time, as the tests do).

``runner``: how the fan-out scores one repetition —

- ``"otce"``: SEG-OTCE on the model's source and target pools (needs the source pool);
- ``"peer"``: ``function`` on N target pixels drawn per repetition (features or probs);
- ``"derived"``: not scored by the fan-out; its rows are computed from other metrics' rows
  after scoring (``otce_calibrated`` from SEG-OTCE's W_D and W_T, ``capacity`` from the
  model's parameter count in runs with ground truth, ``recommended`` from a calibration file).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["METRICS", "PRIMARY", "MetricRecord", "get", "metric_function", "ordered", "register",
           "scored_names", "sort_key", "unregister"]

#: The metric a report leads with and a run without a ``metric`` column is read as.
PRIMARY = "otce"


@dataclass(frozen=True)
class MetricRecord:
    """What the pipeline knows of one metric.

    name: its key in specs, tables and file names; title: how a report names it;
    inputs: what of a pool it reads (``features``: the feature space's columns, ``probs``:
    the source head's softmax, ``w_d+w_t``: SEG-OTCE's rows, ``parameters``: the model's
    parameter count, ``metrics``: every metric's means); needs_source: it also reads
    the model's source pool; higher_is_better: orientation for rankings (a lower-is-better
    metric's scores are negated by its function, never by the tables); order: display order
    (lower first); runner: ``otce`` | ``peer`` | ``derived``; function: ``"module:attr"``.
    """

    name: str
    title: str
    inputs: Literal["features", "probs", "w_d+w_t", "parameters", "metrics"]
    runner: Literal["otce", "peer", "derived"]
    order: int
    function: str | None = None
    needs_source: bool = False
    higher_is_better: bool = True
    paper: str = ""
    summary: str = ""


def _peer(name: str, title: str, inputs: Literal["features", "probs"], order: int,
          paper: str, summary: str, module: str | None = None) -> MetricRecord:
    """A peer metric whose function ``name`` lives in ``segotce_ray.metrics.<module or name>``."""
    return MetricRecord(name, title, inputs, "peer", order,
                        f"segotce_ray.metrics.{module or name}:{name}", paper=paper, summary=summary)

#: Every metric, in the order a job scores them when its spec names none.
METRICS: dict[str, MetricRecord] = {r.name: r for r in (
    MetricRecord("otce", "SEG-OTCE", "features", "otce", 0, "segotce_ray.metrics.otce:otce_score",
                 needs_source=True, paper="Tan, Li, Huang, arXiv 2109.15242",
                 summary="−H(Y_t | Y_s) under an entropic OT coupling of source and target pixels"),
    _peer("nce", "NCE", "probs", 9, "Tran et al., ICCV 2019", "−H(target | argmax source class)"),
    _peer("leep", "LEEP", "probs", 8, "Nguyen et al., ICML 2020", "log expected empirical prediction"),
    _peer("nleep", "N-LEEP", "features", 7, "Li et al., CVPR 2021",
          "LEEP on Gaussian-mixture posteriors of PCA(80%) features"),
    _peer("logme", "LogME", "features", 2, "You et al., ICML 2021",
          "Bayesian linear-regression evidence per sample"),
    _peer("hscore", "H-score", "features", 3, "Bao et al., ICIP 2019", "tr(cov(f)⁺ cov(E[f|y]))"),
    _peer("hscore_shrinkage", "shrunk H-score", "features", 4, "Ibrahim et al., arXiv 2110.06893",
          "H-score with Ledoit–Wolf covariance", module="hscore"),
    _peer("gbc", "GBC", "features", 5, "Pándy et al., CVPR 2022",
          "−Σ pairwise Bhattacharyya coefficients of diagonal class Gaussians"),
    _peer("transrate", "TransRate", "features", 6, "Huang et al., ICML 2022",
          "coding rate R(f) − mean_c R(f_c)"),
    MetricRecord("recommended", "recommended", "metrics", "derived", -1,
                 "segotce_ray.metrics.recommend:apply_recommendation",
                 summary="the ranker learned from the team's ground truth (segotce-ray calibrate)"),
    MetricRecord("capacity", "capacity (baseline)", "parameters", "derived", 90,
                 "segotce_ray.metrics.correlation:capacity_score",
                 summary="log10 of the model's parameter count: a baseline, more = higher"),
    MetricRecord("otce_calibrated", "SEG-OTCE calibrated", "w_d+w_t", "derived", 1,
                 "segotce_ray.metrics.calibration:calibrated_rows", needs_source=True,
                 paper="Tan et al., CVPR 2021 (λ1·W_D + λ2·W_T + b)",
                 summary="the CVPR'21 OTCE form fitted on ground truth (segotce-ray calibrate)"),
)}


def get(name: str) -> MetricRecord:
    """The record of ``name``; a KeyError that lists the known names otherwise."""
    try:
        return METRICS[name]
    except KeyError:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(METRICS)}") from None


def register(record: MetricRecord, *, replace: bool = False) -> MetricRecord:
    """Add ``record`` (a ValueError if its name is taken, unless ``replace``)."""
    if record.name in METRICS and not replace:
        raise ValueError(f"metric {record.name!r} is registered already")
    if record.runner != "derived" and not record.function:
        raise ValueError(f"metric {record.name!r}: a scored metric needs its function")
    METRICS[record.name] = record
    return record


def unregister(name: str) -> None:
    """Remove ``name`` (tests register toy metrics and remove them again)."""
    METRICS.pop(name, None)


def scored_names() -> tuple[str, ...]:
    """Metrics the fan-out scores (runner ``otce`` or ``peer``), in registry order: a job's
    default selection."""
    return tuple(n for n, r in METRICS.items() if r.runner != "derived")


def sort_key(name: str) -> tuple[int, str]:
    """Display order of a metric name (unknown names last, by name)."""
    rec = METRICS.get(name)
    return (rec.order if rec is not None else 10_000, name)


def ordered(names: Iterable[str]) -> list[str]:
    """``names`` in display order."""
    return sorted(set(names), key=sort_key)


def metric_function(name: str) -> Callable[..., object]:
    """The pure function of ``name``, imported on first use."""
    rec = get(name)
    if not rec.function:
        raise ValueError(f"metric {name!r} has no function of its own ({rec.runner})")
    module, _, attr = rec.function.partition(":")
    return getattr(importlib.import_module(module), attr)
