"""``report.html``: the run as one self-contained web page (inline CSS, JS and images).

Like ``report.md`` it is a pure function of the run directory (and of the job's earlier run
directories, for the history), re-rendered by ``segotce-ray report``. Sections, in order:

1. **Rankings per target** — one sortable table per target: rank, model, the lead metric's
   mean ± std (the lead metric is ``recommended`` when the run has it, else
   ``otce_calibrated``, else the first metric in registry order), the ground truth, the
   worst-covered target class, and the model's rank by every other metric; a line with the
   lead metric's agreement with the ground truth for that target (with its interval where
   ``correlation.csv`` has ``<measure>_lo``/``_hi`` columns).
2. **Why (per class)** — per (model, target), worst-covered target class first: the nats of
   SEG-OTCE's H(Y_t|Y_s) per pixel of the class, its share of H, its share of the target
   pixels and the source classes its pixels are coupled to
   (:mod:`segotce_ray.metrics.perclass`, :mod:`segotce_ray.results.perclass`).
3. **Heatmaps** — the run's ``heatmap*.png`` embedded, one shown at a time (a metric switch).
4. **Agreement with ground truth** — ``correlation.csv``: the mean over targets per metric
   (baselines such as ``random``/``capacity`` are rows like any metric), every per-target row
   behind a fold; ``<m>_lo``/``<m>_hi`` pairs shown as intervals; the trust tables
   (:mod:`segotce_ray.results.trust`: noise ceilings, baselines, ties, agreement by family)
   and any other ``*ceiling*.csv`` / ``*baseline*.csv`` of the run as tables.
5. **History** — once the job has ≥ 2 runs: the lead metric's rank of each model per target
   over the last :data:`HISTORY_RUNS` runs as small SVG charts; models new in a run are marked
   with a ring, models that vanished with a cross at their last rank.
6. **Failures** — the run's status when it did not finish, failed pairs, errors, metrics not
   applicable, degenerate models, skipped images; then timings and versions.

Above the rankings, the report's *Read this first* points when there are any (the recommended
ranker's evidence, a family that drives the agreement, ties at the top). Tables sort by a
click on their header (numbers numerically). No network: nothing is
fetched, images are ``data:`` URIs, charts are inline SVG.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

import pandas as pd

from segotce_ray.io import write_text
from segotce_ray.metrics import registry
from segotce_ray.results import report as md
from segotce_ray.results.history import history_ranks, render_history
from segotce_ray.results.perclass import breakdowns, class_label, class_names, coupled_text
from segotce_ray.results.trust import headline_lines

__all__ = ["HISTORY_RUNS", "lead_metric", "render_html", "write_html"]

#: Runs of a job shown in the history charts (the latest ones, this run last).
HISTORY_RUNS = 10
#: "Read this first" points shown above the rankings (the rest behind a fold, so the first
#: target's ranking stays in the first screen).
HEADLINE_SHOWN = 3
#: Target classes shown per pair before the fold ("all N classes").
SHOWN_CLASSES = 5

_CSS = """
*{box-sizing:border-box}body{font:14px/1.35 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;
margin:0;color:#1d2330;background:#f6f7f9}header{background:#1d2330;color:#fff;padding:10px 20px}
header h1{font-size:18px;margin:0 0 2px}header .facts{color:#c9cfdb;font-size:12.5px}
nav{margin-top:6px}nav a{color:#9fc3ff;margin-right:14px;font-size:13px;text-decoration:none}
main{padding:10px 20px 40px;max-width:1500px}h2{font-size:16px;margin:18px 0 6px}
.pill{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:600}
.ok{background:#2e7d32;color:#fff}.bad{background:#c62828;color:#fff}.warn{background:#f9a825}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px 12px;margin:8px 0}
.card h3{font-size:15px;margin:0 0 4px}.note{color:#5b6475;font-size:12.5px;margin:2px 0 6px}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 8px;text-align:left;
border-bottom:1px solid #edf0f4;white-space:nowrap}th{background:#eef1f6;position:sticky;top:0}
table.sortable th{cursor:pointer}table.sortable th:after{content:" \\2195";color:#a0a8b8}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}tr.mean td{font-weight:600}
td.why{white-space:normal;min-width:220px;max-width:340px;color:#3a4252}
th.m{white-space:normal;max-width:80px;vertical-align:bottom}a{color:#1a5fb4}
.bar{display:inline-block;height:9px;background:#d9534f;vertical-align:middle;margin-right:4px}
.pc{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:8px}
.pc .card{margin:0;overflow-x:auto}.pc table{width:100%;table-layout:fixed}
.pc th,.pc td{white-space:normal;padding:3px 5px}.pc th:nth-child(1){width:19%}
.pc th:nth-child(2){width:12%}.pc th:nth-child(3){width:13%}.pc th:nth-child(4){width:9%}details>summary{cursor:pointer;color:#1a5fb4}
.charts{display:flex;flex-wrap:wrap;gap:10px}.legend span{display:inline-block;margin-right:12px;
font-size:12px}.legend i{display:inline-block;width:14px;height:4px;margin-right:4px;
vertical-align:middle}img.hm{max-width:100%;display:none}img.hm.on{display:block}
.warnbox{background:#fff4e5;border:1px solid #f0c36d;border-radius:6px;padding:6px 12px}
"""

_JS = """
function cell(r,i){var c=r.cells[i];if(!c)return '';var v=c.getAttribute('data-v');
return v!==null?v:c.textContent.trim()}
document.querySelectorAll('table.sortable').forEach(function(t){
 t.querySelectorAll('th').forEach(function(th,i){th.addEventListener('click',function(){
  var b=t.tBodies[0],rows=Array.prototype.slice.call(b.rows),asc=th.getAttribute('data-asc')!=='1';
  t.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-asc')});
  if(asc)th.setAttribute('data-asc','1');
  rows.sort(function(x,y){var a=cell(x,i),c=cell(y,i),p=parseFloat(a),q=parseFloat(c);
   var r=(!isNaN(p)&&!isNaN(q))?p-q:(isNaN(p)&&!isNaN(q)?1:(!isNaN(p)&&isNaN(q)?-1:
   a.localeCompare(c)));return asc?r:-r});
  rows.forEach(function(r){b.appendChild(r)})})})});
var hs=document.getElementById('hm-switch');
if(hs){hs.addEventListener('change',function(){document.querySelectorAll('img.hm').forEach(
 function(im){im.classList.toggle('on',im.getAttribute('data-metric')===hs.value)})})}
"""


def esc(x: Any) -> str:
    """HTML-escaped text of ``x``."""
    return html.escape(str(x), quote=True)


def _num(x: Any, digits: int = 4) -> str:
    return md.fmt_value(float(x), digits) if x is not None and not pd.isna(x) else "–"


def _td_num(x: Any, digits: int = 4) -> str:
    v = "" if x is None or pd.isna(x) else f"{float(x):.10g}"
    return f'<td class="num" data-v="{v}">{esc(_num(x, digits))}</td>'


def lead_metric(metrics: list[str]) -> str | None:
    """The metric a page leads with: ``recommended``, else ``otce_calibrated``, else the
    first in registry order (None without metrics)."""
    for name in ("recommended", "otce_calibrated"):
        if name in metrics:
            return name
    return registry.ordered(metrics)[0] if metrics else None


def _title(metric: str) -> str:
    rec = registry.METRICS.get(metric)
    return rec.title if rec is not None else metric


# ---------------------------------------------------------------------------- context


class _Run:
    """Everything a page section reads from one run directory, read once."""

    def __init__(self, run_dir: Path, previous_run_dir: str | Path | None) -> None:
        self.dir = run_dir
        self.info = md.read_json(run_dir / "run.json")
        self.long = md.load_long(run_dir)
        self.ranks = md.rankings_from_long(self.long)
        self.metrics = registry.ordered(self.ranks["metric"].unique()) if not self.ranks.empty else []
        self.lead = lead_metric(self.metrics)
        self.others = [m for m in self.metrics if m != self.lead]
        self.targets = sorted(self.ranks["target"].unique()) if not self.ranks.empty else []
        self.truth = md.ground_truth_values(run_dir)
        self.pruned = md.pruned_marks(md.load_schedule(run_dir))
        self.degenerate = md.degenerate_models(self.long)
        self.names = class_names(run_dir)
        self.breakdowns = breakdowns(self.long)
        corr = run_dir / "correlation.csv"
        self.corr = pd.read_csv(corr) if corr.is_file() else None
        self.previous = Path(previous_run_dir) if previous_run_dir else None

    def order(self, target: str) -> list[str]:
        """Models of ``target`` in the lead metric's rank order (unranked ones after)."""
        sub = self.ranks[self.ranks["target"] == target]
        order = sub[sub["metric"] == self.lead].sort_values("rank")["model"].tolist()
        return order + sorted(set(sub["model"]) - set(order))


def _anchor(model: str, target: str) -> str:
    return "pc-" + "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{model}--{target}")


# ---------------------------------------------------------------------------- rankings


def _measure_text(row: pd.Series, m: str, digits: int = 2) -> str:
    """``0.47 [0.10, 0.80]`` (the interval where the row has ``m_lo``/``m_hi``)."""
    v = row.get(m)
    if v is None or pd.isna(v):
        return "–"
    lo, hi = row.get(f"{m}_lo"), row.get(f"{m}_hi")
    text = f"{float(v):.{digits}f}"
    if lo is not None and hi is not None and not pd.isna(lo) and not pd.isna(hi):
        text += f" [{float(lo):.{digits}f}, {float(hi):.{digits}f}]"
    return text


def _agreement_line(run: _Run, target: str) -> str:
    """The lead metric's agreement with the ground truth on ``target`` (empty without)."""
    if run.corr is None or "metric" not in run.corr.columns:
        return ""
    hit = run.corr[(run.corr["metric"].astype(str) == run.lead)
                   & (run.corr["target"].astype(str) == target)]
    if hit.empty:
        return ""
    row = hit.iloc[0]
    parts = [f"{label} {_measure_text(row, m)}" for m, label in
             (("pearson", "Pearson"), ("kendall_tau", "Kendall τ_b"), ("regret", "top-1 regret"))
             if m in row.index]
    return (f'<p class="note">Agreement of {esc(_title(run.lead))} with the ground truth here: '
            + esc(" · ".join(parts)) + "</p>")


def _why_cell(run: _Run, model: str, target: str) -> str:
    """The pair's worst-covered target class, linked to its per-class card."""
    got = run.breakdowns.get((model, target))
    if got is None:
        return '<td class="why">–</td>'
    source, bd = got
    if not len(bd.target_classes):
        return '<td class="why">–</td>'
    name = class_label(run.names.get(target), int(bd.target_classes[0]))
    coupled = coupled_text(bd.coupled[0][:2], run.names.get(source))
    return (f'<td class="why" data-v="{bd.per_pixel[0]:.6f}"><a href="#{_anchor(model, target)}">'
            f"{esc(name)}</a> {bd.per_pixel[0]:.2f} nats/px, {bd.share[0]:.0%} of H ← "
            f"{esc(coupled)}</td>")


def _model_cell(run: _Run, model: str, target: str) -> str:
    mark = run.pruned.get((run.lead, model, target))
    deg = run.degenerate.get(model)
    text = esc(model)
    if deg:
        text += f' <span title="{esc("; ".join(deg))}">⚠</span>'
    if mark:
        text += f' <span class="note">({esc(mark)})</span>'
    return f"<td>{text}</td>"


def _target_card(run: _Run, target: str) -> str:
    sub = run.ranks[run.ranks["target"] == target]
    by = {(r.metric, r.model): r for r in sub.itertuples(index=False)}
    order = run.order(target)
    has_truth = any((m, target) in run.truth for m in order)
    head = ['<th class="num">rank</th>', "<th>model</th>",
            f'<th class="num">{esc(_title(run.lead))} mean ± std</th>']
    head += ['<th class="num">ground truth</th>'] if has_truth else []
    head += ["<th>worst-covered class ← its source classes</th>"]
    head += [f'<th class="num m" title="rank by {esc(_title(m))}">{esc(_title(m))}'
             '<br><span class="note">rank</span></th>' for m in run.others]
    body = []
    for model in order:
        h = by.get((run.lead, model))
        cells = [_td_num(None if h is None else h.rank, 0), _model_cell(run, model, target)]
        if h is None:
            cells.append('<td class="num">–</td>')
        else:
            cells.append(f'<td class="num" data-v="{float(h.mean):.10g}">{esc(_num(h.mean))} ± '
                         f"{float(h.std):.2g}</td>")
        if has_truth:
            cells.append(_td_num(run.truth.get((model, target)), 3))
        cells.append(_why_cell(run, model, target))
        cells += [_td_num(by[(m, model)].rank if (m, model) in by else None, 0) for m in run.others]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="card" id="t-{esc(target)}"><h3>{esc(target)}</h3>'
            + _agreement_line(run, target)
            + '<table class="sortable"><thead><tr>' + "".join(head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table></div>")


def _rankings_html(run: _Run) -> str:
    if not run.targets:
        return ('<section id="rankings"><h2>Rankings per target</h2><p>No pair finished: '
                "there is nothing to rank.</p></section>")
    rest = (f"; the last columns give each model's rank by {len(run.others)} other metric(s)"
            if run.others else "")
    note = (f"Rank 1 = the model to fine-tune first, by {esc(_title(run.lead))} "
            f"(higher = more transferable; mean ± std over the repetitions){rest}. "
            "Scores compare models within a target only. Click a header to sort; "
            "the worst-covered class links to its per-class breakdown.")
    return ('<section id="rankings"><h2>Rankings per target</h2><p class="note">' + note + "</p>"
            + "".join(_target_card(run, t) for t in run.targets) + "</section>")


# ---------------------------------------------------------------------------- per class


def _class_rows(run: _Run, source: str, target: str, bd: Any, lo: int, hi: int) -> str:
    rows = []
    for i in range(lo, min(hi, len(bd.target_classes))):
        share = float(bd.share[i])
        rows.append(
            f"<tr><td>{esc(class_label(run.names.get(target), int(bd.target_classes[i])))}</td>"
            f"{_td_num(bd.per_pixel[i], 3)}"
            f'<td class="num" data-v="{share:.6f}"><span class="bar" style="width:'
            f'{max(1, round(50 * share))}px"></span>{share:.0%}</td>'
            f'<td class="num" data-v="{bd.mass[i]:.6f}">{bd.mass[i]:.1%}</td>'
            f"<td>{esc(coupled_text(bd.coupled[i], run.names.get(source)) or '–')}</td></tr>")
    return "".join(rows)


_CLASS_HEAD = ('<thead><tr><th>target class</th><th class="num">nats / pixel</th>'
               '<th class="num">share of H</th><th class="num">pixels</th>'
               "<th>coupled to source classes p(a | class)</th></tr></thead>")


def _pair_card(run: _Run, model: str, target: str, rank: Any) -> str:
    title = (f'<h3>#{esc(rank)} {esc(model)} → {esc(target)}</h3>' if rank is not None
             else f"<h3>{esc(model)} → {esc(target)}</h3>")
    got = run.breakdowns.get((model, target))
    anchor = _anchor(model, target)
    if got is None:
        return (f'<div class="card" id="{anchor}">{title}<p class="note">No label joint stored '
                "for this pair (SEG-OTCE did not finish for it, or it was scored before "
                "the joints were kept).</p></div>")
    source, bd = got
    head = (f'<p class="note">H(Y_t|Y_s) = {bd.w_t:.3f} nats (mean of {bd.repetitions} '
            f"repetition(s)); source classes from <b>{esc(source or '?')}</b>.</p>")
    table = (f'<table class="sortable">{_CLASS_HEAD}<tbody>'
             + _class_rows(run, source, target, bd, 0, SHOWN_CLASSES) + "</tbody></table>")
    if len(bd.target_classes) > SHOWN_CLASSES:
        table += (f"<details><summary>all {len(bd.target_classes)} classes</summary>"
                  f'<table class="sortable">{_CLASS_HEAD}<tbody>'
                  + _class_rows(run, source, target, bd, 0, len(bd.target_classes))
                  + "</tbody></table></details>")
    return f'<div class="card" id="{anchor}">{title}{head}{table}</div>'


def _per_class_html(run: _Run) -> str:
    parts = ['<section id="why"><h2>Why: the per-class view</h2><p class="note">SEG-OTCE\'s '
             "H(Y_t|Y_s) is a sum over target classes. For each model and target, worst "
             "covered class first: the nats it costs per pixel of the class (0 = the source "
             "classes its pixels are coupled to take no other class; high = no counterpart "
             "among the source classes), its share of H, its share of the target pixels, and "
             "the source classes its pixels are coupled to. Averaged over the repetitions."
             "</p>"]
    if not run.breakdowns:
        parts.append("<p>This run's SEG-OTCE rows carry no label joints (none finished, or "
                     "they were scored before the joints were kept: rerunning the job rescores "
                     "its SEG-OTCE pairs once).</p>")
    for target in run.targets:
        sub = run.ranks[(run.ranks["target"] == target) & (run.ranks["metric"] == run.lead)]
        rank = dict(zip(sub["model"], sub["rank"]))
        cards = [_pair_card(run, m, target, rank.get(m)) for m in run.order(target)]
        parts.append(f"<details open><summary><b>{esc(target)}</b> — {len(cards)} model(s)"
                     f'</summary><div class="pc">{"".join(cards)}</div></details>')
    return "".join(parts) + "</section>"


# ---------------------------------------------------------------------------- heatmaps


def _heatmap_files(run: _Run) -> list[tuple[str, Path]]:
    """(metric, png) of the run's heatmaps, in display order (``heatmap.png`` is the matrix's
    first metric: SEG-OTCE when it ran, else the first by name)."""
    names = sorted(set(run.long["metric"].astype(str))) if not run.long.empty else []
    if not names:
        return []
    primary = "otce" if "otce" in names else names[0]
    out = []
    for m in registry.ordered(names):
        sfx = "" if m == primary else "_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", m)
        path = run.dir / f"heatmap{sfx}.png"
        if path.is_file():
            out.append((m, path))
    return out


def _heatmaps_html(run: _Run) -> str:
    files = _heatmap_files(run)
    if not files:
        return '<section id="heatmaps"><h2>Heatmaps</h2><p>No heatmap in this run.</p></section>'
    options = "".join(f'<option value="{esc(m)}">{esc(_title(m))}</option>' for m, _ in files)
    imgs = "".join(
        f'<img class="hm{" on" if i == 0 else ""}" data-metric="{esc(m)}" alt="heatmap of '
        f'{esc(m)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
        for i, (m, p) in enumerate(files))
    return ('<section id="heatmaps"><h2>Heatmaps</h2><p class="note">Models × targets; colour '
            "= the model's place between the target's lowest and highest mean; annotated mean "
            'and #rank. Metric: <select id="hm-switch">' + options + "</select></p>"
            + imgs + "</section>")


# ---------------------------------------------------------------------------- agreement


def _corr_table(corr: pd.DataFrame, mean_rows: bool) -> str:
    """Rows of ``correlation.csv`` as a sortable table; ``m_lo``/``m_hi`` join ``m``."""
    intervals = {c[:-3] for c in corr.columns if c.endswith("_lo") and f"{c[:-3]}_hi" in corr.columns}
    skip = {"metric", "target", "reason"} | {f"{m}_lo" for m in intervals} | \
        {f"{m}_hi" for m in intervals}
    measures = [c for c in corr.columns if c not in skip]
    head = ["<th>metric</th>"] + ([] if mean_rows else ["<th>target</th>"])
    head += [f'<th class="num">{esc(c)}{" [interval]" if c in intervals else ""}</th>'
             for c in measures] + ["<th>note</th>"]
    body = []
    for _, row in corr.iterrows():
        cells = [f"<td>{esc(_title(str(row['metric'])))}</td>"]
        cells += [] if mean_rows else [f"<td>{esc(row['target'])}</td>"]
        for c in measures:
            v = row.get(c)
            num = "" if v is None or pd.isna(v) else f"{float(v):.10g}" \
                if isinstance(v, (int, float)) else ""
            text = _measure_text(row, c, 3) if c in intervals else (
                (str(int(float(v))) if float(v).is_integer() else _num(v, 3)) if num
                else esc("" if v is None or pd.isna(v) else v))
            cells.append(f'<td class="num" data-v="{num}">{esc(text)}</td>')
        reason = row.get("reason")
        cells.append(f"<td>{esc('' if reason is None or pd.isna(reason) else reason)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return ('<table class="sortable"><thead><tr>' + "".join(head) + "</tr></thead><tbody>"
            + "".join(body) + "</tbody></table>")


def _csv_table(path: Path) -> str:
    df = pd.read_csv(path)
    head = "".join(f"<th>{esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(
        f"<td>{esc(_num(v, 3) if isinstance(v, float) else v)}</td>" for v in row) + "</tr>"
                   for row in df.itertuples(index=False))
    return (f'<p class="note">{esc(path.name)}</p><table class="sortable"><thead><tr>{head}'
            f"</tr></thead><tbody>{body}</tbody></table>")


def _agreement_html(run: _Run) -> str:
    out = ['<section id="agreement"><h2>Agreement with ground truth</h2>']
    corr = run.corr
    if corr is None or corr.empty or "target" not in corr.columns:
        out.append("<p>No ground truth given: nothing to compare the rankings with.</p>")
    else:
        corr = corr.assign(_o=corr["metric"].map(lambda m: registry.sort_key(str(m)))) \
            .sort_values(["_o", "target"], kind="stable").drop(columns="_o")
        mean = corr[corr["target"].astype(str) == "__mean__"]
        out.append('<p class="note">Per metric, the mean over targets: Pearson / Spearman / '
                   "Kendall τ_b / weighted τ between mean scores and the ground truth (1 = "
                   "perfect), regret = ground truth of the best model minus that of the one "
                   "ranked first (0 = the top pick is the best); [lo, hi] where the run has "
                   "intervals. Baselines appear as metrics.</p>")
        out.append(_corr_table(mean, mean_rows=True))
        per = corr[corr["target"].astype(str) != "__mean__"]
        out.append(f"<details><summary>per target ({len(per)} rows)</summary>"
                   + _corr_table(per, mean_rows=False) + "</details>")
    known = [name for name, _ in _TRUST_FILES]
    extra = sorted(({p.name for p in run.dir.glob("*ceiling*.csv")}
                    | {p.name for p in run.dir.glob("*baseline*.csv")}) - set(known))
    for name, caption in [*_TRUST_FILES, *((n, n) for n in extra)]:
        if (run.dir / name).is_file():
            out.append(f"<details{' open' if name == _TRUST_FILES[0][0] else ''}><summary>"
                       f"{esc(caption)}</summary>{_csv_table(run.dir / name)}</details>")
    return "".join(out) + "</section>"


#: Tables a run with ground truth writes beside correlation.csv
#: (:mod:`segotce_ray.results.trust`), shown under the agreement table when present.
_TRUST_FILES = [
    ("ground_truth_summary.csv", "How far the ground truth can be trusted: seed spread and "
                                 "noise ceiling per target (no Pearson can exceed pearson_bound)"),
    ("baselines.csv", "Does each metric beat the random ranking and the capacity baseline?"),
    ("ties.csv", "Ties at the top (models within the repetitions' noise of the top pick)"),
    ("agreement_by_family.csv", "Agreement within each architecture family"),
    ("driving_family.csv", "The family that moves each metric's overall figure"),
]


def _inline_md(text: str) -> str:
    """Escaped ``text`` with markdown's **bold**, *italic* and `code` as HTML."""
    out = esc(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", out)
    out = re.sub(r"`(.+?)`", r"<code>\1</code>", out)
    return re.sub(r"\*(.+?)\*", r"<i>\1</i>", out)


def _headline_html(run: _Run) -> str:
    """The report's *Read this first* points (:func:`segotce_ray.results.trust.headline_lines`)."""
    items = [line[2:] for line in headline_lines(run.dir) if line.startswith("- ")]
    if not items:
        return ""
    shown, rest = items[:HEADLINE_SHOWN], items[HEADLINE_SHOWN:]
    more = (f"<details><summary>{len(rest)} more</summary><ul>"
            + "".join(f"<li>{_inline_md(i)}</li>" for i in rest) + "</ul></details>") if rest else ""
    return ('<div class="warnbox"><b>Read this first</b><ul>'
            + "".join(f"<li>{_inline_md(i)}</li>" for i in shown) + "</ul>" + more + "</div>")


# ---------------------------------------------------------------------------- failures


def _failures_html(run: _Run) -> str:
    info, long = run.info, run.long
    status = info.get("status", "unknown")
    out = ['<section id="failures"><h2>Failures</h2>']
    if status not in ("ok", "failed"):
        why = f": {info['error']}" if info.get("error") else ""
        out.append(f'<p class="warnbox"><b>The run did not finish</b> (status {esc(status)}'
                   f"{esc(why)}). Its results are partial; rerunning the job continues where "
                   "it stopped.</p>")
    failed = long[long["status"] == "failed"] if not long.empty else long
    errors = info.get("errors") or {}
    if failed.empty and not errors:
        out.append("<p>None: every applicable pair finished.</p>" if status in ("ok", "failed")
                   and run.targets else "<p>No pair failed.</p>")
    out += [f"<p><b>{esc(k)}</b>: {esc(v)}</p>" for k, v in sorted(errors.items())]
    groups = md.failure_groups(failed) if not failed.empty else []
    if groups:
        rows = "".join(f"<tr><td>{esc(g['model'])}</td><td>{esc(g['target'])}</td><td>"
                       f"{esc(', '.join(g['metrics']))}</td><td class=num>{g['rows']}</td>"
                       f"<td>{esc(g['error'][:300])}</td></tr>" for g in groups)
        out.append('<table class="sortable"><thead><tr><th>model</th><th>target</th><th>'
                   'metrics</th><th class="num">failed rows</th><th>error</th></tr></thead>'
                   f"<tbody>{rows}</tbody></table>")
    unavailable = long[long["status"] == "unavailable"] if not long.empty else long
    if not unavailable.empty:
        items = unavailable.groupby(["metric", "model", "target"], sort=True)["error"].first()
        out.append("<p>Not applicable (by design, not failures):</p><ul>" + "".join(
            f"<li>{esc(m)} for {esc(mo)} → {esc(t)}: {esc(e or '')}</li>"
            for (m, mo, t), e in items.items()) + "</ul>")
    if run.degenerate:
        out.append('<div class="warnbox"><b>Degenerate models</b> (still ranked, marked ⚠; '
                   "their scores say little about transfer):<ul>" + "".join(
                       f"<li>{esc(m)}: {esc('; '.join(r))}</li>"
                       for m, r in run.degenerate.items()) + "</ul></div>")
    skipped = info.get("skipped_images") or {}
    if skipped:
        n = sum(len(v) for v in skipped.values())
        out.append(f"<p>{n} image(s) were left out of {len(skipped)} pool(s) "
                   "(<code>extraction.bad_images: skip</code>; listed in run.json).</p>")
    return "".join(out) + "</section>"


# ---------------------------------------------------------------------------- page


def _header_html(run: _Run) -> str:
    info = run.info
    status = info.get("status", "unknown")
    pill = {"ok": "ok", "failed": "bad"}.get(status, "warn")
    s = info.get("settings") or {}
    facts = [f"run {info.get('run_id', run.dir.name)}"]
    facts += [f"finished {info['finished']}"] if info.get("finished") else \
        ([f"started {info['started']}"] if info.get("started") else [])
    n_models = run.ranks["model"].nunique() if not run.ranks.empty else 0
    facts.append(f"{n_models} models × {len(run.targets)} targets × {len(run.metrics)} metrics")
    knobs = [f"{label} {s[k]}" for k, label in (("otce.n_pixels", "N"), ("otce.repetitions", "K"),
                                               ("otce.epsilon", "ε"), ("otce.solver", "solver"))
             if k in s]
    facts += [", ".join(knobs)] if knobs else []
    nav = "".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("rankings", "Rankings"), ("why", "Why (per class)"), ("heatmaps", "Heatmaps"),
        ("agreement", "Agreement"), ("history", "History"), ("failures", "Failures")))
    job = info.get("job", run.dir.parent.name)
    return (f"<header><h1>Transferability report — {esc(job)} "
            f'<span class="pill {pill}">{esc(status)}</span></h1>'
            f'<div class="facts">{esc(" · ".join(facts))}</div><nav>{nav}</nav></header>')


def _footer_html(run: _Run) -> str:
    timings = run.info.get("timings") or {}
    versions = run.info.get("versions") or {}
    out = ['<section id="about"><h2>Run facts</h2>']
    if timings:
        out.append('<p class="note">Seconds per stage: ' + esc(", ".join(
            f"{k} {float(v):.1f}" for k, v in timings.items())) + "</p>")
    if versions:
        out.append('<p class="note">Versions: ' + esc(", ".join(
            f"{k} {v}" for k, v in versions.items())) + "</p>")
    out.append('<p class="note">Files beside this page: matrix.parquet (one row per '
               "repetition, with the SEG-OTCE label joints), rankings.csv, summary.csv, "
               "per_class.csv, scores*.csv, heatmap*.png, correlation.csv, report.md, "
               "run.json.</p>")
    return "".join(out) + "</section>"


def _history_html(run: _Run) -> str:
    if run.lead is None:
        return ""
    runs, frame = history_ranks(run.dir, run.lead, HISTORY_RUNS, current=run.ranks)
    return render_history(runs, frame, _title(run.lead)) or (
        '<section id="history"><h2>History</h2><p class="note">The first run of this job: the '
        "chart of each model's rank over the nights appears from the second run on.</p>"
        "</section>")


def render_html(run_dir: str | Path, previous_run_dir: str | Path | None = None) -> str:
    """The page of a run directory (see the module docstring)."""
    run = _Run(Path(run_dir), previous_run_dir)
    title = f"{run.info.get('job', run.dir.parent.name)} / {run.info.get('run_id', run.dir.name)}"
    body = (_header_html(run) + "<main>" + _headline_html(run) + _rankings_html(run)
            + _per_class_html(run)
            + _heatmaps_html(run) + _agreement_html(run) + _history_html(run)
            + _failures_html(run) + _footer_html(run) + "</main>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>Transferability — {esc(title)}</title><style>{_CSS}</style></head>"
            f"<body>{body}<script>{_JS}</script></body></html>\n")


def write_html(run_dir: str | Path, previous_run_dir: str | Path | None = None) -> Path:
    """Render and write ``run_dir/report.html`` (atomically); returns its path."""
    run_dir = Path(run_dir)
    return write_text(run_dir / "report.html", render_html(run_dir, previous_run_dir))
