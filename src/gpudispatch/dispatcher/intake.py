"""Discovery of queued jobs: which files are new, complete, and in what order they run.

Holds the pending jobs in memory (sorted once per change, so a tick costs what starts,
not the queue's length), and the files still being written.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpudispatch.job import DirectiveError, Directives, JobState, parse_directives
from gpudispatch.layout import is_job_name, name_problem
from gpudispatch.scheduler import QueuedJob
from gpudispatch.store import FolderQueue
from gpudispatch.watch import read_if_complete


@dataclass
class _Unready:
    size: int
    mtime: int
    seen: float


class Intake:
    def __init__(self, queue: FolderQueue, wait: float,
                 impossible: Callable[[Directives, str], str | None]) -> None:
        self.queue = queue
        self.layout = queue.layout
        self.wait = wait
        self._impossible = impossible
        self.pending: dict[str, QueuedJob] = {}
        self.run_alone: set[str] = set()  # requeued after running out of GPU memory
        self._order: list[QueuedJob] = []
        self._dirty = False
        self._unready: dict[str, _Unready] = {}
        self._heads: dict[str, tuple[int, int, bytes]] = {}  # name -> size, mtime, head
        self.events: set[str] = set()
        self.gone: list[str] = []  # pending jobs whose file went away (taken by the loop)
        self.next_scan = 0.0

    @property
    def waiting(self) -> bool:
        """Files seen but not yet complete."""
        return bool(self._unready)

    def discover(self, now: float, busy: Callable[[str], bool], watched: bool
                 ) -> tuple[list[str], list[tuple[str, str]]]:
        """New complete jobs (sorted), and ``(name, reason)`` for files that cannot run."""
        names: Iterable[str] | None = None
        if now >= self.next_scan:
            self.next_scan = now + (max(self.wait, 10) if watched else self.wait)
            names = self._scan()
        elif self.events or self._unready:
            names = self.events | set(self._unready)
        if names is None:
            return [], []
        self.events = set()
        added, rejected = [], []
        for name in names:
            if name in self.pending or busy(name) or not is_job_name(name):
                continue
            verdict = self._consider(name, now)
            if isinstance(verdict, str):
                rejected.append((name, verdict))
            elif verdict:
                added.append(name)
        if added:
            self._dirty = True
        return sorted(added), rejected

    def _scan(self) -> list[str]:
        names = self.queue.names(JobState.QUEUED)
        present = set(names)
        gone = [name for name in self.pending if name not in present]
        for name in gone:
            del self.pending[name]
        self.gone.extend(gone)
        if gone:
            self._dirty = True
        return names

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
        elif not complete:
            self._unready.setdefault(name, _Unready(st.st_size, st.st_mtime_ns, now))
            return False
        self._unready.pop(name, None)
        self._heads[name] = (st.st_size, st.st_mtime_ns, head)
        try:
            directives = parse_directives(head.decode(errors="replace"))
            reason = self._impossible(directives, name)
        except DirectiveError as exc:
            reason = str(exc)
        if reason:
            self._heads.pop(name, None)
            return reason
        self.pending[name] = QueuedJob(name, directives, now, alone=name in self.run_alone)
        return True

    def order(self) -> list[QueuedJob]:
        """The pending jobs in run order, sorted again only after the set changed."""
        if self._dirty:
            self._order = sorted(self.pending.values(), key=lambda j: j.sort_key)
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
        self._dirty = True

    def head(self, name: str) -> tuple[int, int, bytes]:
        """The size, mtime and header read when it was found (-1s if not kept)."""
        return self._heads.pop(name, (-1, -1, b""))
