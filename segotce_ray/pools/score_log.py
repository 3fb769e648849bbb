"""Append-only log of finished scoring rows (one JSON-lines file per pair key).
"""


from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any



log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- score log


def _jsonable(v: Any) -> Any:
    """Row values as plain JSON (numpy scalars → Python; pandas NA → None)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    try:
        import numpy as np

        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, np.integer):
            return int(v)
        if isinstance(v, np.floating):
            return float(v)
    except ImportError:  # pragma: no cover
        pass
    try:
        import pandas as pd

        if v is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return str(v)


class ScoreLog:
    """Append-only log of finished scoring rows, one JSON-lines file per pair key.

    Only ``status == "ok"`` rows are kept (a failed repetition is retried next run). Each
    line is written with one ``write`` of a complete line, flushed and fsynced; a torn last
    line (a kill mid-write) is skipped on read. Duplicate (metric, k) lines — two drivers on
    the same job — keep the first.
    """

    def __init__(self, store_root: str | Path) -> None:
        self.root = Path(store_root).expanduser() / "scores"

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.jsonl"

    def rows(self, key: str) -> list[dict[str, Any]]:
        path = self.path(key)
        if not path.is_file():
            return []
        out: dict[tuple[str, int], dict[str, Any]] = {}
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.endswith("\n"):
                    log.warning("score log %s: ignoring a torn last line %d", path, n)
                    break
                try:
                    row = json.loads(line)
                except ValueError:
                    log.warning("score log %s: ignoring unreadable line %d", path, n)
                    continue
                if row.get("status") != "ok":
                    continue
                out.setdefault((str(row["metric"]), int(row["k"])), row)
        return [out[k] for k in sorted(out)]

    def append(self, key: str, row: Mapping[str, Any]) -> None:
        if row.get("status") != "ok":
            return
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({k: _jsonable(v) for k, v in row.items()}, sort_keys=True) + "\n"
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
