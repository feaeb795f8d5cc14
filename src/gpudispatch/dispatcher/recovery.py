"""Finding jobs in ``running/`` that no live dispatcher follows, after any death.

The rules, from the folder protocol and the job lock (``store.lock_job``):

- A job whose lock is held has an owner alive: a dispatcher, or the job's monitor. On
  this host, if its dispatcher is gone, its monitor is found in ``/proc`` and *watched*
  (never re-run). On another host it is left alone, however stale that host's heartbeat.
- A job whose lock can be taken has no owner left: its exit status, if its monitor wrote
  one for this attempt, concludes it; otherwise it was interrupted (its processes are
  waited for first if some still run: found by the pid in its record or, when its monitor
  died before that was written, by the run in their environment).
- A job whose lock is held but whose owner cannot be told (no monitor in ``/proc``, no live
  dispatcher named in its record) is *unsure*: a peer on this host is starting or
  concluding it, or its monitor is exiting (it has left ``/proc``'s command lines but not
  yet let go of its files). It is looked at again a moment later.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from gpudispatch import cgroups, peers, procs
from gpudispatch.job import DirectiveError, Directives, JobRecord, JobState, parse_directives
from gpudispatch.monitor import ExitStatus, read_exit_journals
from gpudispatch.scriptcheck import read_head
from gpudispatch.store import HOST, FolderQueue


@dataclass
class Orphan:
    name: str
    record: JobRecord
    directives: Directives
    lock_fd: int | None  # None: its monitor holds the lock (watch it, then take the lock)
    monitor: procs.FoundMonitor | None  # alive: watch it
    exit: ExitStatus | None  # this attempt's status, when its monitor wrote one
    group_alive: bool = False  # no monitor, but processes of the job still run
    requeue: bool = False  # to move back to the queue as it is (nothing of a new run left)

    @property
    def cgroup(self) -> str | None:
        """Its cgroup: as its monitor was started with, else as recorded."""
        if self.monitor is not None and self.monitor.cgroup:
            return self.monitor.cgroup
        return cgroups.checked(self.record.extra.get("cgroup"))


@dataclass
class Found:
    orphans: list[Orphan]
    unsure: list[str]  # locked, but by no owner that could be found: look again soon


def find_orphans(queue: FolderQueue, me: str, heartbeat: float,
                 skip: Callable[[str], bool]) -> Found:
    layout = queue.layout
    unsure: list[str] = []
    monitors: dict[str, procs.FoundMonitor] | None = None
    journal: dict | None = None
    found = []
    for name in queue.names(JobState.RUNNING):
        if skip(name):
            continue
        record = queue.read_record(name)
        if record.backend != "local":
            continue  # Slurm runs it; the Slurm backend reconciles it
        local = record.host in (None, HOST)
        fd = queue.lock_job(name, JobState.RUNNING)
        if fd is None and (not local or (
                record.dispatcher != me and peers.owner_alive(layout, record.dispatcher,
                                                              heartbeat))):
            continue  # its owner lives
        if fd is not None and not queue.holds(fd, name, JobState.RUNNING):
            os.close(fd)
            continue
        if local and monitors is None:
            monitors = procs.find_monitors(str(layout.exits))
        monitor = monitors.get(name) if monitors else None
        if fd is None and monitor is None:
            unsure.append(name)
            continue
        directives = _directives(queue, name, record)
        if monitor is not None:
            _run_found(record, monitor.attempt)
            found.append(Orphan(name, record, directives, fd, monitor, None))
            continue
        if journal is None:
            journal = read_exit_journals(str(layout.exits))
        requeued = bool(record.extra.get("requeued"))  # the failed run's, until the start
        status = queue.exit_status(name, journal)
        if status is not None and status.attempt < record.attempts + requeued:
            # An earlier run's; or this retry's requeue was cut short (the run before's
            # status, on record): nothing left of a run after it, it goes back unchanged.
            requeue = requeued and status.attempt == record.attempts
            status = None
        else:
            requeue = False
            if status is not None:
                _run_found(record, status.attempt)
        if status is None and local and not record.tells_current_run:
            # Its pid and cgroup on record, if any, are the run before's.
            run = _run_without_record(queue, name)
            record.pid = run.session if run is not None else None
            record.extra.pop("cgroup", None)
            if run is not None:  # (the run it is counts as an attempt, as a recorded one)
                _run_found(record, run.attempt)
                requeue = False
                record.gpus = run.gpus  # (held until it ends)
                if run.cgroup:
                    record.extra["cgroup"] = run.cgroup
        alive = status is None and local and bool(record.pid) and procs.job_alive(
            record.pid, cgroups.checked(record.extra.get("cgroup")))
        found.append(Orphan(name, record, directives, fd, None, status, alive, requeue))
    return Found(found, unsure)


def _run_found(record: JobRecord, attempt: int) -> None:
    """A run of this attempt is the job's latest (alive, or its status in the journal),
    though the record may predate its start (a hand-over's start record is written 50 ms
    in). A requeue the record tells of was an earlier run's and is done with: left on the
    record, a crash after the record of this run's end and before its move sent the job
    back to the queue, and it ran once more (chaos, one round in about 60)."""
    if attempt > record.attempts:
        record.extra.pop("requeued", None)
    record.attempts = max(record.attempts, attempt)


def _run_without_record(queue: FolderQueue, name: str) -> procs.FoundRun | None:
    """A job's run, when its monitor died before its start record."""
    try:
        inode = os.lstat(queue.layout.script(JobState.RUNNING, name)).st_ino
    except OSError:
        return None
    return procs.find_run_session(str(queue.layout.exits), name, inode)


def _directives(queue: FolderQueue, name: str, record: JobRecord) -> Directives:
    """From the script's own header (the record may predate this run's start)."""
    path = queue.layout.script(JobState.RUNNING, name)
    try:
        return parse_directives(read_head(path, os.lstat(path)).decode(errors="replace"))
    except (OSError, DirectiveError):
        return Directives(**directive_fields(record))


def directive_fields(record: JobRecord) -> dict:
    saved = dict(record.extra.get("directives") or {})
    if "after" in saved:
        saved["after"] = tuple(saved["after"])
    return saved
