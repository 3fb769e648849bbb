"""segotce-ray: rank semantic-segmentation model zoos by SEG-OTCE transferability on Ray.

The math layer is pure and importable on its own::

    from segotce_ray import otce_score

``otce_score`` and ``OTCEResult`` are imported on first use, so light modules of the
package (dataset readers in Ray read tasks, the spec validator) do not pay for torch.
"""

__version__ = "0.1.0"
__all__ = ["OTCEResult", "otce_score", "__version__"]


def __getattr__(name: str):
    if name in ("otce_score", "OTCEResult"):
        from segotce_ray.metrics import otce

        return getattr(otce, name)
    raise AttributeError(f"module 'segotce_ray' has no attribute {name!r}")
