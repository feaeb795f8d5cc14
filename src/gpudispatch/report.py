"""The dispatcher's view of its GPUs, saved for ``status``: who holds memory, what runs.

Written by the dispatcher after each GPU reading (``.gpudispatch/gpus.json``), read by
``gpudispatch status``, so the CLI never needs NVML or the dispatcher's memory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from gpudispatch import safeio
from gpudispatch.store import write_atomic

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: status reads this
if TYPE_CHECKING:      # module, and must not pay for gpus (dataclasses) or typing
    from typing import Any

    from gpudispatch.gpus import GpuInfo
    from gpudispatch.layout import Layout

REPORT_MAX_BYTES = 4 << 20  # hundreds of GPUs with their processes fit many times over


def gpu_report(
    infos: Iterable[GpuInfo], own_pids: set[int], blocked: dict[int, str], running: Iterable
) -> list[dict[str, Any]]:
    """One entry per GPU: memory, utilisation, processes (ours or foreign), packed jobs."""
    jobs_on: dict[int, list[dict[str, Any]]] = {}
    for job in running:
        for gpu in job.record.gpus:
            jobs_on.setdefault(gpu, []).append({"name": job.name, "gpu_mem": job.gpu_mem})
    report = []
    for info in infos:
        report.append({
            "index": info.index,
            "name": info.name,
            "memory_total": info.memory_total,
            "memory_used": info.memory_used,
            "utilization": info.utilization,
            "blocked": blocked.get(info.index),
            "jobs": jobs_on.get(info.index, []),
            "processes": [
                {"pid": p.pid, "user": p.user, "command": p.command, "used": p.used_bytes,
                 "foreign": p.pid not in own_pids}
                for p in info.processes
            ],
        })
    return report


def write_gpu_report(layout: Layout, infos, own_pids, blocked, running) -> None:
    data = {"at": time.time(), "gpus": gpu_report(infos, own_pids, blocked, running)}
    write_atomic(layout.gpu_report, json.dumps(data).encode(), layout.tmp)


def read_gpu_report(layout: Layout, max_age: float = 60.0) -> list[dict[str, Any]] | None:
    """The last report, or None when there is none, it is stale (no dispatcher), or it is
    not one (not a regular file, too large, another shape): ``status`` shows the jobs then.
    """
    try:
        data = json.loads(safeio.read_regular(layout.where("gpu_report"), REPORT_MAX_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("at"), (int, float)):
        return None
    gpus = data.get("gpus")
    if time.time() - data["at"] > max_age or not isinstance(gpus, list):
        return None
    return gpus
