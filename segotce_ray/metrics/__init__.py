"""The math layer: pure functions, arrays in, numbers out (no Ray, no files).

- :mod:`segotce_ray.metrics.registry` — one record per metric (torch-free);
- :mod:`segotce_ray.metrics.otce` — SEG-OTCE (``otce_score`` and its building blocks);
- one file per peer metric (``nce``, ``leep``, ``nleep``, ``logme``, ``hscore``, ``gbc``,
  ``transrate``), called generically through :mod:`segotce_ray.metrics.peers`;
- :mod:`segotce_ray.metrics.correlation` — how well scores predict transfer results;
- :mod:`segotce_ray.metrics.calibration` — fitted combinations learned from ground truth.

``from segotce_ray.metrics import logme`` gives the peer's function; SEG-OTCE (torch) is
imported on first use, so the registry can be read without torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "OTCEResult": "segotce_ray.metrics.otce",
    "otce_score": "segotce_ray.metrics.otce",
    "PEER_METRICS": "segotce_ray.metrics.peers",
    "compute_metric": "segotce_ray.metrics.peers",
    "metrics_for_inputs": "segotce_ray.metrics.peers",
    "MetricInputError": "segotce_ray.metrics.peer_inputs",
}


def __getattr__(name: str) -> Any:
    """The exports above, imported on first use."""
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'segotce_ray.metrics' has no attribute {name!r}")


def _bind_peer_functions() -> None:
    """Every peer's function under the metric's name (``segotce_ray.metrics.logme`` is the
    function, as before the peers had files of their own); numpy/scipy only, no torch."""
    registry = importlib.import_module("segotce_ray.metrics.registry")
    for rec in registry.METRICS.values():
        if rec.runner == "peer":
            globals()[rec.name] = registry.metric_function(rec.name)


_bind_peer_functions()
