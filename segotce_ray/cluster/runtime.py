"""Ray start-up in one place: an embedded local Ray by default, a cluster when asked.

``address=None`` and no ``RAY_ADDRESS`` in the environment start an embedded local Ray
(``ray.init(address="local")``, never a cluster another process started);
``address="auto"`` or a ``ray://``/``host:port`` address joins a cluster. A ``host:port``
address is probed first (one TCP connect, :data:`CONNECT_TIMEOUT_S`), so a wrong address
fails in seconds instead of after Ray's minutes of retries; any failure to join raises
:class:`ClusterUnreachable` naming the address.

An embedded Ray goes down with its driver, even one killed with ``kill -9``: before it starts,
the leftovers of a dead predecessor are ended, and once it is up a watchdog waits for this
driver's end (:mod:`segotce_ray.cluster.reaper`).
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import tempfile
from pathlib import Path

from segotce_ray.cluster import reaper

log = logging.getLogger(__name__)

#: Seconds to wait for a cluster address to answer before giving up (``init_ray``).
CONNECT_TIMEOUT_S = 10.0

_quiet = False


def set_quiet(quiet: bool = True) -> None:
    """``segotce-ray -q``: keep Ray's own chatter off the terminal (call before Ray starts).

    Ray's driver loggers (``ray``, ``ray.data``) report errors only (no INFO lines, no
    token-auth or progress-bar hints), and worker/raylet output is not forwarded to the
    driver (``log_to_driver=False``: Ray prints it to stdout otherwise). It stays in Ray's
    session logs (``/tmp/ray/session_latest/logs``). The tool's own warnings and errors still
    show. Lines Ray's C++ core worker writes straight to the process's stderr are kept off
    the terminal by :func:`divert_native_stderr`, which the command line calls with ``-q``.
    """
    global _quiet
    _quiet = bool(quiet)
    if not quiet:
        return
    os.environ["RAY_DATA_LOG_LEVEL"] = "ERROR"        # read when ray.data configures logging
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def divert_native_stderr() -> Path:
    """Send what native code writes to file descriptor 2 to a file; keep Python's stderr.

    Ray's C++ core worker runs inside the driver process and writes its warnings and errors
    to fd 2 directly (e.g. ``core_worker.cc: Actor with class name ... has constructor
    arguments in the object store``), past every Python logger. This points fd 2 at
    ``<tmp>/segotce-ray-<uid>/native-stderr-<pid>.log`` and rebinds ``sys.stderr`` to a copy
    of the original descriptor, so the tool's own messages, warnings, tracebacks and progress
    bars still reach the terminal. Call it before logging is configured. Returns the file's
    path (the same lines are in Ray's session logs too).
    """
    folder = Path(tempfile.gettempdir()) / f"segotce-ray-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    path = folder / f"native-stderr-{os.getpid()}.log"
    sys.stderr.flush()
    saved = os.dup(2)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = os.fdopen(saved, "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                           errors="backslashreplace")
    return path


def _guard_session() -> None:
    """Mark the embedded session and start its watchdog (Ray's private node handle gives the
    session directory and the raylet's pid; without them nothing is guarded)."""
    try:
        from ray._private import ray_constants
        from ray._private.worker import _global_node as node

        raylet = node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET) or []
        reaper.guard(node.get_session_dir_path(), raylet[0].process.pid if raylet else None)
    except Exception as exc:  # noqa: BLE001 - a Ray without these internals: run unguarded
        log.warning("embedded Ray runs without a watchdog (%s: %s): a killed driver may "
                    "leave Ray processes behind", type(exc).__name__, exc)


class ClusterUnreachable(ConnectionError):
    """The Ray cluster named by an address cannot be reached; the message names the address."""


def _host_port(address: str) -> tuple[str, int] | None:
    """(host, port) of ``host:port`` / ``ray://host:port`` (None for ``auto`` and the like)."""
    rest = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = rest.rstrip("/").rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def probe_address(address: str, timeout: float | None = None) -> None:
    """Fail fast with :class:`ClusterUnreachable` when nothing listens at ``address``.

    ``ray.init`` retries an unreachable GCS for minutes; one TCP connect with a timeout tells
    a wrong address, a head node that is down or a firewall apart from a slow start.
    """
    hp = _host_port(address)
    if hp is None:
        return
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        raise ClusterUnreachable(
            f"Ray cluster at {address!r} is unreachable ({reason}; waited at most "
            f"{timeout:.0f} s): check the address, that the head node is up and that its "
            f"port is open to this machine") from exc


def init_ray(address: str | None = None, num_cpus: int | None = None, **kwargs) -> None:
    """Start or join Ray once per process; a no-op when Ray is already initialised."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    opts: dict = {"ignore_reinit_error": True,
                  "logging_level": logging.ERROR if _quiet else logging.WARNING,
                  "log_to_driver": not _quiet}
    if address is None:
        # "local": always a new embedded instance — never the cluster another process on this
        # machine started last (ray.init() with no address joins that one).
        opts.update(address="local", include_dashboard=False, num_cpus=num_cpus)
        # Embedded default: keep the object store modest on laptops.
        opts.setdefault("object_store_memory", kwargs.pop("object_store_memory", 512 * 1024**2))
    else:
        opts["address"] = address
        probe_address(address)
    opts.update(kwargs)
    log.info("starting Ray (%s)", "embedded local" if address is None else address)
    if address is None:
        reaper.sweep()
    try:
        ray.init(**opts)
        if address is None:
            _guard_session()
        if _quiet:            # ray.data may have been imported (and configured) by now
            logging.getLogger("ray.data").setLevel(logging.ERROR)
    except ConnectionError as exc:
        if address is None or isinstance(exc, ClusterUnreachable):
            raise
        raise ClusterUnreachable(f"cannot join the Ray cluster at {address!r}: {exc}") from exc
