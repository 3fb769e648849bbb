"""Killed runs do not look clean (issue 15, item 5): a later run marks a dead 'running' run
'abandoned', and a report never says "Failures: None" for a run that did not finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from segotce_ray.results.report import render_report
from segotce_ray.job.status import STALE_S, Heartbeat, driver_identity, mark_abandoned
from segotce_ray.spec.build import load_spec
from tests.test_job import seed_pools, write_job
from tests.fixtures_layouts import make_folder


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _running(job_dir: Path, name: str, mtime_age: float = 0.0, **who) -> Path:
    run_dir = job_dir / name
    run_dir.mkdir(parents=True)
    path = run_dir / "run.json"
    path.write_text(json.dumps({"job": "nightly", "run_id": name, "status": "running",
                                "started": "2026-01-01T00:00:00Z", **who}))
    t = time.time() - mtime_age
    os.utime(path, (t, t))
    return run_dir


def _status(run_dir: Path) -> str:
    return json.loads((run_dir / "run.json").read_text())["status"]


def test_report_of_a_killed_run_never_says_failures_none(tmp_path):
    run_dir = _running(tmp_path / "nightly", "killed", **driver_identity())
    text = render_report(run_dir)
    assert "No pair finished" in text
    assert "None: every applicable pair finished" not in text
    assert "The run did not finish** (status running)" in text


def test_dead_or_silent_running_runs_are_marked_abandoned(tmp_path):
    job_dir = tmp_path / "nightly"
    me = driver_identity()
    dead = _running(job_dir, "dead", pid=_dead_pid(), host=me["host"])
    silent = _running(job_dir, "silent", mtime_age=STALE_S + 60, pid=1, host="elsewhere")
    alive_here = _running(job_dir, "alive", **me)
    alive_there = _running(job_dir, "remote", pid=1, host="elsewhere")
    marked = mark_abandoned(job_dir)
    assert marked == [dead, silent]
    assert _status(dead) == "abandoned" and _status(silent) == "abandoned"
    assert _status(alive_here) == "running" and _status(alive_there) == "running"
    info = json.loads((dead / "run.json").read_text())
    assert "is gone" in info["error"] and "no heartbeat" in \
        json.loads((silent / "run.json").read_text())["error"]
    report = (dead / "report.md").read_text()
    assert "status: **abandoned**" in report and "None: every applicable" not in report


def test_heartbeat_touches_run_json(tmp_path):
    path = tmp_path / "run.json"
    path.write_text("{}")
    os.utime(path, (0, 0))
    with Heartbeat(path, interval=0.05):
        time.sleep(0.3)
    assert path.stat().st_mtime > time.time() - 60


def test_next_run_marks_the_killed_one_and_records_its_driver(tmp_path, ray_local):
    data = tmp_path / "data"
    lm = {0: "road", 1: "car", 2: "person"}
    for name, seed in (("src_a", 1), ("src_b", 2), ("t1", 3), ("t2", 4)):
        make_folder(data / name, n=2, label_map=lm if name != "t1" else {0: "road", 1: "car"},
                    seed=seed)
    path = write_job(tmp_path / "job", data, models={"m_a": "src_a"},
                     otce={"n_pixels": 60, "repetitions": 1, "epsilon": 1.0})
    seed_pools(path)
    spec = load_spec(path)
    killed = _running(spec.job_dir, "killed", pid=_dead_pid(), host=driver_identity()["host"])
    from segotce_ray.job.run import run_job

    result = run_job(spec, run_id="next")
    assert result.status == "ok"
    assert _status(killed) == "abandoned"
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["pid"] == os.getpid() and info["host"] == driver_identity()["host"]
