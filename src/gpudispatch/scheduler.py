"""Which queued jobs start now, on which slots (pure: no files, no clocks, no processes).

A slot is one GPU (its index) or one CPU-only slot (``None``). The rules:

- Order: higher ``--priority`` first; equal priorities in alphanumeric order of names.
- A plain job takes one free slot, the first in the dispatcher's slot order.
  ``--gpus K`` takes K GPU slots at once; ``--gpus 0`` takes one CPU-only slot.
- A job asking more than the dispatcher has fails at once (it would wait forever).
- ``--after`` jobs wait while a dependency is queued or running, and fail when one
  failed or does not exist.
- Backfill: a job that does not fit yet lets jobs behind it use the idle slots, but only
  for ``reserve_after`` seconds from when it was queued. After that it holds the line:
  nothing behind it starts until it has started, so big jobs are never starved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gpudispatch.job import Directives, JobState

DEFAULT_RESERVE_AFTER = 300.0


@dataclass(frozen=True)
class QueuedJob:
    name: str
    directives: Directives
    queued_at: float  # seconds, on the same clock as ``now``

    @property
    def sort_key(self) -> tuple[int, str]:
        return (-self.directives.priority, self.name)


@dataclass(frozen=True)
class Plan:
    starts: list[tuple[str, list[int]]]  # job name, indices into the slot list
    failures: list[tuple[str, str]]  # job name, reason


def _fits(need: int | None, free: list[int], slots: Sequence[int | None]) -> list[int] | None:
    if need is None:
        return free[:1] or None
    if need == 0:
        cpu = [i for i in free if slots[i] is None]
        return cpu[:1] or None
    gpu = [i for i in free if slots[i] is not None]
    return gpu[:need] if len(gpu) >= need else None


def impossible_reason(directives: Directives, slots: Sequence[int | None]) -> str | None:
    """Why a job can never start on these slots (checked once, when it is first seen)."""
    need = directives.gpus
    n_gpus = sum(s is not None for s in slots)
    if need is None:
        return None if slots else "this dispatcher has no slots"
    if need == 0 and n_gpus == len(slots):
        return "asks for a CPU-only slot (--gpus 0) but this dispatcher has none (see --slots)"
    if need > n_gpus:
        return f"asks for {need} GPUs but this dispatcher has {n_gpus}"
    return None


def dependency_verdict(after: Sequence[str], states: Mapping[str, JobState | None]) -> str | None:
    """``"wait"``, a failure reason, or None when every dependency completed."""
    waiting = False
    for dep in after:
        state = states.get(dep)
        if state is None:
            return f"dependency {dep} does not exist"
        if state is JobState.FAILED:
            return f"dependency {dep} failed"
        if state is not JobState.COMPLETED:
            waiting = True
    return "wait" if waiting else None


def plan(
    queued: Sequence[QueuedJob],
    slots: Sequence[int | None],
    free: Sequence[int],
    dep_states: Mapping[str, JobState | None],
    now: float,
    reserve_after: float = DEFAULT_RESERVE_AFTER,
) -> Plan:
    """Assign free slots to queued jobs, given in run order (sorted by ``sort_key``).

    Stops at the first moment no slot is left, so a tick costs what starts, not the
    length of the queue.
    """
    free_left = sorted(free)
    starts: list[tuple[str, list[int]]] = []
    failures: list[tuple[str, str]] = []
    for job in queued:
        if not free_left:
            break
        impossible = impossible_reason(job.directives, slots)
        if impossible:
            failures.append((job.name, impossible))
            continue
        verdict = dependency_verdict(job.directives.after, dep_states)
        if verdict == "wait":
            continue
        if verdict:
            failures.append((job.name, verdict))
            continue
        chosen = _fits(job.directives.gpus, free_left, slots)
        if chosen is None:
            if now - job.queued_at >= reserve_after:
                free_left = []  # hold the line for this job
            continue
        starts.append((job.name, chosen))
        free_left = [i for i in free_left if i not in chosen]
    return Plan(starts, failures)
