"""The writer: records and moves of ended jobs, in order, on the loop or in a thread.

They are written on the loop, at the end of its tick, while that is quick: the next
starts of a busy slot are in the keeper's hands by then (hand-overs), and a thread
beside the loop would cost both of them the GIL at each system call (a dozen hand-offs
a job). When a write is slow (creating a file costs 0.1 to 1 ms on the disks this runs
on, more on a network one) or the disk refuses it, the writes go to a thread for a
while, off the loop. The thread takes plain data (a :class:`Settlement` it then owns),
calls the store, and returns what happened; it never touches the dispatcher's state.

On a full or read-only disk an outcome is never dropped: its write is tried again each
second until the disk takes it (the disk watch holds new starts meanwhile), and the job
stays in ``running/``, locked, until then.
"""

from __future__ import annotations

import logging
import os
import threading
import time
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
# Writes on the loop that take longer than this each (a slow or network disk), or one
# the disk refused: the thread has them for THREAD_SECONDS.
SLOW_WRITE_SECONDS = 0.005
THREAD_SECONDS = 10.0


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
    """Fed once a tick: what a tick asks (log files to prepare, ended jobs to settle) is
    one batch at its end (:meth:`flush`), written there or, when the thread has it, with
    one wake of the thread, not one a request (each wake costs both threads the GIL, a
    thread pool's futures more: tens of microseconds a job)."""

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
        self._sent = 0  # batches put in the thread's inbox (counted by the loop alone)
        self._finished = 0  # ...and done (counted by the thread alone)
        self._thread_until = 0.0  # until when batches go to the thread (monotonic)
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
        """Write this tick's requests, in order: here, unless the thread has some still
        or the last ones were slow; the rest (all, or those from a refused write on) in
        the thread, which retries."""
        if not self._batch:
            return
        batch, self._batch = self._batch, []
        self._pending += sum(settles for _t, _a, settles in batch)
        if self._sent == self._finished and time.monotonic() >= self._thread_until:
            batch = self._write_here(batch)
            if not batch:
                return
        self._sent += 1
        self._inbox.put(batch)

    def _write_here(self, batch: list) -> list:
        """Do what ``batch`` asks on this thread; what is left for the thread (from a
        write the disk refused on)."""
        began = time.monotonic()
        for at, (task, args, settles) in enumerate(batch):
            if task == self._settle:
                (settlements,) = args
                settled = []
                try:
                    for s in settlements:
                        settled.append(self._settle_one(s, self._once))
                except _Refused:
                    self._thread_until = time.monotonic() + THREAD_SECONDS
                    self._done.append(settled)
                    self._pending += 1  # (the rest is one more to collect)
                    rest = settlements[len(settled):]
                    return [(task, (rest,), settles), *batch[at + 1:]]
                except OSError as exc:  # as the thread would: collect() raises it
                    settled = exc
            else:
                try:
                    settled = task(*args)
                except BaseException as exc:  # as the thread does
                    settled = exc
            if settles:
                self._done.append(settled)
        writes = sum(len(args[0]) if task == self._settle else 1 for task, args, _ in batch)
        if time.monotonic() - began > SLOW_WRITE_SECONDS * writes:
            self._thread_until = time.monotonic() + THREAD_SECONDS
        self._on_done()  # collected at the next tick
        return []

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
            self._finished += 1
            if settled:
                # The loop is woken once the results are there: woken earlier, it would
                # find them missing and sleep on.
                self._on_done()

    def _settle(self, settlements: list[Settlement]) -> list[Settled]:
        return [self._settle_one(s, self._until_written) for s in settlements]

    def _settle_one(self, s: Settlement, write: Callable) -> Settled:
        """Write one outcome with ``write`` (which tries again, or raises) and let go of
        its lock; kept when the write is left to the thread (``_Refused``)."""
        try:
            state = write(_write_outcome, self._queue, s)
            moved = state is not None
            if s.record is not None:  # a record was written: there is room again
                self._disk.clear()
            if moved:
                write(self._queue.drop_cancel_request, s.name)
        except _Refused:
            raise
        except _GaveUp:
            self._log.warning("%s: its outcome was not written (the disk still refuses "
                              "writes); the next dispatcher records it from its exit "
                              "status", printable(s.name))
            state, moved = None, False
        except BaseException:
            self._let_go(s)
            raise
        self._let_go(s)
        return Settled(s.name, s.record, state or s.state, moved)

    @staticmethod
    def _let_go(s: Settlement) -> None:
        if s.lock_fd is not None:
            os.close(s.lock_fd)
            s.lock_fd = None

    def _once(self, write: Callable[..., T], *args) -> T:
        """``write(*args)`` once, on the loop; the disk refusing it raises ``_Refused``."""
        try:
            return write(*args)
        except OSError as exc:
            if self._disk.note(exc):
                raise _Refused from exc
            raise

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


class _Refused(Exception):
    """A write on the loop the disk refused: it, and what follows, go to the thread."""


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
