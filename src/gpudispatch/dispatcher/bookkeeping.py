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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from queue import SimpleQueue
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
    """One thread, fed once a tick: what a tick asks of it (log files to prepare, ended
    jobs to settle) goes as one batch at its end (:meth:`flush`), so the thread is woken
    once, not once a request (each wake costs both threads the GIL, a thread pool's
    futures more: tens of microseconds a job)."""

    def __init__(self, queue: FolderQueue, on_done: Callable[[], None], disk: DiskWatch,
                 log: logging.Logger) -> None:
        self._queue = queue
        self._on_done = on_done
        self._disk = disk
        self._log = log
        self._closing = threading.Event()
        self._batch: list[tuple[Callable, tuple, bool]] = []  # (task, args, settles)
        self._inbox: SimpleQueue[list | None] = SimpleQueue()
        self._done: deque[list[Settled] | BaseException] = deque()
        self._pending = 0  # settlements sent and not collected (the loop's count alone)
        self._thread = threading.Thread(target=self._work, name="gpudispatch-writer",
                                        daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        return self._pending > 0 or any(settles for _t, _a, settles in self._batch)

    def settle(self, settlements: list[Settlement]) -> None:
        self._batch.append((self._settle, (settlements,), True))

    def run(self, task: Callable, *args) -> None:
        """Some other write off the loop (log files prepared ahead), kept in order."""
        self._batch.append((task, args, False))

    def flush(self) -> None:
        """Hand this tick's requests to the thread, in order."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._pending += sum(settles for _t, _a, settles in batch)
            self._inbox.put(batch)

    def collect(self) -> list[Settled]:
        """What finished writes settled; a write that failed raises here (OSError)."""
        out: list[Settled] = []
        while self._done:
            done = self._done.popleft()
            self._pending -= 1
            if isinstance(done, BaseException):
                raise done
            out.extend(done)
        return out

    def close(self) -> list[Settled]:
        """Finish the writes. The loop waits for them before it closes, so one the disk
        still refuses here means the dispatcher is leaving abnormally: it is given up, its
        job left in ``running/`` unlocked, for the next dispatcher to conclude from its
        exit status."""
        self.flush()
        self._closing.set()
        self._inbox.put(None)
        self._thread.join()
        return self.collect()

    def _work(self) -> None:
        while (batch := self._inbox.get()) is not None:
            settled = False
            for task, args, settles in batch:
                try:
                    result = task(*args)
                except BaseException as exc:  # raised by collect(); or dropped, as an
                    result = exc  # unread future's would be (a log prepared ahead)
                if settles:
                    self._done.append(result)
                    settled = True
            if settled:
                # The loop is woken once the results are there: woken earlier, it would
                # find them missing and sleep on.
                self._on_done()

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
