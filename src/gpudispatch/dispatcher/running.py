"""A job this dispatcher runs or watches, with its life as explicit phases.

As supervisor's process states: every change of phase goes through :meth:`RunningJob.to`,
which refuses a transition that makes no sense, so a bug shows as an error at once
instead of a job quietly stuck in a slot.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass

from gpudispatch.job import Directives, JobRecord
from gpudispatch.scheduler import QueuedJob


class Phase(enum.Enum):
    HANDED_OVER = "handed over"  # waits in the keeper to follow a running job
    SPAWNING = "spawning"  # asked of the keeper, not yet started
    RUNNING = "running"  # its monitor runs
    STOPPING = "stopping"  # signalled (timeout, cancel, cold stop); its end follows


_ALLOWED = {
    Phase.HANDED_OVER: {Phase.RUNNING},
    Phase.SPAWNING: {Phase.RUNNING},
    Phase.RUNNING: {Phase.STOPPING},
    Phase.STOPPING: set(),
}


@dataclass(eq=False)
class RunningJob:
    name: str
    slot_ids: list[int]
    record: JobRecord
    directives: Directives
    phase: Phase
    lock_fd: int | None = None  # our hold on the job's lock (None: its monitor holds it alone)
    queued: QueuedJob | None = None  # as it was queued (to give it back)
    alone: bool = False  # runs alone on its GPU after running out of memory
    pid: int | None = None  # its monitor's
    started: int | None = None  # its monitor's start time: the identity with the pid
    cgroup: str | None = None  # its own cgroup v2, when the dispatcher can make one
    enclosed: bool = False  # moved into its cgroup (after a moment: see cgroups.ENCLOSE_AFTER)
    began: float | None = None  # when it started here (monotonic)
    deadline: float | None = None
    kill_reason: str | None = None
    kill_at: float | None = None
    record_due: float | None = None  # when its start record is written, if still running
    watched: bool = False  # its end is seen by polling its processes, not told by a keeper
    pidfd: int | None = None  # for watched jobs: readable when the monitor exits
    ended_at: float | None = None  # its end written, its cgroup's last processes dying
    variants: dict[int, list[int]] | None = None  # HANDED_OVER: followed pid -> slots
    after_job: str | None = None  # HANDED_OVER in a chain: the hand-over it follows
    withdrawing: bool = False  # a HANDED_OVER job we asked back

    def to(self, phase: Phase) -> None:
        if phase not in _ALLOWED[self.phase]:
            raise AssertionError(f"{self.name}: {self.phase.value} -> {phase.value}")
        self.phase = phase

    @property
    def started_here(self) -> bool:
        """Its monitor has started (it has a pid), handed over or not."""
        return self.pid is not None

    @property
    def cgroup_in_use(self) -> str | None:
        """Its cgroup if it may exist: we moved the job in, or (adopted) a dispatcher before
        us may have. A job that ended sooner has none to kill or remove."""
        return self.cgroup if self.enclosed or self.watched else None

    @property
    def gpu_mem(self) -> int | None:
        return None if self.alone else self.directives.gpu_mem

    def release(self) -> None:
        """Close what it holds: its pidfd, and our hold on its lock."""
        for fd in (self.pidfd, self.lock_fd):
            if fd is not None:
                os.close(fd)
        self.pidfd = self.lock_fd = None
