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

import json
import math
from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from segotce_ray.metrics import registry
from segotce_ray.metrics.correlation import (compare_with_baselines, correlation_table,
                                             driving_family, family_agreement,
                                             ground_truth_summary, random_baseline, top_ties)

__all__ = ["headline_lines", "trust_lines", "trust_tables"]


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


# ---------------------------------------------------------------------------- report lines


def _csv(run_dir: Path, name: str) -> pd.DataFrame | None:
    path = run_dir / name
    return pd.read_csv(path) if path.is_file() else None


def _f(v: object, digits: int = 2) -> str:
    try:
        x = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "–"
    return "–" if math.isnan(x) else f"{x:.{digits}f}"


def headline_lines(run_dir: Path) -> list[str]:
    """What a reader must know before trusting the rankings: the recommended ranker's
    evidence, a family that drives the overall agreement, ties at the top."""
    out: list[str] = []
    rec = _read(run_dir / "recommendation_applied.json")
    if rec:
        nested = (rec.get("loto") or {}).get("recommended") or {}
        out.append(f"- **Recommended ranking** (`recommended`, learned by `segotce-ray calibrate` "
                   f"from `{rec.get('path', '?')}`): chosen `{rec.get('chosen')}`; nested "
                   f"leave-one-target-out evidence: Pearson {_f(nested.get('pearson'))}, "
                   f"weighted τ {_f(nested.get('weighted_tau'))}, top-1 regret "
                   f"{_f(nested.get('regret'))}" + (f" ({nested['reason']})" if nested.get("reason") else "") + ".")
    drive = _csv(run_dir, "driving_family.csv")
    if drive is not None:
        for r in drive[drive["drives"].astype(str) == "True"].itertuples(index=False):
            out.append(f"- **One architecture drives the overall figure for {r.metric}**: mean "
                       f"Pearson {_f(r.overall)} over all models, {_f(r.without)} without the "
                       f"`{r.family}` family (see *Agreement by architecture family*).")
    ties = _csv(run_dir, "ties.csv")
    if ties is not None:
        for r in ties[ties["n_tied"] > 1].itertuples(index=False):
            names = str(r.tied).replace(";", ", ")
            out.append(f"- Tie at the top for {r.target} ({r.metric}): {names} are within the "
                       f"repetitions' noise (lead {_f(r.lead, 4)} < {_f(r.threshold, 4)}).")
    return ["", "## Read this first", "", *out] if out else []


def trust_lines(run_dir: Path) -> list[str]:
    """Noise ceilings, baselines and per-family agreement (runs with ground truth)."""
    out: list[str] = []
    summary = _csv(run_dir, "ground_truth_summary.csv")
    if summary is not None:
        out += ["", "## How far the ground truth can be trusted", "",
                "Seed spread: mean per-pair standard deviation over fine-tuning seeds (ground-"
                "truth units). Noise ceiling: split-half reliability of the seed mean "
                "(Spearman–Brown); no metric's Pearson can exceed its square root.", "",
                "| target | models | seeds | seed spread | noise ceiling | max Pearson |",
                "|---|---|---|---|---|---|"]
        for r in summary.itertuples(index=False):
            out.append(f"| {r.target} | {r.n_models} | {_f(r.n_seeds, 0)} | {_f(r.seed_spread)} "
                       f"| {_f(r.noise_ceiling)} | {_f(r.pearson_bound)} |")
    out += _baseline_lines(_csv(run_dir, "baselines.csv"))
    fam = _csv(run_dir, "agreement_by_family.csv")
    if fam is not None:
        mean = fam[fam["target"] == "__mean__"]
        out += ["", "## Agreement by architecture family", "",
                "Mean Pearson over targets, all models and within each family of ≥ 3 models:", "",
                "| metric | " + " | ".join(mean["family"].drop_duplicates()) + " |",
                "|---|" + "---|" * mean["family"].nunique()]
        for metric, g in mean.groupby("metric", sort=False):
            out.append(f"| {metric} | " + " | ".join(_f(v) for v in g["pearson"]) + " |")
    return out


def _baseline_lines(base: pd.DataFrame | None) -> list[str]:
    if base is None or base.empty:
        return []
    rows = base[(base["target"] == "__mean__") & (base["measure"] == "pearson")]
    out = ["", "## Against the baselines", "",
           "A metric beats a baseline when its whole 90% interval (mean Pearson over targets) "
           "lies above the baseline's value: a random ranking (0) and the models' capacity "
           "(log parameter count)."]
    for baseline, g in rows.groupby("baseline", sort=True):
        lost = sorted(g.loc[g["beats"].astype(str) != "True", "metric"].astype(str))
        won = sorted(g.loc[g["beats"].astype(str) == "True", "metric"].astype(str))
        out.append(f"- vs {baseline}: beaten by {', '.join(won) or 'no metric'}; "
                   f"**not beaten** by {', '.join(lost) or 'none'}.")
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
