"""``segotce-ray -q`` (issue 15, item 3): stdout holds only the tool's own output and stderr
none of Ray's chatter (INFO lines, token-auth and progress-bar hints, raylet output)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures_layouts import make_folder
from tests.test_job import seed_pools, write_job

REPO = Path(__file__).resolve().parents[1]
TOOL_STDOUT = ("run ", "pools ", "top 3 per target", "  t", "report: ")
TOOL_STDERR = re.compile(r"^\d\d:\d\d:\d\d (WARNING|ERROR) segotce_ray[.\w]*: ")
RAY_CHATTER = ("INFO", "Token authentication", "Progress bars disabled", "(raylet)",
               "streaming_executor", "\x1b[")


def _job(tmp_path: Path, n_pixels: int) -> Path:
    data = tmp_path / "data"
    lm = {0: "road", 1: "car", 2: "person"}
    for name, seed in (("src_a", 1), ("src_b", 2), ("t1", 3), ("t2", 4)):
        make_folder(data / name, n=2, label_map=lm if name != "t1" else {0: "road", 1: "car"},
                    seed=seed)
    return write_job(tmp_path / "job", data, models={"m_a": "src_a"},
                     otce={"n_pixels": n_pixels, "repetitions": 1, "epsilon": 1.0},
                     extraction={"pixels_per_image": 30, "batch_size": 2})


def _quiet_run(path: Path) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "segotce_ray.cli", "-q", "run", str(path),
                          "--num-cpus", "2"], cwd=REPO, capture_output=True, text=True,
                         timeout=400)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and lines[0].startswith("run ") and lines[-1].startswith("report: ")
    assert all(line.startswith(TOOL_STDOUT) for line in lines), out.stdout
    for noise in RAY_CHATTER:
        assert noise not in out.stdout and noise not in out.stderr, (noise, out.stderr)
    return out


def test_quiet_run_from_cached_pools_prints_only_the_tool_output(tmp_path):
    path = _job(tmp_path, n_pixels=60)
    seed_pools(path)
    out = _quiet_run(path)
    assert out.stderr == ""                                  # no warning in this run


@pytest.mark.slow
def test_quiet_run_with_extraction_keeps_only_the_tool_warnings(tmp_path):
    """Ray Data runs here (its INFO lines and progress-bar hint were the noise); the only
    warnings left are the tool's: the pools are smaller than the configured N = 500."""
    out = _quiet_run(_job(tmp_path, n_pixels=500))
    tool = [line for line in out.stderr.splitlines() if TOOL_STDERR.match(line)]
    assert any("fewer than the N=500 draws" in line for line in tool), out.stderr
    others = [line for line in out.stderr.splitlines() if not TOOL_STDERR.match(line)]
    assert others == [], others          # not even a line of Ray's C++ core worker (issue 22)


NATIVE = """
import logging, os, sys
from segotce_ray.cluster.runtime import divert_native_stderr
path = divert_native_stderr()
os.write(2, b"[2026-01-01 00:00:00,000 E 1 1] core_worker.cc:2465: native noise\\n")
logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
logging.getLogger("segotce_ray.x").warning("the tool's own warning")
print("done", file=sys.stderr)
print(path)
"""


def test_native_stderr_is_diverted_and_python_stderr_kept(tmp_path):
    """What C++ code writes to fd 2 (Ray's core worker) goes to a file under -q; the tool's
    warnings and other Python writes to sys.stderr still reach the terminal."""
    out = subprocess.run([sys.executable, "-c", NATIVE], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "native noise" not in out.stderr
    assert out.stderr.splitlines() == ["WARNING segotce_ray.x: the tool's own warning", "done"]
    assert "native noise" in Path(out.stdout.strip()).read_text()
    Path(out.stdout.strip()).unlink()


def test_quiet_command_removes_the_diverted_file_when_it_succeeds(tmp_path):
    run = tmp_path / "runs" / "j" / "r1"
    run.mkdir(parents=True)
    (run / "run.json").write_text('{"job": "j", "run_id": "r1", "status": "ok"}')
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = subprocess.run([sys.executable, "-m", "segotce_ray.cli", "-q", "report", str(run)],
                         cwd=REPO, capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TMPDIR": str(tmp)})
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert (tmp / f"segotce-ray-{os.getuid()}").is_dir()
    assert not list((tmp / f"segotce-ray-{os.getuid()}").iterdir())
