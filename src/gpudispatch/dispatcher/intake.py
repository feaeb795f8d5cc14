"""Discovery of queued jobs: which files are new, complete, and in what order they run.

Holds the pending jobs in memory (sorted once per change, so a tick costs what starts,
not the queue's length), the files still being written, and the names dropped again
while a job of that name runs (they wait for it: one run of a name at a time).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpudispatch.job import DirectiveError, Directives, JobState, parse_directives
from gpudispatch.layout import is_job_name, name_problem, printable
from gpudispatch.scheduler import QueuedJob, run_order
from gpudispatch.scriptcheck import owner_problem
from gpudispatch.store import FolderQueue
from gpudispatch.watch import open_for_writing, read_if_complete

# A file some process still holds open for writing is looked at again when a file event
# (IN_CLOSE_WRITE) names it; this often without one (events can be missed).
WRITER_RECHECK_SECONDS = 10.0


@dataclass
class _Unready:
    size: int
    mtime: int
    seen: float
    writer_seen: float | None = None  # when /proc last showed it open for writing


DISCOVER_BATCH = 2000  # files looked at per step of the loop
# ... and while nothing is pending: a first small bite, so a dispatcher started on a
# sweep-sized queue starts its first jobs before it has read 2,000 files.
DISCOVER_FIRST = 200


class Intake:
    def __init__(self, queue: FolderQueue, wait: float,
                 impossible: Callable[[Directives, str], str | None],
                 allow_others: bool = False, log: logging.Logger | None = None) -> None:
        self.queue = queue
        self.log = log or logging.getLogger("gpudispatch")
        self.allow_others = allow_others  # run scripts other users own (``run`` flag)
        self.layout = queue.layout
        self.wait = wait
        self._impossible = impossible
        self.pending: dict[str, QueuedJob] = {}
        self.run_alone: set[str] = set()  # requeued after running out of GPU memory
        self._order: list[QueuedJob] = []
        self._dirty = False  # _order is to be sorted again from pending
        self._new: list[QueuedJob] = []  # added since (see order())
        self._unready: dict[str, _Unready] = {}
        self._heads: dict[str, tuple[int, int, bytes]] = {}  # name -> size, mtime, head
        self.events: set[str] = set()
        self._woken: set[str] = set()  # the names file events brought to this discovery
        self._blocked: set[str] = set()  # queued while a job of the same name runs
        self._watched = False
        self.gone: list[str] = []  # pending jobs whose file went away (taken by the loop)
        self.next_scan = 0.0
        # Names seen but not yet looked at: a folder of 100,000 new files is read
        # DISCOVER_BATCH at a time, with the loop's steps between, so the first jobs start
        # before the last files are read (their priorities count from then on).
        self.backlog: list[str] = []

    @property
    def waiting(self) -> bool:
        """Files seen but not yet complete, or waiting for their name's running job."""
        return bool(self._unready or self._blocked)

    def discover(self, now: float, busy: Callable[[str], bool], watched: bool
                 ) -> tuple[list[str], list[tuple[str, str]]]:
        """New complete jobs (sorted), and ``(name, reason)`` for files that cannot run."""
        names: Iterable[str] | None = None
        self._watched = watched
        if now >= self.next_scan:
            self.next_scan = now + (max(self.wait, 10) if watched else self.wait)
            names = self._scan()
        elif self.events or self._unready or self._blocked:
            names = self.events | set(self._unready) | self._blocked
        if names is None and not self.backlog:
            return [], []
        if names is not None:
            self._woken, self.events = self.events, set()
            fresh = {n for n in names if n not in self.pending}
            self.backlog = sorted(fresh) + [n for n in self.backlog if n not in fresh]
        size = DISCOVER_BATCH if self.pending else DISCOVER_FIRST
        batch, self.backlog = self.backlog[:size], self.backlog[size:]
        added, rejected = [], []
        for name in batch:
            self._blocked.discard(name)
            if name in self.pending or not is_job_name(name):
                continue
            if busy(name):  # dropped again while it runs: it waits for that run's end
                self.block(name)
                continue
            verdict = self._consider(name, now)
            if isinstance(verdict, str):
                rejected.append((name, verdict))
            elif verdict:
                added.append(name)
        self._new.extend(self.pending[name] for name in added)
        return sorted(added), rejected

    def _scan(self) -> list[str]:
        names = self.queue.names(JobState.QUEUED, ordered=False)  # discover sorts what is new
        present = set(names)
        self._blocked &= present
        gone = [name for name in self.pending if name not in present]
        for name in gone:
            del self.pending[name]
        self.gone.extend(gone)
        if gone:
            self._dirty = True
        return names

    def block(self, name: str) -> None:
        """Look at a queued name again at every discovery: a job of that name runs (here,
        or under another dispatcher, whose claim then fails)."""
        if os.path.lexists(self.layout.script(JobState.QUEUED, name)):
            self._blocked.add(name)

    def _consider(self, name: str, now: float) -> bool | str:
        """True once a new file is completely written (and queued); a reason if it can
        never run; False to look again later."""
        problem = name_problem(name)
        if problem:
            return problem
        path = self.layout.script(JobState.QUEUED, name)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            self._unready.pop(name, None)
            return False
        if os.path.lexists(self.layout.script(JobState.RUNNING, name)):
            self._blocked.add(name)  # its name runs (another dispatcher's): after that
            return False
        complete, head = read_if_complete(path, st)
        if complete is None:  # no leases here: wait for size and mtime to stay still
            before = self._unready.get(name)
            stable = (
                before is not None
                and (before.size, before.mtime) == (st.st_size, st.st_mtime_ns)
                and now - before.seen >= min(self.wait, 1.0)
            )
            if not stable:
                if before is None or (before.size, before.mtime) != (st.st_size, st.st_mtime_ns):
                    self._unready[name] = _Unready(st.st_size, st.st_mtime_ns, now)
                return False
            assert before is not None
            if self._writer_holds(name, before, st, now):
                return False
        elif not complete:
            self._unready.setdefault(name, _Unready(st.st_size, st.st_mtime_ns, now))
            return False
        self._unready.pop(name, None)
        problem = owner_problem(st, self.allow_others)
        if problem:
            return problem
        self._heads[name] = (st.st_size, st.st_mtime_ns, head)
        try:
            directives = parse_directives(head.decode(errors="replace"))
            reason = self._impossible(directives, name)
        except DirectiveError as exc:
            reason = str(exc)
        if reason:
            self._heads.pop(name, None)
            return reason
        self.pending[name] = QueuedJob(name, directives, now, alone=self._alone(name, directives))
        return True

    def _alone(self, name: str, directives: Directives) -> bool:
        """Whether it runs alone on its GPU (it ran out of memory sharing one). Only a job
        that shares GPUs (``--gpu-mem``) can; only its record says so after a restart, and
        only its record is read: a queue of 100,000 is not read twice at start."""
        if name in self.run_alone:
            return True
        if directives.gpu_mem is None:
            return False
        if self.queue.read_record(name).extra.get("run_alone"):
            self.run_alone.add(name)
            return True
        return False

    def _writer_holds(self, name: str, seen: _Unready, st: os.stat_result,
                      now: float) -> bool:
        """Whether a file about to be taken (no lease said so, but it stayed still) is still
        open for writing: a writer may pause for longer than we wait. ``/proc`` is read
        again only when a file event names it (it was closed), or now and then."""
        if seen.writer_seen is not None and name not in self._woken:
            again = WRITER_RECHECK_SECONDS if self._watched else max(self.wait, 1.0)
            if now - seen.writer_seen < again:
                return True
        writer = open_for_writing(self.layout.script(JobState.QUEUED, name), st)
        if writer is None:
            return False
        if seen.writer_seen is None:
            self.log.info("%s is still open for writing (pid %d); waiting until it is closed",
                          printable(name), writer)
        seen.writer_seen = now
        return True

    def order(self) -> list[QueuedJob]:
        """The pending jobs in run order, sorted again only after the set changed; jobs
        added after all the others (a bulk submission's, arriving while the first ones
        run) are appended, not sorted in again with the rest (once a tick, that was a
        sort of the whole queue a job)."""
        if self._new and not self._dirty:
            new = sorted((j for j in self._new if self.pending.get(j.name) is j),
                         key=run_order)
            if not new or not self._order or new[0].sort_key > self._order[-1].sort_key:
                self._order.extend(new)
            else:
                self._dirty = True
        self._new = []
        if self._dirty:
            self._order = sorted(self.pending.values(), key=run_order)
            self._dirty = False
        return self._order

    def take(self, name: str) -> QueuedJob | None:
        job = self.pending.pop(name, None)
        if job is not None:
            try:
                self._order.remove(job)
            except ValueError:
                pass
        return job

    def give_back(self, job: QueuedJob) -> None:
        self.pending[job.name] = job
        self._new.append(job)

    def head(self, name: str) -> tuple[int, int, bytes]:
        """The size, mtime and header read when it was found (-1s if not kept)."""
        return self._heads.pop(name, (-1, -1, b""))
