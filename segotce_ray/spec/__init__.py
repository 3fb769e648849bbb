"""The job spec a user writes: its dataclasses (``model``), validation (``validate``) and construction (``build``).

May import: scoring.settings, inputs (dataset keys), metrics (registry, calibration files), io.
"""
