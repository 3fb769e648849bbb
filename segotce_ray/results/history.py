"""The nights side by side: each model's rank per target over a job's last runs, as SVG.

A job's runs are the sibling directories of a run directory (``runs/<job>/<run-id>/``, in
name order — run ids are UTC times — up to and including the run itself) that hold a
``rankings.csv`` (else a ``matrix.parquet``). :func:`history_ranks` reads one metric's ranks
from each; :func:`render_history` draws one small chart per target: x = run, y = rank (1 at
the top), a line per model labelled at its last point; a model's first point is a ring marked
*new* when an earlier run shown ranked that target without it, and a model missing from the
last run that ranked the target ends in a cross (the chart's note names both).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

__all__ = ["history_ranks", "job_runs", "render_history"]

_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def job_runs(run_dir: str | Path, n: int) -> list[Path]:
    """The last ``n`` runs of the job of ``run_dir``, oldest first, ending with ``run_dir``."""
    run_dir = Path(run_dir).resolve()
    runs = [p for p in run_dir.parent.iterdir()
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")
            and p.name <= run_dir.name and p != run_dir
            and ((p / "rankings.csv").is_file() or (p / "matrix.parquet").is_file())]
    return sorted(runs, key=lambda p: p.name)[-(n - 1):] + [run_dir] if n > 1 else [run_dir]


def _run_ranks(run_dir: Path) -> pd.DataFrame:
    """metric, target, model, rank of one run (rankings.csv, else computed from the matrix)."""
    path = run_dir / "rankings.csv"
    if path.is_file():
        df = pd.read_csv(path, dtype={"metric": str, "target": str, "model": str},
                         usecols=lambda c: c in ("metric", "target", "model", "rank"))
        return df[df["rank"].notna()]
    from segotce_ray.results.report import load_long, rankings_from_long

    return rankings_from_long(load_long(run_dir))


def history_ranks(run_dir: str | Path, metric: str, n: int = 10,
                  current: pd.DataFrame | None = None) -> tuple[list[str], pd.DataFrame]:
    """(run names oldest first, frame ``run, target, model, rank``) of ``metric`` over the last
    ``n`` runs; ``current``: this run's rankings when already computed."""
    runs = job_runs(run_dir, n)
    parts = []
    for i, path in enumerate(runs):
        ranks = current if current is not None and i == len(runs) - 1 else _run_ranks(path)
        sub = ranks[ranks["metric"].astype(str) == metric]
        parts.append(pd.DataFrame({"run": path.name, "target": sub["target"].astype(str),
                                   "model": sub["model"].astype(str),
                                   "rank": sub["rank"].astype(float)}))
    frame = pd.concat(parts, ignore_index=True) if parts else \
        pd.DataFrame(columns=["run", "target", "model", "rank"])
    return [p.name for p in runs], frame


def _short(run: str) -> str:
    m = re.fullmatch(r"\d{4}(\d\d)(\d\d)T(\d\d)(\d\d)\d\dZ(-\d+)?", run)
    return f"{m[1]}-{m[2]} {m[3]}:{m[4]}{m[5] or ''}" if m else run[:14]


def _marks(runs: list[str], sub: pd.DataFrame) -> tuple[dict[str, int], dict[str, int]]:
    """model → run index where it is new (an earlier run ranked the target without it) /
    where it was last seen before vanishing (the last run ranks the target without it)."""
    ranked = [r for r in runs if (sub["run"] == r).any()]
    new, gone = {}, {}
    for model, grp in sub.groupby("model", sort=True):
        seen = [runs.index(r) for r in grp["run"]]
        first, last = min(seen), max(seen)
        if any(runs.index(r) < first for r in ranked):
            new[model] = first
        if ranked and runs.index(ranked[-1]) > last:
            gone[model] = last
    return new, gone


def _chart(runs: list[str], sub: pd.DataFrame, colours: dict[str, str]) -> str:
    """One target's SVG: a polyline per model over the runs it was ranked in."""
    step, left, top, row = 96, 44, 16, 20
    max_rank = int(sub["rank"].max()) if not sub.empty else 1
    width, height = left + step * (len(runs) - 1) + 170, top + row * max_rank + 24
    x = {r: left + 8 + step * i for i, r in enumerate(runs)}

    def y(rank: float) -> float:
        return top + row * (rank - 1)

    new, gone = _marks(runs, sub)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'role="img" font-size="10" font-family="sans-serif">']
    for k in range(1, max_rank + 1):
        out.append(f'<text x="4" y="{y(k) + 3:.0f}" fill="#8a93a5">{k}</text>'
                   f'<line x1="{left}" x2="{x[runs[-1]] + 4}" y1="{y(k):.0f}" y2="{y(k):.0f}" '
                   'stroke="#eef0f4"/>')
    for r in runs:
        out.append(f'<text x="{x[r]}" y="{height - 6}" text-anchor="middle" fill="#5b6475">'
                   f"{html.escape(_short(r))}</text>")
    for model, grp in sub.sort_values("run", key=lambda s: s.map(runs.index)).groupby("model"):
        c, name = colours[model], html.escape(model)
        pts = [(x[r], y(k), r, k) for r, k in zip(grp["run"], grp["rank"])]
        if len(pts) > 1:
            out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                       + " ".join(f"{px},{py:.0f}" for px, py, _, _ in pts) + '"/>')
        for px, py, r, k in pts:
            out.append(f'<circle cx="{px}" cy="{py:.0f}" r="3" fill="{c}"><title>{name}: rank '
                       f"{int(k)} in {html.escape(r)}</title></circle>")
        if model in new:
            px, py = x[runs[new[model]]], y(grp[grp["run"] == runs[new[model]]]["rank"].iloc[0])
            out.append(f'<circle cx="{px}" cy="{py:.0f}" r="6" fill="none" stroke="{c}" '
                       f'stroke-width="1.5"/><text x="{px - 9}" y="{py + 3:.0f}" '
                       f'text-anchor="end" fill="{c}">new</text>')
        if model in gone:
            px, py = x[runs[gone[model]]], y(grp[grp["run"] == runs[gone[model]]]["rank"].iloc[0])
            out.append(f'<path d="M{px - 5},{py - 5:.0f}l10,10m0,-10l-10,10" stroke="{c}" '
                       f'stroke-width="2"><title>{name}: not ranked after '
                       f"{html.escape(runs[gone[model]])}</title></path>")
        last = pts[-1]
        if last[2] == runs[-1]:
            out.append(f'<text x="{last[0] + 8}" y="{last[1] + 3:.0f}" fill="{c}">{name}</text>')
    return "".join(out) + "</svg>"


def render_history(runs: list[str], frame: pd.DataFrame, title: str) -> str:
    """HTML of the history section: one chart per target (empty text with < 2 runs)."""
    if len(runs) < 2 or frame.empty:
        return ""
    models = sorted(frame["model"].unique())
    colours = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)}
    cards = []
    for target in sorted(frame["target"].unique()):
        sub = frame[frame["target"] == target]
        new, gone = _marks(runs, sub)
        notes = ([f"new: {', '.join(sorted(new))}"] if new else []) + \
            ([f"gone: {', '.join(sorted(gone))}"] if gone else [])
        cards.append(f'<div class="card"><h3>{html.escape(target)}</h3>'
                     + (f'<p class="note">{html.escape("; ".join(notes))}</p>' if notes else "")
                     + _chart(runs, sub, colours) + "</div>")
    return (f'<section id="history"><h2>History: rank by {html.escape(title)} over the last '
            f'{len(runs)} runs</h2><p class="note">Rank 1 at the top; a ring marks a model new '
            "in that run, a cross a model no longer ranked. Hover a point for its rank.</p>"
            '<div class="charts">' + "".join(cards) + "</div></section>")
