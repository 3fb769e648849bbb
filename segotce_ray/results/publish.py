"""Write a run directory's reports: ``report.md`` (:mod:`segotce_ray.results.report`) and
``report.html`` (:mod:`segotce_ray.results.html`), both pure functions of the run's files."""

from __future__ import annotations

from pathlib import Path

from segotce_ray.results.html import write_html
from segotce_ray.results.report import write_report

__all__ = ["write_reports"]


def write_reports(run_dir: str | Path, previous_run_dir: str | Path | None = None
                  ) -> tuple[Path, Path]:
    """Render and write ``report.md`` and ``report.html``; returns their paths."""
    return write_report(run_dir, previous_run_dir), write_html(run_dir, previous_run_dir)
