"""The local dispatcher: ``tick(now)`` runs a list of named steps; ``run()`` waits and ticks.

Everything that must survive a death is on disk: the job's place (its folder), its record,
its lock (held by this process and by the job's monitor) and its exit status (written by
the monitor). This object holds only what it is doing now, which any dispatcher rebuilds
from the folder (``recovery``). Signal handlers only count requests (as huey's consumer);
the steps act on them.
"""

from __future__ import annotations

import bisect
import logging
import os
import selectors
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpudispatch import cgroups, peers, procs, safeio
from gpudispatch.adaptive import SweepDriver
from gpudispatch.dispatcher.bookkeeping import (
    Settled,
    Settlement,
    Writer,
    create_empty,
    remove_if_empty,
)
from gpudispatch.dispatcher.diskspace import (
    RETRY_SECONDS,
    DiskWatch,
    RootLogHandler,
    reserve_journal,
)
from gpudispatch.dispatcher.handover import choose_followers
from gpudispatch.dispatcher.hooks import Hooks
from gpudispatch.dispatcher.intake import Intake
from gpudispatch.dispatcher.leftovers import Leftovers, enclose_at
from gpudispatch.dispatcher.recovery import Orphan, find_orphans
from gpudispatch.dispatcher.running import Phase, RunningJob
from gpudispatch.dispatcher.starting import (
    check_claimed,
    gpus_of,
    new_run_record,
    spawn_request,
)
from gpudispatch.gpus import DEFAULT_BUSY_THRESHOLD, GpuProbe, GpuProbeError
from gpudispatch.gpuview import GpuView
from gpudispatch.job import Directives, JobRecord, JobState, now_iso, parse_iso
from gpudispatch.keeper import (
    CHAINED,
    Exited,
    Handover,
    HandoverReturned,
    Keeper,
    KeeperExited,
    KeeperGone,
    SpawnFailed,
    SpawnRequest,
    Started,
)
from gpudispatch.layout import printable
from gpudispatch.monitor import rotate_journal
from gpudispatch.outcome import OOM_TAIL_BYTES, Ending, decide, last_error_line, oom_in_tail
from gpudispatch.scheduler import (
    DEFAULT_RESERVE_AFTER,
    QueuedJob,
    SlotState,
    impossible_reason,
    plan,
    run_order,
)
from gpudispatch.scriptcheck import ALLOW_OTHERS_FLAG, ScriptRejected, owner_problem, user_name
from gpudispatch.store import FolderQueue
from gpudispatch.watch import FolderWatcher, close_fds, drain_pipe

# A job's start record waits this long: most trivial jobs are over by then and need
# one record write instead of two. A crash in between loses nothing (see recovery).
RECORD_DELAY_SECONDS = 0.05
CANCEL_CHECK_SECONDS = 0.5  # cancel requests from other hosts, when no file event says so
CGROUP_EMPTY_WAIT_SECONDS = 60.0
WATCH_POLL_SECONDS = 0.2  # watched jobs without a pidfd, or waiting for their lock
UNSURE_RECHECK_SECONDS = 0.05  # an exiting monitor lets go of its lock within moments
UNSURE_WAIT_SECONDS = 5.0  # then the heartbeat's settling looks at them, as at any orphan
# Hand-overs queued behind one running job (a chain, in the keeper): enough that a slot of
# short jobs never waits for this loop to catch up (with 3, 2-5% of a drain of trivial
# jobs still started from here), few enough to withdraw in a moment.
CHAIN_LENGTH = 8
# While jobs wait already, a new file cannot start before them: its event wakes the loop
# at most this often (every tick reads the events anyway), so a bulk submission's
# thousands of files cost a few ticks, not one each.
FILES_BATCH_SECONDS = 0.1
LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


class Launcher(Protocol):
    """What starts jobs: the keeper process, or a fake in tests (see ``tests/fakes``)."""

    def start(self) -> None: ...
    def fileno(self) -> int: ...
    def owns(self, pid: int) -> bool: ...  # a monitor whose end it reports, keeper or not
    # The start's report now, or None when it comes with ``messages()``.
    def spawn(self, request: SpawnRequest,
              lock_fd: int | None) -> Started | SpawnFailed | None: ...
    def hand_over(self, handover: Handover) -> None: ...
    def withdraw(self, name: str) -> None: ...
    def signal(self, monitor_pid: int, sig: int, cgroup: str | None = None) -> None: ...
    def own_pids(self) -> set[int]: ...  # its own children (the keeper, its monitors)
    def messages(self) -> list: ...  # never raises: a dead keeper is a KeeperExited
    def close(self) -> None: ...


@dataclass
class DispatcherOptions:
    slots: list[int | None]
    wait: float = 1.0
    drain: bool = False
    kill_grace: float = 10.0
    reserve_after: float = DEFAULT_RESERVE_AFTER
    on_finish: str | None = None
    console: bool = True
    probe: GpuProbe | None = None  # GPU facts for packing and foreign processes
    respect_foreign: bool = True
    foreign_threshold: int = DEFAULT_BUSY_THRESHOLD
    gpu_poll: float = 5.0
    heartbeat: float = peers.HEARTBEAT_SECONDS
    allow_other_users: bool = False  # run scripts other users own (as this user)
    containment: cgroups.Containment | None = None  # None: the best this process can have


class _SecondsFormatter(logging.Formatter):
    """The seed's format, with each second's time text made once: a drain logs two lines
    a job, and ``strftime`` was a tenth of the dispatcher's time per job."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT, LOG_DATEFMT)
        self._second = -1
        self._text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        second = int(record.created)
        if second != self._second:
            self._second, self._text = second, super().formatTime(record, datefmt)
        return self._text


def queue_logger(logfile: Path, console: bool) -> logging.Logger:
    """The seed's log format, to ``logfile.txt`` (and stderr), one logger per queue."""
    # What logging's documentation suggests when speed matters: no caller lookup (a
    # walk up the stack) and no thread or process names in each record; the seed's
    # format uses none of them, and a drain logs two lines a job.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logger = logging.getLogger(f"gpudispatch.queue.{logfile}")
    if not logger.handlers:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        formatter = _SecondsFormatter()
        handlers: list[logging.Handler] = [RootLogHandler(logfile)]
        if console:
            handlers.append(logging.StreamHandler(sys.stderr))
        for handler in handlers:
            handler.setFormatter(formatter)
            logger.addHandler(handler)
    return logger


class _DepStates:
    """Lazy ``name -> state`` lookups for the scheduler, one folder check per name."""

    def __init__(self, queue: FolderQueue) -> None:
        self._queue = queue
        self._cache: dict[str, JobState | None] = {}

    def get(self, name: str, default=None):
        if name not in self._cache:
            self._cache[name] = self._queue.locate(name)
        return self._cache[name]


class Dispatcher:
    STEPS = (
        "collect_writes",  # settled records: hooks, --drain's count, retries back in view
        "check_disk",  # while the disk refuses writes, whether it takes them again
        "read_launcher",  # starts and ends the keeper reports
        "watch_monitors",  # ends of jobs we watch ourselves (adopted, or the keeper died)
        "write_start_records",
        "act_on_stop",  # what the signal handlers asked
        "enforce_deadlines",
        "act_on_cancels",  # cancel requests, written by `cancel` on any host
        "heartbeat",  # say we live; settle what dead dispatchers left
        "recheck_unsure",  # orphans whose owner could not be told a moment ago
        "read_gpus",
        "advance_sweeps",  # bayes: tell ended trials, queue the next; hyperband: stop early
        "discover",
        "schedule",
        "plan_handovers",
        # Jobs into their cgroups; daemons of ended jobs (a /proc read); cgroups emptied
        # since: after the starts, off the path of a job dropped into an idle queue.
        "contain",
        # Ended jobs go to the writer last: its thread takes the GIL whenever this one
        # makes a system call, and the next hand-over must reach the keeper before the
        # job it follows ends (a trivial one ends within a millisecond).
        "settle",
        "note_idle",
    )

    def __init__(self, queue: FolderQueue, options: DispatcherOptions,
                 launcher: Launcher | None = None) -> None:
        self.queue = queue
        self.layout = queue.layout
        self.options = options
        self.slots = options.slots
        self.owner = peers.owner_id()
        self.log = queue_logger(self.layout.logfile, options.console)
        self.running: dict[str, RunningJob] = {}
        self._by_pid: dict[int, str] = {}
        self.gpus = GpuView(options.probe, options.respect_foreign,
                            options.foreign_threshold, options.gpu_poll)
        self.intake = Intake(queue, options.wait, self._impossible,
                             allow_others=options.allow_other_users, log=self.log)
        # A dispatcher started from inside a job must not pass that job's identity on.
        self._base_env = {k: v for k, v in os.environ.items()
                          if not k.startswith("GPUDISPATCH_") or k == "GPUDISPATCH_ROOT"}
        self._fake_launcher = launcher is not None
        self.leftovers = Leftovers(
            cgroups.Containment(None, "a fake launcher") if self._fake_launcher
            else options.containment or cgroups.detect(), self.log,
            self._live_runs, self._own_children, self._oldest_spawner,
            real=not self._fake_launcher)
        self.launcher: Launcher | None = launcher
        self._wake_r, self._wake_w = os.pipe()  # signals and the writer wake the loop
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.disk = DiskWatch(self.layout, self.log, self.owner, self._wake_loop)
        self.writer = Writer(queue, self._wake_loop, self.disk, self.log)
        self.hooks = Hooks(options.on_finish, self._base_env, str(self.layout.root), self.log)
        self._ending: list[Settlement] = []
        self._settling: set[str] = set()  # ended jobs whose files the writer still moves
        self._prepared_logs: set[str] = set()
        self._plain_only: set[str] = set()  # not to be handed over (their check failed)
        self.stop_requests = 0  # incremented by signal handlers, and nothing else there
        self._stops_seen = 0
        self.failures = 0  # jobs this dispatcher concluded as failed (--drain's exit status)
        self._next_heartbeat = 0.0
        # Jobs in running/ locked by no owner we could find, and when first seen so: a
        # monitor exiting, or a peer's start. --drain waits for them (a while at most).
        self._unsure: dict[str, float] = {}
        self._unsure_recheck: float | None = None
        self._next_cancel_check = 0.0
        self._idle_logged = False
        self._paused: bool | None = None  # read once a tick (see paused)
        self.watcher: FolderWatcher | None = None
        self._files_read_at = 0.0  # when the watcher's events were last read
        self.sweeps = SweepDriver(queue, self.log)
        self._steps = [getattr(self, "_" + step) for step in self.STEPS]

    # ------------------------------------------------------------------ one step
    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._paused = None
        for step in self._steps:
            try:
                step(now)
            except OSError as exc:  # a write the disk refused: said once; tried next tick
                if not self.disk.note(exc):
                    raise

    @property
    def paused(self) -> bool:
        """The queue's pause flag, as of this tick (a stat, else several a tick)."""
        if self._paused is None:
            self._paused = self.queue.is_paused()
        return self._paused

    @property
    def stopping(self) -> bool:
        return self._stops_seen > 0

    @property
    def finished(self) -> bool:
        """Whether ``run()`` should return now (a stop, or ``--drain`` with nothing left)."""
        if self.writer.busy or self._ending:
            return False
        if self.stopping:
            return not self.running
        if self.options.drain:
            if self._unsure_waited(time.monotonic()):
                return False
            paused = self.paused
            return not self.running and (paused or (not self.sweeps.pending
                                                    and not self.intake.pending
                                                    and not self.intake.waiting
                                                    and not self.intake.backlog))
        return False

    def request_stop(self) -> None:
        """For signal handlers: only counts (the ``act_on_stop`` step does the work)."""
        self.stop_requests += 1

    # ------------------------------------------------------------------ steps
    def _collect_writes(self, now: float) -> None:
        try:
            settled = self.writer.collect()
        except OSError as exc:
            self.log.error("Could not write a job's outcome (%s); stopping. Its exit status "
                           "stays on disk and the next dispatcher records it.", exc)
            self.stop_requests = max(self.stop_requests, 1)
            return
        for done in settled:
            self._on_settled(done)
        self.hooks.reap()

    def _check_disk(self, now: float) -> None:
        self.disk.poll(now)

    def _on_settled(self, done: Settled) -> None:
        """An ended job's files are written: its hook, --drain's count, a retry in view."""
        self._settling.discard(done.name)
        if not done.moved:
            return
        if done.state is JobState.QUEUED:
            # Taken up now, not when its file event arrives: --drain must not see an
            # empty schedule and exit with it still queued.
            self.intake.events.add(done.name)
            return
        if done.state is JobState.FAILED:
            self.failures += 1
        self.hooks.fire(done.name, done.record, done.state)

    def _read_launcher(self, now: float) -> None:
        if self.launcher is None:
            return
        for message in self.launcher.messages():
            self._on_report(message, now)

    def _on_report(self, message, now: float) -> None:
        if isinstance(message, Exited):
            self._on_exited(message, now)
        elif isinstance(message, Started):
            self._on_started(message, now)
        elif isinstance(message, HandoverReturned):
            self._on_returned(message)
        elif isinstance(message, SpawnFailed):
            self._on_spawn_failed(message)
        elif isinstance(message, KeeperExited):
            self._keeper_lost(now)

    def _on_spawn_failed(self, message: SpawnFailed) -> None:
        """A job that could not start fails with the reason; one whose log the disk
        refused (full, read-only) goes back to the queue unchanged, to start once the
        disk takes writes again: nothing of it ran, nothing is lost."""
        job = self.running.get(message.name)
        lock_fd = message.lock_fd  # a hand-over's: the keeper took it
        if job is None:
            if lock_fd is not None:
                os.close(lock_fd)
            return
        if job.lock_fd is not None:
            if lock_fd is not None:
                os.close(lock_fd)
            lock_fd, job.lock_fd = job.lock_fd, None
        self._untrack(job)
        if message.errno in safeio.DISK_ERRNOS:
            self.disk.note(OSError(message.errno, os.strerror(message.errno)))
            self.log.warning("%s: its log could not be created (%s); back in the queue",
                             printable(job.name), os.strerror(message.errno))
            self._ending.append(Settlement(job.name, None, JobState.QUEUED, lock_fd))
            self._settling.add(job.name)
            return
        self._reject(job.name, f"could not start: {message.error}", job.record, lock_fd)

    def _watch_monitors(self, now: float) -> None:
        for job in [j for j in self.running.values() if j.watched]:
            if job.started is not None and procs.same_process(job.pid, job.started):
                continue
            if job.lock_fd is None:  # adopted from a live monitor: its lock is free now
                job.lock_fd = self.queue.lock_job(job.name, JobState.RUNNING)
                if job.lock_fd is None:
                    if self.queue.locate(job.name) is not JobState.RUNNING:
                        self._untrack(job)  # another dispatcher concluded it
                    continue
            if not self.queue.holds(job.lock_fd, job.name, JobState.RUNNING):
                self._untrack(job)
                continue
            status = self.queue.exit_status(job.name)
            if status is not None and status.attempt >= job.record.attempts:
                if self._cgroup_emptying(job, now):
                    continue
                job.record.attempts = status.attempt
                self._ended(job, status.code)
            elif job.pid and procs.job_alive(job.pid, job.cgroup):
                job.started = None  # its monitor is gone; wait for the rest of the job
            else:
                self._ended(job, None, "its monitor ended without an exit status")

    def _cgroup_emptying(self, job: RunningJob, now: float) -> bool:
        """Whether to wait for the last processes of its cgroup, its monitor gone with its
        end written (killed, or an inline one, in the cgroup, that exited before they
        did): its slot is free once they are gone, as a monitor outside waits (a minute at
        most: one stuck in the kernel is left to the cgroup's removal)."""
        cgroup = job.cgroup_in_use
        if cgroup is None or not cgroups.populated(cgroup):
            return False
        job.ended_at = job.ended_at if job.ended_at is not None else now
        return now - job.ended_at < CGROUP_EMPTY_WAIT_SECONDS

    def _contain(self, now: float) -> None:
        self.leftovers.tick(now, self.running.values())

    def _live_runs(self) -> set[tuple[str, int]]:
        return {(j.name, j.record.attempts) for j in self.running.values()}

    def _oldest_spawner(self) -> int | None:
        """The earliest start of a live job's monitor or hook: a daemon that names no job
        started after it may be its (see ``descendants.sweep``)."""
        starts = [job.started if job.started is not None else procs.start_time(job.pid)
                  for job in self.running.values() if job.pid]
        starts += [procs.start_time(pid) for pid in self.hooks.own_pids()]
        known = [s for s in starts if s is not None]
        return min(known) if known else None

    def _own_children(self) -> set[int]:
        pids = self.launcher.own_pids() if self.launcher is not None else set()
        return pids | self.hooks.own_pids()

    def _write_start_records(self, now: float) -> None:
        for job in self.running.values():
            if job.record_due is not None and now >= job.record_due:
                job.record_due = None
                try:
                    self.queue.write_record(job.record)
                except OSError as exc:
                    if not self.disk.note(exc):
                        raise
                    job.record_due = now + RETRY_SECONDS

    def _act_on_stop(self, now: float) -> None:
        while self._stops_seen < self.stop_requests:
            self._stops_seen += 1
            if self._stops_seen == 1:
                self.log.info("Warm stop: no new jobs; waiting for %d running. Signal again "
                              "to kill them.", len(self.running))
                self._withdraw_handovers()
            elif self._stops_seen == 2:
                self.log.warning("Cold stop: killing %d running jobs.", len(self.running))
                for job in list(self.running.values()):
                    self._stop_job(job, "cold stop", now)

    def _enforce_deadlines(self, now: float) -> None:
        for job in list(self.running.values()):
            if not job.started_here:
                continue
            if job.kill_at is not None and now >= job.kill_at:
                self._signal(job, signal.SIGKILL)
                job.kill_at = None
            elif job.deadline is not None and now >= job.deadline and not job.kill_reason:
                self.log.warning("%s timed out; stopping it", job.name)
                self._stop_job(job, "timeout", now)

    def _act_on_cancels(self, now: float) -> None:
        if not self.running or now < self._next_cancel_check:
            return
        self._next_cancel_check = now + CANCEL_CHECK_SECONDS
        for job in list(self.running.values()):
            if job.kill_reason is None and self.queue.cancel_requested(job.name):
                self.log.info("%s: cancel requested; stopping it", job.name)
                self._stop_job(job, "cancelled", now)

    def _heartbeat(self, now: float) -> None:
        if now < self._next_heartbeat:
            return
        first = self._next_heartbeat == 0.0
        self._next_heartbeat = now + self.options.heartbeat
        try:
            peers.heartbeat(self.layout, self.owner)
        except OSError as exc:
            if not self.disk.note(exc):
                raise
        if not first:
            self.writer.run(reserve_journal, self.layout.exit_journal())
            self._settle_orphans(now)

    def _read_gpus(self, now: float) -> None:
        if self.stopping or not self.gpus.due(now):
            return
        try:
            self.gpus.read(now, self.running.values())
        except GpuProbeError as exc:
            self.log.warning("GPU probe failed (%s); keeping the last reading", exc)
            return
        self.gpus.report(self.layout, self.running.values())

    def _discover(self, now: float) -> None:
        if self.stopping:
            return
        added, rejected = self.intake.discover(
            now, lambda n: n in self.running or n in self._settling, self.watcher is not None)
        for name, reason in rejected:
            self._fail_queued(name, reason)
        gone, self.intake.gone = self.intake.gone, []
        for name in gone:
            self._drop_prepared_log(name)
        if added:
            self._withdraw_handovers(before=min(self.intake.pending[n].sort_key for n in added))
            shown = added if len(added) <= 20 else [*added[:20], f"... {len(added) - 20} more"]
            self.log.info("%d new jobs added to queue %s", len(added), shown)

    def _advance_sweeps(self, now: float) -> None:
        if self.stopping:
            return
        queued = self.sweeps.advance(
            now, max(0, len(self.slots) - len(self.running)), len(self.running),
            lambda: [n for n, j in self.running.items()
                     if j.phase is Phase.RUNNING and not j.kill_reason])
        self.intake.events.update(queued)
        if self.sweeps.stops:  # stopped early: a cancel request each, acted on now
            self._next_cancel_check = 0.0

    def _schedule(self, now: float) -> None:
        if self.stopping or not self.intake.pending or self.paused:
            return
        if self.disk.trouble:
            return  # a job started now could not be recorded
        states = self._slot_states()
        if not any(st.free or (st.capacity and not st.exclusive) for st in states):
            return
        order = self.intake.order()
        handed = [j.queued.sort_key for j in self.running.values()
                  if j.phase is Phase.HANDED_OVER and j.queued is not None]
        if handed:  # nothing later than a handed-over job may start before it
            order = order[:bisect.bisect_left(order, min(handed), key=run_order)]
            if any(st.free for st in states):
                self._withdraw_handovers()  # a slot is free: start them here instead
        result = plan(order, self.slots, states, _DepStates(self.queue), now,
                      self.options.reserve_after)
        for name, reason in result.failures:
            self.intake.take(name)
            self._fail_queued(name, reason)
        for name, slot_ids in result.starts:
            job = self.intake.take(name)
            if job is not None:
                self._start(job, now, slot_ids=slot_ids)
        if result.starts:
            self.gpus.report(self.layout, self.running.values())
            self._prepare_next_logs()

    def _settle(self, now: float) -> None:
        ending, self._ending = self._ending, []
        if ending:
            self.writer.settle(ending)
        self.writer.flush()  # with what the other steps asked of it

    def _plan_handovers(self, now: float) -> None:
        if self.disk.trouble:
            self._withdraw_handovers()
            return
        if self.stopping or self.launcher is None or not self.intake.pending:
            return
        if self.paused:
            self._withdraw_handovers()
            return
        handed = {j.name: j for j in self.running.values() if j.phase is Phase.HANDED_OVER}
        followed = {pid for j in handed.values() for pid in (j.variants or {})}
        candidates = [(j.name, j.slot_ids) for j in self.running.values()
                      if j.phase is Phase.RUNNING and not j.watched and j.pid not in followed]
        deps = _DepStates(self.queue)
        followers = {}
        if candidates:
            order = list(self.intake.order())  # with the handed-over jobs in their places
            for job in handed.values():
                if job.queued is not None:
                    bisect.insort(order, job.queued, key=run_order)

            def plan_without(name: str):
                return plan(order, self.slots, self._slot_states(without=name), deps, now,
                            self.options.reserve_after)

            followers = choose_followers(candidates, plan_without,
                                         set(handed) | self._plain_only)
            for name, variants in followers.items():
                queued = self.intake.take(name)
                if queued is not None:
                    self._start(queued, now, follow={self.running[r].pid: ids
                                                     for r, ids in variants.items()})
        chained = self._extend_chains(now, deps)
        if followers or chained:
            self._prepare_next_logs()

    def _extend_chains(self, now: float, deps: _DepStates) -> bool:
        """Hand over, behind each hand-over that follows one running job, the job that
        would start after it in the same slots (``CHAIN_LENGTH`` deep): the keeper then
        starts one after another while this loop writes what ended. The plan is the one
        with the running job's slots free and its chain out of the queue; the other
        hand-overs stay in their places, so no job overtakes one handed over earlier."""
        added = False
        for _ in range(CHAIN_LENGTH):
            handed = [j for j in self.running.values() if j.phase is Phase.HANDED_OVER]
            ahead = {j.after_job for j in handed}
            tails = [j for j in handed if j.name not in ahead and not j.withdrawing]
            picked: set[str] = set()
            for tail in tails:
                chain = self._chain_of(tail)
                if chain is None or len(chain) > CHAIN_LENGTH:
                    continue
                head, members = chain[0], {j.name for j in chain[1:]}
                others = [j.queued for j in handed
                          if j.queued is not None and j.name not in members]
                order = self.intake.order()  # (not copied unless other chains go in it)
                if others:
                    order = list(order)
                    for queued in others:
                        bisect.insort(order, queued, key=run_order)
                mine = set(head.slot_ids)
                result = plan(order, self.slots, self._slot_states(without=head.name), deps,
                              now, self.options.reserve_after)
                pick = next((start for start in result.starts if set(start[1]) <= mine),
                            None)
                if (pick is None or pick[0] in picked or pick[0] in self._plain_only
                        or pick[0] in self.running):
                    continue
                queued = self.intake.take(pick[0])
                if queued is not None:
                    picked.add(pick[0])
                    self._start(queued, now, follow={CHAINED: pick[1]}, after_job=tail.name)
            if not picked:
                break
            added = True
        return added

    def _chain_of(self, tail: RunningJob) -> list[RunningJob] | None:
        """The running job a hand-over's chain follows, then the chain's hand-overs up to
        ``tail``; None when it follows no single running job that we start jobs after."""
        chain = [tail]
        while chain[0].after_job is not None:
            ahead = self.running.get(chain[0].after_job)
            if ahead is None or ahead.phase is not Phase.HANDED_OVER:
                return None
            chain.insert(0, ahead)
        variants = chain[0].variants or {}
        if len(variants) != 1:
            return None
        head = self.running.get(self._by_pid.get(next(iter(variants)), ""))
        if head is None or head.phase is not Phase.RUNNING or head.watched:
            return None
        return [head, *chain]

    def _note_idle(self, now: float) -> None:
        idle = not self.intake.pending and not self.running and not self.intake.waiting
        if idle and not self._idle_logged:
            self.log.info("Job queue empty. Waiting...")
        self._idle_logged = idle

    # ------------------------------------------------------------------ starting
    def _impossible(self, directives: Directives, name: str) -> str | None:
        return impossible_reason(directives, self.slots, self.gpus.totals(self.slots), name)

    def _slot_states(self, without: str | None = None) -> list[SlotState]:
        return self.gpus.slot_states(self.slots, self.running.values(), without)

    def _start(self, job: QueuedJob, now: float, slot_ids: list[int] | None = None,
               follow: dict[int, list[int]] | None = None,
               after_job: str | None = None) -> None:
        """Lock and claim a job and have the launcher start it; or, with ``follow``, hand
        it to the launcher to claim and start when one of those monitors ends (with
        ``after_job``, when the hand-over of that name ends: ``follow`` is then
        ``{CHAINED: slots}``)."""
        name = job.name
        # A hand-over is locked and claimed by the keeper when it starts: until then,
        # another dispatcher may take it.
        lock_fd = self.queue.lock_job(name, JobState.QUEUED) if follow is None else None
        lockless = follow is not None or (lock_fd is None
                                          and self.queue.unlockable(name, JobState.QUEUED))
        if (lock_fd is None and not lockless) or (follow is None and not self._claim(name)):
            if lock_fd is not None:
                os.close(lock_fd)
            if self.disk.trouble:
                self.intake.give_back(job)  # still queued: it starts when the disk allows
            self._drop_prepared_log(name)
            self._wake_loop()  # its slots stay free: plan again at once
            self._block_if_running(name)
            return  # another dispatcher took it, or the user removed it
        self._plain_only.discard(name)
        try:
            st, launch, head = check_claimed(self.layout, name,
                                       JobState.QUEUED if follow else JobState.RUNNING,
                                       self.intake.head(name))
            problem = owner_problem(st, self.options.allow_other_users)  # replaced since?
            if problem:
                raise ScriptRejected(problem)
        except (OSError, ScriptRejected) as exc:
            if follow is None and isinstance(exc, ScriptRejected):
                self._reject(name, f"{name} {exc}", None, lock_fd)
            else:
                if lock_fd is not None:
                    os.close(lock_fd)
                if isinstance(exc, ScriptRejected):  # claimed and failed once a slot frees
                    self.intake.give_back(job)
                    self._plain_only.add(name)
                else:  # removed meanwhile: nothing to run
                    self._drop_prepared_log(name)
            self._wake_loop()
            return
        record = new_run_record(self.queue, name, job.directives, self.owner, head)
        if launch.note:
            self.log.info("%s is %s", name, launch.note)
        device_order = self._base_env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        containment = self.leftovers.containment
        cgroup = containment.cgroup_for(f"{st.st_ino}.{record.attempts}")
        record.extra["containment"] = containment.mode
        record.extra.pop("cgroup", None)
        if cgroup:
            record.extra["cgroup"] = cgroup

        def request(ids: list[int]) -> SpawnRequest:
            return spawn_request(self.layout, record, launch, gpus_of(self.slots, ids),
                                 st.st_ino, device_order, cgroup)

        running = RunningJob(name, [], record, job.directives,
                             Phase.HANDED_OVER if follow else Phase.SPAWNING,
                             lock_fd=lock_fd, queued=job, alone=job.alone, cgroup=cgroup)
        if follow is None:
            assert slot_ids is not None
            running.slot_ids = slot_ids
            record.gpus = gpus_of(self.slots, slot_ids)
        else:
            running.variants, running.after_job = follow, after_job
        self._track(running)
        try:
            launcher = self._launcher(now)
            if follow is None:
                report = launcher.spawn(request(slot_ids or []), lock_fd)
                if report is not None:  # started already: its clock starts now, not at the tick
                    self._on_report(report, time.monotonic())
            else:
                identity = (st.st_ino, st.st_size, st.st_mtime_ns)
                launcher.hand_over(Handover(name, {pid: request(ids)
                                                   for pid, ids in follow.items()}, identity,
                                            after_job=after_job))
        except KeeperGone:  # reported by messages(), in order; look at once
            self._wake_loop()

    def _on_started(self, message: Started, now: float) -> None:
        job = self.running.get(message.name)
        if job is None or (message.lock_fd is not None and job.phase is not Phase.HANDED_OVER):
            if message.lock_fd is not None:
                os.close(message.lock_fd)
            return
        if job.phase is Phase.HANDED_OVER:
            job.lock_fd = message.lock_fd
            job.slot_ids = (job.variants or {}).get(message.after or -1, [])
            job.variants = job.after_job = None
            job.record.gpus = gpus_of(self.slots, job.slot_ids)
            job.record.extra["handed_over"] = True  # started by the keeper, no gap (report)
        job.to(Phase.RUNNING)
        job.pid, job.started = message.pid, message.started
        for follower in self.running.values():  # (as the keeper does)
            if follower.after_job == job.name:
                follower.variants = {job.pid: (follower.variants or {})[CHAINED]}
                follower.after_job = None
        job.record.pid = message.pid
        job.record.extra["monitor_started"] = message.started
        self._by_pid[message.pid] = job.name
        self._prepared_logs.discard(job.name)
        job.record.started_at = now_iso()
        job.began = now
        timeout = job.directives.timeout
        job.deadline = now + timeout if timeout else None
        job.record_due = now + RECORD_DELAY_SECONDS
        self._log_start(job)
        if job.kill_reason or self.queue.cancel_requested(job.name):
            self._stop_job(job, job.kill_reason or "cancelled", now)

    def _log_start(self, job: RunningJob) -> None:
        if len(self.slots) > 1:
            gpus = job.record.gpus
            where = ",".join(str(g) for g in gpus) if gpus else "CPU"
            self.log.info("Running job %s on %s%s...", job.name, "GPU " if gpus else "", where)
        else:
            self.log.info("Running job %s...", job.name)

    def _on_returned(self, message: HandoverReturned) -> None:
        job = self.running.get(message.name)
        if job is None or job.phase is not Phase.HANDED_OVER:
            return
        self._untrack(job)
        if message.why == "changed":  # claimed by the keeper: back, to be checked again
            self.queue.move(job.name, JobState.RUNNING, JobState.QUEUED)
            self.intake.events.add(job.name)
        elif message.why == "withdrawn" and job.queued is not None:
            if message.errno is not None:  # its log was refused: starts wait for the disk
                self.disk.note(OSError(message.errno, os.strerror(message.errno)))
            self.intake.give_back(job.queued)
        else:
            self._drop_prepared_log(job.name)
            self._block_if_running(job.name)
        self._wake_loop()

    def _block_if_running(self, name: str) -> None:
        """A claim refused because a job of this name runs (another dispatcher's): the
        queued one waits for its end, looked at again at each discovery."""
        if os.path.lexists(self.layout.script(JobState.RUNNING, name)):
            self.intake.block(name)

    def _prepare_next_logs(self) -> None:
        """Create the log files of the jobs likely to start next, in the writer thread: a
        file creation costs 0.1 to 1 ms here, on the path between two jobs otherwise."""
        upcoming = [j.name for j in self.intake.order()[: len(self.slots) + 1]
                    if j.name not in self._prepared_logs]
        if upcoming:
            self._prepared_logs.update(upcoming)
            self.writer.run(create_empty, [self.layout.job_log(n, 1) for n in upcoming])

    def _drop_prepared_log(self, name: str) -> None:
        """A job that will not run here leaves no empty files behind."""
        if name in self._prepared_logs:  # through the writer: after it created the files
            self._prepared_logs.discard(name)
            self.writer.run(remove_if_empty, self.layout.job_log(name, 1))

    def _withdraw_handovers(self, before: tuple | None = None) -> None:
        """Take back hand-overs (all, or those that sort after ``before``)."""
        for job in self.running.values():
            if (job.phase is Phase.HANDED_OVER and not job.withdrawing
                    and job.queued is not None
                    and (before is None or before < job.queued.sort_key)):
                job.withdrawing = True
                try:
                    self._launcher(time.monotonic()).withdraw(job.name)
                except KeeperGone:  # reported by messages(), in order; look at once
                    self._wake_loop()

    # ------------------------------------------------------------------ ending
    def _on_exited(self, message: Exited, now: float) -> None:
        for follower in self.running.values():
            if follower.phase is Phase.HANDED_OVER and message.pid in (follower.variants or {}):
                # The keeper may be starting it in these slots this very moment (its Started
                # or HandoverReturned follows): they are not free meanwhile. It follows
                # several: after whichever ended first in the keeper's eyes, so the slots
                # of every one that ended are held until it says which.
                follower.slot_ids = sorted({*follower.slot_ids,
                                            *(follower.variants or {})[message.pid]})
        job = self.running.get(message.name)
        if job is None or job.pid != message.pid:
            return
        if not self._fake_launcher:
            procs.end_leftovers(message.pid, job.cgroup_in_use)
        if message.code >= 0:
            self._ended(job, message.code)
            return
        # The monitor itself was killed: its status may be on disk; if not, the job is
        # interrupted, once every process of it has gone.
        job.watched, job.started = True, None
        self._watch_monitors(now)

    def _ended(self, job: RunningJob, code: int | None,
               interrupted_by: str = "its monitor was killed") -> None:
        """Decide what the end means and queue the writes; the slots are free at once."""
        lock_fd, job.lock_fd = job.lock_fd, None  # the writer lets it go after the move
        self._untrack(job)
        if not self._fake_launcher:
            now = time.monotonic()
            self.leftovers.ended(job.cgroup_in_use, now, now - job.began if job.began else 0.0)
        record = job.record
        record.ended_at = now_iso()
        record.exit_code = code
        extra = record.extra
        tail = safeio.read_tail(record.log, OOM_TAIL_BYTES) if code else b""
        cancelled = self.queue.cancel_requested(job.name)
        verdict = decide(
            Ending(code, job.kill_reason, cancelled,
                   stopped_early=self.queue.early_stop_reason(job.name) if cancelled else None,
                   oom=oom_in_tail(tail), interrupted_by=interrupted_by,
                   error_line=last_error_line(
                       tail, str(self.layout.script(JobState.RUNNING, job.name)))),
            job.directives, record.own_attempts, record.interruptions,
            extra.get("oom_retries_used", 0),
        )
        record.reason = verdict.reason
        if verdict.interrupted:
            record.interrupted()
        if verdict.oom_retry:
            extra["oom_retries_used"] = extra.get("oom_retries_used", 0) + 1
        if verdict.run_alone:
            extra["run_alone"] = True
            self.intake.run_alone.add(job.name)
        elif verdict.state.is_final:
            self.intake.run_alone.discard(job.name)  # the record keeps that it ran alone
        if verdict.reason is None:
            self.log.info("%s returned %s", job.name, code)
        elif verdict.interrupted or code is None:
            self.log.warning("%s was %s", job.name, verdict.reason)
        else:
            self.log.warning("%s returned %s", job.name, code if code is not None
                             else verdict.reason)
        if verdict.state is JobState.QUEUED and not verdict.interrupted:
            self.log.info("%s: retry %d of %d", job.name, record.failed_attempts,
                          job.directives.retries)
            record.reason = f"{verdict.reason}; retrying"
        self._ending.append(Settlement(job.name, record, verdict.state, lock_fd))
        self._settling.add(job.name)

    def _fail_queued(self, name: str, reason: str) -> None:
        """Fail a queued job that can never run (bad directives, impossible, dependency)."""
        lock_fd = self.queue.lock_job(name, JobState.QUEUED)
        if lock_fd is None and not self.queue.unlockable(name, JobState.QUEUED):
            return
        if not self._claim(name):  # (a disk that refused it: failed at a later scan)
            if lock_fd is not None:
                os.close(lock_fd)
            return
        self._reject(name, reason, None, lock_fd, started=False)

    def _claim(self, name: str) -> bool:
        """The claim's rename; False also when the disk refuses it (noted)."""
        try:
            return self.queue.claim(name)
        except OSError as exc:
            if not self.disk.note(exc):
                raise
            return False

    def _reject(self, name: str, reason: str, record: JobRecord | None, lock_fd: int | None,
                started: bool = True) -> None:
        """Fail a claimed job that cannot run, now (the caller passes its lock)."""
        record = record or self.queue.fresh_record(name)
        record.reason = reason
        record.ended_at = now_iso()
        if started:
            record.started_at = record.ended_at
        try:
            moved = self.queue.conclude(name, record, JobState.FAILED)
        except OSError as exc:
            if self.disk.note(exc):  # the writer writes it once the disk takes it
                self._ending.append(Settlement(name, record, JobState.FAILED, lock_fd))
                self._settling.add(name)
                lock_fd = None
                self.log.warning("%s failed: %s", printable(name), reason)
                return
            # no record can be written for it (a name too long...)
            moved = self.queue.move(name, JobState.RUNNING, JobState.FAILED)
            reason = f"{reason} (no record written: {exc.strerror})"
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
        if moved:
            self.failures += 1
            self.hooks.fire(name, record, JobState.FAILED)
        self.log.warning("%s failed: %s", printable(name), reason)

    def _stop_job(self, job: RunningJob, why: str, now: float) -> None:
        """SIGTERM the job's processes now and SIGKILL them after the grace period."""
        if job.phase is Phase.HANDED_OVER:
            self._withdraw_handovers()
            return
        job.kill_reason = why
        job.kill_at = now + self.options.kill_grace
        if job.phase is Phase.RUNNING:
            job.to(Phase.STOPPING)
        if job.started_here:
            self._signal(job, signal.SIGTERM)

    def _signal(self, job: RunningJob, sig: int) -> None:
        if job.pid is None:
            return
        if self._fake_launcher and self.launcher is not None:
            self.launcher.signal(job.pid, sig)  # its pids are made up
        else:
            procs.signal_job(job.pid, sig, job.cgroup)

    # ------------------------------------------------------------------ tracking
    def _track(self, job: RunningJob) -> None:
        self.running[job.name] = job
        if job.pid is not None:
            self._by_pid[job.pid] = job.name

    def _untrack(self, job: RunningJob) -> None:
        """Forget a job, closing what it holds (a lock it still holds is let go here:
        a lock kept by mistake would keep its job from ever running again)."""
        self.running.pop(job.name, None)
        self._by_pid.pop(job.pid or -1, None)
        job.release()
        if job.phase is Phase.HANDED_OVER:
            self._pass_on_chain(job)

    def _pass_on_chain(self, gone: RunningJob) -> None:
        """A hand-over that will not start: the one chained to it follows what it
        followed, in the slots it held (the keeper may be starting it there now)."""
        for follower in self.running.values():
            if follower.after_job == gone.name:
                request = (follower.variants or {})[CHAINED]
                follower.after_job = gone.after_job
                if gone.after_job is None:
                    follower.variants = {pid: request for pid in gone.variants or {}}
                follower.slot_ids = gone.slot_ids

    # ------------------------------------------------------------------ launcher
    def _launcher(self, now: float) -> Launcher:
        if self.launcher is None:
            keeper = Keeper(str(self.layout.root), self._base_env)
            keeper.start()
            self.launcher = keeper
        return self.launcher

    def _keeper_lost(self, now: float) -> None:
        """The keeper died: the monitors it started carry on; watch them ourselves."""
        self.log.error("The keeper process died; watching the jobs it started directly.")
        assert self.launcher is not None
        for job in list(self.running.values()):
            if job.started_here:
                if not self.launcher.owns(job.pid or 0):
                    job.watched = True
                    job.pidfd = procs.pidfd(job.pid) if job.pid else None
            else:  # it may or may not have started: let recovery find out
                self._untrack(job)
                if (job.phase is Phase.HANDED_OVER and job.queued is not None
                        and self.queue.locate(job.name) is JobState.QUEUED):
                    self.intake.give_back(job.queued)
        self._settle_orphans(now)

    # ------------------------------------------------------------------ recovery
    def reconcile(self) -> None:
        """At start: settle every job that dispatchers which are gone left in ``running/``
        (a job requeued to run alone says so in its record: ``Intake`` reads it then)."""
        self._settle_orphans(time.monotonic())

    def _recheck_unsure(self, now: float) -> None:
        if self._unsure_recheck is not None and now >= self._unsure_recheck:
            self._settle_orphans(now)

    def _unsure_waited(self, now: float) -> bool:
        """Whether an unsure job is still worth waiting for (a lock held by something
        that is no owner of ours, a user's ``flock`` say, is not waited on for ever)."""
        return any(now - since < UNSURE_WAIT_SECONDS for since in self._unsure.values())

    def _settle_orphans(self, now: float) -> None:
        found = find_orphans(self.queue, self.owner, self.options.heartbeat,
                             lambda n: n in self.running or n in self._settling)
        self._unsure = {name: self._unsure.get(name, now) for name in found.unsure}
        self._unsure_recheck = (now + UNSURE_RECHECK_SECONDS if self._unsure_waited(now)
                                else None)
        for orphan in found.orphans:
            if orphan.monitor is not None or orphan.group_alive:
                self._adopt(orphan, now)
            elif orphan.requeue:
                self.log.info("%s goes back to the queue, as its record says", orphan.name)
                self._ending.append(Settlement(orphan.name, None, JobState.QUEUED,
                                               orphan.lock_fd))
                self._settling.add(orphan.name)
            else:
                job = RunningJob(orphan.name, [], orphan.record, orphan.directives,
                                 Phase.RUNNING, lock_fd=orphan.lock_fd, pid=orphan.record.pid,
                                 cgroup=orphan.cgroup, enclosed=orphan.cgroup is not None)
                if orphan.exit is not None:
                    orphan.record.attempts = orphan.exit.attempt
                    self.log.info("%s ended while no dispatcher was running", orphan.name)
                    self._ended(job, orphan.exit.code)
                else:
                    self._ended(job, None, "no monitor and no exit status left, after its "
                                "dispatcher stopped")
        self._settle(now)

    def _adopt(self, orphan: Orphan, now: float) -> None:
        record, monitor = orphan.record, orphan.monitor
        gpus = monitor.gpus if monitor is not None else record.gpus
        slot_ids = [i for i, g in enumerate(self.slots) if g is not None and g in gpus]
        if not gpus:
            states = self._slot_states()
            slot_ids = [i for i, g in enumerate(self.slots) if g is None and states[i].free][:1]
        pid = monitor.pid if monitor is not None else record.pid
        job = RunningJob(orphan.name, slot_ids, record, orphan.directives, Phase.RUNNING,
                         lock_fd=orphan.lock_fd, pid=pid,
                         started=monitor.started if monitor is not None else None,
                         watched=True, cgroup=orphan.cgroup)
        record.pid = pid
        if orphan.directives.timeout:  # its limit still counts from when it started
            started = _parse_time(record.started_at)
            elapsed = time.time() - started if started else 0.0
            # (+10 ms: started_at is kept to the millisecond; never stop it early)
            # (now, not the tick's start: finding the orphans may have taken a while)
            job.deadline = (time.monotonic() + max(0.0, orphan.directives.timeout - elapsed)
                            + 0.01)
        job.pidfd = procs.pidfd(pid) if monitor is not None and pid else None
        job.began = time.monotonic()  # (for when to move it into its cgroup, if not yet)
        self._track(job)
        self.log.info("%s is still running (pid %d); waiting for it", orphan.name, pid or 0)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Dispatch until stopped (or drained); the exit status: with ``--drain``, 1 when
        a job failed (as the Slurm backend does), else 0."""
        self.log.info("------------ Job Dispatcher Started ------------")
        if self.layout.writable_by_others():
            if self.options.allow_other_users:
                self.log.warning("%s is writable by other users: scripts they drop there run "
                                 "as %s", self.layout.queue, user_name(os.geteuid()))
            else:
                self.log.warning("%s is writable by other users: scripts they own fail "
                                 "unless run is started with %s", self.layout.queue,
                                 ALLOW_OTHERS_FLAG)
        self._heartbeat(time.monotonic())
        self._launcher(time.monotonic())
        self.watcher = FolderWatcher([self.layout.queue, self.layout.cancels])
        if not self.watcher.start():
            self.watcher.stop()
            self.watcher = None
        selector = selectors.DefaultSelector()
        previous = _install_signals(self, self._wake_w)
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")  # (the rest: _wait)
        # Before the first start, not on the writer thread: a first job that fills the disk
        # at once must find the journal's room reserved for its monitor's status line.
        rotate_journal(self.layout.exit_journal())
        reserve_journal(self.layout.exit_journal())
        try:
            self.reconcile()
            while True:
                self.tick()
                if self.finished:
                    break
                self._wait(selector)
        finally:
            _restore_signals(previous)
            selector.close()
            if self.watcher is not None:
                self.watcher.stop()
            self.close()
            peers.unregister(self.layout, self.owner)
        self.log.info("Job Dispatcher stopped.")
        return 1 if self.options.drain and self.failures else 0

    def close(self) -> None:
        """Finish pending writes; let the keeper go (running jobs carry on)."""
        for done in self.writer.close():
            self._on_settled(done)
        for job in self.running.values():
            job.release()
        self.leftovers.close()
        if self.launcher is not None:
            self.launcher.close()
            self.launcher = None
        close_fds(self._wake_r, self._wake_w)

    def _wake_loop(self) -> None:
        try:
            os.write(self._wake_w, b"w")
        except OSError:
            pass  # the pipe is full (the loop is awake anyway), or closed at shutdown

    def _wait(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        wake_at = [self.intake.next_scan, self._next_heartbeat]
        if self.gpus.probe is not None:
            wake_at.append(self.gpus.next_read)
        for job in self.running.values():
            wake_at += [t for t in (job.deadline, job.kill_at, job.record_due) if t is not None]
            wake_at.append(enclose_at(job))
            if job.watched and (job.pidfd is None or job.started is None
                                or job.lock_fd is None):
                wake_at.append(now + WATCH_POLL_SECONDS)
        if self.running:
            wake_at.append(self._next_cancel_check)
        if self._unsure_recheck is not None:
            wake_at.append(self._unsure_recheck)
        if self.intake.waiting:
            wake_at.append(now + 0.25)
        if self.intake.backlog:
            wake_at.append(now)  # more files to read, between the other steps
        if self.disk.trouble:
            wake_at.append(self.disk.next_probe)
        if self.sweeps.pending or (self.running and self.sweeps.sweeps):
            wake_at.append(self.sweeps.next_due)
        if self.leftovers.next_due is not None and (self.running or self.leftovers.busy):
            wake_at.append(self.leftovers.next_due)
        if self.intake.pending and self.paused:
            wake_at.append(now + 0.25)  # `resume` is an unlink, which no file event reports
        wanted: dict[int, str] = {j.pidfd: "pidfd" for j in self.running.values()
                                  if j.pidfd is not None}
        if self.launcher is not None:
            wanted[self.launcher.fileno()] = "launcher"
        if self.watcher is not None:
            if self.intake.pending and now - self._files_read_at < FILES_BATCH_SECONDS:
                wake_at.append(self._files_read_at + FILES_BATCH_SECONDS)
            else:
                wanted[self.watcher.fileno()] = "files"
        registered = {key.fd: key for key in selector.get_map().values()}
        for fd, kind in wanted.items():
            if fd not in registered:
                selector.register(fd, selectors.EVENT_READ, kind)
        for fd, key in registered.items():
            if key.data != "wake" and fd not in wanted:
                selector.unregister(fd)
        timeout = max(0.0, min(wake_at) - now)
        for key, _ in selector.select(timeout):
            if key.data == "wake":
                drain_pipe(self._wake_r)
        if self.watcher is not None:  # (unregistered meanwhile, it may hold some)
            self._files_read_at = time.monotonic()
            names = self.watcher.drain()
            self.intake.events |= names
            if names & self.running.keys():
                self._next_cancel_check = 0.0  # a cancel request for a running job


def _parse_time(text: str | None) -> float | None:
    try:
        parsed = parse_iso(text)
    except (TypeError, ValueError):
        return None
    return parsed.timestamp() if parsed else None


def _install_signals(dispatcher: Dispatcher, wake_w: int):
    """Handlers only count requests; the wake-up fd wakes the loop, which acts on them."""

    def on_stop(signum, frame) -> None:
        dispatcher.request_stop()

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGCHLD: signal.signal(signal.SIGCHLD, lambda s, f: None),
    }
    previous["wakeup"] = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    return previous


def _restore_signals(previous) -> None:
    signal.set_wakeup_fd(previous.pop("wakeup"))
    for sig, handler in previous.items():
        signal.signal(sig, handler)

