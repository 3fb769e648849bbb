"""The embedded demo: a multi-domain street-scene world, its model zoo and ground truth.

- :mod:`segotce_ray.demo.world` — procedurally generated domains written in the
  Cityscapes (and folder) layouts.
- :mod:`segotce_ray.demo.zoo` — small segmentation models trained on the source domains.
- :mod:`segotce_ray.demo.ground_truth` — fine-tuned mIoU of every (model, target).
- :func:`segotce_ray.demo.build.build_demo` — all of the above plus a runnable job spec.
"""

from segotce_ray.demo.build import DEMO_OTCE, build_demo

__all__ = ["DEMO_OTCE", "build_demo"]
