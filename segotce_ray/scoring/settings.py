"""SEG-OTCE's settings: one dataclass for the job spec (``otce:``) and the scoring tasks.

Torch-free, so the spec layer reads it without loading the solver.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OTCESettings"]


@dataclass
class OTCESettings:
    """N pixels per side, K repetitions, entropic ε, solver, sampling (``uniform`` |
    ``class_balanced``), the cost scaling applied before ε (``none`` | ``mean`` | ``max``: C
    divided by its mean or its max), and an optional calibration file (adds the
    ``otce_calibrated`` metric). The feature space is ``extraction.layer``."""

    n_pixels: int = 10_000
    repetitions: int = 10
    epsilon: float = 0.1
    solver: str = "auto"
    sampling: str = "uniform"
    cost_scale: str = "none"
    calibration: str | None = None

    def __post_init__(self) -> None:
        if self.n_pixels < 1:
            raise ValueError(f"otce n_pixels must be >= 1, got {self.n_pixels}")
        if self.repetitions < 1:
            raise ValueError(f"otce repetitions must be >= 1, got {self.repetitions}")
        if not self.epsilon > 0:
            raise ValueError(f"otce epsilon must be > 0, got {self.epsilon}")
