"""``gpudispatch report``: the queue as one self-contained HTML page.

:func:`snapshot` reads the store once (records through ``FolderQueue``, metrics through
``results``, the GPU report through ``report``, log tails through ``safeio``) into plain
JSON-able data; :func:`render` puts that data and the page's own script and style
(``htmlreport_assets/``, hand-drawn SVG, nothing fetched from the network) into one
file. ``serve`` sends the same page and, each second, the same snapshot as JSON.

Standard library only, and imported only by ``report`` and ``serve``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from importlib import resources
from typing import Any

from gpudispatch import safeio
from gpudispatch.job import DirectiveError, JobRecord, JobState, parse_directives, safe_iso
from gpudispatch.layout import printable
from gpudispatch.results import duration_s, merge_row, read_metrics, sort_rows
from gpudispatch.store import FolderQueue

FAILURES_SHOWN = 50  # newest failures listed with the tail of their log
WAITING_SHOWN = 200  # queued jobs listed with why they wait
WAITING_READ = 2000  # queued scripts whose headers are read (as `status` does)
TAIL_BYTES = 2048  # of a failed job's log
TAIL_LINES = 8
BEST_SHOWN = 10  # best runs per sweep


def _epoch(text: object) -> float | None:
    moment = safe_iso(text)
    return round(moment.timestamp(), 3) if moment else None


def _text(value: object) -> str | None:
    return None if value is None else printable(str(value))


def log_tail(queue: FolderQueue, log: str | None, size: int = TAIL_BYTES,
             lines: int | None = TAIL_LINES) -> str:
    """The last lines of a job's log: only a regular file inside ROOT (a record's ``log``
    may have been edited to point anywhere), never following a symlink."""
    if not log or not safeio.inside(queue.layout.root, log):
        return ""
    text = safeio.read_tail(log, size).decode("utf-8", "replace")
    if lines is None:
        return text
    return "\n".join(text.rstrip("\n").split("\n")[-lines:])


def _outcome(state: JobState, record: JobRecord) -> str:
    if state is JobState.FAILED and (record.reason or "").startswith("cancelled"):
        return "cancelled"
    return state.value


def _why_waiting(queue: FolderQueue, name: str, states: dict[str, JobState],
                 paused: bool, free_note: str) -> str:
    """Why a queued job has not started, in words (its header's directives decide)."""
    why = []
    if paused:
        why.append("paused")
    try:
        path = queue.layout.script(JobState.QUEUED, name)
        from gpudispatch.scriptcheck import read_head

        head = read_head(path, os.lstat(path)).decode(errors="replace")
        directives = parse_directives(head)
    except (OSError, DirectiveError):
        directives = None
    if directives is not None:
        pending = [a for a in directives.after if states.get(a) is not JobState.COMPLETED]
        if pending:
            why.append("--after " + ", ".join(
                f"{a} ({states[a].value if a in states else 'unknown'})" for a in pending))
        if directives.gpus and directives.gpus > 1:
            why.append(f"needs {directives.gpus} GPUs at once")
    if not why:
        why.append(free_note)
    return "; ".join(why)


class _Lanes:
    """Bars packed into lanes: one per GPU (and per CPU slot), a second row of a GPU only
    where runs overlapped on it (``--gpu-mem`` sharing)."""

    def __init__(self, hosts: int) -> None:
        self.hosts = hosts
        self.rows: dict[tuple, list[list[float]]] = {}  # (host, gpu) -> ends of its rows

    def key(self, host: str | None, gpu: int | None) -> tuple:
        return (host or "" if self.hosts > 1 else "", -1 if gpu is None else gpu)

    def place(self, key: tuple, start: float, end: float) -> int:
        rows = self.rows.setdefault(key, [])
        for i, row_end in enumerate(rows):
            if row_end[0] <= start:
                row_end[0] = end
                return i
        rows.append([end])
        return len(rows) - 1

    def labels(self) -> list[tuple[tuple, int, str]]:
        out = []
        for key in sorted(self.rows, key=lambda k: (k[0], k[1] < 0, k[1])):
            host, gpu = key
            prefix = f"{host} " if host else ""
            for row in range(len(self.rows[key])):
                if gpu < 0:
                    out.append((key, row, f"{prefix}cpu {row + 1}"))
                else:
                    out.append((key, row, f"{prefix}gpu {gpu}" + (f" ·{row + 1}" if row else "")))
        return out


def snapshot(queue: FolderQueue, now: float | None = None) -> dict[str, Any]:
    """Everything the page shows, as plain data (one pass over the records)."""
    now = time.time() if now is None else now
    listed = {state: queue.names(state) for state in JobState}
    states = {name: state for state, names in listed.items() for name in names}
    paused = queue.is_paused()
    from gpudispatch.report import read_gpu_report

    gpus = read_gpu_report(queue.layout) or []
    jobs: list[dict[str, Any]] = []
    runs: list[tuple[float, float, int, str | None, list[int], str]] = []
    sweeps: dict[str, dict[str, Any]] = {}
    hosts: set[str] = set()
    failed: list[tuple[float, int]] = []
    for state in JobState:
        for name in listed[state]:
            record = queue.read_record(name)
            index = len(jobs)
            outcome = _outcome(state, record)
            job = {"n": printable(name), "s": outcome, "g": list(record.gpus),
                   "a": record.attempts, "r": _text(record.reason), "x": record.exit_code,
                   "h": _text(record.host), "t0": _epoch(record.started_at),
                   "t1": _epoch(record.ended_at) if state.is_final else None,
                   "q": _epoch(record.submitted_at),
                   "ho": record.extra.get("handed_over") is True}
            jobs.append(job)
            if record.host:
                hosts.add(record.host)
            start = job["t0"]
            if start is not None and state is not JobState.QUEUED:
                end = job["t1"] if state.is_final else now
                if end is not None:
                    runs.append((start, max(end, start), index, record.host,
                                 list(record.gpus), outcome))
            for earlier in _earlier_runs(record):
                runs.append((*earlier, index, record.host, list(record.gpus), "earlier"))
            if state is JobState.FAILED:
                failed.append((job["t1"] or 0.0, index))
            sweep = record.extra.get("sweep")
            if isinstance(sweep, str):
                _add_to_sweep(sweeps, sweep, queue, name, state, record)
    lanes = _Lanes(len(hosts))
    bars = []
    for start, end, index, host, on, kind in sorted(runs, key=lambda r: (r[0], r[1])):
        for gpu in on or [None]:
            key = lanes.key(host, gpu)
            bars.append([index, key, lanes.place(key, start, end), start, end, kind])
    labels = lanes.labels()
    lane_of = {(key, row): i for i, (key, row, _) in enumerate(labels)}
    bars = [[b[0], lane_of[(b[1], b[2])], b[3], b[4], b[5]] for b in bars]
    for _, index in sorted(failed, reverse=True)[:FAILURES_SHOWN]:
        name = jobs[index]["n"]
        record = queue.read_record(listed_name(listed, JobState.FAILED, name))
        jobs[index]["tail"] = log_tail(queue, record.log)
    running = sum(1 for j in jobs if j["s"] == "running")
    blocked = [f"GPU {g.get('index')}: {g.get('blocked')}" for g in gpus
               if isinstance(g, dict) and g.get("blocked")]
    free_note = ("no slot free: every slot is busy" if running
                 else "waiting for a dispatcher (none is running jobs)")
    if blocked:
        free_note += "; foreign processes on " + ", ".join(blocked)
    queued = listed[JobState.QUEUED]
    waiting = []
    if len(queued) <= WAITING_READ:
        for name in queued[:WAITING_SHOWN]:
            waiting.append([printable(name), _why_waiting(queue, name, states, paused,
                                                          free_note)])
    else:
        waiting = [[printable(n), "paused" if paused else free_note]
                   for n in queued[:WAITING_SHOWN]]
    return {
        "root": printable(str(queue.layout.root)),
        "now": round(now, 3),
        "paused": paused,
        "counts": {state.value: len(names) for state, names in listed.items()},
        "jobs": jobs,
        "lanes": [label for _, _, label in labels],
        "bars": bars,
        "waiting": waiting,
        "blocked": blocked,
        "gpus": _gpu_summary(gpus),
        "sweeps": [_finish_sweep(name, sweep) for name, sweep in sorted(sweeps.items())],
    }


def listed_name(listed: dict[JobState, list[str]], state: JobState, shown: str) -> str:
    """The raw name behind a printable one (they differ only for odd bytes)."""
    if shown in listed[state]:
        return shown
    return next((n for n in listed[state] if printable(n) == shown), shown)


def _earlier_runs(record: JobRecord) -> Iterable[tuple[float, float]]:
    """Start and end of the earlier submissions of a name dropped again."""
    earlier = record.extra.get("earlier_runs")
    if not isinstance(earlier, list):
        return
    for run in earlier:
        if isinstance(run, dict):
            start, end = _epoch(run.get("started_at")), _epoch(run.get("ended_at"))
            if start is not None and end is not None:
                yield start, max(start, end)


def _gpu_summary(gpus: list) -> list[dict[str, Any]]:
    out = []
    for gpu in gpus:
        if not isinstance(gpu, dict):
            continue
        out.append({"index": gpu.get("index"), "name": _text(gpu.get("name")),
                    "used": gpu.get("memory_used"), "total": gpu.get("memory_total"),
                    "util": gpu.get("utilization"), "blocked": _text(gpu.get("blocked"))})
    return out


def _add_to_sweep(sweeps: dict, sweep: str, queue: FolderQueue, name: str,
                  state: JobState, record: JobRecord) -> None:
    entry = sweeps.setdefault(sweep, {"rows": [], "goal": None, "params": {}})
    target = record.extra.get("sweep_metric")
    if isinstance(target, dict) and isinstance(target.get("name"), str):
        entry["goal"] = (target["name"], str(target.get("goal", "minimize")))
    metrics = read_metrics(queue.layout.metrics(name)) if state.is_final or \
        state is JobState.RUNNING else {}
    base = {"name": printable(name), "state": state.value, "duration_s": duration_s(record)}
    row = merge_row(base, record.params, metrics)
    for key in record.params:
        entry["params"][key if key not in base else f"param.{key}"] = None
    entry["rows"].append(row)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finish_sweep(name: str, sweep: dict[str, Any]) -> dict[str, Any]:
    rows = sweep["rows"]
    params = list(sweep["params"])
    metric, goal = sweep["goal"] or (None, "minimize")
    if metric is None:  # no goal recorded: the first numeric metric any run reported
        skip = {"name", "state", "duration_s", *params}
        metric = next((k for row in rows for k, v in row.items()
                       if k not in skip and _is_number(v)), None)
    best = sort_rows(rows, metric, goal == "maximize")[:BEST_SHOWN] if metric else []
    best = [row for row in best if _is_number(row.get(metric))]

    def plain(value: Any) -> Any:
        return value if value is None or _is_number(value) or isinstance(value, str) \
            else json.dumps(value, default=str)

    keep = ["name", "state", *params, *([metric] if metric else [])]
    return {
        "name": printable(name), "metric": metric, "goal": goal, "params": params,
        "rows": [[plain(row.get(k)) for k in keep] for row in rows],
        "columns": keep,
        "best": [row["name"] for row in best],
    }


# ---------------------------------------------------------------------- the page
def _asset(name: str) -> str:
    return resources.files("gpudispatch").joinpath("htmlreport_assets", name).read_text()


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no ``</script>`` or ``<!--`` can close it."""
    text = json.dumps(data, separators=(",", ":"), default=str, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict[str, Any] | None, live: dict[str, Any] | None = None) -> str:
    """The whole page: its data (or none, for ``serve``, which sends it after), style and
    script inlined. ``live``: the settings of a served page (``serve``)."""
    title = "gpudispatch — " + (data["root"] if data else "live")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<link rel=\"icon\" href=\"data:,\">"
        f"<title>{_html_escape(title)}</title><style>{_asset('report.css')}</style></head>"
        "<body><div id=\"app\"><p class=\"loading\">loading…</p></div>"
        f"<script id=\"gd-data\" type=\"application/json\">{_script_json(data)}</script>"
        f"<script id=\"gd-live\" type=\"application/json\">{_script_json(live)}</script>"
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )


def _html_escape(text: str) -> str:
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;"))


def write_report(queue: FolderQueue, out: str | os.PathLike[str]) -> int:
    """Write the report to ``out`` (atomically where it is a plain path); its size."""
    page = render(snapshot(queue)).encode()
    target = os.fspath(out)
    if target == "-":
        import sys

        sys.stdout.buffer.write(page)
        return len(page)
    folder = os.path.dirname(os.path.abspath(target))
    safeio.write_atomic(target, page, folder, mode=0o644)
    return len(page)
