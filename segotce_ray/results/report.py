"""``report.md`` for a run directory: rankings, worst-covered classes, correlation, failures,
changes, timings (``report.html``, :mod:`segotce_ray.results.html`, is the same as a page).

A report is a pure function of the files in a run directory (``matrix.parquet``,
``correlation.csv``, ``run.json``) and, for the "changes" section, of the previous run's
directory; ``segotce-ray report RUN_DIR`` re-renders it at any time.

Rankings: per (metric, target), models ordered by the mean score over the repetitions that
finished (higher = more transferable; rank 1 = best; ties broken by model name so the order
is deterministic). Changes against the previous run: models new to a target, models gone,
and rank moves ``prev → now`` (``▲`` up, ``▼`` down).

Adaptive schedule (``schedule.csv`` in the run directory): a pruned pair is ranked by the
mean of the repetitions it got and marked ``pruned after n/K`` next to its score; a line
gives the repetitions spent against the K per pair of the full schedule.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from segotce_ray.io import write_text
from segotce_ray.metrics import registry
from segotce_ray.results.perclass import breakdowns, class_label, class_names, coupled_text
from segotce_ray.results.trust import headline_lines, trust_lines

log = logging.getLogger(__name__)

__all__ = ["degenerate_models", "failure_groups", "fmt_value", "ground_truth_values", "load_long",
           "load_schedule", "pruned_marks", "rank_changes", "rankings_from_long", "read_json",
           "render_report", "write_report"]

#: SEG-OTCE first, then the peers in this order (issue 7), then anything else by name.
#: Models listed per target in the report (the full ranking is in rankings.csv).
MAX_RANK_ROWS = 30
#: Rank moves listed (new/gone models first, then the largest moves).
MAX_MOVE_ROWS = 40

#: Worst-covered target classes listed per (model, target) in report.md.
PER_CLASS_SHOWN = 3

#: Skipped images listed in the report (all of them are in run.json).
MAX_SKIPPED_ROWS = 20




metric_sort_key = registry.sort_key


def load_long(run_dir: str | Path) -> pd.DataFrame:
    """The run's long table (``matrix.parquet``); empty frame with the columns if absent."""
    path = Path(run_dir) / "matrix.parquet"
    if not path.exists():
        return pd.DataFrame(columns=["model", "target", "metric", "k", "score", "status", "error"])
    df = pd.read_parquet(path)
    if "metric" not in df.columns:
        df["metric"] = "otce"
    return df


def load_schedule(run_dir: str | Path) -> pd.DataFrame | None:
    """An adaptive run's decisions (``schedule.csv``), or None for a full-schedule run."""
    path = Path(run_dir) / "schedule.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path, dtype={"metric": str, "model": str, "target": str,
                                    "schedule_status": str})


def schedule_line(schedule: pd.DataFrame) -> str:
    """One sentence: repetitions spent by the adaptive schedule against the full one."""
    ran = schedule[schedule["scheduled"].astype(bool)] if "scheduled" in schedule.columns \
        else schedule[schedule["schedule_status"] != "unavailable"]
    spent = int(ran["repetitions_done"].sum())
    full = int(ran["repetitions_full"].sum())
    pruned = int((ran["schedule_status"] == "pruned").sum())
    ratio = f" ({full / spent:.1f}× fewer)" if spent and full > spent else ""
    return (f"Adaptive schedule: {spent} repetitions spent instead of {full} for the full "
            f"schedule{ratio}; {pruned} of {len(ran)} pair(s) pruned early (ranked by the mean "
            f"of the repetitions they got; marked *pruned after n/K*).")


def rankings_from_long(long: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, target): mean/std/n of ``ok`` scores per model and its rank.

    The ranking of :meth:`segotce_ray.results.matrix.TransferabilityMatrix.rankings` (rank 1 = most
    transferable; equal means ordered by model name); pairs without an ok repetition are
    left out. Returns columns metric, target, model, mean, std, n, rank.
    """
    cols = ["metric", "target", "model", "mean", "std", "n", "rank"]
    if long.empty:
        return pd.DataFrame(columns=cols)
    from segotce_ray.results.matrix import TransferabilityMatrix

    ranks = TransferabilityMatrix(long).rankings()
    ranks = ranks[ranks["rank"].notna()].copy()
    ranks["rank"] = ranks["rank"].astype("int64")
    return ranks[cols].reset_index(drop=True)


def rank_changes(current: pd.DataFrame, previous: pd.DataFrame | None) -> pd.DataFrame:
    """Rank moves between two rankings frames (columns metric, target, model, rank).

    Returns metric, target, model, prev_rank, rank, move (prev - now; > 0 moved up),
    change in {new, gone, up, down, same}.
    """
    cols = ["metric", "target", "model", "prev_rank", "rank", "move", "change"]
    if previous is None or previous.empty:
        return pd.DataFrame(columns=cols)
    keys = ["metric", "target", "model"]
    cur = current[keys + ["rank"]]
    prev = previous[keys + ["rank"]].rename(columns={"rank": "prev_rank"})
    # only (metric, target) groups that exist in both runs are compared
    both = set(map(tuple, cur[["metric", "target"]].drop_duplicates().values)) & \
        set(map(tuple, prev[["metric", "target"]].drop_duplicates().values))
    m = cur.merge(prev, on=keys, how="outer")
    m = m[[(a, b) in both for a, b in zip(m["metric"], m["target"])]].copy()
    if m.empty:
        return pd.DataFrame(columns=cols)

    def change(row: pd.Series) -> str:
        if pd.isna(row["prev_rank"]):
            return "new"
        if pd.isna(row["rank"]):
            return "gone"
        d = row["prev_rank"] - row["rank"]
        return "up" if d > 0 else "down" if d < 0 else "same"

    m["move"] = m["prev_rank"] - m["rank"]
    m["change"] = m.apply(change, axis=1)
    m = m.sort_values(["metric", "target", "rank", "model"], key=None, kind="mergesort",
                      na_position="last")
    return m[cols].reset_index(drop=True)


def failure_groups(failed: pd.DataFrame) -> list[dict[str, Any]]:
    """Failed rows grouped per (model, target, cause): one entry per pair and reason, with
    the metrics it hit (SEG-OTCE first) and the number of failed repetitions."""
    if failed.empty:
        return []
    df = failed.assign(_err=failed["error"].fillna("failed").astype(str))
    out = []
    for (model, target, err), grp in df.groupby(["model", "target", "_err"], sort=True):
        metrics = sorted(set(map(str, grp["metric"])), key=metric_sort_key)
        out.append({"model": model, "target": target, "error": err, "metrics": metrics,
                    "rows": len(grp)})
    return out


def _target_table(sub: pd.DataFrame, target: str, metrics: list[str],
                  truth: dict[tuple[str, str], float],
                  pruned: dict[tuple[str, str, str], str],
                  degenerate: dict[str, list[str]] | None = None) -> list[str]:
    """One target's ranking: rank, model (⚠ when degenerate), the primary metric's mean ±
    std, the ground truth (when given) and the model's rank by each other metric in one
    compact column."""
    primary, others = metrics[0], metrics[1:]
    order = sub[sub["metric"] == primary].sort_values("rank")["model"].tolist()
    order += sorted(set(sub["model"]) - set(order))
    has_truth = any((model, target) in truth for model in order)
    header = ["rank", "model", f"{primary} mean ± std"] + (["ground truth"] if has_truth else [])
    if others:
        header.append("rank by " + ", ".join(others))
    by = {(r.metric, r.model): r for r in sub.itertuples(index=False)}
    rows = []
    shown = order[:MAX_RANK_ROWS]
    for model in shown:
        h = by.get((primary, model))
        mark = pruned.get((primary, model, target))
        name = f"{model} ⚠" if model in (degenerate or {}) else model
        if h is None:
            row: list[Any] = ["–", name, "–"]
        else:
            row = [int(h.rank), name, f"{fmt_value(float(h.mean))} ± {float(h.std):.2g}"
                   + (f" (k={int(h.n)})" if primary == "otce" and not mark else "")
                   + (f" — {mark}" if mark else "")]
        if has_truth:
            row.append(truth.get((model, target), math.nan))
        if others:
            row.append(" · ".join(
                (str(int(by[(m, model)].rank)) if (m, model) in by else "–")
                + (" (pruned)" if (m, model, target) in pruned else "") for m in others))
        rows.append(row)
    lines = [_table(header, rows)]
    if len(order) > len(shown):
        lines += ["", f"… and {len(order) - len(shown)} more models (all of them in `rankings.csv`)."]
    return lines


def degenerate_models(long: pd.DataFrame) -> dict[str, list[str]]:
    """Model → the distinct reasons its rows are marked ``degenerate`` (sorted by model)."""
    if long.empty or "degenerate" not in long.columns:
        return {}
    marked = long[long["degenerate"].notna()]
    out: dict[str, list[str]] = {}
    for model, grp in marked.groupby("model", sort=True):
        reasons: list[str] = []
        for text in grp["degenerate"].astype(str):
            reasons += [r for r in _split_reasons(text) if r not in reasons]
        out[str(model)] = reasons
    return out


def _split_reasons(text: str) -> list[str]:
    """A ``degenerate`` cell (``"m@a: why | m@b: why"``) as its per-pool reasons."""
    return [part for part in text.split(" | ") if part]


def degenerate_section(degenerate: dict[str, list[str]]) -> list[str]:
    """Report lines warning about degenerate models (none when there are none)."""
    if not degenerate:
        return []
    out = ["", "## Warning: degenerate models", "",
           f"{len(degenerate)} model(s) have degenerate pools (features constant, or fewer "
           "labelled pixels than otce.n_pixels). They are still ranked (marked ⚠), but their "
           "scores say little about transfer; `degenerate` in `matrix.parquet` and "
           "`rankings.csv` gives the reason per row.", ""]
    for model, reasons in degenerate.items():
        out.append(f"- **{model}**: " + "; ".join(reasons))
    return out


def calibration_section(run_dir: Path) -> list[str]:
    """Report lines for ``calibration_applied.json`` (the applied form and its LOTO figures)."""
    data = read_json(run_dir / "calibration_applied.json")
    if not data:
        return []
    c = data.get("coefficients", {})
    loto = data.get("loto", {})
    raw, cal = loto.get("raw", {}), loto.get("calibrated", {})
    out = ["", "## Calibrated SEG-OTCE", "",
           f"`otce_calibrated` = {fmt_value(c.get('w_d'))}·x_D + {fmt_value(c.get('w_t'))}·x_T + "
           f"{fmt_value(c.get('intercept'))}, form **{data.get('form')}** (x = W_D, W_T for the "
           f"linear form; per-target standardised or ranked otherwise), fitted on "
           f"{len(data.get('pairs', []))} pairs of `{data.get('path', '?')}` for "
           + ", ".join(f"{k}={v}" for k, v in data.get("settings", {}).items())
           + f" (fingerprint {str(data.get('fingerprint', ''))[:12]}).", "",
           "Leave-one-target-out validation (fit on the other targets, score the held-out one):", ""]
    rows = []
    for target in sorted(set(raw.get("per_target", {})) | set(cal.get("per_target", {}))):
        r = raw.get("per_target", {}).get(target, {})
        k = cal.get("per_target", {}).get(target, {})
        rows.append([target, _num(r.get("pearson")), _num(k.get("pearson")),
                     _num(r.get("regret")), _num(k.get("regret"))])
    rows.append(["mean", _num(raw.get("pearson")), _num(cal.get("pearson")),
                 _num(raw.get("regret")), _num(cal.get("regret"))])
    out.append(_table(["target", "raw Pearson", "calibrated Pearson", "raw top-1 regret",
                       "calibrated top-1 regret"], rows))
    return out


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


# ---------------------------------------------------------------------------- rendering


def fmt_value(x: Any, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, (float, np.floating)):
        if math.isnan(x):
            return "–"
        return f"{x:.{digits}g}" if abs(x) >= 1e4 or (abs(x) < 1e-3 and x != 0) else f"{x:.{digits}f}"
    return str(x)


def _table(header: list[str], rows: Iterable[Iterable[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(fmt_value(v).replace("|", "\\|").replace("\n", " ") for v in r) + " |")
    return "\n".join(lines)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def pruned_marks(schedule: pd.DataFrame | None) -> dict[tuple[str, str, str], str]:
    """(metric, model, target) → "pruned after n/K" for an adaptive run's pruned pairs."""
    pruned: dict[tuple[str, str, str], str] = {}
    if schedule is not None:
        for r in schedule[schedule["schedule_status"] == "pruned"].itertuples(index=False):
            pruned[(r.metric, r.model, r.target)] = \
                f"pruned after {int(r.repetitions_done)}/{int(r.repetitions_full)}"
    return pruned


def ground_truth_values(run_dir: Path) -> dict[tuple[str, str], float]:
    """(model, target) → ground truth, from the run's ``ground_truth.csv`` (empty without)."""
    if not (run_dir / "ground_truth.csv").is_file():
        return {}
    gt = pd.read_csv(run_dir / "ground_truth.csv", dtype={"model": str, "target": str})
    return {(str(m), str(t)): float(v) for m, t, v in gt[["model", "target", "value"]].itertuples(index=False)}


def _header_section(run_dir: Path, info: dict, long: pd.DataFrame, schedule: pd.DataFrame | None) -> list[str]:
    out: list[str] = []
    job = info.get("job", run_dir.parent.name)
    out.append(f"# Transferability report — {job} / {info.get('run_id', run_dir.name)}")
    out.append("")
    status = info.get("status", "unknown")
    counts = info.get("counts", {})
    facts = [f"status: **{status}**"]
    if info.get("started"):
        facts.append(f"started {info['started']}")
    if info.get("finished"):
        facts.append(f"finished {info['finished']}")
    out.append(" · ".join(facts))
    if counts:
        out.append("")
        out.append(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
    settings = info.get("settings")
    if settings:
        out.append("")
        out.append("Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    if schedule is not None:
        out.append("")
        out.append(schedule_line(schedule))
    out.append("")
    out.append("Higher score = more transferable; rank 1 = the model to try first. "
               "Scores of different metrics are on different scales: compare ranks, not values.")
    out.extend(degenerate_section(degenerate_models(long)))
    return out


def _rankings_section(long: pd.DataFrame, ranks: pd.DataFrame, truth: dict, pruned: dict) -> list[str]:
    out: list[str] = []
    degenerate = degenerate_models(long)
    # -- rankings per target, metrics side by side (SEG-OTCE first)
    out.append("")
    out.append("## Rankings per target")
    if ranks.empty:
        out.append("")
        out.append("No pair finished: there is nothing to rank.")
    metrics = sorted(ranks["metric"].unique(), key=metric_sort_key) if not ranks.empty else []
    for target in sorted(ranks["target"].unique()) if not ranks.empty else []:
        out.append("")
        out.append(f"### {target}")
        out.append("")
        out.extend(_target_table(ranks[ranks["target"] == target], target, metrics, truth, pruned,
                                 degenerate))
    return out


def _per_class_section(run_dir: Path, long: pd.DataFrame, ranks: pd.DataFrame) -> list[str]:
    """Per target and model (SEG-OTCE rank order): the :data:`PER_CLASS_SHOWN` worst-covered
    target classes (most nats of H(Y_t|Y_s) per pixel) and the source classes their pixels
    are coupled to."""
    found = breakdowns(long, top=2)
    if not found:
        return []
    names = class_names(run_dir)
    out = ["", "## Why: worst-covered target classes (SEG-OTCE)", "",
           "Per model and target, the worst-covered target classes: the nats of "
           "H(Y_t|Y_s) per pixel of the class (its share of H), ← the source classes its "
           "pixels are coupled to, with p(source class | target class). Every class of every "
           "pair: `per_class.csv` and `report.html`."]
    otce = ranks[ranks["metric"] == registry.PRIMARY]
    for target in sorted({t for _, t in found}):
        order = otce[otce["target"] == target].sort_values("rank")["model"].tolist()
        order += sorted({m for m, t in found if t == target} - set(order))
        out += ["", f"### {target}", ""]
        for model in order[:MAX_RANK_ROWS]:
            if (model, target) not in found:
                continue
            source, bd = found[(model, target)]
            rank = otce[(otce["target"] == target) & (otce["model"] == model)]["rank"]
            classes = " · ".join(
                f"{class_label(names.get(target), int(c))} {bd.per_pixel[i]:.2f} nats/px "
                f"({bd.share[i]:.0%} of H) ← "
                f"{coupled_text(bd.coupled[i], names.get(source)) or '–'}"
                for i, c in enumerate(bd.target_classes[:PER_CLASS_SHOWN]))
            out.append(f"- **{model}**" + (f" (#{int(rank.iloc[0])})" if len(rank) else "")
                       + f": {classes}")
    return out


def _agreement_section(run_dir: Path) -> list[str]:
    out: list[str] = []
    # -- correlation with ground truth
    corr_path = run_dir / "correlation.csv"
    if corr_path.exists():
        corr = pd.read_csv(corr_path)
        out.append("")
        out.append("## Agreement with ground truth")
        out.append("")
        out.append("Per target: Pearson / Spearman / Kendall τ_b / weighted τ between the mean "
                   "scores and the ground-truth transfer results (1 = perfect agreement); regret "
                   "= ground truth of the best model minus that of the model ranked first "
                   "(0 = the top pick is the best); best-in-top-3 = 1 when the best model is "
                   "among the first three. `__mean__` is the mean over targets. Intervals: 90% "
                   "bootstrap over models (1000 resamples). `random`: what a random ranking "
                   "would get; `capacity`: the models' parameter count as a ranking.")
        if "metric" in corr.columns:
            corr = corr.assign(_o=corr["metric"].map(lambda m: metric_sort_key(str(m))),
                               _last=corr["target"].astype(str) == "__mean__") \
                .sort_values(["_o", "_last", "target"], kind="stable").drop(columns=["_o", "_last"])
        for m in ("pearson", "regret"):
            if f"{m}_lo" in corr.columns:   # the 90% bootstrap interval over models
                corr[f"{m} 90% CI"] = [f"[{fmt_value(lo, 2)}, {fmt_value(hi, 2)}]" if pd.notna(lo) else "–"
                                       for lo, hi in zip(corr[f"{m}_lo"], corr[f"{m}_hi"])]
        keep = [c for c in ("metric", "target", "n_models", "pearson", "pearson 90% CI",
                            "spearman", "kendall_tau", "weighted_tau", "regret", "regret 90% CI",
                            "best_in_top3", "reason")
                if c in corr.columns]
        corr = corr[keep].copy()
        if "reason" in keep:
            corr["reason"] = corr["reason"].fillna("")
        out.append("")
        out.append(_table(keep, corr.itertuples(index=False)))
    return out


def _failures_section(info: dict, long: pd.DataFrame, ranks: pd.DataFrame) -> list[str]:
    out: list[str] = []
    status = info.get("status", "unknown")
    # -- failures
    failed = long[long.get("status", "ok") == "failed"] if not long.empty else long
    unavailable = long[long.get("status", "ok") == "unavailable"] if not long.empty else long
    errors = info.get("errors", {})
    out.append("")
    out.append("## Failures")
    out.append("")
    unfinished = status not in ("ok", "failed")
    if unfinished:
        why = f": {info['error']}" if info.get("error") else ""
        out.append(f"**The run did not finish** (status {status}{why}). "
                   + ("No pair finished. " if ranks.empty else "Its results are partial. ")
                   + "Rerun the job: it continues where this run stopped.")
        out.append("")
    if failed.empty and not errors:
        if not unfinished and not ranks.empty:
            out.append("None: every applicable pair finished.")
        elif not unfinished:
            out.append("No pair finished, and none failed: there was nothing to score.")
    else:
        for what, msg in sorted(errors.items()):
            out.append(f"- **{what}**: {msg}")
        if not failed.empty:
            rows = [[g["model"], g["target"], ", ".join(g["metrics"]), g["rows"], g["error"][:200]]
                    for g in failure_groups(failed)]
            out.append("")
            out.append(_table(["model", "target", "metrics", "failed rows", "error"], rows))

    if not unavailable.empty:
        out.append("")
        out.append("Not applicable (by design, not failures):")
        for (model, target, metric), grp in unavailable.groupby(["model", "target", "metric"], sort=True):
            err = str(grp["error"].dropna().iloc[0]) if grp["error"].notna().any() else ""
            out.append(f"- {metric} for {model} → {target}: {err}")
    return out


def _skipped_section(info: dict) -> list[str]:
    out: list[str] = []
    # -- images left out of the pools (extraction.bad_images: skip)
    skipped = info.get("skipped_images") or {}
    if skipped:
        n = sum(len(v) for v in skipped.values())
        out.append("")
        out.append("## Skipped images")
        out.append("")
        out.append(f"{n} image(s) were left out of {len(skipped)} pool(s) "
                   "(`extraction.bad_images: skip`); the scores use the other images.")
        out.append("")
        shown = 0
        for pool, items in sorted(skipped.items()):
            for item in items:
                if shown < MAX_SKIPPED_ROWS:
                    out.append(f"- {pool}: `{item.get('image_id')}`: {item.get('error', '')}")
                shown += 1
        if shown > MAX_SKIPPED_ROWS:
            out.append(f"- … and {shown - MAX_SKIPPED_ROWS} more (`run.json`, `skipped_images`).")
    return out


def _changes_section(run_dir: Path, info: dict, ranks: pd.DataFrame, previous_run_dir: str | Path | None) -> list[str]:
    out: list[str] = []
    # -- changes vs previous run
    out.append("")
    out.append("## Changes since the previous run")
    out.append("")
    prev_dir = Path(previous_run_dir) if previous_run_dir else None
    if prev_dir is None and info.get("previous_run"):
        cand = run_dir.parent / info["previous_run"]
        prev_dir = cand if cand.is_dir() else None
    if prev_dir is None:
        out.append("First run of this job: nothing to compare with.")
    else:
        prev_ranks = rankings_from_long(load_long(prev_dir))
        ch = rank_changes(ranks, prev_ranks)
        prev_models = set(prev_ranks["model"]) if not prev_ranks.empty else set()
        cur_models = set(ranks["model"]) if not ranks.empty else set()
        new_models = sorted(cur_models - prev_models)
        gone_models = sorted(prev_models - cur_models)
        out.append(f"Compared with run `{prev_dir.name}`.")
        out.append("")
        def names(xs: list[str]) -> str:
            if not xs:
                return "none"
            return ", ".join(xs[:50]) + (f" … ({len(xs)} in all)" if len(xs) > 50 else "")

        out.append(f"- new models: {names(new_models)}")
        out.append(f"- models no longer ranked: {names(gone_models)}")
        moved = ch[ch["change"].isin(["up", "down", "new", "gone"])] if not ch.empty else ch
        if moved.empty:
            out.append("- rankings: unchanged")
        else:
            out.append("")
            rows = []
            moved = moved.assign(_new=~moved["change"].isin(["new", "gone"]),
                                 _size=-moved["move"].abs().fillna(0)) \
                .sort_values(["_new", "_size", "metric", "target", "model"], kind="stable")
            extra = max(0, len(moved) - MAX_MOVE_ROWS)
            moved = moved.head(MAX_MOVE_ROWS).sort_values(["metric", "target", "rank", "model"],
                                                          kind="stable", na_position="last")
            for r in moved.itertuples(index=False):
                prev = "–" if pd.isna(r.prev_rank) else int(r.prev_rank)
                now = "–" if pd.isna(r.rank) else int(r.rank)
                if r.change == "up":
                    arrow = f"▲{int(r.move)}"
                elif r.change == "down":
                    arrow = f"▼{int(-r.move)}"
                else:
                    arrow = r.change
                rows.append([r.metric, r.target, r.model, prev, now, arrow])
            out.append(_table(["metric", "target", "model", "previous rank", "rank", "move"], rows))
            if extra:
                out.append("")
                out.append(f"… and {extra} smaller moves.")
        if not ch.empty:
            tops = []
            for (metric, target), grp in ch.groupby(["metric", "target"], sort=True):
                now1 = grp[grp["rank"] == 1]["model"].tolist()
                was1 = grp[grp["prev_rank"] == 1]["model"].tolist()
                if now1 != was1:
                    tops.append(f"- top-1 for {target} ({metric}): "
                                f"{was1[0] if was1 else '–'} → {now1[0] if now1 else '–'}")
            if tops:
                out.append("")
                out.extend(tops)
    return out


def timeline_line(t: dict) -> str | None:
    """One line on how extraction and scoring overlapped (``run.json``'s ``timeline``), or None.

    Times are seconds from the start of extraction; "started before the last pool was
    published" counts the repetitions computed in this run that started before the last
    pool this run published.
    """
    try:
        t0 = float(t["extract_started_at"])
        ext = float(t["extract_finished_at"]) - t0
        ran = int(t.get("repetitions_run") or 0)
        s0, s1 = (float(t["score_started_at"]) - t0, float(t["score_finished_at"]) - t0) if ran \
            else (0.0, 0.0)
    except (KeyError, TypeError, ValueError):
        return None
    if not t.get("last_pool_published_at"):
        return (f"Timeline: every pool was cached; scoring {s0:.1f}–{s1:.1f} s, "
                f"{ran} repetition(s) run.")
    last = float(t["last_pool_published_at"]) - t0
    before = int(t.get("started_before_last_pool") or 0)
    share = f" ({100.0 * before / ran:.0f}%)" if ran else ""
    return (f"Timeline: extraction 0.0–{ext:.1f} s (last pool published at {last:.1f} s), "
            f"scoring {s0:.1f}–{s1:.1f} s, overlap {float(t.get('overlap_s') or 0):.1f} s; "
            f"{before} of {ran} repetition(s){share} started before the last pool was published.")


def _footer_section(run_dir: Path, info: dict, schedule: pd.DataFrame | None) -> list[str]:
    out: list[str] = []
    # -- timings
    timings = info.get("timings", {})
    if timings:
        out.append("")
        out.append("## Timings")
        out.append("")
        out.append(_table(["stage", "seconds"], [[k, f"{v:.2f}"] for k, v in timings.items()]))
    line = timeline_line(info.get("timeline") or {})
    if line:
        out.append("")
        out.append(line)
    versions = info.get("versions", {})
    if versions:
        out.append("")
        out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    out.append("")
    out.append("Files: `report.html` (this report as one page, with every pair's per-class "
               "view and the history of the job's runs), `matrix.parquet` (long table, one row "
               "per repetition), `scores.csv` (models × targets, mean), `rankings.csv`, "
               "`per_class.csv`, `heatmap.png`"
               + (", `correlation.csv`" if (run_dir / "correlation.csv").exists() else "")
               + (", `schedule.csv` (adaptive decisions)" if schedule is not None else "")
               + ", `spec.yaml` (resolved), `plan.json`, `run.json` (status, counts, errors), "
               "`versions.json`, `timings.json`.")
    return out


def render_report(run_dir: str | Path, previous_run_dir: str | Path | None = None) -> str:
    """Markdown report of a run directory (see the module docstring)."""
    run_dir = Path(run_dir)
    info = read_json(run_dir / "run.json")
    long = load_long(run_dir)
    ranks = rankings_from_long(long)
    schedule = load_schedule(run_dir)
    out = _header_section(run_dir, info, long, schedule)
    out += headline_lines(run_dir)
    out += _rankings_section(long, ranks, ground_truth_values(run_dir), pruned_marks(schedule))
    out += _per_class_section(run_dir, long, ranks)
    out += _agreement_section(run_dir)
    out += trust_lines(run_dir)
    out += calibration_section(run_dir)
    out += _failures_section(info, long, ranks)
    out += _skipped_section(info)
    out += _changes_section(run_dir, info, ranks, previous_run_dir)
    out += _footer_section(run_dir, info, schedule)
    return "\n".join(out) + "\n"


def write_report(run_dir: str | Path, previous_run_dir: str | Path | None = None) -> Path:
    """Render and write ``run_dir/report.md`` (atomically); returns its path."""
    run_dir = Path(run_dir)
    text = render_report(run_dir, previous_run_dir)
    return write_text(run_dir / "report.md", text)
