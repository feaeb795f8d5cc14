"""Sweep results: one row per job, its params beside the metrics it reported.

A job reports metrics by writing one JSON object to the file named in the environment
variable ``GPUDISPATCH_METRICS`` (the local runner sets it to ``logs/NAME.metrics.json``).
Any language can do that; Python jobs may call :func:`write_metrics`, which writes
atomically so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpudispatch import safeio
from gpudispatch.job import JobRecord, safe_iso
from gpudispatch.layout import METRICS_ENV
from gpudispatch.store import FolderQueue, write_atomic

__all__ = ["METRICS_ENV"]  # re-exported: jobs import it from here
BASE_COLUMNS = ("name", "state", "duration_s", "gpus")
PARAM_PREFIX = "param."
METRIC_PREFIX = "metric."
METRICS_MAX_BYTES = 16 << 20  # a results table must not read a runaway file into memory


def write_metrics(metrics: Mapping[str, Any], path: str | Path | None = None) -> Path | None:
    """For a job: save ``metrics`` where gpudispatch looks (``$GPUDISPATCH_METRICS``).

    Returns the path written, or None when run outside gpudispatch (no variable, no path),
    so a training script can call it unconditionally.
    """
    target = path if path is not None else os.environ.get(METRICS_ENV)
    if not target:
        return None
    target = Path(target)
    # Beside the target (a job may not reach ROOT's tmp/), under an unguessable name.
    write_atomic(target, json.dumps(dict(metrics), default=str).encode(), target.parent)
    return target


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics a job wrote; empty when there are none yet, the file is not an object,
    or it is not a regular file of at most METRICS_MAX_BYTES (a results table must not
    fail, hang on a FIFO or fill memory because of what one job left in logs/)."""
    try:
        data = json.loads(safeio.read_regular(path, METRICS_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def duration_s(record: JobRecord) -> float | None:
    """Seconds from start to end, or None while either is unknown."""
    start, end = safe_iso(record.started_at), safe_iso(record.ended_at)
    if start is None or end is None:
        return None
    return round((end - start).total_seconds(), 3)


def merge_row(
    base: Mapping[str, Any], params: Mapping[str, Any], metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """One flat row: a param named like a base column becomes ``param.KEY``; a metric named
    like a base column or a param becomes ``metric.KEY``, so nothing is overwritten."""
    row = dict(base)
    for key, value in params.items():
        row[f"{PARAM_PREFIX}{key}" if key in base else key] = value
    for key, value in metrics.items():
        row[f"{METRIC_PREFIX}{key}" if key in row else key] = value
    return row


def result_rows(queue: FolderQueue, sweep: str | None = None) -> list[dict[str, Any]]:
    """A row per job in every state, in name order (a sweep's run order); with ``sweep``,
    only the jobs queued by that sweep."""
    rows = []
    for job in queue.jobs():
        record = job.record
        if sweep is not None and record.extra.get("sweep") != sweep:
            continue
        base = {
            "name": job.name,
            "state": job.state.value,
            "duration_s": duration_s(record),
            "gpus": list(record.gpus),
        }
        metrics = read_metrics(queue.layout.metrics(job.name))
        rows.append(merge_row(base, record.params, metrics))
    return sorted(rows, key=lambda row: row["name"])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def sort_rows(
    rows: Iterable[Mapping[str, Any]], metric: str, descending: bool = False
) -> list[dict[str, Any]]:
    """Rows by ``metric``: numbers first (in the order asked), then other values as text,
    then rows without it (missing, None, NaN); numbers and text are never compared."""
    rows = [dict(r) for r in rows]
    numbers = [r for r in rows if _is_number(r.get(metric)) and not _missing(r[metric])]
    texts = [r for r in rows if not _is_number(r.get(metric)) and not _missing(r.get(metric))]
    absent = [r for r in rows if _missing(r.get(metric))]
    numbers.sort(key=lambda r: r[metric], reverse=descending)
    texts.sort(key=lambda r: str(r[metric]), reverse=descending)
    return numbers + texts + absent


def columns(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of every row, base columns first, then in the order first seen."""
    seen: dict[str, None] = dict.fromkeys(BASE_COLUMNS)
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def cell_text(value: Any) -> str:
    """How a value reads in a table or CSV cell: blank for none, ``0,1`` for GPU lists."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def rows_to_csv(rows: Sequence[Mapping[str, Any]], cols: Sequence[str] | None = None) -> str:
    """CSV text with a header row; ``cols`` defaults to :func:`columns`."""
    cols = list(cols) if cols is not None else columns(rows)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(cols)
    for row in rows:
        writer.writerow([cell_text(row.get(c)) for c in cols])
    return out.getvalue()
