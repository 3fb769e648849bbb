"""The math layer: pure functions, arrays in, numbers out (no Ray, no files).

- :mod:`segotce_ray.metrics.otce` — SEG-OTCE (``otce_score`` and its building blocks);
- :mod:`segotce_ray.metrics.peers` — NCE, LEEP, N-LEEP, LogME, H-score (plain and shrunk),
  GBC, TransRate on the same pixel pools;
- :mod:`segotce_ray.metrics.correlation` — how well scores predict transfer results.
"""

from segotce_ray.metrics.otce import OTCEResult, otce_score
from segotce_ray.metrics.peers import PEER_METRICS, MetricInfo, compute_metric, metrics_for_inputs
from segotce_ray.metrics.peer_inputs import MetricInputError
from segotce_ray.metrics.gbc import gbc
from segotce_ray.metrics.hscore import hscore, hscore_shrinkage
from segotce_ray.metrics.leep import leep
from segotce_ray.metrics.logme import logme
from segotce_ray.metrics.nce import nce
from segotce_ray.metrics.nleep import nleep
from segotce_ray.metrics.transrate import transrate

__all__ = ["OTCEResult", "otce_score", "PEER_METRICS", "MetricInfo", "MetricInputError",
           "compute_metric", "metrics_for_inputs", "nce", "leep", "nleep", "logme",
           "hscore", "hscore_shrinkage", "gbc", "transrate"]
