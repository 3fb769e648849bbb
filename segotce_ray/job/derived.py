"""What a run adds to its scored rows: each model's facts (architecture family, parameter
count) and the derived metrics — the ``capacity`` baseline in runs with ground truth, and the
``recommended`` ranking when the spec names a calibration file."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from segotce_ray.io import write_json
from segotce_ray.job.plan import Plan
from segotce_ray.metrics.correlation import capacity_score
from segotce_ray.metrics.recommend import apply_recommendation
from segotce_ray.pools.store import PoolStore
from segotce_ray.results.matrix import TransferabilityMatrix
from segotce_ray.scoring.rows import results_frame
from segotce_ray.spec.model import JobSpec

log = logging.getLogger(__name__)

__all__ = ["add_model_facts", "capacity_rows", "recommended_rows"]


def model_facts(spec: JobSpec, plan: Plan, store: PoolStore) -> dict[str, dict[str, Any]]:
    """model → {family, parameters}: the family from the spec, the parameter count as the
    extraction actor counted it (pool manifests; None for pools written before it did)."""
    out: dict[str, dict[str, Any]] = {m: {"family": e.family_name(), "parameters": None}
                                      for m, e in spec.models.items()}
    for p in plan.pools:
        if p.key is None or out[p.model]["parameters"] is not None or not store.has(p.key):
            continue
        n = store.manifest(p.key).get("model_parameters")
        out[p.model]["parameters"] = int(n) if n else None
    return out


def add_model_facts(table: pd.DataFrame, facts: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """``table`` with ``family`` and ``parameters`` filled from ``facts`` on every row."""
    out = table.copy()
    out["family"] = out["model"].map(lambda m: facts.get(str(m), {}).get("family"))
    out["parameters"] = out["model"].map(lambda m: facts.get(str(m), {}).get("parameters"))
    return results_frame(out)


def _derived_row(model: str, target: str, metric: str, facts: dict, **values: Any) -> dict:
    return {"model": model, "target": target, "metric": metric, "k": 0, "status": "ok",
            "family": facts.get("family"), "parameters": facts.get("parameters"), **values}


def capacity_rows(plan: Plan, facts: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One ``capacity`` row per (model, target) of the plan: log10 of the parameter count
    (higher = bigger = predicted better), or an unavailable row saying why not."""
    rows = []
    for model, target in sorted({(p.model, p.target) for p in plan.pairs}):
        f = facts.get(model, {})
        n = f.get("parameters")
        if n:
            rows.append(_derived_row(model, target, "capacity", f,
                                     score=float(capacity_score([n])[0])))
        else:
            rows.append(_derived_row(model, target, "capacity", f, status="unavailable",
                                     error="capacity: the parameter count is unknown (a pool "
                                           "written before counts were recorded, or none)"))
    return rows


def recommended_rows(spec: JobSpec, table: pd.DataFrame, run_dir: Path,
                     errors: dict[str, str]) -> list[dict[str, Any]]:
    """The ``recommended`` rows of a job whose spec names a calibration file: the fitted
    ranker applied to this run's per-pair means. The file is copied to
    ``run_dir/recommendation_applied.json`` (the report shows its LOTO evidence)."""
    if not spec.calibration:
        return []
    try:
        rec = json.loads(Path(spec.calibration).read_text(encoding="utf-8"))
        pairs = TransferabilityMatrix(table).pair_frame()
        scores = apply_recommendation(rec, pairs)
    except (OSError, ValueError, KeyError) as exc:
        errors["calibration"] = f"{spec.calibration}: {exc}"
        return []
    write_json(run_dir / "recommendation_applied.json", {**rec, "path": spec.calibration})
    facts = table.groupby("model")[["family", "parameters"]].first()
    rows = []
    for (model, target), score in zip(pairs[["model", "target"]].itertuples(index=False), scores):
        f = {"family": facts["family"].get(model), "parameters": facts["parameters"].get(model)}
        if math.isfinite(float(score)):
            rows.append(_derived_row(model, target, "recommended", f, score=float(score)))
        else:
            rows.append(_derived_row(model, target, "recommended", f, status="failed",
                                     error="recommended: an input the ranker needs is missing"))
    return rows
