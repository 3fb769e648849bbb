"""Metrics as the fan-out runs them: a MetricSpec per metric, one repetition on two pixel pools.
"""


from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segotce_ray.metrics.otce import otce_score
from segotce_ray.metrics.perclass import encode_joint
from segotce_ray.pools.pool import PixelPool
from segotce_ray.metrics import registry
from segotce_ray.metrics.peers import PEER_METRICS, call_peer
from segotce_ray.metrics.registry import MetricRecord
from segotce_ray.scoring.settings import OTCESettings

_WORKER_BASE_BYTES = 128 * 1024**2


@dataclass(frozen=True)
class MetricSpec:
    """A metric as the fan-out runs it.

    repetition: module-level ``fn(source: PixelPool | None, target: PixelPool, seed: int,
    **params) -> Mapping`` (picklable by reference); repetitions: K; n_pixels: pixels drawn
    per side; memory_bytes: ``(n_pixels, dim, pool_rows) -> bytes`` for Ray's ``memory=``
    (default :func:`task_memory_bytes`); needs_source: False for metrics that only read the
    target pool (``source`` is then None and the source pool is never loaded);
    higher_is_better: orientation for rankings.
    """

    name: str
    repetition: Callable[..., Mapping[str, Any]]
    repetitions: int
    n_pixels: int
    params: Mapping[str, Any] = field(default_factory=dict)
    memory_bytes: Callable[[int, int, int], int] | None = None
    needs_source: bool = True
    higher_is_better: bool = True


def otce_repetition(source: PixelPool, target: PixelPool, seed: int, *, n_pixels: int,
                    epsilon: float, solver: str, sampling: str, ignore_index: int,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One SEG-OTCE repetition: ``otce_score(..., repetitions=1, seed=seed)`` as a row dict.

    ``joint`` is the repetition's label joint as compact JSON
    (:func:`segotce_ray.metrics.perclass.encode_joint`), for the per-class view.
    When the task was given a GPU (Ray sets ``CUDA_VISIBLE_DEVICES``; torch sees CUDA) and
    ``options`` names no ``device``, the solve runs on ``cuda``.
    """
    opts = dict(options or {})
    if "device" not in opts and _task_has_gpu():
        opts["device"] = "cuda"
    res = otce_score(source.features, source.labels, target.features, target.labels,
                     n_pixels=n_pixels, repetitions=1, epsilon=epsilon, seed=seed,
                     ignore_index=ignore_index, solver=solver, sampling=sampling, **opts)
    return {"score": float(np.asarray(res.scores).reshape(-1)[0]),
            "w_t": float(np.asarray(res.w_t).reshape(-1)[0]),
            "w_d": float(np.asarray(res.w_d).reshape(-1)[0]),
            "iterations": int(np.asarray(res.iterations).reshape(-1)[0]),
            "converged": bool(np.asarray(res.converged).reshape(-1)[0]),
            "n_source": int(res.n_source), "n_target": int(res.n_target),
            "solver": str(res.solvers[0]), "passes": float(res.passes[0]),
            "joint": encode_joint(res.joints[0], res.source_classes[0], res.target_classes[0])}


def _task_has_gpu() -> bool:
    """True inside a Ray task that holds a GPU (share) that torch can use."""
    try:
        import ray

        if not ray.is_initialized() or not ray.get_gpu_ids():
            return False
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - no Ray context, no torch: CPU
        return False


def otce_metric(settings: OTCESettings | None = None, *, ignore_index: int = 255,
                options: Mapping[str, Any] | None = None) -> MetricSpec:
    """The :class:`MetricSpec` of SEG-OTCE under ``settings``; ``options`` go to
    :func:`otce_score` as extra keyword arguments (a cost scale other than ``none`` is one)."""
    s = settings or OTCESettings()
    opts = {"cost_scale": s.cost_scale} if s.cost_scale != "none" else {}
    params = {"n_pixels": s.n_pixels, "epsilon": float(s.epsilon), "solver": s.solver,
              "sampling": s.sampling, "ignore_index": int(ignore_index),
              "options": {**opts, **dict(options or {})}}
    return MetricSpec("otce", otce_repetition, s.repetitions, s.n_pixels, params)


def peer_repetition(source: PixelPool | None, target: PixelPool, seed: int, *,
                    record: MetricRecord, n_pixels: int, ignore_index: int = 255,
                    options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One repetition of the peer metric of ``record`` on ``n_pixels`` target pixels drawn
    with ``seed``: min(n_pixels, labelled pixels) pixels of the target pool, uniformly without
    replacement, their features (or source-head probabilities) and labels.
    """

    labelled = np.flatnonzero(np.asarray(target.labels) != ignore_index)
    rng = np.random.default_rng(seed)
    take = np.sort(rng.choice(labelled, size=min(n_pixels, labelled.size), replace=False))
    probs = None if target.probs is None else target.probs[take]
    score = call_peer(record, labels=target.labels[take], features=target.features[take],
                      probs=probs, ignore_index=ignore_index, **dict(options or {}))
    return {"score": float(score), "n_target": int(take.size)}


def feature_memory_bytes(n_pixels: int, dim: int, pool_rows: int) -> int:
    """Heap of a metric linear in N: 16·N·D·8 (float64 work arrays) + P·D·4 + 128 MiB."""
    return int(16 * n_pixels * max(dim, 1) * 8 + pool_rows * dim * 4 + _WORKER_BASE_BYTES)


def peer_metric(name: str, n_pixels: int = 10_000, repetitions: int = 10,
                ignore_index: int = 255, **options: Any) -> MetricSpec:
    """The :class:`MetricSpec` of a peer metric of the registry (runner ``peer``)."""
    if name not in PEER_METRICS:
        raise KeyError(f"unknown peer metric {name!r}; known: {sorted(PEER_METRICS)}")
    rec = PEER_METRICS[name]
    params = {"record": rec, "n_pixels": n_pixels, "ignore_index": ignore_index,
              "options": options}
    return MetricSpec(name, peer_repetition, repetitions, n_pixels, params,
                      memory_bytes=feature_memory_bytes, needs_source=False,
                      higher_is_better=rec.higher_is_better)


def metric_spec(name: str, otce: OTCESettings) -> MetricSpec:
    """The :class:`MetricSpec` of any scored metric of the registry: its runner decides
    (``otce``: SEG-OTCE under ``otce``; ``peer``: N and K of ``otce``, the job's draws)."""
    rec = registry.get(name)
    if rec.runner == "otce":
        return otce_metric(otce)
    if rec.runner == "peer":
        return peer_metric(name, n_pixels=otce.n_pixels, repetitions=otce.repetitions)
    raise ValueError(f"metric {name!r} is derived from other metrics' rows, not scored")


def task_memory_bytes(n_pixels: int, dim: int, pool_rows: int) -> int:
    """Heap a repetition task may use, for Ray's ``memory=`` resource.

    3·N²·4 (cost, coupling, kernel as float32) + 2·N·D·8 (sampled features as float64)
    + P·D·4 (a float32 working copy of both pools, P = rows of source + target pool)
    + 128 MiB for the worker itself.
    """
    n = int(n_pixels)
    return int(3 * n * n * 4 + 2 * n * dim * 8 + pool_rows * dim * 4 + _WORKER_BASE_BYTES)
