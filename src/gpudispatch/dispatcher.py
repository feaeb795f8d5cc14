"""The local dispatcher: ``tick()`` is one loop step; ``run()`` waits for events and ticks.

State lives in the folders and records; this object only holds what it has started
(pids, deadlines), which a restarted dispatcher rebuilds in :meth:`Dispatcher.reconcile`.
"""

from __future__ import annotations

import logging
import os
import selectors
import signal
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gpudispatch import peers, runner
from gpudispatch.gpus import DEFAULT_BUSY_THRESHOLD, GpuProbe, GpuProbeError
from gpudispatch.gpuview import GpuView
from gpudispatch.job import (
    DirectiveError,
    Directives,
    JobRecord,
    JobState,
    now_iso,
    parse_directives,
    parse_iso,
)
from gpudispatch.keeper import Exited, Handover, Keeper, KeeperGone, SpawnRequest
from gpudispatch.layout import is_job_name
from gpudispatch.results import METRICS_ENV
from gpudispatch.scheduler import (
    DEFAULT_RESERVE_AFTER,
    QueuedJob,
    SlotState,
    impossible_reason,
    plan,
)
from gpudispatch.store import HOST, FolderQueue
from gpudispatch.watch import FolderWatcher, drain_pipe, read_if_complete

# A job's start record waits this long: most trivial jobs are over by then and need
# one record write instead of two. A crash in between loses nothing (see reconcile).
RECORD_DELAY_SECONDS = 0.05
# How long an adopted job's old keeper may take to write the code of a job that ended.
KEEPER_WRITE_GRACE_SECONDS = 5.0
LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s"
LOG_DATEFMT = "%Y-%m-%d %H:%M:%S"


@dataclass
class RunningJob:
    name: str
    pid: int | None  # None until the keeper says it started
    slot_ids: list[int]
    record: JobRecord
    directives: Directives
    deadline: float | None = None
    kill_reason: str | None = None  # "timeout" or "cold stop" once we signalled it
    kill_at: float | None = None
    adopted: bool = False
    keeper_pid: int | None = None  # an adopted job's keeper, which writes its exit code
    gone_at: float | None = None  # when an adopted job was first seen dead
    pidfd: int | None = None
    record_due: float | None = None  # when the start record is written (if still running)
    alone: bool = False  # placed whole after running out of memory
    queued: QueuedJob | None = None  # as it was queued (to put it back)
    follows: str | None = None  # handed over to start when this running job ends
    withdrawing: bool = False

    @property
    def gpu_mem(self) -> int | None:
        return None if self.alone else self.directives.gpu_mem


@dataclass
class _Unready:
    size: int
    mtime: int
    seen: float


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


def queue_logger(logfile: Path, console: bool) -> logging.Logger:
    """The seed's log format, to ``logfile.txt`` (and stderr), one logger per queue."""
    logger = logging.getLogger(f"gpudispatch.queue.{logfile}")
    if not logger.handlers:
        logger.setLevel(logging.INFO)
        logger.propagate = False
        formatter = logging.Formatter(LOG_FORMAT, LOG_DATEFMT)
        handlers: list[logging.Handler] = [logging.FileHandler(logfile)]
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
    def __init__(self, queue: FolderQueue, options: DispatcherOptions) -> None:
        self.queue = queue
        self.layout = queue.layout
        self.options = options
        self.slots = options.slots
        self.owner = peers.owner_id()
        self.log = queue_logger(self.layout.logfile, options.console)
        self.running: dict[str, RunningJob] = {}
        self._by_pid: dict[int, str] = {}
        self._run_alone: set[str] = set()  # requeued after running out of GPU memory
        self.gpus = GpuView(options.probe, options.respect_foreign,
                            options.foreign_threshold, options.gpu_poll)
        self._pending: dict[str, QueuedJob] = {}
        self._order: list[QueuedJob] = []
        self._order_dirty = False
        self._unready: dict[str, _Unready] = {}
        self._events: set[str] = set()
        self._next_scan = 0.0
        self._next_heartbeat = 0.0
        self._hooks: dict[int, str] = {}
        self._ending: list[tuple[RunningJob, bool]] = []
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpudispatch-writer")
        self._writes: list[Future] = []
        self._settling: set[str] = set()  # ended jobs whose files the writer still moves
        self._wake_r, self._wake_w = os.pipe()  # signals and the writer wake the loop
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._heads: dict[str, tuple[int, int, bytes]] = {}  # name -> size, mtime, head
        self._prepared_logs: set[str] = set()
        self._plain_only: set[str] = set()  # not to be handed over (their check failed)
        self._idle_logged = False
        self.failures = 0  # jobs this dispatcher concluded as failed (--drain's exit status)
        self._stop_requests = 0
        self._cold_done = False
        self.watcher: FolderWatcher | None = None
        self.keeper: Keeper | None = None
        self._base_env = dict(os.environ)
        self._base_env.pop(METRICS_ENV, None)

    # ------------------------------------------------------------------ one step
    def tick(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self._collect_writes()
        self._reap(now)
        self._enforce_deadlines(now)
        if self._stop_requests >= 2 and not self._cold_done:
            self._cold_stop()
        if now >= self._next_heartbeat:
            self._heartbeat(now)
        if self._stop_requests:
            self._settle()
            return
        if self.gpus.due(now):
            self._read_gpus(now)
        self._discover(now)
        paused = self.queue.is_paused()
        if not paused:
            self._schedule(now)
        if self._ending:
            self._settle()
            if not paused:
                self._schedule(now)  # jobs waiting --after the ones just settled
        if paused:
            self._withdraw_handovers()
        else:
            self._plan_handovers(now)
        idle = not self._pending and not self.running and not self._unready
        if idle and not self._idle_logged:
            self.log.info("Job queue empty. Waiting...")
        self._idle_logged = idle

    @property
    def finished(self) -> bool:
        """Whether ``run()`` should return now (a stop, or ``--drain`` with nothing left)."""
        if self._writes or self._ending:
            return False
        if self._stop_requests:
            return not self.running
        if self.options.drain:
            paused = self.queue.is_paused()
            return not self.running and (paused or (not self._pending and not self._unready))
        return False

    # ------------------------------------------------------------------ discovery
    def _discover(self, now: float) -> None:
        names: Iterable[str] | None = None
        if now >= self._next_scan:
            interval = self.options.wait if self.watcher is None else max(self.options.wait, 10)
            self._next_scan = now + interval
            names = self._scan_queue()
        elif self._events or self._unready:
            names = self._events | set(self._unready)
        if names is None:
            return
        self._events = set()
        added = [name for name in names if self._consider(name, now)]
        if added:
            self._withdraw_handovers(before=min(self._pending[n].sort_key for n in added))
            added.sort()
            shown = added if len(added) <= 20 else [*added[:20], f"... {len(added) - 20} more"]
            self.log.info("%d new jobs added to queue %s", len(added), shown)
            self._order_dirty = True

    def _scan_queue(self) -> list[str]:
        names = self.queue.names(JobState.QUEUED)
        present = set(names)
        gone = [name for name in self._pending if name not in present]
        for name in gone:
            del self._pending[name]
            self._drop_prepared_log(name)
        if gone:
            self._order_dirty = True
        return names

    def _consider(self, name: str, now: float) -> bool:
        """Take a newly seen queue file into the schedule once it is completely written."""
        if name in self._pending or name in self.running or not is_job_name(name):
            return False
        path = self.layout.script(JobState.QUEUED, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._unready.pop(name, None)
            return False
        complete, head = read_if_complete(path, st)
        if complete is None:  # no leases here: wait for size and mtime to stay still
            before = self._unready.get(name)
            stable = (
                before is not None
                and (before.size, before.mtime) == (st.st_size, st.st_mtime_ns)
                and now - before.seen >= min(self.options.wait, 1.0)
            )
            if not stable:
                if before is None or (before.size, before.mtime) != (st.st_size, st.st_mtime_ns):
                    self._unready[name] = _Unready(st.st_size, st.st_mtime_ns, now)
                return False
        elif not complete:
            self._unready.setdefault(name, _Unready(st.st_size, st.st_mtime_ns, now))
            return False
        self._unready.pop(name, None)
        self._heads[name] = (st.st_size, st.st_mtime_ns, head)
        try:
            directives = parse_directives(head.decode(errors="replace"))
            reason = impossible_reason(directives, self.slots, self.gpus.totals(self.slots))
        except DirectiveError as exc:
            directives, reason = Directives(), str(exc)
        if reason:
            self._fail_queued(name, reason)
            return False
        self._pending[name] = QueuedJob(name, directives, now, alone=name in self._run_alone)
        return True

    # ------------------------------------------------------------------ scheduling
    def _schedule(self, now: float) -> None:
        if not self._pending:
            return
        states = self._slot_states()
        if not any(st.free or (st.capacity and not st.exclusive) for st in states):
            return
        result = plan(
            self._run_order(),
            self.slots,
            states,
            _DepStates(self.queue),
            now,
            self.options.reserve_after,
        )
        for name, reason in result.failures:
            self._forget(name)
            self._heads.pop(name, None)
            self._fail_queued(name, reason)
        for name, slot_ids in result.starts:
            job = self._forget(name)
            if job is not None:
                self._start(job, slot_ids, now)
        if result.starts:
            self.gpus.report(self.layout, self.running.values())
            self._prepare_next_logs()

    def _run_order(self) -> list[QueuedJob]:
        """The pending jobs in run order, sorted again only after the set changed."""
        if self._order_dirty:
            self._order = sorted(self._pending.values(), key=lambda j: j.sort_key)
            self._order_dirty = False
        return self._order

    def _slot_states(self, without: str | None = None) -> list[SlotState]:
        return self.gpus.slot_states(self.slots, self.running.values(), without)

    def _read_gpus(self, now: float) -> None:
        try:
            self.gpus.read(now, self.running.values())
        except GpuProbeError as exc:
            self.log.warning("GPU probe failed (%s); keeping the last reading", exc)
            return
        self.gpus.report(self.layout, self.running.values())

    def _prepare_next_logs(self) -> None:
        """Create the log files of the jobs likely to start next, in the writer thread.

        A file creation costs 0.1 to 1 ms here; done while the current jobs run, it is
        off the next job's path to its start (the keeper then only truncates the file).
        """
        upcoming = [j.name for j in self._run_order()[: len(self.slots)]
                    if j.name not in self._prepared_logs]
        if upcoming:
            self._prepared_logs.update(upcoming)
            self._writer.submit(_create_empty, [self.layout.job_log(n, 1) for n in upcoming])

    def _drop_prepared_log(self, name: str) -> None:
        """A job that will not run here leaves no empty log behind."""
        if name in self._prepared_logs:  # through the writer: after it created the file
            self._prepared_logs.discard(name)
            self._writer.submit(_remove_if_empty, self.layout.job_log(name, 1))

    def _forget(self, name: str) -> QueuedJob | None:
        job = self._pending.pop(name, None)
        if job is not None:
            try:
                self._order.remove(job)
            except ValueError:
                pass
        return job

    def _fail_queued(self, name: str, reason: str) -> None:
        if not self.queue.claim(name):
            return
        record = self._fresh_record(name)
        record.reason = reason
        record.ended_at = now_iso()
        self._conclude_now(name, record, JobState.FAILED)
        self.log.warning("%s failed: %s", name, reason)

    def _fresh_record(self, name: str) -> JobRecord:
        """The record to continue: a requeued job keeps its attempts, a new drop starts over."""
        record = self.queue.read_record(name)
        if record.ended_at and not record.extra.get("requeued"):
            record = JobRecord(name=name)
        record.extra.pop("requeued", None)
        return record

    def _start(
        self, job: QueuedJob, slot_ids: list[int], now: float, after: RunningJob | None = None
    ) -> None:
        """Claim a job and have the keeper start it; or, ``after`` a running job, hand it
        to the keeper to claim and start the moment that one ends (see ``Handover``)."""
        name = job.name
        if after is None and not self.queue.claim(name):
            self._drop_prepared_log(name)
            self._wake_loop()  # its slots stay free: plan again at once, not at the next scan
            return  # another dispatcher took it, or the user removed it
        self._plain_only.discard(name)
        state = JobState.QUEUED if after else JobState.RUNNING
        size, mtime, head = self._heads.pop(name, (-1, -1, b""))
        running_path = self.layout.script(JobState.RUNNING, name)
        try:
            path = self.layout.script(state, name)
            st = os.lstat(path)
            if (st.st_size, st.st_mtime_ns) != (size, mtime):
                head = runner.read_head(path, st)
            launch = runner.check_script(running_path, st, head)
        except FileNotFoundError:
            self._drop_prepared_log(name)
            self._wake_loop()
            return
        except runner.ScriptRejected as exc:
            if after is None:
                self._reject(name, f"{name} {exc}")
            else:  # the plain path claims and fails it, once a slot is free
                self._pending[name] = job
                self._order_dirty = True
                self._plain_only.add(name)
            self._wake_loop()
            return
        record = self._fresh_record(name)
        record.attempts += 1
        record.gpus = [g for g in (self.slots[i] for i in slot_ids) if g is not None]
        record.host, record.dispatcher = HOST, self.owner
        record.ended_at, record.exit_code, record.reason = None, None, None
        record.backend, record.backend_id = "local", None
        record.extra["directives"] = job.directives.to_dict()
        record.log = self.layout.job_log(name, record.attempts)
        if launch.note:
            self.log.info("%s is %s", name, launch.note)
        request = SpawnRequest(
            name, launch.argv, self._job_env(name, record), record.log,
            self.layout.exit_file(name),
        )
        running = RunningJob(name, None, slot_ids, record, job.directives, alone=job.alone,
                             queued=job, follows=after.name if after else None)
        self._track(running)
        try:
            self._send_start(request, after, st)
        except KeeperGone:
            self._keeper_lost()
            if after is None:
                self._send_start(request, None, st)

    def _send_start(self, request: SpawnRequest, after: RunningJob | None,
                    st: os.stat_result) -> None:
        if after is None:
            self._keeper().spawn(request)
        else:
            identity = (st.st_ino, st.st_size, st.st_mtime_ns)
            self._keeper().hand_over(Handover(request, after.pid, identity))

    def _reject(self, name: str, reason: str, record: JobRecord | None = None) -> None:
        """Fail a claimed job that cannot run (its script, or the start itself)."""
        record = record or self._fresh_record(name)
        record.reason = reason
        record.started_at = record.ended_at = now_iso()
        self._conclude_now(name, record, JobState.FAILED)
        self.log.warning("%s failed: %s", name, reason)

    def _on_started(self, job: RunningJob, pid: int, now: float) -> None:
        """The keeper started it: from now on its time, timeout and record count."""
        job.pid = job.record.pid = pid
        job.follows = None
        self._prepared_logs.discard(job.name)
        self._by_pid[pid] = job.name
        job.record.started_at = now_iso()
        timeout = job.directives.timeout
        job.deadline = now + timeout if timeout else None
        job.record_due = now + RECORD_DELAY_SECONDS
        record = job.record
        if len(self.slots) > 1:
            where = ",".join(str(g) for g in record.gpus) if record.gpus else "CPU"
            self.log.info("Running job %s on %s%s...", job.name, "GPU " if record.gpus else "",
                          where)
        else:
            self.log.info("Running job %s...", job.name)
        if job.kill_reason or os.path.exists(self.layout.cancel_request(job.name)):
            runner.kill_group(pid, signal.SIGTERM)  # stopped or cancelled before it started

    def _plan_handovers(self, now: float) -> None:
        """For each running job, pick the job to start in its slots when it ends."""
        if self.keeper is None or not self._pending:
            return
        order = self._run_order()
        followed = {j.follows for j in self.running.values() if j.follows}
        for job in list(self.running.values()):
            if (job.pid is None or job.adopted or job.kill_reason or job.name in followed
                    or job.follows):
                continue
            result = plan(order, self.slots, self._slot_states(without=job.name),
                          _DepStates(self.queue), now, self.options.reserve_after)
            mine = set(job.slot_ids)
            pick = next(((n, ids) for n, ids in result.starts if set(ids) <= mine), None)
            if pick is not None and pick[0] not in self._plain_only:
                queued = self._forget(pick[0])
                if queued is not None:
                    self._start(queued, pick[1], now, after=job)

    def _withdraw_handovers(self, before: tuple | None = None) -> None:
        """Take back hand-overs (all, or those that sort after ``before``)."""
        for job in self.running.values():
            if job.follows and not job.withdrawing and job.queued is not None and (
                    before is None or before < job.queued.sort_key):
                job.withdrawing = True
                try:
                    self._keeper().withdraw(job.name)
                except KeeperGone:
                    pass

    def _job_env(self, name: str, record: JobRecord) -> dict[str, str]:
        """What a job's environment adds to the dispatcher's (the keeper merges them)."""
        return {
            # NVML's (and nvidia-smi's) numbering; CUDA's default order may differ.
            "CUDA_DEVICE_ORDER": self._base_env.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
            "CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in record.gpus),
            "GPUDISPATCH_JOB": name,
            "GPUDISPATCH_ROOT": str(self.layout.root),
            "GPUDISPATCH_ATTEMPT": str(record.attempts),
            "GPUDISPATCH_LOG": record.log or "",
            METRICS_ENV: self.layout.metrics(name),
        }

    def _track(self, job: RunningJob) -> None:
        self.running[job.name] = job
        if job.pid is not None:
            self._by_pid[job.pid] = job.name

    def _untrack(self, job: RunningJob) -> None:
        self.running.pop(job.name, None)
        self._by_pid.pop(job.pid, None)
        if job.pidfd is not None:
            os.close(job.pidfd)
            job.pidfd = None

    # ------------------------------------------------------------------ endings
    def _keeper(self) -> Keeper:
        if self.keeper is None:
            self.keeper = Keeper(self.queue, self._base_env, self.owner,
                                 self.options.heartbeat)
            self.keeper.start()
        return self.keeper

    def _reap(self, now: float) -> None:
        if self.keeper is not None:
            try:
                messages = self.keeper.messages()
            except KeeperGone:
                messages = self._keeper_lost()
            for message in messages:
                self._on_keeper_message(message, now)
        while self._hooks:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if pid in self._hooks:
                self._hook_done(self._hooks.pop(pid), os.waitstatus_to_exitcode(status))
        for job in [j for j in self.running.values() if j.adopted]:
            if not runner.pid_alive(job.pid):
                code = runner.read_exit_file(self.layout.exit_file(job.name))
                if code is None and job.keeper_pid and runner.pid_alive(job.keeper_pid):
                    job.gone_at = job.gone_at or now
                    if now - job.gone_at < KEEPER_WRITE_GRACE_SECONDS:
                        continue  # its keeper is about to write the code
                self._ended(job, code)
        for job in self.running.values():
            if job.record_due is not None and now >= job.record_due and job.pid is not None:
                job.record_due = None
                self.queue.write_record(job.record)

    def _on_keeper_message(self, message, now: float) -> None:
        if isinstance(message, Exited):
            name = self._by_pid.get(message.pid)
            if name is not None:
                self._ended(self.running[name], message.code)
            return
        kind, name, detail = message
        job = self.running.get(name)
        if job is None:
            return
        if kind == "started":
            self._on_started(job, detail, now)
        elif kind == "claimed":  # handed over, but the script changed since we checked it
            self._untrack(job)
            self._heads.pop(name, None)
            try:
                launch = runner.check_script(
                    self.layout.script(JobState.RUNNING, name),
                    os.lstat(self.layout.script(JobState.RUNNING, name)),
                )
            except (FileNotFoundError, runner.ScriptRejected) as exc:
                self._reject(name, f"{name} {exc}", job.record)
                return
            job.follows = None
            self._track(job)
            self._keeper().spawn(SpawnRequest(
                name, launch.argv, self._job_env(name, job.record), job.record.log or "",
                self.layout.exit_file(name),
            ))
        elif kind in ("not-claimed", "withdrawn"):
            self._untrack(job)
            if kind == "not-claimed":
                self._drop_prepared_log(name)
            if kind == "withdrawn" and job.queued is not None:
                self._pending[name] = job.queued
                self._order_dirty = True
            self._wake_loop()
        else:  # "error": it could not start
            self._untrack(job)
            self._reject(name, f"could not start: {detail}", job.record)

    def _keeper_lost(self) -> list:
        """The keeper died under us: its jobs run on, unsupervised; watch them by pid."""
        self.log.error("The keeper process died; its running jobs can no longer report.")
        self.keeper = None
        for job in list(self.running.values()):
            if job.pid is None:  # never started: back to the schedule (or the queue)
                self._untrack(job)
                if job.follows and job.queued is not None:
                    self._pending[job.name] = job.queued
                    self._order_dirty = True
                elif self.queue.locate(job.name) is JobState.RUNNING:
                    self.queue.move(job.name, JobState.RUNNING, JobState.QUEUED)
            else:
                job.adopted, job.keeper_pid = True, None
        return []

    def _enforce_deadlines(self, now: float) -> None:
        for job in list(self.running.values()):
            if job.pid is None:
                continue
            if job.kill_at is not None and now >= job.kill_at:
                runner.kill_group(job.pid, signal.SIGKILL)
                job.kill_at = None
            elif job.deadline is not None and now >= job.deadline and not job.kill_reason:
                self.log.warning("%s timed out; stopping it", job.name)
                self._stop_job(job, "timeout", now)

    def _finish(self, job: RunningJob, code: int | None) -> None:
        self._ended(job, code)
        self._settle()

    def _ended(self, job: RunningJob, code: int | None) -> None:
        """Free a job's slots and log its end; the files follow in :meth:`_settle`.

        Split so that ``tick`` starts the next job before doing the bookkeeping of the
        last one: the writes overlap the next job's run instead of delaying it.
        """
        self._untrack(job)
        record = job.record
        record.ended_at = now_iso()
        record.exit_code = code
        cancelled = os.path.exists(self.layout.cancel_request(job.name))
        if cancelled:
            reason = "cancelled"
        elif job.kill_reason == "cold stop":
            reason = "cold stop: killed when the dispatcher stopped; requeued"
        elif job.kill_reason == "timeout":
            reason = f"timeout after {job.directives.timeout:g}s"
        elif code is None:
            reason = "ended while no dispatcher watched it, and left no exit code"
        elif code != 0 and record.log and runner.ran_out_of_gpu_memory(record.log):
            reason = "oom"
        else:
            reason = runner.describe_status(code)
        record.reason = reason
        if reason is None:
            self.log.info("%s returned %s", job.name, code)
        else:
            self.log.warning("%s returned %s", job.name, code if code is not None else reason)
        retry = job.kill_reason == "cold stop" or (
            reason is not None and not cancelled and record.attempts <= job.directives.retries
        )
        if reason == "oom":
            used = record.extra.get("oom_retries_used", 0)
            if used < job.directives.oom_retries:
                record.extra["oom_retries_used"] = used + 1
                retry = True
            if retry:  # run it again alone on a GPU: it did not fit beside others
                record.extra["run_alone"] = True
                self._run_alone.add(job.name)
        if not retry:
            self._run_alone.discard(job.name)
        self._ending.append((job, retry))

    def _settle(self) -> None:
        """Hand the ended jobs' records and moves to the writer thread.

        Creating a file costs 0.1 to 1 ms on the disks this runs on, more than a trivial
        job: written here, it would hold back the next job; in the writer thread it
        overlaps it. Moves stay ordered (one writer), and the loop is woken when done.
        """
        ending, self._ending = self._ending, []
        if ending:
            self._settling.update(job.name for job, _ in ending)
            future = self._writer.submit(self._write_endings, ending)
            # Wake the loop once the future is done, not from inside the task: woken
            # earlier, the loop would find it still pending and sleep until the next scan.
            future.add_done_callback(self._wake_loop)
            self._writes.append(future)

    def _wake_loop(self, _future: Future | None = None) -> None:
        try:
            os.write(self._wake_w, b"w")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (the loop is awake anyway), or closed at shutdown

    def _write_endings(self, ending: list[tuple[RunningJob, bool]]
                       ) -> tuple[list, list[str], list[str]]:
        """In the writer thread: record and move each job; what hooks to run after, and
        which jobs went back to the queue."""
        concluded, requeued = [], []
        for job, retry in ending:
            record = job.record
            if job.kill_reason == "cold stop":
                self._requeue(job.name, record, record.reason or "cold stop")
            elif retry:
                self.log.info(
                    "%s: retry %d of %d", job.name, record.attempts, job.directives.retries
                )
                self._requeue(job.name, record, f"{record.reason}; retrying")
                requeued.append(job.name)
            else:
                state = JobState.FAILED if record.reason else JobState.COMPLETED
                self._conclude(job.name, record, state)
                concluded.append((job.name, record, state))
            self._drop_exit_file(job)
            try:
                os.unlink(self.layout.cancel_request(job.name))
            except FileNotFoundError:
                pass
        return concluded, requeued, [job.name for job, _ in ending]

    def _collect_writes(self) -> None:
        """Run the hooks of finished writes (errors from the writer surface here)."""
        while self._writes and self._writes[0].done():
            concluded, requeued, names = self._writes.pop(0).result()
            self._settling.difference_update(names)
            # Retries are taken up now, not when their file event arrives: --drain must
            # not see an empty schedule and exit with them still queued.
            self._events.update(requeued)
            for done in concluded:
                self._run_hook(*done)

    def _drop_exit_file(self, job: RunningJob) -> None:
        """The outcome is recorded: its exit file may go (by the keeper that wrote it)."""
        exit_path = self.layout.exit_file(job.name)
        if not job.adopted and self.keeper is not None:
            try:
                self.keeper.forget(exit_path)
                return
            except KeeperGone:
                pass
        try:
            os.unlink(exit_path)
        except FileNotFoundError:
            pass

    def _conclude(self, name: str, record: JobRecord, state: JobState) -> None:
        self.queue.write_record(record)
        self.queue.move(name, JobState.RUNNING, state)
        if state is JobState.FAILED:
            self.failures += 1

    def _conclude_now(self, name: str, record: JobRecord, state: JobState) -> None:
        """Conclude a job that never ran (rejected, impossible), on this thread."""
        self._conclude(name, record, state)
        self._run_hook(name, record, state)

    def _requeue(self, name: str, record: JobRecord, reason: str) -> None:
        record.reason = reason
        record.extra["requeued"] = True
        self.queue.write_record(record)
        self.queue.move(name, JobState.RUNNING, JobState.QUEUED)

    # ------------------------------------------------------------------ hooks
    def _run_hook(self, name: str, record: JobRecord, state: JobState) -> None:
        command = self.options.on_finish
        if not command:
            return
        env = {
            **self._base_env,
            "GPUDISPATCH_JOB": name,
            "GPUDISPATCH_STATE": state.value,
            "GPUDISPATCH_EXIT_CODE": "" if record.exit_code is None else str(record.exit_code),
            "GPUDISPATCH_LOG": record.log or "",
            "GPUDISPATCH_REASON": record.reason or "",
            "GPUDISPATCH_ROOT": str(self.layout.root),
        }
        try:
            pid = os.posix_spawn(
                "/bin/sh", ["/bin/sh", "-c", command], env, setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # ignored by Python, not by hooks
            )
        except OSError as exc:
            self.log.warning("on-finish hook for %s could not start: %s", name, exc)
            return
        self._hooks[pid] = name

    def _hook_done(self, name: str, code: int) -> None:
        if code != 0:
            self.log.warning("on-finish hook for %s returned %s", name, code)

    # ------------------------------------------------------------------ restarts
    def reconcile(self) -> None:
        """Settle every job left in ``running/`` by dispatchers that are gone.

        A job whose supervisor wrote an exit code is concluded with it; one whose
        supervisor still runs is adopted (its slots stay busy until it ends); one that
        was cut off is put back in the queue, and its next run counts as an attempt.
        """
        for name in self.queue.names(JobState.QUEUED):
            if self.queue.read_record(name).extra.get("run_alone"):
                self._run_alone.add(name)
        self._settle_orphans(periodic=False)

    def _settle_orphans(self, periodic: bool = True) -> None:
        """Conclude, adopt or requeue the jobs in ``running/`` that no live dispatcher owns
        (at start, and at every heartbeat: a peer may die while we run)."""
        supervisors: dict[str, runner.FoundJob] | None = None
        others = peers.live_peers(self.layout, self.owner, self.options.heartbeat)
        for name in self.queue.names(JobState.RUNNING):
            if name in self.running or name in self._settling:
                continue
            record = self.queue.read_record(name)
            if record.backend != "local":
                continue  # Slurm runs it; the Slurm backend reconciles it
            if record.dispatcher in others:
                continue
            # Just claimed: its claimer may not have written the record yet. At our own
            # start with no peers, nobody can be claiming, and recovery need not wait.
            grace = min(peers.CLAIM_GRACE_SECONDS, 4 * self.options.heartbeat)
            if (others or periodic) and peers.recently_claimed(self.layout, name, grace):
                continue
            directives = Directives(**_directive_fields(record))
            code = runner.read_exit_file(self.layout.exit_file(name))
            if code is None and record.host in (None, HOST):
                if supervisors is None:
                    supervisors = runner.find_jobs(str(self.layout.exits))
                found = supervisors.get(name)
                if found is not None:
                    self._adopt(name, found, record, directives)
                    continue
            if code is not None:  # not our keeper's: its exit file is ours to remove
                job = RunningJob(name, record.pid or 0, [], record, directives, adopted=True)
                self.log.info("%s ended while no dispatcher was running", name)
                self._finish(job, code)
                continue
            self.log.warning("%s was cut off (its dispatcher died); requeued", name)
            self._requeue(name, record, "interrupted: its dispatcher stopped; requeued")

    def _adopt(
        self, name: str, found: runner.FoundJob, record: JobRecord, directives: Directives
    ) -> None:
        pid = found.pid
        gpus = record.gpus if record.pid == pid else found.gpus
        slot_ids = [i for i, g in enumerate(self.slots) if g is not None and g in gpus]
        if not gpus:
            states = self._slot_states()
            cpu = [i for i, g in enumerate(self.slots) if g is None and states[i].free]
            slot_ids = cpu[:1]
        record.pid = pid
        job = RunningJob(
            name, pid, slot_ids, record, directives, adopted=True, keeper_pid=found.parent
        )
        if directives.timeout:  # its limit still counts from when it started
            started = parse_iso(record.started_at)
            elapsed = time.time() - started.timestamp() if started else 0.0
            job.deadline = time.monotonic() + max(0.0, directives.timeout - elapsed)
        job.pidfd = runner.pidfd(pid)
        self._track(job)
        self.log.info("%s is still running (pid %d); waiting for it", name, pid)

    def _heartbeat(self, now: float) -> None:
        """Say we are alive, and settle what dispatchers that died meanwhile left behind."""
        first = self._next_heartbeat == 0.0
        self._next_heartbeat = now + self.options.heartbeat
        peers.heartbeat(self.layout, self.owner)
        if not first:
            self._settle_orphans()

    # ------------------------------------------------------------------ stopping
    def request_stop(self) -> None:
        self._stop_requests += 1
        self._withdraw_handovers()
        if self._stop_requests == 1:
            self.log.info(
                "Warm stop: no new jobs; waiting for %d running. Signal again to kill them.",
                len(self.running),
            )
        elif self._stop_requests == 2:
            self.log.warning("Cold stop: killing %d running jobs.", len(self.running))

    def _cold_stop(self) -> None:
        """Kill every running group; each goes back to the queue as it ends (``_ended``)."""
        self._cold_done = True
        now = time.monotonic()
        for job in self.running.values():
            self._stop_job(job, "cold stop", now)

    def _stop_job(self, job: RunningJob, why: str, now: float) -> None:
        """SIGTERM the job's group now and SIGKILL it after the grace period."""
        job.kill_reason = why
        job.kill_at = now + self.options.kill_grace
        if job.pid is not None:
            runner.kill_group(job.pid, signal.SIGTERM)

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        """Dispatch until stopped (or drained); the exit status: with ``--drain``, 1 when
        a job failed (as the Slurm backend does), else 0."""
        self.log.info("------------ Job Dispatcher Started ------------")
        self._heartbeat(time.monotonic())
        self._keeper()  # forked before the watcher's threads exist
        self.watcher = FolderWatcher([self.layout.queue])
        if not self.watcher.start():
            self.watcher.stop()
            self.watcher = None
        selector = selectors.DefaultSelector()
        previous = _install_signals(self, self._wake_w)
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if self.watcher is not None:
            selector.register(self.watcher.fileno(), selectors.EVENT_READ, "files")
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
        """Finish pending writes; release the keeper (it exits once its jobs have ended)."""
        self._writer.shutdown(wait=True)
        self._collect_writes()
        if self.keeper is not None:
            self.keeper.close()
            try:
                os.waitpid(self.keeper.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            self.keeper = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _wait(self, selector: selectors.BaseSelector) -> None:
        now = time.monotonic()
        wake_at = [self._next_scan, self._next_heartbeat]
        if self.gpus.probe is not None:
            wake_at.append(self.gpus.next_read)
        for job in self.running.values():
            wake_at += [t for t in (job.deadline, job.kill_at, job.record_due) if t is not None]
            if job.adopted and (job.pidfd is None or not runner.pid_alive(job.pid)):
                wake_at.append(now + 0.2)
        if self._unready:
            wake_at.append(now + 0.25)
        if self._pending and self.queue.is_paused():
            wake_at.append(now + 0.25)  # `resume` is an unlink, which no file event reports
        registered = {k.fd for k in selector.get_map().values()}
        if self.keeper is not None and self.keeper.fileno() not in registered:
            selector.register(self.keeper.fileno(), selectors.EVENT_READ, "keeper")
        for job in self.running.values():
            if job.pidfd is not None and job.pidfd not in registered:
                selector.register(job.pidfd, selectors.EVENT_READ, "pidfd")
        timeout = max(0.0, min(wake_at) - now)
        for key, _ in selector.select(timeout):
            if key.data == "wake":
                drain_pipe(self._wake_r)
            elif key.data == "files" and self.watcher is not None:
                self._events |= self.watcher.drain()
        wanted = {j.pidfd for j in self.running.values()}
        if self.keeper is not None:
            wanted.add(self.keeper.fileno())
        for key in list(selector.get_map().values()):
            if key.data in ("pidfd", "keeper") and key.fd not in wanted:
                selector.unregister(key.fd)


# ---------------------------------------------------------------------- helpers
def _create_empty(paths: list[str]) -> None:
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644))
        except OSError:
            pass


def _remove_if_empty(path: str) -> None:
    try:
        if os.stat(path).st_size == 0:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _directive_fields(record: JobRecord) -> dict:
    saved = dict(record.extra.get("directives") or {})
    if "after" in saved:
        saved["after"] = tuple(saved["after"])
    return saved


def _install_signals(dispatcher: Dispatcher, wake_w: int):
    """Handlers only count requests and wake the loop (the work happens in ``tick``)."""

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
