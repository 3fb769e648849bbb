"""The math layer: pure functions, arrays in, numbers out (no Ray, no files).

- :mod:`segotce_ray.metrics.otce` — SEG-OTCE (``otce_score`` and its building blocks);
- :mod:`segotce_ray.metrics.peers` — NCE, LEEP, N-LEEP, LogME, H-score (plain and shrunk),
  GBC, TransRate on the same pixel pools;
- :mod:`segotce_ray.metrics.correlation` — how well scores predict transfer results.
"""

from segotce_ray.metrics.otce import OTCEResult, otce_score
from segotce_ray.metrics.peers import (
    PEER_METRICS,
    MetricInfo,
    MetricInputError,
    compute_metric,
    gbc,
    hscore,
    hscore_shrinkage,
    leep,
    logme,
    metrics_for_inputs,
    nce,
    nleep,
    transrate,
)

__all__ = ["OTCEResult", "otce_score", "PEER_METRICS", "MetricInfo", "MetricInputError",
           "compute_metric", "metrics_for_inputs", "nce", "leep", "nleep", "logme",
           "hscore", "hscore_shrinkage", "gbc", "transrate"]
