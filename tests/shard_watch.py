"""Watches this process (the driver) for any access to a published pool shard.

Three nets, each catching what the others may miss:

- an audit hook: every ``open`` / ``os.open`` made by Python code in this process;
- wrappers around pyarrow's readers (``parquet.read_table``, ``ParquetFile``, ``read_schema``,
  ``read_metadata``, ``pyarrow.memory_map``, ``OSFile``, ``dataset.dataset``), which open
  files in C++ where no audit event is raised;
- a thread polling ``/proc/self/fd`` and ``/proc/self/maps`` every few milliseconds: a file
  held open or memory-mapped by anything in the process, C++ included.

A shard is a ``*.parquet`` file under ``<store>/pools/`` (manifests are allowed: they are
the driver's way to know a pool). Use as a context manager; ``hits`` lists what was seen.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

_ACTIVE: list["ShardWatch"] = []
_HOOKED = False


def _audit(event: str, args: tuple) -> None:
    if event == "open" and _ACTIVE and args:
        for w in list(_ACTIVE):
            w.check(args[0], "open")


class ShardWatch:
    def __init__(self, store: str | Path, poll_s: float = 0.002) -> None:
        self.pools = str(Path(store).resolve() / "pools") + os.sep
        self.poll_s = poll_s
        self.hits: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._saved: list[tuple[object, str, object]] = []

    def check(self, path, how: str) -> None:
        try:
            p = os.fspath(path)
        except TypeError:
            return
        if isinstance(p, bytes):
            p = p.decode(errors="replace")
        if isinstance(p, str) and p.endswith(".parquet"):
            full = os.path.abspath(p)
            if full.startswith(self.pools):
                self.hits.append(f"{how}: {full}")

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                for fd in os.listdir("/proc/self/fd"):
                    try:
                        self.check(os.readlink(f"/proc/self/fd/{fd}"), "fd")
                    except OSError:
                        pass
                with open("/proc/self/maps", encoding="utf-8", errors="replace") as fh:
                    for line in fh:
                        if ".parquet" in line:
                            self.check(line.split(None, 5)[-1].strip(), "mmap")
            except OSError:
                pass
            time.sleep(self.poll_s)

    def _wrap(self, owner, name: str) -> None:
        orig = getattr(owner, name, None)
        if orig is None:
            return
        watch = self

        def wrapped(source, *args, **kwargs):
            watch.check(source, f"{getattr(owner, '__name__', owner)}.{name}")
            return orig(source, *args, **kwargs)

        self._saved.append((owner, name, orig))
        setattr(owner, name, wrapped)

    def __enter__(self) -> "ShardWatch":
        global _HOOKED
        import pyarrow as pa
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        if not _HOOKED:
            sys.addaudithook(_audit)
            _HOOKED = True
        for owner, name in ((pq, "read_table"), (pq, "ParquetFile"), (pq, "read_schema"),
                            (pq, "read_metadata"), (pa, "memory_map"), (pa, "OSFile"),
                            (ds, "dataset")):
            self._wrap(owner, name)
        _ACTIVE.append(self)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        _ACTIVE.remove(self)
        for owner, name, orig in reversed(self._saved):
            setattr(owner, name, orig)
