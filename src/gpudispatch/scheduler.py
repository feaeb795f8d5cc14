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
- Packing: a job with ``--gpu-mem M`` shares a GPU with other such jobs while their
  declared sums fit the memory left by processes outside the queue (best fit: the GPU
  with the least room that still fits, so large holes stay for large jobs). A job
  without it takes its GPU whole. A GPU that foreign processes hold is not used.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

from gpudispatch.job import Directives, JobState

DEFAULT_RESERVE_AFTER = 300.0


@dataclass(frozen=True)
class QueuedJob:
    name: str
    directives: Directives
    queued_at: float  # seconds, on the same clock as ``now``
    alone: bool = False  # after running out of memory: take the GPU whole

    @property
    def sort_key(self) -> tuple[int, str]:
        return (-self.directives.priority, self.name)

    @property
    def gpu_mem(self) -> int | None:
        return None if self.alone else self.directives.gpu_mem


def run_order(job: QueuedJob) -> tuple[int, str]:
    """The key that sorts queued jobs in run order (for ``sorted`` and ``bisect``)."""
    return job.sort_key


@dataclass(frozen=True)
class SlotState:
    """What occupies one slot now, and what its GPU can still hold."""

    jobs: int = 0
    exclusive: bool = False  # a job without --gpu-mem holds it whole
    reserved: int = 0  # bytes declared by the packed jobs on it
    capacity: int | None = None  # bytes packed jobs may use (total less foreign); None: unknown
    total: int | None = None  # the GPU's memory, when known
    blocked: str | None = None  # why processes outside the queue make it unusable

    @property
    def free(self) -> bool:
        return self.jobs == 0 and not self.blocked

    def room(self) -> int:
        return (self.capacity or 0) - self.reserved

    def with_job(self, gpu_mem: int | None) -> SlotState:
        return replace(
            self,
            jobs=self.jobs + 1,
            exclusive=self.exclusive or gpu_mem is None,
            reserved=self.reserved + (gpu_mem or 0),
        )


@dataclass(frozen=True)
class Plan:
    starts: list[tuple[str, list[int]]]  # job name, indices into the slot list
    failures: list[tuple[str, str]]  # job name, reason


def _fits(job: QueuedJob, slots: Sequence[int | None], states: Sequence[SlotState]
          ) -> list[int] | None:
    need, mem = job.directives.gpus, job.gpu_mem
    if mem is not None and need != 0:
        def packable(i: int) -> bool:
            st = states[i]
            if slots[i] is None or st.blocked or st.exclusive:
                return False
            if st.capacity is None:  # memory unknown: no sharing, a free GPU only
                return st.jobs == 0
            return st.room() >= mem

        fitting = sorted((i for i in range(len(slots)) if packable(i)),
                         key=lambda i: (states[i].room(), i))
        k = need or 1
        return sorted(fitting[:k]) if len(fitting) >= k else None
    free = [i for i in range(len(slots)) if states[i].free]
    if need is None:
        return free[:1] or None
    if need == 0:
        cpu = [i for i in free if slots[i] is None]
        return cpu[:1] or None
    gpu = [i for i in free if slots[i] is not None]
    return gpu[:need] if len(gpu) >= need else None


def impossible_reason(
    directives: Directives,
    slots: Sequence[int | None],
    totals: Sequence[int | None] = (),
    name: str | None = None,
) -> str | None:
    """Why a job can never start on these slots (checked once, when it is first seen).

    ``totals`` are the GPUs' memory sizes, slot by slot, where known. With the job's
    ``name``, a job that waits for itself (``--after`` its own name) is impossible too.
    """
    if name is not None and name in directives.after:
        return self_dependency_reason(name)
    need = directives.gpus
    n_gpus = sum(s is not None for s in slots)
    known = [t for t in totals if t is not None]
    if directives.gpu_mem and known and len(known) == n_gpus and directives.gpu_mem > max(known):
        return (f"asks for {directives.gpu_mem / 2**30:.1f} GiB of GPU memory but the largest "
                f"GPU here has {max(known) / 2**30:.1f} GiB")
    if need is None:
        return None if slots else "this dispatcher has no slots"
    if need == 0 and n_gpus == len(slots):
        return "asks for a CPU-only slot (--gpus 0) but this dispatcher has none (see --slots)"
    if need > n_gpus:
        return f"asks for {need} GPUs but this dispatcher has {n_gpus}"
    return None


def self_dependency_reason(name: str) -> str:
    return f"depends on itself (--after {name})"


def cycle_reason(cycle: Sequence[str]) -> str:
    """The failure reason of each job of a dependency cycle, naming the whole cycle."""
    if len(cycle) == 1:
        return self_dependency_reason(cycle[0])
    return "dependency cycle: " + " -> ".join([*cycle, cycle[0]])


def find_cycle(
    start: str,
    after_of: Callable[[str], Sequence[str] | None],
    done: set[str] | None = None,
) -> list[str] | None:
    """A dependency cycle reachable from ``start``, as the jobs in it in ``--after`` order
    (``[a, b]`` for a -> b -> a; ``[a]`` for a job after itself), or None.

    ``after_of(name)`` gives a job's ``--after`` list, or None for a job that will not wait
    any more (not queued: running, ended, missing), which ends that path. ``done`` collects
    the jobs known to lead to no cycle; pass the same set to later calls and each job is
    visited once in all, so checking every waiting job costs what they reach, once.
    """
    path: list[str] = []
    on_path: dict[str, int] = {}
    done = set() if done is None else done
    if start in done:
        return None
    # Iterative depth-first search: a chain of thousands of --after must not overflow.
    stack: list[tuple[str, Iterator[str]]] = []

    def enter(node: str) -> bool:
        deps = after_of(node)
        if deps is None:
            done.add(node)
            return False
        on_path[node] = len(path)
        path.append(node)
        stack.append((node, iter(deps)))
        return True

    enter(start)
    while stack:
        node, deps = stack[-1]
        dep = next(deps, None)
        if dep is None:
            stack.pop()
            path.pop()
            del on_path[node]
            done.add(node)
            continue
        if dep in on_path:
            return path[on_path[dep]:]
        if dep not in done:
            enter(dep)
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
    states: Sequence[SlotState],
    dep_states: Mapping[str, JobState | None],
    now: float,
    reserve_after: float = DEFAULT_RESERVE_AFTER,
) -> Plan:
    """Assign slots to queued jobs, given in run order (sorted by ``sort_key``).

    Stops once no slot has room left, so a tick costs what starts, not the length of
    the queue. What it assigns is reserved at once: two jobs placed together never
    count the same free memory.
    """
    states = list(states)
    starts: list[tuple[str, list[int]]] = []
    failures: list[tuple[str, str]] = []
    failed: set[str] = set()
    waiting_on: dict[str, Sequence[str]] | None = None  # built at the first job that waits
    acyclic: set[str] = set()

    def after_of(name: str) -> Sequence[str] | None:
        assert waiting_on is not None
        return None if name in failed else waiting_on.get(name)

    for job in queued:
        if not any(st.free or (st.capacity and not st.exclusive and st.room() > 0)
                   for st in states):
            break
        if job.name in failed:
            continue
        impossible = impossible_reason(job.directives, slots, name=job.name)
        if impossible:
            failed.add(job.name)
            failures.append((job.name, impossible))
            continue
        verdict = dependency_verdict(job.directives.after, dep_states)
        if verdict == "wait":
            # A job waiting on a cycle would wait forever (and --drain never end): fail
            # every job of the cycle now, the reason naming it. The map of who waits on
            # whom is built once per call, and only when some job waits.
            if waiting_on is None:
                waiting_on = {j.name: j.directives.after for j in queued}
            cycle = find_cycle(job.name, after_of, acyclic)
            if cycle:
                reason = cycle_reason(cycle)
                for name in cycle:
                    failed.add(name)
                    failures.append((name, reason))
            continue
        if verdict:
            failed.add(job.name)
            failures.append((job.name, verdict))
            continue
        chosen = _fits(job, slots, states)
        if chosen is None:
            if now - job.queued_at >= reserve_after:
                break  # hold the line for this job
            continue
        starts.append((job.name, chosen))
        for i in chosen:
            states[i] = states[i].with_job(job.gpu_mem)
    return Plan(starts, failures)
