"""Per-class view of a run: for every (model, target), the target classes SEG-OTCE's
conditional entropy comes from and the source classes their pixels are coupled to.

The numbers come from the label joints stored per SEG-OTCE repetition in ``matrix.parquet``
(column ``joint``; :mod:`segotce_ray.metrics.perclass` says what they are and how the
repetitions are averaged). Class ids are named from ``classes.json`` in the run directory
(``{dataset: [class name by train id]}``, written by a run from its datasets), else from the
run's ``spec.yaml`` (Cityscapes-style formats: the 19 Cityscapes classes; ``folder``: its
``label_map``), else the id itself.

``per_class.csv`` (written beside the matrix) has one row per (model, target, target class):
model, target, source, rank (the class's place in the pair, 1 = worst covered: the most
nats per pixel), target_class, target_name, nats_per_pixel, share (of H(Y_t|Y_s)), entropy
(its nats), mass (the class's share of the target pixels), coupled (``"person 0.61,
bicycle 0.22"``: p(source class | target class), largest first), repetitions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from segotce_ray.metrics import registry
from segotce_ray.metrics.perclass import Breakdown, decode_joint, pair_breakdown

__all__ = ["PER_CLASS_COLUMNS", "breakdowns", "class_names", "class_label", "coupled_text", "per_class_table"]

PER_CLASS_COLUMNS = ["model", "target", "source", "rank", "target_class", "target_name",
                     "nats_per_pixel", "share", "entropy", "mass", "coupled", "repetitions"]


def _spec_class_names(ds: Mapping[str, Any]) -> list[str] | None:
    """Class names by train id from one dataset entry of a resolved spec (None if unknown)."""
    fmt = ds.get("format")
    if fmt in ("cityscapes", "bdd100k", "gta5"):
        from segotce_ray.inputs.datasets import CITYSCAPES_CLASSES

        return list(CITYSCAPES_CLASSES)
    lm = ds.get("label_map")
    if fmt != "folder" or not lm:
        return None
    items = list(enumerate(lm)) if isinstance(lm, list) else \
        sorted((int(k), v) for k, v in dict(lm).items())
    return list(dict.fromkeys(str(v) for _, v in sorted(items)))


def class_names(run_dir: str | Path) -> dict[str, list[str]]:
    """``{dataset: [class name by train id]}`` for a run directory (see the module docstring)."""
    run_dir = Path(run_dir)
    try:
        data = json.loads((run_dir / "classes.json").read_text(encoding="utf-8"))
        return {str(k): [str(n) for n in v] for k, v in data.items()}
    except (OSError, ValueError, AttributeError):
        pass
    try:
        import yaml

        spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8")) or {}
        out = {}
        for name, ds in (spec.get("datasets") or {}).items():
            names = _spec_class_names(ds) if isinstance(ds, Mapping) else None
            if names:
                out[str(name)] = names
        return out
    except (OSError, ValueError, AttributeError):
        return {}


def class_label(names: list[str] | None, cid: int) -> str:
    """The name of class id ``cid`` in ``names`` (the id itself where it has none)."""
    return names[cid] if names is not None and 0 <= cid < len(names) else str(cid)


def breakdowns(long: pd.DataFrame, top: int = 3) -> dict[tuple[str, str], tuple[str, Breakdown]]:
    """``(model, target) → (source dataset, Breakdown)`` from the ok SEG-OTCE rows of a long
    table that carry a joint (pairs without any are left out); ``top`` source classes are
    kept per target class."""
    if long.empty or "joint" not in long.columns:
        return {}
    otce = [n for n, r in registry.METRICS.items() if r.runner == "otce"]
    rows = long[long["metric"].isin(otce) & (long["status"] == "ok") & long["joint"].notna()]
    out = {}
    for (model, target), grp in rows.groupby(["model", "target"], sort=True):
        source = grp["source"].dropna().astype(str)
        out[(str(model), str(target))] = (source.iloc[0] if len(source) else "",
                                          pair_breakdown((decode_joint(t) for t in grp["joint"]),
                                                         top=top))
    return out


def coupled_text(coupled: list[tuple[int, float]], names: list[str] | None) -> str:
    """``"person 0.61, bicycle 0.22"`` for a class's coupled source classes."""
    return ", ".join(f"{class_label(names, a)} {p:.2f}" for a, p in coupled)


def per_class_table(long: pd.DataFrame, names: Mapping[str, list[str]] | None = None,
                    top: int = 3) -> pd.DataFrame:
    """The per-class rows of every pair (:data:`PER_CLASS_COLUMNS`; module docstring), worst
    covered class first within a pair; ``top`` source classes per target class."""
    names = names or {}
    rows = []
    for (model, target), (source, bd) in breakdowns(long, top).items():
        for rank, r in enumerate(bd.rows(), 1):
            rows.append({"model": model, "target": target, "source": source, "rank": rank,
                         "target_class": r["target_class"],
                         "target_name": class_label(names.get(target), r["target_class"]),
                         "nats_per_pixel": r["per_pixel"], "share": r["share"],
                         "entropy": r["entropy"], "mass": r["mass"],
                         "coupled": coupled_text(r["coupled"], names.get(source)),
                         "repetitions": bd.repetitions})
    return pd.DataFrame(rows, columns=PER_CLASS_COLUMNS)
