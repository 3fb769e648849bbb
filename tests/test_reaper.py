"""A killed driver leaves nothing running: a real ``kill -9`` of a driver subprocess that
started an embedded Ray (with a task running).

Without the reaper, Ray's dashboard and runtime-env agents outlive the driver (reparented to
init); the watchdog ends them, and when the watchdog was killed too, the next embedded start
(:func:`segotce_ray.cluster.reaper.sweep`) does — finding them by the session's marks only.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from segotce_ray.cluster import reaper

pytestmark = [pytest.mark.slow,       # ~30 s each on 2 cores: an embedded Ray per driver
              pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")]

REPO = str(Path(__file__).resolve().parents[1])
DRIVER = """
import time
from segotce_ray.cluster.runtime import init_ray
import ray
init_ray(num_cpus=1)

@ray.remote
def busy():
    time.sleep(300)

ref = busy.remote()
time.sleep(5)
print("READY", flush=True)
time.sleep(300)
"""


def _start_driver(runtime: Path) -> tuple[subprocess.Popen, dict]:
    env = dict(os.environ, PYTHONPATH=REPO, SEGOTCE_RAY_RUNTIME_DIR=str(runtime))
    proc = subprocess.Popen([sys.executable, "-c", DRIVER], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout.readline().strip() == "READY"
    markers = list((runtime / "sessions").glob(f"{proc.pid}-*.json"))
    assert len(markers) == 1, markers
    return proc, json.loads(markers[0].read_text())


def _wait_until(cond, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.5)
    return cond()


def test_kill_9_of_the_driver_leaves_no_ray_process(tmp_path):
    proc, marker = _start_driver(tmp_path)
    assert len(reaper.leftovers(marker)) >= 3          # gcs, raylet, agents, the task's worker
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert _wait_until(lambda: not reaper.leftovers(marker), 30), reaper.leftovers(marker)
    # the watchdog removes the marker once its last leftover is gone
    assert _wait_until(lambda: not list((tmp_path / "sessions").glob("*.json")), 10)


def test_the_next_run_ends_what_a_dead_predecessor_left(tmp_path):
    proc, marker = _start_driver(tmp_path)
    os.kill(marker["watchdog_pid"], signal.SIGKILL)    # e.g. killed with the driver's group
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(5)                                      # what dies with the driver has died
    left = reaper.leftovers(marker)
    assert left, "nothing outlived the driver: this test no longer shows the sweep's use"
    assert reaper.sweep(tmp_path) == len(left)
    assert reaper.leftovers(marker) == []
    assert not list((tmp_path / "sessions").glob("*.json"))
