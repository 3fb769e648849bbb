"""Running a job: plan → extract missing pools, scoring each pair once its pools are
published → matrix → report.

**Plan.** From the spec and what is on disk, list every pixel pool the job needs (per
model: its source dataset and each target) with its content key (:func:`store.pool_key`),
cached or not, and every (model, target, metric) pair with how many of its K repetitions
are already finished. ``segotce-ray run --dry-run`` prints exactly this.

**Resumable.** Every finished scoring row is appended to a per-pair log the moment it
arrives (:class:`ScoreLog`, ``<store>/scores/<key[:2]>/<key>.jsonl``, flushed and fsynced),
keyed by everything that determines the pair's rows: the two pool keys, the metric and its
settings, the job seed and the names that seed the draws. Because repetition k is seeded
from (seed, model, target, k), a rerun after a kill computes only the missing repetitions
and the assembled table is the same as an uninterrupted run's. The log is content-addressed,
not run-addressed: tomorrow's run with two new models computes only their pools and pairs,
and any other job with the same inputs reuses the rows too.

**Run directory.** ``<output>/<name>/<run-id>/`` holds ``matrix.parquet``, ``scores.csv``,
``rankings.csv``, ``per_class.csv``, ``heatmap.png``, ``report.md``, ``report.html``,
``correlation.csv`` (with ground truth), ``spec.yaml`` (resolved spec), ``classes.json`` (class
names per dataset), ``plan.json`` and ``run.json`` (status, counts, errors, versions, timings). ``<output>/<name>/latest`` points at the last finished run (a relative
symlink; a one-line text file where symlinks are not available).

**Schedule.** ``schedule: full`` spends K repetitions on every pair. ``schedule: adaptive``
(:mod:`segotce_ray.scoring.adaptive`) spends ``min_repetitions`` on every pair and the rest only on
models that can still enter a target's top-k; the others are *pruned* and keep the mean of
their partial repetitions. Both write each row to the same score log as it arrives, so an
adaptive run resumes like a full one and — decisions being a function of the seeded
repetitions only — comes to the same decisions and the same matrix. An adaptive run also
writes ``schedule.csv`` (one row per (metric, model, target): schedule_status complete /
pruned / failed, repetitions_done, mean, interval, threshold) and adds ``schedule_status``
and ``repetitions_done`` to ``summary.csv`` and ``rankings.csv``. The plan's "repetitions to
run" is then an upper bound.

One bad dataset or model never takes the job down: its pools and pairs are recorded as
failed with the reason, everything else completes, and the exit status is non-zero.
"""


from __future__ import annotations

import logging
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from segotce_ray.io import write_json, write_text
from segotce_ray.job.execute import execute, skipped_images
from segotce_ray.job.plan import Plan, make_plan
from segotce_ray.job.status import LATEST, Heartbeat, driver_identity, latest_run, mark_abandoned
from segotce_ray.results.publish import write_reports
from segotce_ray.results.report import failure_groups
from segotce_ray.spec.model import JobSpec

log = logging.getLogger(__name__)



# ---------------------------------------------------------------------------- run dirs


def versions() -> dict[str, str]:
    """Versions of everything that shapes the numbers (package, python, torch, ray, POT, ...)."""
    from importlib import metadata

    import segotce_ray

    out = {"segotce-ray": segotce_ray.__version__,
           "python": platform.python_version(), "platform": platform.platform()}
    for dist, key in (("torch", "torch"), ("torchvision", "torchvision"), ("ray", "ray"),
                      ("POT", "POT"), ("numpy", "numpy"), ("scipy", "scipy"),
                      ("pyarrow", "pyarrow"), ("pandas", "pandas")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = "not installed"
    return out


def _set_latest(job_dir: Path, run_dir: Path) -> None:
    """Point ``latest`` at ``run_dir`` atomically (relative symlink; text-file fallback)."""
    link = job_dir / LATEST
    tmp = job_dir / f".{LATEST}.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp)
        os.replace(tmp, link)
        return
    except (OSError, NotImplementedError) as exc:
        log.info("symlinks unavailable (%s); writing %s as a text file", exc, link)
    if tmp.is_symlink():
        tmp.unlink()
    tmp.write_text(run_dir.name + "\n", encoding="utf-8")
    if link.is_symlink():
        link.unlink()
    os.replace(tmp, link)


def _new_run_dir(job_dir: Path, run_id: str | None) -> Path:
    job_dir.mkdir(parents=True, exist_ok=True)
    base = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    if "/" in base or base in (".", "..", LATEST) or base.startswith("."):
        raise ValueError(f"run id {base!r} must be a plain directory name")
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        try:
            (job_dir / name).mkdir()
            return job_dir / name
        except FileExistsError:
            continue
    raise RuntimeError(f"cannot create a run directory under {job_dir}")


# ---------------------------------------------------------------------------- run


@dataclass
class JobResult:
    """What a run produced: its directory, status, counts and failures."""

    run_dir: Path | None
    status: str                      # "ok" | "failed" | "planned"
    plan: Plan
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    table: Any = None                # the long results table (pandas)
    schedule: Any = None             # adaptive runs: the decisions (pandas, schedule.csv)

    @property
    def exit_code(self) -> int:
        return 0 if self.status in ("ok", "planned") else 1

    def summary(self) -> str:
        lines = [f"run {self.run_dir}: {self.status}"]
        if self.counts:
            lines.append(", ".join(f"{k.replace('_', ' ')} {v}" for k, v in self.counts.items()))
        if self.counts.get("repetitions_full"):
            c = self.counts
            lines.append(f"adaptive schedule: {c['repetitions_spent']} of {c['repetitions_full']} "
                         f"repetitions ({c['pairs_pruned']} pair(s) pruned)")
        if self.failures:
            lines.append(f"{len(self.failures)} failure(s):")
            lines += [f"  - {f}" for f in self.failures[:50]]
            if len(self.failures) > 50:
                lines.append(f"  ... and {len(self.failures) - 50} more (see report.md)")
        return "\n".join(lines)


def _failure_lines(failed: Any, errors: Mapping[str, str]) -> list[str]:
    """One line per (pair, cause) with the metrics it hit, then errors no pair mentions."""
    lines = [f"{', '.join(g['metrics'])} {g['model']} → {g['target']}: {g['rows']} "
             f"repetition(s) failed: {g['error']}" for g in failure_groups(failed)]
    for what, msg in sorted(errors.items()):
        if not any(msg in line for line in lines):
            lines.append(f"{what}: {msg}")
    return lines


def _run_info(spec: JobSpec, run_dir: Path, previous: Path | None) -> dict[str, Any]:
    """``run.json`` as a run starts: who runs it, on what spec, with which settings."""
    return {
        "job": spec.name, "run_id": run_dir.name, "status": "running",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **driver_identity(),
        "spec_path": spec.path, "spec_hash": spec.content_hash(),
        "previous_run": previous.name if previous else None, "versions": versions(),
        "settings": {"seed": spec.seed, **{f"otce.{k}": v for k, v in asdict(spec.otce).items()},
                     "metrics": ",".join(spec.metrics),
                     "pixels_per_image": spec.extraction.pixels_per_image,
                     "schedule": spec.schedule.mode,
                     **({f"schedule.{k}": v for k, v in asdict(spec.schedule).items()
                         if k != "mode"} if spec.schedule.mode == "adaptive" else {})},
    }


def _counts(plan: Plan, table: Any, failed: Any, schedule: Any) -> dict[str, int]:
    """The plan's counts plus what the rows and an adaptive schedule say."""
    counts = plan.counts()
    counts.update(rows=len(table), rows_ok=int((table["status"] == "ok").sum()),
                  rows_failed=int(len(failed)),
                  rows_unavailable=int((table["status"] == "unavailable").sum()))
    if schedule is not None:
        ran = schedule[schedule["scheduled"]]
        counts.update(repetitions_spent=int(ran["repetitions_done"].sum()),
                      repetitions_full=int(ran["repetitions_full"].sum()),
                      pairs_pruned=int((ran["schedule_status"] == "pruned").sum()))
    return counts


def run_job(spec: JobSpec, *, address: str | None = None, dry_run: bool = False,
            run_id: str | None = None, progress: bool | None = None,
            on_row: Callable[[dict[str, Any]], None] | None = None,
            num_cpus: int | None = None, overlap: bool = True) -> JobResult:
    """Plan and (unless ``dry_run``) run a job; see the module docstring.

    on_row: called after each scoring row is persisted (tests use it to simulate a kill).
    overlap: score while extraction runs (default); False scores only once every pool is
    extracted — the staged order, for benchmarks and debugging (same matrix either way).
    """
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    plan = make_plan(spec, write=not dry_run)
    timings["plan"] = time.perf_counter() - t0
    if dry_run:
        return JobResult(None, "planned", plan, plan.counts(), timings=timings)
    text = plan.render()     # the counts at INFO; every pool and pair at DEBUG (-vv)
    log.info("plan:\n%s", text.split("\n\n", 1)[0])
    log.debug("plan in full:\n%s", text)
    mark_abandoned(spec.job_dir)      # earlier runs left 'running' by a killed driver
    previous = latest_run(spec.job_dir)
    run_dir = _new_run_dir(spec.job_dir, run_id)
    info = _run_info(spec, run_dir, previous)
    write_text(run_dir / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False))
    write_json(run_dir / "plan.json", plan.to_dict())
    write_json(run_dir / "classes.json", {name: list(ds.class_names)
                                          for name, ds in sorted(plan.datasets.items())})
    write_json(run_dir / "run.json", info)
    when: dict[str, Any] = {}
    try:
        with Heartbeat(run_dir / "run.json"):
            table, extraction_errors, schedule = execute(
                spec, plan, run_dir, timings, address=address, num_cpus=num_cpus,
                progress=progress, on_row=on_row, when=when, overlap=overlap)
    except BaseException as exc:  # Ctrl-C or crash: say which, keep what finished
        info.update(status="interrupted" if isinstance(exc, KeyboardInterrupt) else "error",
                    error=f"{type(exc).__name__}: {exc}",
                    timings={k: round(v, 3) for k, v in timings.items()})
        write_json(run_dir / "run.json", info)
        raise
    errors = {**plan.errors, **extraction_errors}
    failed = table[table["status"] == "failed"]
    failures = _failure_lines(failed, errors)
    status = "failed" if len(failed) or errors else "ok"
    counts = _counts(plan, table, failed, schedule)
    timings["total"] = time.perf_counter() - t_start
    info.update(status=status, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                counts=counts, errors=errors, timings={k: round(v, 3) for k, v in timings.items()},
                timeline=when, skipped_images=skipped_images(spec, plan))
    write_json(run_dir / "run.json", info)
    write_json(run_dir / "versions.json", info["versions"])
    write_json(run_dir / "timings.json", info["timings"])
    t0 = time.perf_counter()
    write_reports(run_dir, previous)
    timings["report"] = time.perf_counter() - t0
    _set_latest(spec.job_dir, run_dir)
    log.info("run %s: %s (%d rows, %d failed) in %.1f s", run_dir, status, len(table),
             len(failed), timings["total"])
    return JobResult(run_dir, status, plan, counts, failures, timings, table, schedule)
