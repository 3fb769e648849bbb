"""The report people look at (issue 22): report.html is one self-contained, well-formed page
that names every model and target, with a per-class view of every (model, target) pair, and
a history chart once the job has two runs; the per-class numbers add up to SEG-OTCE's W_T."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from segotce_ray.metrics.otce import conditional_entropy, otce_score
from segotce_ray.metrics.perclass import class_entropy, decode_joint, encode_joint, pair_breakdown
from segotce_ray.results.matrix import TransferabilityMatrix
from segotce_ray.results.publish import write_reports
from segotce_ray.scoring.rows import results_frame

CITY = ["road", "sidewalk", "building", "person", "rider", "car"]
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
        "source", "track", "wbr"}


def _joint(rng: np.random.Generator, s_ids, t_ids) -> str:
    j = rng.random((len(s_ids), len(t_ids))) ** 3
    return encode_joint(j / j.sum(), s_ids, t_ids)


def _long(models, targets, seed=0, k=3, peers=("logme",)) -> pd.DataFrame:
    """SEG-OTCE rows with joints (w_t = their conditional entropy) plus peer rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for model in models:
        for target in targets:
            for kk in range(k):
                joint = _joint(rng, [0, 1, 2, 3, 4, 5], [0, 1, 3, 4, 5] if target != "coarse"
                               else [0, 1])
                w_t = conditional_entropy(decode_joint(joint)[0])
                rows.append({"model": model, "target": target, "metric": "otce", "k": kk,
                             "score": -w_t, "w_t": w_t, "status": "ok", "source": "src_" + model,
                             "joint": joint})
                rows += [{"model": model, "target": target, "metric": p, "k": kk,
                          "score": float(rng.normal()), "status": "ok"} for p in peers]
    return results_frame(rows)


def _run(tmp_path: Path, run_id: str, models, targets, seed=0, truth=True) -> Path:
    run = tmp_path / "runs" / "j" / run_id
    long = _long(models, targets, seed)
    gt = pd.DataFrame([{"model": m, "target": t, "value": float(i + j)}
                       for i, m in enumerate(models) for j, t in enumerate(targets)])
    run.mkdir(parents=True)
    names = {t: (CITY if t != "coarse" else ["flat", "thing"]) for t in targets}
    names.update({"src_" + m: CITY for m in models})
    (run / "classes.json").write_text(json.dumps(names))
    TransferabilityMatrix(long, gt if truth else None).save(run)
    (run / "run.json").write_text(json.dumps({"job": "j", "run_id": run_id, "status": "ok",
                                              "settings": {"otce.n_pixels": 100}}))
    write_reports(run)
    return run


class _Checker(HTMLParser):
    """Well-formedness (every non-void tag closed in order) and every external reference."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.refs: list[str] = []
        self.text: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        self.refs += [v for k, v in attrs if k in ("src", "href") and v is not None]
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(page: str) -> _Checker:
    c = _Checker()
    c.feed(page)
    c.close()
    return c


MODELS = ["m_alpha", "m_beta", "m_gamma"]
TARGETS = ["city", "coarse"]


def test_report_html_is_self_contained_well_formed_and_names_everything(tmp_path):
    run = _run(tmp_path, "20260101T000000Z", MODELS, TARGETS)
    page = (run / "report.html").read_text(encoding="utf-8")
    c = _parse(page)
    assert not c.errors and not c.stack, (c.errors, c.stack)
    # self-contained: every reference is an in-page anchor or a data: URI, nothing fetched
    assert all(r.startswith(("#", "data:")) for r in c.refs), c.refs
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", page.replace(
        'xmlns="http://www.w3.org/2000/svg"', ""))
    assert "<link" not in page and "@import" not in page and "url(" not in page
    text = " ".join(c.text)
    for name in MODELS + TARGETS:
        assert name in text
    # the page opens with the rankings, and every pair has its per-class card
    assert page.index('id="rankings"') < page.index('id="why"') < page.index('id="heatmaps"')
    for m in MODELS:
        for t in TARGETS:
            assert f"pc-{m}--{t}" in c.ids
    assert "rider" in text and "person" in text           # class ids named
    assert page.count('<img class="hm') == 2               # a heatmap per metric, one switch
    assert 'id="hm-switch"' in page and 'id="agreement"' in page and 'id="failures"' in page
    assert "<svg" not in page                              # one run: no history chart yet


def test_history_chart_marks_new_and_vanished_models(tmp_path):
    _run(tmp_path, "20260101T000000Z", MODELS, TARGETS, seed=1)
    run2 = _run(tmp_path, "20260102T000000Z", ["m_alpha", "m_beta", "m_delta"], TARGETS, seed=2)
    page = (run2 / "report.html").read_text(encoding="utf-8")
    c = _parse(page)
    assert not c.errors and not c.stack
    assert 'id="history"' in page and page.count("<svg") == len(TARGETS)
    assert "new: m_delta" in page and "gone: m_gamma" in page
    assert "m_gamma: not ranked after 20260101T000000Z" in page and ">new</text>" in page


def test_per_class_breakdown_adds_up_to_w_t_and_lists_worst_first():
    """Source classes 0, 1, 2 sit at three separate centres; target class 0 at the centre of
    source 0 (covered), target classes 1 and 2 both at the centre of source 1: neither has a
    source class of its own, their pixels are shared between source classes 1 and 2."""
    rng = np.random.default_rng(3)
    centres = np.eye(5)[:3] * 10.0
    ys = np.repeat([0, 1, 2], 100)
    fs = centres[ys] + rng.normal(scale=0.3, size=(300, 5))
    yt = np.repeat([0, 1, 2], 100)
    ft = centres[np.minimum(yt, 1)] + rng.normal(scale=0.3, size=(300, 5))
    r = otce_score(fs, ys, ft, yt, n_pixels=250, repetitions=3, epsilon=1.0)
    for j, w in zip(r.joints, r.w_t):
        assert class_entropy(j).sum() == pytest.approx(w, rel=1e-9)
    reps = [decode_joint(encode_joint(j, s, t))
            for j, s, t in zip(r.joints, r.source_classes, r.target_classes)]
    bd = pair_breakdown(reps)
    assert bd.w_t == pytest.approx(float(np.mean(r.w_t)), rel=1e-4)
    assert np.all(np.diff(bd.per_pixel) <= 0) and bd.share.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(bd.per_pixel, bd.entropy / bd.mass)
    assert bd.target_classes[-1] == 0 and bd.per_pixel[-1] < 0.3 * bd.per_pixel[0]   # covered
    assert set(bd.target_classes[:2]) == {1, 2} and bd.per_pixel[0] > 0.5
    worst = bd.rows()[0]                # its pixels shared between source classes 1 and 2
    assert {a for a, _ in worst["coupled"]} == {1, 2}


def test_per_class_rows_reach_the_matrix_csv_the_api_and_report_md(tmp_path):
    run = _run(tmp_path, "20260101T000000Z", MODELS, TARGETS)
    per = pd.read_csv(run / "per_class.csv")
    assert set(zip(per["model"], per["target"])) == {(m, t) for m in MODELS for t in TARGETS}
    api = TransferabilityMatrix.load(run).per_class()
    assert len(api) == len(per) and set(per["target_name"]) >= {"rider", "flat"}
    for (_, _), grp in per.groupby(["model", "target"]):
        assert grp["share"].sum() == pytest.approx(1.0, abs=1e-4)
        assert list(grp["rank"]) == list(range(1, len(grp) + 1))
    md = (run / "report.md").read_text(encoding="utf-8")
    assert "## Why: worst-covered target classes" in md and "← " in md
    # the joint column round-trips through matrix.parquet; the score columns are untouched
    back = pd.read_parquet(run / "matrix.parquet")
    assert back["joint"].notna().sum() == len(MODELS) * len(TARGETS) * 3


def test_report_command_writes_the_page_quickly_for_a_run_without_joints(tmp_path):
    """A run scored before the joints were kept still renders (saying so), within 2 s."""
    run = tmp_path / "runs" / "j" / "r1"
    long = _long(MODELS, TARGETS).assign(joint=None)
    TransferabilityMatrix(long).save(run)
    (run / "run.json").write_text(json.dumps({"job": "j", "run_id": "r1", "status": "ok"}))
    from segotce_ray.cli import main

    t0 = time.perf_counter()
    assert main(["-q", "report", str(run)]) == 0
    assert time.perf_counter() - t0 < 2.0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert "carry no label joints" in page and not _parse(page).errors


def _chromium() -> str | None:
    return next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                             shutil.which("google-chrome")) if p), None)


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium_and_is_not_blank(tmp_path):
    """Screenshot at 1400×900 (Debian: ``apt-get install chromium``); the first target's
    ranking sits in the first screen, so the top of the page is far from blank."""
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    _run(tmp_path, "20260101T000000Z", MODELS, TARGETS, seed=1)
    run = _run(tmp_path, "20260102T000000Z", ["m_alpha", "m_beta", "m_delta"], TARGETS, seed=2)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                    "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1400,900",
                    (run / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert img.shape == (900, 1400)
    top = img[:450]
    assert top.std() > 20 and (top < 128).mean() > 0.02    # text and the dark header are drawn
    dark_rows = (img < 160).any(axis=1)
    assert dark_rows[150:450].mean() > 0.3                 # the ranking table's rows


def test_intervals_baselines_ceilings_and_a_recommended_metric_render_when_present(tmp_path):
    """Columns and metrics other work adds (``<m>_lo``/``_hi``, a ``random`` baseline row, a
    noise-ceiling file, a ``recommended`` metric) show up without being required."""
    run = _run(tmp_path, "20260101T000000Z", MODELS, TARGETS)
    corr = pd.read_csv(run / "correlation.csv")
    corr["pearson_lo"], corr["pearson_hi"] = corr["pearson"] - 0.1, corr["pearson"] + 0.1
    base = corr[corr["metric"] == "otce"].assign(metric="random", pearson=0.0)
    pd.concat([corr, base]).to_csv(run / "correlation.csv", index=False)
    pd.DataFrame({"target": TARGETS, "ceiling": [0.9, 0.8]}).to_csv(run / "noise_ceiling.csv",
                                                                   index=False)
    long = pd.read_parquet(run / "matrix.parquet")
    rec = long[long["metric"] == "logme"].assign(metric="recommended")
    TransferabilityMatrix(results_frame(pd.concat([long, rec]))).save(run)
    write_reports(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert not _parse(page).errors
    assert re.search(r"-?\d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]", page)   # value [lo, hi]
    assert "<td>random</td>" in page and "noise_ceiling.csv" in page
    assert "recommended mean ± std" in page                  # the lead metric


def test_read_this_first_points_are_shown_above_the_rankings_at_most_three_open(tmp_path):
    run = _run(tmp_path, "20260101T000000Z", MODELS, TARGETS)
    pd.DataFrame({"metric": ["otce"] * 5, "target": [f"t{i}" for i in range(5)],
                  "top": ["m_alpha"] * 5, "n_tied": [2] * 5, "tied": ["m_alpha;m_beta"] * 5,
                  "lead": [0.01] * 5, "threshold": [0.1] * 5}).to_csv(run / "ties.csv", index=False)
    write_reports(run)
    page = (run / "report.html").read_text(encoding="utf-8")
    assert not _parse(page).errors
    box = page[page.index("Read this first"):page.index('id="rankings"')]
    assert box.count("Tie at the top") == 5 and "<summary>2 more</summary>" in box
