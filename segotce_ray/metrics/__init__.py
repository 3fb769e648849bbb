"""The math layer: pure functions, arrays in, numbers out (no Ray, no files)."""

from segotce_ray.metrics.otce import OTCEResult, otce_score

__all__ = ["OTCEResult", "otce_score"]
