"""The one atomic writer: a file appears whole under its final name, or not at all.

Every file the package writes for a person or for a later run (run files, reports, CSV and
Parquet tables, memos, calibrations, manifests, shards) goes through :func:`atomic_write`:
written to a unique temporary name in the same folder, flushed, then renamed over the
target. The file gets the usual permissions (``0666`` less the process umask), not the
``0600`` of a bare ``mkstemp``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "write_json", "write_text"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[Path], None], *,
                 make_parents: bool = True) -> Path:
    """Call ``write(tmp_path)`` then rename ``tmp_path`` to ``path`` (same folder).
    ``make_parents=False``: the folder must exist already (FileNotFoundError otherwise)."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """``text`` (UTF-8) to ``path``, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """``data`` as JSON (``default=str`` for paths and the like) to ``path``, atomically."""
    return write_text(path, json.dumps(data, indent=indent, default=str))
