"""Reading the results (issue 15, item 7): heatmap colour scale per target column with its
colour-bar label inside the figure; a narrow per-target table in report.md; one failure line
per (pair, cause); skipped images in the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segotce_ray.matrix import TransferabilityMatrix, column_positions
from segotce_ray.scoring import results_frame


def _long(scores: dict[tuple[str, str], float], metrics=("otce",), k: int = 2):
    rows = []
    for metric in metrics:
        for (model, target), s in scores.items():
            for kk in range(k):
                rows.append({"model": model, "target": target, "metric": metric, "k": kk,
                             "score": s + 0.01 * kk, "status": "ok"})
    return results_frame(rows)


def test_column_positions_scale_each_target_on_its_own():
    v = np.array([[-1.0, -300.0], [-2.0, -100.0], [np.nan, -200.0]])
    got = column_positions(v)
    np.testing.assert_allclose(got[:2, 0], [1.0, 0.0])
    np.testing.assert_allclose(got[:, 1], [0.0, 1.0, 0.5])
    assert np.isnan(got[2, 0])
    assert column_positions(np.array([[3.0], [3.0]]))[0, 0] == 0.5


@pytest.mark.parametrize("shape", [(2, 1), (4, 3)])
def test_heatmap_colour_is_per_target_and_the_colour_bar_label_fits(shape):
    n_models, n_targets = shape
    scale = [1.0, 100.0, 0.01][:n_targets]
    scores = {(f"model_{i}", f"target_{j}"): -scale[j] * (1 + i) for i in range(n_models)
              for j in range(n_targets)}
    fig = TransferabilityMatrix(_long(scores)).heatmap_figure("otce")
    colours = fig.axes[0].images[0].get_array()
    for j in range(n_targets):
        assert colours[:, j].min() == pytest.approx(0.0) and colours[:, j].max() == pytest.approx(1.0)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    label = fig.axes[1].yaxis.label
    assert "position within the target" in label.get_text()
    box, page = label.get_window_extent(renderer), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
