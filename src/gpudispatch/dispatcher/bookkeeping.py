"""The writer thread: records and moves of ended jobs, off the next job's path.

Creating a file costs 0.1 to 1 ms on the disks this runs on, more than a trivial job;
done on the loop, it would hold back the next start. The thread takes plain data (a
:class:`Settlement` it then owns), calls the store, and returns what happened; it never
touches the dispatcher's state. One thread keeps the moves in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from gpudispatch.job import JobRecord, JobState
from gpudispatch.store import FolderQueue


@dataclass
class Settlement:
    """One ended run to write: its record, where the script goes, and the lock to let go
    once it has moved (so no one sees it unowned in ``running/`` meanwhile)."""

    name: str
    record: JobRecord
    state: JobState  # COMPLETED, FAILED, or QUEUED to run again
    lock_fd: int | None


@dataclass(frozen=True)
class Settled:
    name: str
    record: JobRecord
    state: JobState
    moved: bool  # False: it was not in running/ any more (someone else concluded it)


class Writer:
    def __init__(self, queue: FolderQueue, on_done: Callable[[], None]) -> None:
        self._queue = queue
        self._on_done = on_done
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpudispatch-writer")
        self._futures: list[Future] = []

    @property
    def busy(self) -> bool:
        return bool(self._futures)

    def settle(self, settlements: list[Settlement]) -> None:
        future = self._pool.submit(_settle, self._queue, settlements)
        # Wake the loop once the future is done, not from inside the task: woken
        # earlier, the loop would find it still pending and sleep on.
        future.add_done_callback(lambda _f: self._on_done())
        self._futures.append(future)

    def run(self, task: Callable, *args) -> None:
        """Some other write off the loop (log files prepared ahead), kept in order."""
        self._pool.submit(task, *args)

    def collect(self) -> list[Settled]:
        """What finished writes settled; a write that failed raises here (OSError)."""
        out: list[Settled] = []
        while self._futures and self._futures[0].done():
            out.extend(self._futures.pop(0).result())
        return out

    def close(self) -> list[Settled]:
        self._pool.shutdown(wait=True)
        return self.collect()


def _settle(queue: FolderQueue, settlements: list[Settlement]) -> list[Settled]:
    done = []
    for s in settlements:
        try:
            state: JobState | None = s.state
            if s.state is JobState.QUEUED:
                state = queue.requeue(s.name, s.record)  # FAILED: the name was dropped again
            elif not queue.conclude(s.name, s.record, s.state):
                state = None
            moved = state is not None
            if moved:
                queue.drop_cancel_request(s.name)
        finally:
            if s.lock_fd is not None:
                os.close(s.lock_fd)
        done.append(Settled(s.name, s.record, state or s.state, moved))
    return done


def create_empty(paths: list[str]) -> None:
    for path in paths:
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK,
                             0o644))
        except OSError:
            pass


def remove_if_empty(path: str) -> None:
    try:
        if os.lstat(path).st_size == 0:
            os.unlink(path)
    except FileNotFoundError:
        pass
