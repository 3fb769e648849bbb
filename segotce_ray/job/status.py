"""Runs that died without saying so: a driver's heartbeat, and marking stale runs abandoned.

A running driver records its ``pid`` and ``host`` in ``run.json`` and touches the file every
:data:`HEARTBEAT_S` seconds (:class:`Heartbeat`: its mtime is the heartbeat). A driver killed
with ``kill -9``, a lost node or a pre-empted VM leaves ``status: running`` behind; the next
run of the same job (:func:`mark_abandoned`) marks such a run ``abandoned`` with the reason
when its driver is gone (same host, that pid no longer exists) or its heartbeat is older than
:data:`STALE_S` (any host), and re-renders its report. Its finished rows are in the store's
score log and are reused by the new run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from segotce_ray.io import write_json

log = logging.getLogger(__name__)

__all__ = ["HEARTBEAT_S", "LATEST", "STALE_S", "Heartbeat", "driver_identity", "latest_run", "mark_abandoned",
           "stale_reason"]

#: Seconds between two touches of a running run's ``run.json``.
HEARTBEAT_S = 60.0
#: A ``running`` run whose ``run.json`` is older than this is abandoned, whatever its host.
STALE_S = 600.0


def driver_identity() -> dict[str, Any]:
    """``{"pid": ..., "host": ...}`` of this process, recorded in ``run.json``."""
    return {"pid": os.getpid(), "host": socket.gethostname()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:          # someone else's process: it exists
        return True
    return True


def stale_reason(info: dict[str, Any], heartbeat: float, now: float | None = None) -> str | None:
    """Why a ``running`` run is dead (None: it is not ``running`` or may still be alive).

    heartbeat: the time of its last heartbeat (``run.json``'s mtime).
    """
    if info.get("status") != "running":
        return None
    now = time.time() if now is None else now
    pid, host = info.get("pid"), info.get("host")
    if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
        return f"its driver (pid {pid} on {host}) is gone"
    age = now - heartbeat
    if age > STALE_S:
        who = f"pid {pid} on {host}" if pid is not None else "driver unknown"
        return f"no heartbeat for {age:.0f} s ({who})"
    return None


def mark_abandoned(job_dir: str | Path, now: float | None = None) -> list[Path]:
    """Mark every dead ``running`` run under ``job_dir`` ``abandoned``; returns their dirs."""
    job_dir = Path(job_dir)
    if not job_dir.is_dir():
        return []
    marked = []
    for run_dir in sorted(p for p in job_dir.iterdir() if p.is_dir() and not p.is_symlink()):
        path = run_dir / "run.json"
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            reason = stale_reason(info, path.stat().st_mtime, now)
        except (OSError, ValueError):
            continue
        if reason is None:
            continue
        info.update(status="abandoned", error=f"the run stopped without finishing: {reason}",
                    abandoned=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_json(path, info)
        log.warning("run %s was left 'running' and is marked abandoned: %s", run_dir, reason)
        try:
            from segotce_ray.results.publish import write_reports

            write_reports(run_dir)
        except Exception as exc:  # noqa: BLE001 - the mark matters, the report is a courtesy
            log.warning("run %s: cannot re-render its report: %s", run_dir, exc)
        marked.append(run_dir)
    return marked


class Heartbeat:
    """Touch ``path`` every ``interval`` seconds in a daemon thread while the block runs."""

    def __init__(self, path: str | Path, interval: float | None = None) -> None:
        self.path = Path(path)
        self.interval = HEARTBEAT_S if interval is None else interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="segotce-heartbeat", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                os.utime(self.path)
            except OSError:          # mid-replace or gone: the next beat will do
                pass

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


#: The name under a job folder that points at its last finished run.
LATEST = "latest"


def latest_run(job_dir: str | Path) -> Path | None:
    """The run directory ``<job_dir>/latest`` points at (symlink or text file), if any."""
    job_dir = Path(job_dir)
    link = job_dir / LATEST
    if link.is_symlink():
        target = job_dir / os.readlink(link)
    elif link.is_file():
        name = link.read_text(encoding="utf-8").strip()
        if not name or "/" in name or name in (".", ".."):
            return None
        target = job_dir / name
    else:
        return None
    return target if target.is_dir() else None
