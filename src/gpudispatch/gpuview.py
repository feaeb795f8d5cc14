"""What the GPUs hold, as the dispatcher last read them, and the slot states it implies.

Kept apart from the loop: the dispatcher asks for slot states (occupants from its
running jobs, room and foreign holders from the last NVML reading) and gets plain
``SlotState`` values for the pure scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from gpudispatch.gpus import (
    DEFAULT_BUSY_THRESHOLD,
    GpuInfo,
    GpuProbe,
    descendant_pids,
    foreign_used_bytes,
    format_bytes,
)
from gpudispatch.layout import Layout
from gpudispatch.report import write_gpu_report
from gpudispatch.scheduler import SlotState


class PlacedJob(Protocol):
    name: str
    pid: int | None
    slot_ids: list[int]

    @property
    def gpu_mem(self) -> int | None: ...


class GpuView:
    def __init__(
        self,
        probe: GpuProbe | None,
        respect_foreign: bool = True,
        threshold: int = DEFAULT_BUSY_THRESHOLD,
        poll: float = 5.0,
    ) -> None:
        self.probe = probe
        self.respect_foreign = respect_foreign
        self.threshold = threshold
        self.poll = poll
        self.next_read = 0.0
        self._info: dict[int, GpuInfo] = {}
        self._foreign: dict[int, int] = {}  # GPU -> bytes held outside the queue
        self._blocked: dict[int, str] = {}  # GPU -> why foreign processes make it busy
        self._own_pids: set[int] = set()

    def due(self, now: float) -> bool:
        return self.probe is not None and now >= self.next_read

    def read(self, now: float, jobs: Iterable[PlacedJob]) -> None:
        """Read the GPUs; memory of processes outside ``jobs``' trees counts as foreign.

        Raises ``GpuProbeError`` (the last reading stays).
        """
        self.next_read = now + self.poll
        infos = self.probe.snapshot()
        own = descendant_pids(j.pid for j in jobs if j.pid)
        self._info = {info.index: info for info in infos}
        self._foreign, self._blocked, self._own_pids = {}, {}, own
        for info in infos:
            foreign = foreign_used_bytes(info, own)
            self._foreign[info.index] = foreign
            if self.respect_foreign and foreign >= self.threshold:
                holders = sorted({p.user or "?" for p in info.processes if p.pid not in own})
                self._blocked[info.index] = (
                    f"{format_bytes(foreign)} held by {', '.join(holders) or 'other processes'}"
                )

    def totals(self, slots: Sequence[int | None]) -> list[int | None]:
        return [self._info[g].memory_total if g in self._info else None for g in slots]

    def slot_states(
        self, slots: Sequence[int | None], jobs: Iterable[PlacedJob], without: str | None = None
    ) -> list[SlotState]:
        """Each slot's occupants and room (as if job ``without`` had ended)."""
        jobs_on: dict[int, list[PlacedJob]] = {}
        for job in jobs:
            if job.name != without:
                for i in job.slot_ids:
                    jobs_on.setdefault(i, []).append(job)
        states = []
        for i, gpu in enumerate(slots):
            here = jobs_on.get(i, [])
            info = self._info.get(gpu) if gpu is not None else None
            states.append(SlotState(
                jobs=len(here),
                exclusive=any(j.gpu_mem is None for j in here),
                reserved=sum(j.gpu_mem or 0 for j in here),
                capacity=info.memory_total - self._foreign.get(gpu, 0) if info else None,
                total=info.memory_total if info else None,
                blocked=self._blocked.get(gpu),
            ))
        return states

    def report(self, layout: Layout, running: Iterable) -> None:
        """Save the reading and what runs where, for ``gpudispatch status``."""
        if self.probe is not None and self._info:
            write_gpu_report(layout, self._info.values(), self._own_pids, self._blocked,
                             running)
