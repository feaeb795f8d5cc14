"""What a start needs, built once and without side effects on the dispatcher: the
script's check, the new run's record, and the spawn request for a set of slots."""

from __future__ import annotations

import os
from collections.abc import Sequence

from gpudispatch.job import Directives, JobRecord, JobState
from gpudispatch.keeper import SpawnRequest
from gpudispatch.layout import CGROUP_ENV, Layout
from gpudispatch.monitor import monitor_argv
from gpudispatch.scriptcheck import Launch, check_script, read_head
from gpudispatch.store import HOST, FolderQueue


def gpus_of(slots: Sequence[int | None], slot_ids: Sequence[int]) -> list[int]:
    """The GPU indices of some slots (CPU slots have none)."""
    return [g for g in (slots[i] for i in slot_ids) if g is not None]


def check_claimed(layout: Layout, name: str, state: JobState,
                  seen: tuple[int, int, bytes]) -> tuple[os.stat_result, Launch, bytes]:
    """Its ``lstat``, how to run it from ``running/``, and its header; raises ``OSError``
    (gone) or ``ScriptRejected``. ``seen``: size, mtime and header read at discovery
    (reused when the file has not changed since)."""
    path = layout.script(state, name)
    st = os.lstat(path)
    size, mtime, head = seen
    if (st.st_size, st.st_mtime_ns) != (size, mtime):
        head = read_head(path, st)
    return st, check_script(layout.script(JobState.RUNNING, name), st, head), head


def new_run_record(queue: FolderQueue, name: str, directives: Directives,
                   owner: str, head: bytes | None = None) -> JobRecord:
    """The record of the run about to start: one attempt more, this host and dispatcher
    (``head``: its script's header, which holds its submission when it was queued in
    bulk)."""
    record = queue.fresh_record(name, head)
    record.attempts += 1
    record.host, record.dispatcher = HOST, owner
    record.ended_at, record.exit_code, record.reason = None, None, None
    record.backend, record.backend_id = "local", None
    record.extra["directives"] = directives.to_dict()
    record.extra.pop("handed_over", None)  # said again by the start, if this run is one
    record.log = queue.layout.job_log(name, record.attempts)
    return record


def spawn_request(layout: Layout, record: JobRecord, launch: Launch, gpus: list[int],
                  inode: int, device_order: str, cgroup: str | None) -> SpawnRequest:
    """The keeper's request: the monitor's argv and what the job's environment adds."""
    log = record.log or ""
    env = layout.job_env(record.name, record.attempts, gpus, log, inode)
    # NVML's (and nvidia-smi's) numbering; CUDA's default order may differ.
    env["CUDA_DEVICE_ORDER"] = device_order
    if cgroup:
        env[CGROUP_ENV] = cgroup  # made when the monitor starts; the job's shell joins it
    return SpawnRequest(record.name, monitor_argv(launch.argv, launch.plain_sh, bool(cgroup),
                                                  launch.inline), env, log)
