"""An embedded Ray goes down with its driver, even after ``kill -9``.

Ray ties the processes a driver starts (GCS, raylet, monitors) to the driver's life
(``PR_SET_PDEATHSIG``), and workers leave when their raylet is gone; but the raylet's agents
(``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive a driver killed with ``kill -9``
(measured with Ray 2.60: still alive minutes later, reparented to init, and deaf to
SIGTERM). A nightly job killed by its scheduler would leak them night after night. Two nets,
both Linux-only (``/proc``; elsewhere a no-op):

1. :func:`guard` — called by :func:`segotce_ray.cluster.runtime.init_ray` right after it
   starts an embedded Ray — writes a **session marker** (``<runtime dir>/sessions/*.json``:
   the driver's pid and start time, the session directory, the raylet's pid) and starts a
   **watchdog** process (this file, run as a script: standard library only) that blocks on a
   pipe only the driver holds. When the driver dies, however it dies, the pipe reads EOF and
   the watchdog ends the session's leftovers, then removes the marker.
2. :func:`sweep` — called before an embedded Ray starts — ends the leftovers of every
   predecessor whose driver is dead and whose marker is still there (its watchdog was
   killed too, e.g. with the driver's process group).

Leftovers are found by the session's own marks only, never by a process name: a process
started after the driver whose environment holds ``RAY_RAYLET_PID=<the session's raylet>``,
whose command line names the session directory, or which holds a file open in it (the
agents keep their logs there). They get SIGTERM, then SIGKILL after
:data:`GRACE_S`. The runtime dir is ``$SEGOTCE_RAY_RUNTIME_DIR`` or
``<tmp>/segotce-ray-<uid>``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["guard", "leftovers", "sweep"]

#: Seconds between SIGTERM and SIGKILL for a leftover.
GRACE_S = 3.0
_PIPES: list[int] = []       # write ends of the watchdogs' pipes: held until this process dies


def runtime_dir() -> Path:
    base = os.environ.get("SEGOTCE_RAY_RUNTIME_DIR")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(base) if base else Path(tempfile.gettempdir()) / f"segotce-ray-{uid}"


def _start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot: with the pid, its identity)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def _alive(pid: int, ticks: int | None) -> bool:
    got = _start_ticks(pid)
    return got is not None and (ticks is None or got == ticks)


def _marked(entry: Path, env_mark: bytes | None, session: str | None) -> bool:
    """Whether process ``entry`` (``/proc/<pid>``) carries one of the session's marks."""
    try:
        if env_mark and env_mark in (entry / "environ").read_bytes().split(b"\0"):
            return True
        if not session:
            return False
        if session.encode() in (entry / "cmdline").read_bytes():
            return True
        for fd in (entry / "fd").iterdir():      # e.g. its log files in the session directory
            try:
                if os.readlink(fd).startswith(session + os.sep):
                    return True
            except OSError:
                continue
    except OSError:                              # gone, or not ours to read
        pass
    return False


def leftovers(marker: dict) -> list[tuple[int, int]]:
    """(pid, start ticks) of the live processes, started after the driver, that carry the
    session's marks: ``RAY_RAYLET_PID=<its raylet>`` in the environment, the session directory
    in the command line, or a file open in the session directory (the agents' logs)."""
    env_mark = f"RAY_RAYLET_PID={marker['raylet_pid']}".encode() if marker.get("raylet_pid") else None
    session = marker.get("session_dir") or None
    since = int(marker.get("driver_ticks") or 0)
    spared = {os.getpid(), marker.get("driver_pid"), marker.get("watchdog_pid")}
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in spared:
            continue
        ticks = _start_ticks(int(entry.name))
        if ticks is not None and ticks >= since and _marked(entry, env_mark, session):
            out.append((int(entry.name), ticks))
    return out


def end(marker: dict) -> int:
    """End the session's leftovers (SIGTERM, then SIGKILL); returns how many there were."""
    found = leftovers(marker)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, ticks in found:
            if _alive(pid, ticks):
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
        deadline = time.monotonic() + (GRACE_S if sig == signal.SIGTERM else 1.0)
        while time.monotonic() < deadline and any(_alive(p, t) for p, t in found):
            time.sleep(0.1)
    return len(found)


def sweep(directory: Path | None = None) -> int:
    """End what dead predecessors left (markers whose driver is gone); returns the count."""
    folder = (directory or runtime_dir()) / "sessions"
    if not Path("/proc/self/stat").exists() or not folder.is_dir():
        return 0
    n = 0
    for path in sorted(folder.glob("*.json")):
        try:
            marker = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if _alive(int(marker["driver_pid"]), marker.get("driver_ticks")):
            continue
        ended = end(marker)
        if ended:
            log.warning("ended %d process(es) left by a killed run (driver pid %s, session %s)",
                        ended, marker["driver_pid"], marker.get("session_dir"))
        n += ended
        path.unlink(missing_ok=True)
    return n


def guard(session_dir: str, raylet_pid: int | None, directory: Path | None = None) -> Path | None:
    """Write this session's marker and start its watchdog; returns the marker's path."""
    if not Path("/proc/self/stat").exists():
        return None
    folder = (directory or runtime_dir()) / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    me = os.getpid()
    marker = {"driver_pid": me, "driver_ticks": _start_ticks(me), "session_dir": session_dir,
              "raylet_pid": raylet_pid}
    path = folder / f"{me}-{Path(session_dir).name}.json"
    path.write_text(json.dumps(marker))
    read, write = os.pipe()              # not inheritable: only this process holds ``write``
    child = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(path)], stdin=read,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True, close_fds=True)
    os.close(read)
    _PIPES.append(write)
    marker["watchdog_pid"] = child.pid
    path.write_text(json.dumps(marker))
    return path


def _watch(marker_path: str) -> None:
    """The watchdog: wait for the driver's end (EOF on stdin), then end its leftovers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # a Ctrl-C of the driver's terminal
    while sys.stdin.buffer.read(4096):
        pass
    path = Path(marker_path)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    end(marker)
    path.unlink(missing_ok=True)


if __name__ == "__main__":
    _watch(sys.argv[1])
