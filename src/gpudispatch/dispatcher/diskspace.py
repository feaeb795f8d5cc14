"""A full or read-only disk under ROOT: noticed once, waited out, never a crash.

Every outcome the dispatcher keeps is a file under ROOT, so when the disk refuses writes
(``safeio.DISK_ERRNOS``) nothing new may start: a job started then could not be recorded.
:class:`DiskWatch` holds that condition: whoever meets a refused write notes it (said once
per episode), the scheduler holds new starts while it lasts, and a small probe write each
second (or any write that succeeds) ends it. Writes that must not be lost (the outcomes
of ended jobs) are retried by the writer thread until they land (``bookkeeping``).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import threading
from collections import deque
from collections.abc import Callable

from gpudispatch import safeio
from gpudispatch.layout import Layout, printable
from gpudispatch.store import write_atomic

RETRY_SECONDS = 1.0  # how often refused writes are tried again
JOURNAL_RESERVE_BYTES = 64 << 10  # about a thousand exit statuses
LOG_BACKLOG_LINES = 1000  # logfile.txt lines kept while the disk refuses them
_FALLOC_FL_KEEP_SIZE = 1


class DiskWatch:
    """Whether the disk under ROOT refuses writes now, and why; shared by the loop and
    the writer thread."""

    def __init__(self, layout: Layout, log: logging.Logger, owner: str,
                 wake: Callable[[], None]) -> None:
        self._layout = layout
        self._log = log
        self._wake = wake  # the loop's: it withdraws hand-overs at once
        self._probe_path = layout.logs / f".disk-probe.{owner}"
        self._lock = threading.Lock()
        self.trouble: str | None = None  # the strerror of the refused write
        self.next_probe = 0.0

    def note(self, exc: BaseException) -> bool:
        """True (and said once) when ``exc`` is the disk refusing writes; False for any
        other error, which the caller raises."""
        if not safeio.disk_refused(exc):
            return False
        assert isinstance(exc, OSError)
        with self._lock:
            if self.trouble is None:
                self.trouble = exc.strerror or str(exc)
                root = printable(str(self._layout.root))
                if exc.errno == errno.EROFS:
                    what, until = f"{root} is read-only", "it is writable again"
                elif exc.errno in (errno.EACCES, errno.EPERM):
                    what, until = f"a folder of {root} is not writable", "it is again"
                else:
                    what, until = f"disk full under {root}", "space returns"
                self._log.warning("%s (%s): not starting new jobs until %s; the outcomes "
                                  "of running jobs are kept and written then", what,
                                  self.trouble, until)
                self._wake()
        return True

    def clear(self) -> None:
        """A write under ROOT succeeded: new jobs may start again."""
        if self.trouble is None:
            return
        with self._lock:
            if self.trouble is not None:
                self.trouble = None
                self._log.info("%s takes writes again: starting new jobs",
                               printable(str(self._layout.root)))

    def poll(self, now: float) -> None:
        """While in trouble, try a small write each RETRY_SECONDS (as a record is written:
        a temporary in ``.gpudispatch/tmp`` renamed into ``logs/``)."""
        if self.trouble is None or now < self.next_probe:
            return
        self.next_probe = now + RETRY_SECONDS
        try:
            write_atomic(self._probe_path, b"probe\n", self._layout.tmp)
            os.unlink(self._probe_path)
        except OSError:
            return
        self.clear()


class RootLogHandler(logging.Handler):
    """``logfile.txt``, which lives on the disk that may be full or read-only: a line that
    cannot be written is kept (up to LOG_BACKLOG_LINES) and written, in order, before the
    next one that can; never a traceback on stderr."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self._path = os.fspath(path)
        self._fd: int | None = None
        self._backlog: deque[bytes] = deque(maxlen=LOG_BACKLOG_LINES)
        try:
            self._open()
        except OSError:
            pass  # opened with the first line that can be written

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                               | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
        return self._fd

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:  # a bad format string: logging's own report
            self.handleError(record)
            return
        self._backlog.append(line.encode("utf-8", "backslashreplace"))
        try:
            fd = self._open()
            while self._backlog:
                data = self._backlog[0]
                written = os.write(fd, data)
                if written < len(data):
                    self._backlog[0] = data[written:]
                else:
                    self._backlog.popleft()
        except OSError:
            pass  # kept for the next line; the disk watch says why

    def close(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
        super().close()


def _load_fallocate():
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except (AttributeError, OSError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    return fallocate


_fallocate = _load_fallocate()


def reserve_journal(path: str) -> None:
    """Keep blocks allocated past the end of this host's exit journal, its size unchanged
    (``FALLOC_FL_KEEP_SIZE``): a monitor's append then lands even on a full disk, so a
    dispatcher that dies during a full-disk episode leaves its jobs' statuses behind, not
    jobs to run again. Where the filesystem cannot (or the disk is full already), nothing."""
    if _fallocate is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError:
        return
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            _fallocate(fd, _FALLOC_FL_KEEP_SIZE, st.st_size, JOURNAL_RESERVE_BYTES)
    finally:
        os.close(fd)
