"""segotce-ray: rank semantic-segmentation model zoos by SEG-OTCE transferability on Ray.

The math layer is pure and importable on its own::

    from segotce_ray import otce_score
"""

from segotce_ray.metrics.otce import OTCEResult, otce_score

__version__ = "0.1.0"
__all__ = ["OTCEResult", "otce_score", "__version__"]
