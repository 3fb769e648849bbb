"""The long results table: one row per (model, target, metric, k), its columns and types.

``started_at``/``finished_at`` are when the repetition ran on its worker (epoch seconds,
float); a row that never ran (its pool failed, its pair could not be submitted) has both set
to the moment it was recorded as failed. Like ``seconds``, they differ from run to run: the
"same matrix" of a rerun, another worker count or an overlapped run is the same on the
score columns (score, w_t, w_d, iterations, converged, n_source, n_target, status, seed,
solver, passes), never on the times.

:func:`long_schema` (the Arrow schema of ``matrix.parquet``) is the one source of the
columns: :data:`RESULT_COLUMNS` is its field names.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa



def long_schema() -> pa.Schema:
    """Arrow schema of the long results table (``matrix.parquet``)."""
    return pa.schema([
        pa.field("model", pa.string(), nullable=False),
        pa.field("target", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("k", pa.int64(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("w_t", pa.float64()),
        pa.field("w_d", pa.float64()),
        pa.field("iterations", pa.int64()),
        pa.field("converged", pa.bool_()),
        pa.field("n_source", pa.int64()),
        pa.field("n_target", pa.int64()),
        pa.field("seconds", pa.float64()),
        pa.field("started_at", pa.float64()),
        pa.field("finished_at", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("source", pa.string()),
        pa.field("seed", pa.int64()),
        pa.field("solver", pa.string()),
        pa.field("passes", pa.float64()),
        pa.field("degenerate", pa.string()),
        pa.field("family", pa.string()),
        pa.field("parameters", pa.int64()),
        pa.field("joint", pa.string()),
    ])


#: Columns of the long results table, in order (the schema's field names).
RESULT_COLUMNS = long_schema().names
#: The columns that say when and how long a repetition ran: they differ from run to run, the
#: others do not (compare matrices without them).
TIME_COLUMNS = ["seconds", "started_at", "finished_at"]
ROW_KEY = ["model", "target", "metric", "k"]


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, order=True)
class ScorePair:
    """One (model, target) pair: the model's pools on its ``source`` and on ``target``."""

    model: str
    source: str
    target: str


# --------------------------------------------------------------------------- rows


def result_row(pair: ScorePair, metric: str, k: int, seed: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"model": pair.model, "target": pair.target, "metric": metric,
                           "k": int(k), "score": math.nan, "w_t": math.nan, "w_d": math.nan,
                           "iterations": None, "converged": None, "n_source": None,
                           "n_target": None, "seconds": math.nan, "started_at": math.nan,
                           "finished_at": math.nan, "status": "ok",
                           "error": None, "source": pair.source, "seed": int(seed),
                           "solver": None, "passes": math.nan, "degenerate": None,
                           "joint": None}
    row.update(values)
    return row


def failed_row(pair: ScorePair, metric: str, k: int, seed: int, error: str,
               **times: float) -> dict[str, Any]:
    """A failed row; ``started_at``/``finished_at`` default to now (it never ran)."""
    now = time.time()
    return result_row(pair, metric, k, seed, status="failed", error=error,
                      **{"started_at": now, "finished_at": now, **times})


def results_frame(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> pd.DataFrame:
    """Rows (or a frame, e.g. read from Parquet) → the long results table.

    Columns :data:`RESULT_COLUMNS` (missing ones filled with nulls, others dropped), typed from
    :func:`long_schema` (strings as object with None for nulls, ``Int64``/``boolean`` for
    nullable ints/bools, float64), sorted by (model, target, metric, k).
    """
    if isinstance(rows, pd.DataFrame):
        df = rows.reindex(columns=RESULT_COLUMNS).copy()
    else:
        df = pd.DataFrame(list(rows), columns=RESULT_COLUMNS)
    for f in long_schema():
        col = df[f.name]
        if pa.types.is_string(f.type):
            df[f.name] = col.astype(object).where(col.notna(), None)
        elif pa.types.is_boolean(f.type):
            df[f.name] = pd.array([None if pd.isna(v) else bool(v) for v in col], dtype="boolean")
        elif pa.types.is_integer(f.type):
            df[f.name] = col.astype("int64") if not f.nullable else \
                pd.array(pd.to_numeric(col, errors="coerce"), dtype="Int64")
        else:
            df[f.name] = pd.to_numeric(col, errors="coerce").astype("float64")
    return df.sort_values(ROW_KEY, kind="stable").reset_index(drop=True)
