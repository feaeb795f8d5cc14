"""The writer thread: records and moves of ended jobs, off the next job's path.

Creating a file costs 0.1 to 1 ms on the disks this runs on, more than a trivial job;
done on the loop, it would hold back the next start. The thread takes plain data (a
:class:`Settlement` it then owns), calls the store, and returns what happened; it never
touches the dispatcher's state. One thread keeps the moves in order.

On a full or read-only disk an outcome is never dropped: its write is tried again each
second until the disk takes it (the disk watch holds new starts meanwhile), and the job
stays in ``running/``, locked, until then.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from gpudispatch.dispatcher.diskspace import RETRY_SECONDS, DiskWatch
from gpudispatch.job import JobRecord, JobState
from gpudispatch.layout import printable
from gpudispatch.store import FolderQueue

T = TypeVar("T")


@dataclass
class Settlement:
    """One ended run to write: its record, where the script goes, and the lock to let go
    once it has moved (so no one sees it unowned in ``running/`` meanwhile)."""

    name: str
    record: JobRecord | None  # None: only moved back to the queue (it never started)
    state: JobState  # COMPLETED, FAILED, or QUEUED to run again
    lock_fd: int | None


@dataclass(frozen=True)
class Settled:
    name: str
    record: JobRecord | None
    state: JobState
    moved: bool  # False: it was not in running/ any more (someone else concluded it)


class Writer:
    def __init__(self, queue: FolderQueue, on_done: Callable[[], None], disk: DiskWatch,
                 log: logging.Logger) -> None:
        self._queue = queue
        self._on_done = on_done
        self._disk = disk
        self._log = log
        self._closing = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpudispatch-writer")
        self._futures: list[Future] = []

    @property
    def busy(self) -> bool:
        return bool(self._futures)

    def settle(self, settlements: list[Settlement]) -> None:
        future = self._pool.submit(self._settle, settlements)
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
        """Finish the writes. The loop waits for them before it closes, so one the disk
        still refuses here means the dispatcher is leaving abnormally: it is given up, its
        job left in ``running/`` unlocked, for the next dispatcher to conclude from its
        exit status."""
        self._closing.set()
        self._pool.shutdown(wait=True)
        return self.collect()

    def _settle(self, settlements: list[Settlement]) -> list[Settled]:
        done = []
        for s in settlements:
            try:
                state = self._until_written(_write_outcome, self._queue, s)
                moved = state is not None
                if s.record is not None:  # a record was written: there is room again
                    self._disk.clear()
                if moved:
                    self._until_written(self._queue.drop_cancel_request, s.name)
            except _GaveUp:
                self._log.warning("%s: its outcome was not written (the disk still refuses "
                                  "writes); the next dispatcher records it from its exit "
                                  "status", printable(s.name))
                state, moved = None, False
            finally:
                if s.lock_fd is not None:
                    os.close(s.lock_fd)
            done.append(Settled(s.name, s.record, state or s.state, moved))
        return done

    def _until_written(self, write: Callable[..., T], *args) -> T:
        """``write(*args)``, tried again each RETRY_SECONDS while the disk refuses it
        (the writes here may be repeated: a record written again, a move already made)."""
        while True:
            try:
                result = write(*args)
            except OSError as exc:
                if not self._disk.note(exc):
                    raise
                if self._closing.wait(RETRY_SECONDS):
                    raise _GaveUp from exc
                continue
            return result


class _GaveUp(Exception):
    """The dispatcher is closing while the disk still refuses a write."""


def _write_outcome(queue: FolderQueue, s: Settlement) -> JobState | None:
    """Where the job went (None: it was not ours to move any more)."""
    if s.record is None:
        return JobState.QUEUED if queue.move(s.name, JobState.RUNNING,
                                             JobState.QUEUED) else None
    if s.state is JobState.QUEUED:
        return queue.requeue(s.name, s.record)  # FAILED: the name was dropped again
    return s.state if queue.conclude(s.name, s.record, s.state) else None


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
