"""Nothing a job started outlives it: a running job is moved into its cgroup after a
moment (``cgroups.ENCLOSE_AFTER_SECONDS``); when it ends, its cgroup is removed and the
daemons found among our children (we are their subreaper: without a cgroup, or before the
job was moved into one) are killed. Its process group is ended where its end is told
(``procs.end_leftovers``)."""

from __future__ import annotations

import functools
import logging
import signal
from collections.abc import Callable, Collection, Iterable

from gpudispatch import cgroups, descendants, procs
from gpudispatch.cgroups import Containment
from gpudispatch.dispatcher.running import Phase, RunningJob

SWEEP_SECONDS = 1.0  # while jobs run: daemons reparented late, zombies of ended ones
SWEEP_AGAIN_SECONDS = 0.05  # after a kill: its zombie, and children it left
CGROUP_RETRY_SECONDS = 1.0


def enclose_at(job: RunningJob) -> float:
    """When a running job is moved into its cgroup (never: inf)."""
    if (job.cgroup is None or job.enclosed or job.pid is None or job.began is None
            or job.phase not in (Phase.RUNNING, Phase.STOPPING)):
        return float("inf")
    return job.began + cgroups.ENCLOSE_AFTER_SECONDS


class Leftovers:
    """``live``: (name, attempt) of the runs still going; ``ours``: the children we wait
    for ourselves (monitors, the keeper, hooks), never taken for a job's daemon;
    ``oldest``: the earliest start of a live monitor or hook (see ``descendants.sweep``)."""

    def __init__(self, containment: Containment, log: logging.Logger,
                 live: Callable[[], Collection[tuple[str, int]]],
                 ours: Callable[[], Collection[int]],
                 oldest: Callable[[], int | None] = lambda: None, real: bool = True) -> None:
        self.containment = containment
        self._log = log
        self._live = live
        self._ours = ours
        self._oldest = oldest
        # Daemons are reparented to us when their parent ends: without a cgroup, and
        # before a job is moved into one (not in tests with a fake launcher: the test
        # process is no one's subreaper).
        self.sweeping = real and descendants.become_subreaper()
        # Listing our children costs a /proc scan where the kernel does not list them:
        # then only the end of a job that ran a second or more (not each of a drain of
        # trivial ones) is swept at once; others within a second, by the periodic sweep.
        self._sweep_any_end = descendants.cheap_listing()
        self._next_sweep = 0.0
        self._sweep_soon = False  # after a kill: its zombie to reap, its children to find
        self._cgroups: list[str] = []  # killed, not yet empty: removed when they are
        self._next_cgroup_try = 0.0

    @property
    def busy(self) -> bool:
        """Something to do even with no job running."""
        return self._sweep_soon or bool(self._cgroups)

    @property
    def next_due(self) -> float | None:
        due = [self._next_sweep] if self.sweeping else []
        if self._cgroups:
            due.append(self._next_cgroup_try)
        return min(due) if due else None

    def ended(self, cgroup: str | None, now: float, ran_for: float) -> None:
        """A job is over (and no longer live): kill what is left of it, this tick (its
        cgroup now; the daemons it left at the ``contain`` step, once for all the jobs
        that ended in the tick)."""
        # Empty once its monitor killed it and waited; if not (its monitor was killed),
        # kill it now and remove it once the kernel has reaped the last process.
        if cgroup and not cgroups.remove(cgroup):
            cgroups.signal_all(cgroup, signal.SIGKILL)
            if not self._cgroups:
                self._next_cgroup_try = now + CGROUP_RETRY_SECONDS
            self._cgroups.append(cgroup)
        if self.sweeping and (self._sweep_any_end or ran_for >= SWEEP_SECONDS):
            self._next_sweep = min(self._next_sweep, now)

    def close(self) -> None:
        """At exit: a last sweep (the daemons of jobs still running are spared; once we
        are gone, theirs go to init); the cgroups whose last processes were still dying,
        if gone by now (any left are removed by the next dispatcher)."""
        if self.sweeping:
            self._sweep(0.0)
        self._cgroups = [c for c in self._cgroups if not cgroups.remove(c)]

    def tick(self, now: float, running: Iterable[RunningJob]) -> None:
        for job in running:
            if enclose_at(job) <= now:
                job.enclosed = True
                assert job.cgroup is not None and job.pid is not None
                cgroups.enclose(job.cgroup, functools.partial(
                    procs.job_processes, job.pid, job.name, cgroups.run_of(job.cgroup),
                    job.started, procs.monitor_inline(job.pid)))
        if self._cgroups and now >= self._next_cgroup_try:
            self._cgroups = [c for c in self._cgroups if not cgroups.remove(c)]
            self._next_cgroup_try = now + CGROUP_RETRY_SECONDS
        if self.sweeping and now >= self._next_sweep:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        killed = descendants.sweep(self._live(), self._ours(), self._oldest())
        if killed:
            self._log.info("Killed %d process(es) left by ended jobs (pids %s)",
                           len(killed), ", ".join(map(str, killed[:10])))
        self._sweep_soon = bool(killed)
        self._next_sweep = now + (SWEEP_AGAIN_SECONDS if killed else SWEEP_SECONDS)
