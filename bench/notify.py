"""A minimal inotify reader (ctypes, Linux) so the bench sleeps instead of polling.

The bench notes ``time.perf_counter_ns()`` the moment the kernel hands it an event, so a
job that creates a marker file (the shell builtin ``: > FILE``, no fork) is timed to
within microseconds, far below the ~4 ms granularity of file timestamps.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
import time

IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_Q_OVERFLOW = 0x4000
_HEADER = struct.Struct("iIII")

_libc = ctypes.CDLL(None, use_errno=True)


class Overflow(Exception):
    """The kernel dropped events; count with os.scandir instead."""


class Inotify:
    def __init__(self, folders, mask: int = IN_CREATE | IN_MOVED_TO) -> None:
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        for folder in folders:
            if _libc.inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
                err = ctypes.get_errno()
                os.close(self.fd)
                raise OSError(err, os.strerror(err), str(folder))

    def fileno(self) -> int:
        return self.fd

    def take(self) -> list[str]:
        """The names queued now (without waiting)."""
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return []
            raise
        names, pos = [], 0
        while pos < len(data):
            _wd, mask, _cookie, length = _HEADER.unpack_from(data, pos)
            pos += _HEADER.size
            if mask & IN_Q_OVERFLOW:
                raise Overflow()
            names.append(data[pos:pos + length].rstrip(b"\0").decode())
            pos += length
        return names

    def read(self, timeout: float) -> tuple[int, list[str]]:
        """Names seen within ``timeout`` s, and perf_counter_ns when they were read."""
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        now = time.perf_counter_ns()
        return now, (self.take() if ready else [])

    def wait_for(self, name: str, timeout: float) -> int:
        """perf_counter_ns when ``name`` appeared; TimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            now, names = self.read(deadline - time.monotonic())
            if name in names:
                return now
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{name} did not appear within {timeout:.0f} s")

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
