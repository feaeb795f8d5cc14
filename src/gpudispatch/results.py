"""Sweep results: one row per job, its params beside the metrics it reported.

A job reports metrics in the file named by ``GPUDISPATCH_METRICS`` (every backend sets it
to ``logs/NAME.metrics.json``): one JSON object (:func:`write_metrics` replaces the file
atomically), or one object per line appended as it trains (``gpudispatch.log``). Any
language can do either. A row shows the last value of each key; the lines are the
history (``results --history NAME``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpudispatch import safeio
from gpudispatch.job import JobRecord, JobState, safe_iso
from gpudispatch.store import FolderQueue, write_atomic
from gpudispatch.track import METRICS_ENV, log

__all__ = ["METRICS_ENV", "log"]  # re-exported: jobs import them from here too
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


def _read_tail(path: str | Path, limit: int) -> bytes:
    """At most the last ``limit`` bytes of a regular file, from a line start: a history
    longer than that keeps its recent end (a table must not read a runaway file into
    memory, nor hang on a FIFO or follow a symlink someone left in logs/)."""
    fd, st = safeio.open_regular_stat(path)
    try:
        skip = max(0, st.st_size - limit)
        if skip:
            os.lseek(fd, skip - 1, os.SEEK_SET)  # one byte early: is `skip` a line start?
        chunks: list[bytes] = []
        total = 0
        while total < limit + (1 if skip else 0):
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if skip:
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    return data


def parse_metrics(data: bytes | str) -> list[dict[str, Any]]:
    """The objects in a metrics file, in order: the whole text when it is one JSON object
    (pretty-printed or not), else each line that is one. A line that is not an object
    (garbage, a half-written last line, an array) is skipped: a job's file must never
    make ``results`` fail."""
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        whole = None
    if isinstance(whole, dict):
        return [whole]
    entries = []
    for line in text.split("\n"):  # not splitlines(): a raw U+2028 in a string is no break
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def metric_history(path: str | Path) -> list[dict[str, Any]]:
    """Every object a job reported, oldest first; empty when there is no readable file."""
    try:
        return parse_metrics(_read_tail(path, METRICS_MAX_BYTES))
    except OSError:
        return []


def latest(history: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The last value of each key (keys in the order first reported)."""
    merged: dict[str, Any] = {}
    for entry in history:
        merged.update(entry)
    return merged


def read_metrics(path: str | Path) -> dict[str, Any]:
    """The metrics a job wrote, the last value of each key; empty when there are none yet
    or the file is not a regular file (see :func:`metric_history`)."""
    return latest(metric_history(path))


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


@dataclass
class Results:
    """The rows ``results`` shows, and what their sweeps' records say."""

    rows: list[dict[str, Any]]
    sweeps: set[str]  # every sweep with a job in the queue (to name them when one is wrong)
    goals: set[tuple[str, str]]  # (metric, goal) of the sweeps of these rows that have one

    def ranking(self) -> tuple[str, bool] | None:
        """``(metric, descending)`` that puts the best run first: the sweep's ``metric``
        when the rows' sweeps agree on one; None otherwise (name order, a run order)."""
        if len(self.goals) != 1:
            return None
        (metric, goal), = self.goals
        return metric, goal == "maximize"


def collect(queue: FolderQueue, sweep: str | None = None) -> Results:
    """:func:`result_rows` plus the sweeps seen, from one pass over the records."""
    rows: list[dict[str, Any]] = []
    sweeps: set[str] = set()
    goals: set[tuple[str, str]] = set()
    for job in queue.jobs():
        record = job.record
        own = record.extra.get("sweep")
        if isinstance(own, str):
            sweeps.add(own)
        if sweep is not None and own != sweep:
            continue
        target = record.extra.get("sweep_metric")
        if isinstance(target, dict) and isinstance(target.get("name"), str):
            goals.add((target["name"], str(target.get("goal", "minimize"))))
        base = {
            "name": job.name,
            "state": job.state.value,
            "duration_s": duration_s(record),
            "gpus": list(record.gpus),
        }
        metrics = read_metrics(queue.layout.metrics(job.name))
        params = record.params or script_params_of(queue, job.name, job.state)
        rows.append(merge_row(base, params, metrics))
    rows.sort(key=lambda row: row["name"])
    return Results(rows, sweeps, goals)


SCRIPT_READ_LIMIT = 256 << 10  # a script longer than this is no command line of ours


def script_params_of(queue: FolderQueue, name: str, state: JobState) -> dict[str, Any]:
    """The parameters a job's script passes to its program, for a job that recorded none
    (a script the seed's ``create_shell_script`` wrote, dropped into ``queue/``): read
    without following a symlink, ``{}`` when it cannot be read."""
    from gpudispatch.cmdparams import script_params

    try:
        data = safeio.read_regular(queue.layout.script(state, name), SCRIPT_READ_LIMIT)
    except OSError:
        return {}
    return script_params(data.decode(errors="replace"))


def result_rows(queue: FolderQueue, sweep: str | None = None) -> list[dict[str, Any]]:
    """A row per job in every state, in name order (a sweep's run order); with ``sweep``,
    only the jobs queued by that sweep."""
    return collect(queue, sweep).rows


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


def history_columns(history: Iterable[Mapping[str, Any]]) -> list[str]:
    """Every key of a job's history, ``step`` first, then in the order first reported."""
    seen: dict[str, None] = {}
    for entry in history:
        seen.update(dict.fromkeys(entry))
    return sorted(seen, key=lambda key: key != "step")  # stable: the rest keep their order


def fit_widths(natural: Mapping[str, int], least: Mapping[str, int], keep: str,
               priority: Sequence[str], width: int, *, overhead: int = 3) -> dict[str, int]:
    """Column widths for a table at most ``width`` cells wide (pure).

    ``keep`` (the job name) always gets its whole ``natural`` width: a run that cannot be
    named cannot be found. The others join in ``priority`` order while each still fits at
    its ``least`` width; the room left then widens them, in the same order, towards their
    natural width. A column that does not fit is left out (absent from the result).
    ``overhead``: cells a column costs besides its text (padding, a rule); the table's
    last rule is one more.
    """
    used = 1 + overhead + natural[keep]
    chosen = {keep: natural[keep]}
    for col in priority:
        if col in chosen:
            continue
        narrow = min(natural[col], least[col])
        if used + overhead + narrow <= width:
            chosen[col] = narrow
            used += overhead + narrow
    spare = width - used
    for col in priority:
        if col in chosen and spare > 0:
            grow = min(natural[col] - chosen[col], spare)
            chosen[col] += grow
            spare -= grow
    return chosen


def table_text(value: Any) -> str:
    """:func:`cell_text` for a table on screen: floats to 6 significant digits (CSV and
    JSON keep every digit)."""
    if isinstance(value, float) and not math.isnan(value) and not math.isinf(value):
        return f"{value:.6g}"
    return cell_text(value)


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
