"""Wake the dispatcher when files arrive in a folder (watchdog: inotify on Linux).

Events only wake the loop and name candidate files; whether a file is complete is
decided by :func:`read_if_complete`, so a missed or duplicated event costs nothing but time.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import stat
import struct
import threading
from pathlib import Path

from gpudispatch.job import HEADER_MAX_BYTES

log = logging.getLogger("gpudispatch")
# watchdog warns about events racing its own shutdown; nothing is lost by that.
logging.getLogger("watchdog").setLevel(logging.CRITICAL)

_F_SETLEASE = getattr(fcntl, "F_SETLEASE", 1024)
_F_RDLCK = getattr(fcntl, "F_RDLCK", 0)
_F_UNLCK = getattr(fcntl, "F_UNLCK", 2)


def read_if_complete(path: str, st: os.stat_result) -> tuple[bool | None, bytes]:
    """Whether no process has ``path`` open for writing, and if so its first bytes.

    A read lease is granted only when there are no writers, which is exactly "the
    copy has finished". Where leases are refused (some filesystems, files of other
    users) the answer is None and the caller waits for size and mtime to stay still.
    Only regular files are opened; anything else is left for the claim to judge.
    """
    if not stat.S_ISREG(st.st_mode):
        return True, b""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        return (True if exc.errno in (errno.ELOOP, errno.ENOENT) else None), b""
    try:
        try:
            fcntl.fcntl(fd, _F_SETLEASE, _F_RDLCK)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EBUSY):
                return False, b""
            complete = None
        else:
            fcntl.fcntl(fd, _F_SETLEASE, _F_UNLCK)
            complete = True
        return complete, os.read(fd, HEADER_MAX_BYTES)
    finally:
        os.close(fd)


def open_for_writing(path: str, st: os.stat_result) -> int | None:
    """A process that has the file at ``path`` (``st``: its ``lstat``) open for writing
    (its pid), or None.

    For when no lease can say so (a file of another user without ``CAP_LEASE``, NFS):
    ``/proc/PID/fd`` names every open file and ``/proc/PID/fdinfo`` its open flags. Root
    sees every process; another user sees its own (others' are skipped). Only a link
    that names a file of this name is followed (``stat`` of any other could hang on a
    dead network mount), then compared by device and inode. It reads all of ``/proc``,
    so callers ask only for a file they are otherwise about to take.
    """
    suffix = "/" + os.path.basename(path)
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        folder = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(folder)
        except OSError:  # gone, or another user's
            continue
        for fd in fds:
            link = f"{folder}/{fd}"
            try:
                if not os.readlink(link).endswith(suffix):
                    continue
                target = os.stat(link)
            except OSError:
                continue
            if target.st_ino == st.st_ino and target.st_dev == st.st_dev and _writes(pid, fd):
                return int(pid)
    return None


def _writes(pid: str, fd: str) -> bool:
    """Whether ``/proc/PID/fdinfo/FD`` says the descriptor was opened for writing."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as fh:
            info = fh.read(4096)
    except OSError:
        return False
    for line in info.splitlines():
        if line.startswith(b"flags:"):
            return int(line.split()[1], 8) & 0o3 != os.O_RDONLY  # O_ACCMODE: WRONLY or RDWR
    return False


def drain_pipe(fd: int) -> None:
    """Empty a non-blocking wake-up pipe (its bytes only mean "look again")."""
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def close_fds(*fds: int) -> None:
    """Close descriptors that may already be closed (at shutdown)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


class _Inotify:
    """Inotify through watchdog's own bindings, read from our event loop (Linux).

    watchdog's observer would add a thread and hold every ``IN_MOVED_FROM`` (each claim
    renames a job out of ``queue/``) for 0.5 s while it looks for the matching half of
    the move, delaying every event behind it. Asking the kernel only for what matters
    here (closed after writing, moved in, created) avoids both.
    """

    def __init__(self, folders: list[Path]) -> None:
        from watchdog.observers.inotify_c import (
            InotifyConstants,
            inotify_add_watch,
            inotify_init,
        )

        mask = (InotifyConstants.IN_CLOSE_WRITE | InotifyConstants.IN_MOVED_TO
                | InotifyConstants.IN_CREATE | InotifyConstants.IN_ONLYDIR)
        self.fd = inotify_init()
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init failed")
        os.set_blocking(self.fd, False)
        os.set_inheritable(self.fd, False)
        for folder in folders:
            if inotify_add_watch(self.fd, os.fsencode(folder), mask) < 0:
                err = ctypes.get_errno()
                os.close(self.fd)
                raise OSError(err, f"inotify_add_watch({folder}) failed")

    def read_names(self) -> set[str]:
        names: set[str] = set()
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return names
            offset = 0
            while offset + _EVENT_HEADER.size <= len(data):
                _wd, _mask, _cookie, length = _EVENT_HEADER.unpack_from(data, offset)
                offset += _EVENT_HEADER.size
                raw = data[offset:offset + length].rstrip(b"\0")
                offset += length
                if raw:
                    names.add(os.fsdecode(raw))

    def close(self) -> None:
        os.close(self.fd)


_EVENT_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len


class FolderWatcher:
    """A readable descriptor that fires when files are created, closed or moved in."""

    def __init__(self, folders: list[Path]) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._lock = threading.Lock()
        self._names: set[str] = set()
        self._observer = None
        self._inotify: _Inotify | None = None
        self._folders = folders

    def start(self) -> bool:
        """Start watching; False when file events are unavailable (then poll)."""
        try:
            self._inotify = _Inotify(self._folders)
            return True
        except (ImportError, AttributeError, OSError) as exc:  # not Linux, or no watches left
            log.debug("inotify unavailable (%s); using watchdog's observer", exc)
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
        except ImportError:
            return False
        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event) -> None:
                if event.event_type in ("created", "closed", "moved"):
                    path = event.dest_path if event.event_type == "moved" else event.src_path
                    watcher._notify(os.path.basename(os.fsdecode(path)))

        try:
            observer = Observer(timeout=0.1)
            for folder in self._folders:
                observer.schedule(_Handler(), str(folder), recursive=False)
            observer.daemon = True
            observer.start()
        except OSError as exc:  # e.g. inotify watch or instance limits reached
            log.warning("File events unavailable (%s); polling instead.", exc)
            return False
        self._observer = observer
        return True

    def _notify(self, name: str) -> None:
        with self._lock:
            self._names.add(name)
        try:
            os.write(self._write_fd, b"!")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake anyway

    def fileno(self) -> int:
        return self._inotify.fd if self._inotify is not None else self._read_fd

    def drain(self) -> set[str]:
        """The names seen since the last call."""
        if self._inotify is not None:
            return self._inotify.read_names()
        drain_pipe(self._read_fd)
        with self._lock:
            names, self._names = self._names, set()
        return names

    def stop(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=2)
            self._observer = None
        close_fds(self._read_fd, self._write_fd)
