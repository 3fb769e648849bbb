"""How far a run's rankings can be trusted, given ground truth: the tables a run writes
beside ``correlation.csv``.

- ``correlation.csv`` — every metric's agreement with 90% bootstrap intervals
  (``<measure>_lo`` / ``_hi``), the ``capacity`` baseline when the run scored it, and the
  rows a ``random`` ranking would get (expected values);
- ``ground_truth_summary.csv`` — per target: models, seeds, the seed spread (mean per-pair
  std over fine-tuning seeds) and the noise ceiling (split-half reliability, Spearman–Brown;
  ``pearson_bound`` = its square root, the most any metric can reach);
- ``baselines.csv`` — per metric, target and measure: does it beat the random ranking and
  the capacity baseline (its whole interval on the better side)?
- ``agreement_by_family.csv`` and ``driving_family.csv`` — agreement within each architecture
  family (≥ 3 models), and per metric the family whose models move the overall figure most;
- ``ties.csv`` — per metric and target, the top pick and the models tied with it (lead
  below √(σ₁²/K₁ + σ₂²/K₂) of the repetitions).
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from segotce_ray.metrics import registry
from segotce_ray.metrics.correlation import (compare_with_baselines, correlation_table,
                                             driving_family, family_agreement,
                                             ground_truth_summary, random_baseline, top_ties)

__all__ = ["trust_tables"]


def _means(summary: pd.DataFrame) -> pd.DataFrame:
    return summary.rename(columns={"mean": "score"})[["metric", "model", "target", "score"]]


def trust_tables(long: pd.DataFrame, summary: pd.DataFrame, truth: pd.DataFrame,
                 higher_is_better: Mapping[str, bool]) -> dict[str, pd.DataFrame]:
    """File name → table (see the module docstring); ``long``: the run's rows, ``summary``:
    its per-pair means, ``truth``: ground truth (seeds allowed)."""
    order = registry.ordered(registry.METRICS)
    corr = correlation_table(_means(summary), truth, higher_is_better=higher_is_better,
                             metric_order=order)
    out = {"correlation.csv": pd.concat([corr, random_baseline(truth)], ignore_index=True),
           "ground_truth_summary.csv": ground_truth_summary(truth).targets,
           "baselines.csv": compare_with_baselines(corr, truth),
           "ties.csv": top_ties(long[long["metric"].map(_repeated)], higher_is_better=higher_is_better)}
    families = long.dropna(subset=["family"]).groupby("model")["family"].first().to_dict() \
        if "family" in long.columns else {}
    if len(set(families.values())) > 1:
        scored = _means(summary)
        out["agreement_by_family.csv"] = family_agreement(scored, truth, families,
                                                          higher_is_better=higher_is_better,
                                                          metric_order=order)
        out["driving_family.csv"] = driving_family(scored, truth, families,
                                                   higher_is_better=higher_is_better)
    return out


def _repeated(metric: str) -> bool:
    """Metrics scored by repetitions (ties need a spread): not the derived ones."""
    rec = registry.METRICS.get(metric)
    return rec is None or rec.runner != "derived"
