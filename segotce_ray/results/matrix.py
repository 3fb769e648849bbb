"""The transferability matrix: repetitions reduced to mean ± std per (model, target, metric).

Input is the long table of :func:`segotce_ray.scoring.schedules.score_pairs` (one row per repetition;
columns :data:`segotce_ray.scoring.rows.RESULT_COLUMNS`). Only ``status == "ok"`` rows with a finite
score enter the reduction; a (model, target, metric) without any is kept with NaN mean and
``status="failed"`` (``"partial"`` when some repetitions failed).

Reductions (per metric m, target t, model i over its ok repetitions k = 1..n):
``mean = (1/n) Σ_k s_k``, ``std = √((1/n) Σ_k (s_k − mean)²)`` (population std, as
``OTCEResult.std``), ranks per (m, t) by mean, best first (rank 1 = most transferable; equal
means are ordered by model name, so ranks are 1..M without gaps and deterministic).

Files written by :meth:`TransferabilityMatrix.save` into a run directory (each written to a
temporary name and renamed, so a reader never sees half a file):

- ``matrix.parquet`` — the long table (explicit Arrow schema; pandas, polars and DuckDB read
  it as is).
- ``scores.csv`` — wide means, models × targets (first column ``model``), for SEG-OTCE
  (``otce``; the first metric when there is no ``otce``). Every other metric m gets
  ``scores_<m>.csv`` in the same layout.
- ``summary.csv`` — long: metric, model, target, mean, std, n, n_failed, status, error,
  degenerate.
- ``rankings.csv`` — metric, target, rank, model, mean, std, n, status, degenerate (all
  metrics; failed pairs last with an empty rank). ``degenerate`` is the reason a pair's
  pools are degenerate (:mod:`segotce_ray.pools.degeneracy`), empty when they are fine: such a
  model is still ranked, but its score means little.
- ``heatmap.png`` — models × targets, colour = the model's position between the target's
  lowest and highest mean (one scale per target column: scores compare only within a
  target), annotated ``mean`` and ``#rank`` (only the top 3 per target above 400 cells);
  other metrics get ``heatmap_<m>.png``.
- ``correlation.csv`` and ``ground_truth.csv`` — when ground truth is given: the per-target
  measures of :func:`segotce_ray.metrics.correlation.correlation_table` (metric, target,
  n_models, pearson, …, reason; ``target == "__mean__"`` is the mean over targets) and the
  ground truth used.

:meth:`TransferabilityMatrix.load` reads ``matrix.parquet`` (and ``ground_truth.csv``) back.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from segotce_ray.io import atomic_write
from segotce_ray.metrics import registry
from segotce_ray.results.trust import trust_tables
from segotce_ray.scoring.rows import long_schema
from segotce_ray.metrics.correlation import correlation_table, ground_truth_problems

log = logging.getLogger(__name__)

__all__ = ["PRIMARY_METRIC", "TransferabilityMatrix", "long_schema", "read_ground_truth"]

PRIMARY_METRIC = registry.PRIMARY
#: Heatmaps with more cells annotate only each target's top 3.
FULL_ANNOTATION_CELLS = 400
_GROUP = ["metric", "model", "target"]


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """Read a ground-truth CSV: columns model, target, value, and ``seed`` when fine-tuning was
    repeated (several rows per (model, target), one per seed). Rows are returned as they are
    (the agreement figures average the seeds); a problem is a ValueError that names the file
    and the line (:func:`segotce_ray.metrics.correlation.ground_truth_problems`); a warning
    (one target only) is logged."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype={"model": str, "target": str, "seed": str}, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"ground truth {path}: cannot read it: {exc}") from exc
    missing = {"model", "target", "value"} - set(df.columns)
    if missing:
        raise ValueError(f"ground truth {path}: missing column(s) {sorted(missing)} "
                         f"(header must have model,target,value[,seed])")
    problems = ground_truth_problems(df)
    errors = [p for p in problems if p.level == "error"]
    if errors:
        raise ValueError(f"ground truth {path}: {str(errors[0]).removeprefix('error: ')}"
                         + (f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""))
    for p in problems:
        log.warning("ground truth %s: %s", path, str(p).removeprefix("warning: "))
    out = pd.DataFrame({"model": df["model"].astype(str), "target": df["target"].astype(str),
                        "value": pd.to_numeric(df["value"]).astype(np.float64)})
    if "seed" in df.columns:
        out["seed"] = df["seed"].astype(str)
    return out


def _file_suffix(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric)


class TransferabilityMatrix:
    """Reduced view of a long results table.

    long: DataFrame with at least model, target, k, score, status (metric defaults to
    ``"otce"``). ground_truth: a DataFrame (model, target, value) or a CSV path.
    higher_is_better: per-metric orientation (default True for every metric).
    """

    def __init__(self, long: pd.DataFrame, ground_truth: pd.DataFrame | str | Path | None = None,
                 higher_is_better: Mapping[str, bool] | None = None) -> None:
        need = {"model", "target", "k", "score", "status"}
        if missing := need - set(long.columns):
            raise ValueError(f"results table lacks column(s) {sorted(missing)}")
        df = long.copy()
        if "metric" not in df.columns:
            df["metric"] = PRIMARY_METRIC
        for col in ("model", "target", "metric", "status"):
            df[col] = df[col].astype(str).astype(object)
        df["score"] = pd.to_numeric(df["score"], errors="coerce").astype(np.float64)
        dup = df.duplicated(["metric", "model", "target", "k"], keep=False)
        if dup.any():
            row = df[dup].iloc[0]
            raise ValueError(f"results table has repetition k={row['k']} of {row['metric']} "
                             f"{row['model']!r} → {row['target']!r} more than once")
        self.long = df.sort_values(["model", "target", "metric", "k"], kind="stable") \
            .reset_index(drop=True)
        self.higher_is_better = dict(higher_is_better or {})
        if isinstance(ground_truth, (str, Path)):
            ground_truth = read_ground_truth(ground_truth)
        self.ground_truth = ground_truth

    # ------------------------------------------------------------------ views

    @property
    def metrics(self) -> list[str]:
        names = sorted(self.long["metric"].unique())
        return sorted(names, key=lambda m: (m != PRIMARY_METRIC, m))

    @property
    def models(self) -> list[str]:
        return sorted(self.long["model"].unique())

    @property
    def targets(self) -> list[str]:
        return sorted(self.long["target"].unique())

    def summary(self) -> pd.DataFrame:
        """metric, model, target, mean, std, n (ok repetitions), n_failed, status, error,
        degenerate (why the pair's pools are degenerate, or None)."""
        df = self.long
        ok = (df["status"] == "ok") & np.isfinite(df["score"])
        keys = df[_GROUP].drop_duplicates().sort_values(_GROUP).reset_index(drop=True)
        g = df[ok].groupby(_GROUP, sort=True)["score"]
        red = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "n": g.size()}).reset_index()
        fails = df[~ok].groupby(_GROUP, sort=True)
        nf = fails.size().rename("n_failed").reset_index()
        err = fails["error"].first().rename("error").reset_index() if "error" in df.columns \
            else nf[_GROUP].assign(error=None)
        out = keys.merge(red, on=_GROUP, how="left").merge(nf, on=_GROUP, how="left") \
            .merge(err, on=_GROUP, how="left")
        out["n"] = out["n"].fillna(0).astype("int64")
        out["n_failed"] = out["n_failed"].fillna(0).astype("int64")
        out["status"] = np.where(out["n"] == 0, "failed",
                                 np.where(out["n_failed"] > 0, "partial", "ok"))
        out["error"] = out["error"].astype(object).where(out["error"].notna(), None)
        deg = df.groupby(_GROUP, sort=True)["degenerate"].first().rename("degenerate") \
            .reset_index() if "degenerate" in df.columns else keys.assign(degenerate=None)
        out = out.merge(deg, on=_GROUP, how="left")
        out["degenerate"] = out["degenerate"].astype(object).where(out["degenerate"].notna(), None)
        return out[["metric", "model", "target", "mean", "std", "n", "n_failed", "status", "error",
                    "degenerate"]]

    def _metric(self, metric: str | None) -> str:
        if metric is None:
            if not self.metrics:
                raise ValueError("the results table is empty")
            return self.metrics[0]
        if metric not in self.metrics:
            raise KeyError(f"no metric {metric!r} in the matrix; it has {self.metrics}")
        return metric

    def pair_frame(self) -> pd.DataFrame:
        """One row per (model, target): ``family``, ``capacity`` (parameter count), each scored
        metric's mean over its ok repetitions (oriented as stored), and SEG-OTCE's ``w_d`` /
        ``w_t`` means — what :func:`segotce_ray.metrics.recommend.recommend` learns from."""
        df = self.long
        ok = df[(df["status"] == "ok") & np.isfinite(df["score"])]
        scored = [m for m in self.metrics
                  if m in registry.METRICS and registry.METRICS[m].runner != "derived"]
        wide = ok[ok["metric"].isin(scored)].pivot_table(
            index=["model", "target"], columns="metric", values="score", aggfunc="mean")
        out = wide.reindex(columns=scored).reset_index()
        otce = ok[ok["metric"] == registry.PRIMARY].groupby(["model", "target"])[["w_d", "w_t"]].mean()
        out = out.merge(otce.reset_index(), on=["model", "target"], how="left")
        facts = df.reindex(columns=["model", "family", "parameters"]).groupby("model").first()
        out["family"] = out["model"].map(facts["family"])
        out["capacity"] = pd.to_numeric(out["model"].map(facts["parameters"]), errors="coerce")
        out.columns.name = None
        return out

    def scores(self, metric: str | None = None, stat: str = "mean") -> pd.DataFrame:
        """Wide table: index model, one column per target, values = ``stat`` (mean/std/n)."""
        metric = self._metric(metric)
        s = self.summary()
        s = s[s["metric"] == metric]
        wide = s.pivot(index="model", columns="target", values=stat)
        wide = wide.reindex(index=sorted(s["model"].unique()), columns=sorted(s["target"].unique()))
        wide.columns.name = None
        return wide

    def rankings(self, metric: str | None = None) -> pd.DataFrame:
        """metric, target, rank, model, mean, std, n, status, degenerate: rank 1 = most
        transferable per target.

        ``metric=None`` ranks every metric. Pairs without an ok repetition come last with an
        empty rank. A metric with ``higher_is_better[m] = False`` ranks the lowest mean first.
        """
        s = self.summary()
        if metric is not None:
            s = s[s["metric"] == self._metric(metric)]
        parts = []
        for (m, _target), grp in s.groupby(["metric", "target"], sort=True):
            sign = 1.0 if self.higher_is_better.get(m, True) else -1.0
            grp = grp.assign(_key=-sign * grp["mean"])
            grp = grp.sort_values(["_key", "model"], na_position="last", kind="stable")
            rank = np.arange(1, len(grp) + 1, dtype=np.float64)
            rank[grp["mean"].isna().to_numpy()] = np.nan
            parts.append(grp.assign(rank=pd.array(rank, dtype="Int64")).drop(columns="_key"))
        cols = ["metric", "target", "rank", "model", "mean", "std", "n", "status", "degenerate"]
        if not parts:
            return pd.DataFrame(columns=cols)
        return pd.concat(parts, ignore_index=True)[cols]

    def correlation(self, ground_truth: pd.DataFrame | str | Path | None = None) -> pd.DataFrame:
        """Per-target agreement of the means with the ground truth, plus their mean over targets."""
        gt = ground_truth if ground_truth is not None else self.ground_truth
        if gt is None:
            raise ValueError("no ground truth given")
        if isinstance(gt, (str, Path)):
            gt = read_ground_truth(gt)
        s = self.summary()
        means = s.rename(columns={"mean": "score"})[["metric", "model", "target", "score"]]
        return correlation_table(means, gt, higher_is_better=self.higher_is_better,
                                 metric_order=registry.ordered(registry.METRICS))

    # ------------------------------------------------------------------ plots

    def heatmap(self, path: str | Path, metric: str | None = None) -> Path:
        """Write :meth:`heatmap_figure` as a PNG; returns its path."""
        fig = self.heatmap_figure(metric)
        path = Path(path)
        atomic_write(path, lambda p: fig.savefig(p, format="png"))
        return path

    def heatmap_figure(self, metric: str | None = None) -> Any:
        """A models × targets heatmap of the means, annotated mean and #rank (a Figure).

        Scores compare only within a target, so the colour scale is **per target column**:
        colour = the model's position between the target's lowest (0) and highest (1) mean
        (0.5 when they are equal); the annotations give the means themselves. Rows are
        ordered by the mean rank over targets (best first); failed cells are grey and say
        "failed". Above :data:`FULL_ANNOTATION_CELLS` cells only the top 3 per target are
        annotated (``#rank``; failed cells "×"), so a 100 × 20 zoo stays legible and quick
        to draw. Constrained layout keeps every label inside the figure. Uses the Agg canvas
        directly (no pyplot, no display needed).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        metric = self._metric(metric)
        wide = self.scores(metric)
        ranks = self.rankings(metric).pivot(index="model", columns="target", values="rank")
        ranks = ranks.reindex(index=wide.index, columns=wide.columns)
        order = ranks.astype("float64").mean(axis=1).sort_values(kind="stable").index
        wide, ranks = wide.loc[order], ranks.loc[order]
        n_models, n_targets = wide.shape
        cell_w = 1.4 if n_targets <= 10 else 0.8
        cell_h = 0.45 if n_models <= 30 else 0.25
        fig = Figure(figsize=(max(5.0, cell_w * n_targets + 3.5),
                              max(3.0, cell_h * n_models + 2.0)), dpi=100, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        raw = wide.to_numpy(dtype=np.float64)
        values = np.ma.masked_invalid(column_positions(raw))
        im = ax.imshow(values, aspect="auto", cmap=_colormap(), interpolation="nearest",
                       vmin=0.0, vmax=1.0)
        fig.colorbar(im, ax=ax, label="position within the target\n(0 = lowest mean, 1 = highest)")
        ax.set_xticks(range(n_targets), labels=list(wide.columns), rotation=30, ha="right")
        ax.set_yticks(range(n_models), labels=list(wide.index))
        ax.set_xlabel("target dataset")
        ax.set_ylabel("model")
        ax.set_title(f"{metric}: transferability per target (#1 = best)")
        full = n_models * n_targets <= FULL_ANNOTATION_CELLS
        fontsize = 8 if n_models * n_targets <= 200 else 6
        for i in range(n_models):
            for j in range(n_targets):
                v, r = raw[i, j], ranks.iat[i, j]
                color = "white" if np.isfinite(v) and values[i, j] < 0.5 else "black"
                if not np.isfinite(v):
                    text, color = ("failed" if full else "×"), "black"
                elif full:
                    text = f"{v:.3g}\n#{int(r)}" if not pd.isna(r) else f"{v:.3g}"
                elif not pd.isna(r) and r <= 3:
                    text = f"#{int(r)}"
                else:
                    continue
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=color)
        return fig

    # ------------------------------------------------------------------ files

    def save(self, run_dir: str | Path,
             ground_truth: pd.DataFrame | str | Path | None = None,
             schedule: pd.DataFrame | None = None) -> dict[str, Path]:
        """Write the run-directory files (see the module docstring); returns name → path.

        schedule: an adaptive run's decisions (one row per (metric, model, target)): written
        as ``schedule.csv``, and its ``schedule_status``/``repetitions_done`` join
        ``summary.csv`` and ``rankings.csv`` (``matrix.parquet`` keeps the plain schema).
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        written: dict[str, Path] = {}

        def put(name: str, write: Callable[[Path], None]) -> None:
            path = run_dir / name
            atomic_write(path, write)
            written[name] = path

        table = self._arrow_long()
        put("matrix.parquet", lambda p: pq.write_table(table, p))
        if schedule is None:
            put("summary.csv", lambda p: self.summary().to_csv(p, index=False))
            put("rankings.csv", lambda p: self.rankings().to_csv(p, index=False))
        else:
            marks = schedule[[*_GROUP, "schedule_status", "repetitions_done"]]
            for name, frame in (("schedule.csv", schedule),
                                ("summary.csv", self.summary().merge(marks, on=_GROUP, how="left")),
                                ("rankings.csv", self.rankings().merge(marks, on=_GROUP, how="left"))):
                put(name, lambda p, f=frame: f.to_csv(p, index=False, float_format="%.10g"))
        metrics = self.metrics
        if metrics:
            primary = metrics[0]
            for m in metrics:
                sfx = "" if m == primary else f"_{_file_suffix(m)}"
                wide = self.scores(m)
                put(f"scores{sfx}.csv",
                    lambda p, w=wide: w.rename_axis("model").to_csv(p, float_format="%.10g"))
                path = run_dir / f"heatmap{sfx}.png"
                self.heatmap(path, m)
                written[path.name] = path
        gt = ground_truth if ground_truth is not None else self.ground_truth
        if gt is not None:
            if isinstance(gt, (str, Path)):
                gt = read_ground_truth(gt)
            self.ground_truth = gt
            put("ground_truth.csv", lambda p: gt.to_csv(p, index=False))
            tables = trust_tables(self.long, self.summary(), gt, self.higher_is_better)
            for name, frame in tables.items():
                put(name, lambda p, f=frame: f.to_csv(p, index=False, float_format="%.10g"))
        log.info("matrix written to %s (%s)", run_dir, ", ".join(sorted(written)))
        return written

    def _arrow_long(self) -> pa.Table:
        schema = long_schema()
        df = self.long
        cols = {}
        for f in schema:
            if f.name in df.columns:
                col = df[f.name]
                as_str = pa.types.is_string(f.type)
                vals = [None if pd.isna(v) else (str(v) if as_str else v) for v in col.tolist()]
                cols[f.name] = pa.array(vals, type=f.type)
            else:
                cols[f.name] = pa.nulls(len(df), type=f.type)
        return pa.table(cols, schema=schema.with_metadata(
            {"segotce_ray.table": "transferability long table"}))

    @classmethod
    def load(cls, run_dir: str | Path,
             higher_is_better: Mapping[str, bool] | None = None) -> "TransferabilityMatrix":
        """Read a run directory written by :meth:`save` (``matrix.parquet``, ground truth)."""
        run_dir = Path(run_dir)
        path = run_dir / "matrix.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{run_dir}: no matrix.parquet (not a run directory?)")
        from segotce_ray.scoring.rows import results_frame

        df = results_frame(pq.read_table(path).to_pandas())
        gt_path = run_dir / "ground_truth.csv"
        gt = read_ground_truth(gt_path) if gt_path.is_file() else None
        return cls(df, ground_truth=gt, higher_is_better=higher_is_better)


def column_positions(values: np.ndarray) -> np.ndarray:
    """Per column, ``(v − min) / (max − min)`` over its finite entries (0.5 when max = min);
    NaN stays NaN. values: (models, targets)."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full_like(values, np.nan)
    for j in range(values.shape[1]):
        col = values[:, j]
        ok = np.isfinite(col)
        if not ok.any():
            continue
        lo, hi = col[ok].min(), col[ok].max()
        out[ok, j] = (col[ok] - lo) / (hi - lo) if hi > lo else 0.5
    return out


def _colormap():
    from matplotlib import colormaps

    return colormaps["viridis"].with_extremes(bad="#d0d0d0")
