"""Reading files in a folder others may write to: no symlinks followed, no blocking on a
FIFO, no reading a device or an endless file into memory.

A queue root is shared with users and scripts. A FIFO planted at ``logs/NAME.json`` would
hang a plain ``open()``, a symlink there would make us read (or print) a file outside the
root, and ``logs/NAME.json -> /dev/zero`` would fill memory. Everything here opens with
``O_NOFOLLOW | O_NONBLOCK`` and checks with ``fstat`` that it got a regular file.

Writing, likewise: every file gpudispatch creates is first a temporary one made by
:func:`create_temp` (an unguessable name, created exclusively, no symlink followed, in
``.gpudispatch/tmp`` where only the owner may write), then renamed or linked into place,
so a symlink planted at a name we would write never redirects the write.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import time

_HOST = os.uname().nodename  # socket.gethostname(), without importing socket
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISLNK, "a symbolic link"),
)


# A write refused by the filesystem as a whole (full, over quota, read-only), or by a
# folder of ROOT (its mode changed, `chmod a-w logs`), not because of the one file: it
# passes once space returns or the folder is writable again, so the write waits rather
# than fails (and no job is lost or stranded meanwhile).
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def disk_refused(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk under ROOT takes no writes for now (see DISK_ERRNOS)."""
    return isinstance(exc, OSError) and exc.errno in DISK_ERRNOS


class FileRefused(OSError):
    """A path that exists but is not a regular file we may read (a symlink, a FIFO, a
    device...) or is larger than the caller allows; the message says what it is."""


def kind(mode: int) -> str:
    """What a file of ``mode`` is, in words ("a FIFO"), for messages."""
    for test, words in _KINDS:
        if test(mode):
            return words
    return "not a regular file"


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file at ``path``, opened without following a
    symlink in its last component and without blocking; the caller closes it.

    Raises FileNotFoundError (and other OSErrors such as PermissionError) as ``open`` does,
    and :class:`FileRefused` for a symlink or anything that is not a regular file.
    """
    return open_regular_stat(path)[0]


def open_regular_stat(path: str | os.PathLike[str]) -> tuple[int, os.stat_result]:
    """:func:`open_regular`, with the ``fstat`` it checked (one syscall fewer for callers
    that need the size or identity too)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise FileRefused(errno.ELOOP, "is a symbolic link", os.fspath(path)) from None
        if exc.errno == errno.ENXIO:  # a socket, or a FIFO with no writer on some systems
            raise FileRefused(errno.ENXIO, "is not a regular file", os.fspath(path)) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(errno.EINVAL, f"is {kind(st.st_mode)}, not a regular file",
                              os.fspath(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_tail(path: str | os.PathLike[str] | None, size: int) -> bytes:
    """The last ``size`` bytes of the regular file at ``path`` (a log whose path comes
    from a record): b"" when there is none, or it is a symlink or not a regular file."""
    if not path:
        return b""
    try:
        fd, st = open_regular_stat(path)
    except OSError:
        return b""
    try:
        return os.pread(fd, size, max(0, st.st_size - size))
    except OSError:
        return b""
    finally:
        os.close(fd)


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The whole content of the regular file at ``path``, refused (:class:`FileRefused`)
    when it is a symlink, not a regular file, or larger than ``limit`` bytes."""
    fd, st = open_regular_stat(path)
    try:
        data = read_limited(fd, st.st_size, limit)
    finally:
        os.close(fd)
    if data is None:
        raise FileRefused(errno.EFBIG, f"is larger than {limit} bytes", os.fspath(path))
    return data


def read_limited(fd: int, size: int, limit: int) -> bytes | None:
    """What ``fd`` holds from its position, or None when that is more than ``limit``
    bytes. ``size`` is its ``fstat`` size: reading that much (plus one byte, to see growth)
    allocates no more than the file needs, where one large read would allocate ``limit``."""
    if size > limit:
        return None
    chunks = [os.read(fd, size + 1)]
    total = len(chunks[0])
    while total > size:  # it grew since fstat: read on, never past the limit
        chunk = os.read(fd, min(65536, limit + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def create_temp(folder: str | os.PathLike[str], mode: int = 0o600,
                suffix: str = ".tmp") -> tuple[int, str]:
    """A new, empty file in ``folder`` opened for writing, and its path (the caller closes
    it, and renames or removes it).

    Like ``mkstemp``: the name is unguessable (64 random bits) and the file is created
    exclusively without following a symlink, so nothing planted in ``folder`` (a symlink
    at a name we might pick, a file someone else holds open) can redirect or share the
    write. ``folder`` should also be one only its owner can write (``.gpudispatch/tmp``).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(8):
        path = f"{os.fspath(folder)}/{_HOST}.{os.getpid()}.{os.urandom(8).hex()}{suffix}"
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:  # only if someone planted this exact random name
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", os.fspath(folder))


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may take only part)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_temp(folder: str | os.PathLike[str], data: bytes, mode: int = 0o600,
               suffix: str = ".tmp") -> str:
    """A new temporary file (:func:`create_temp`) holding ``data``; its path. Nothing is
    left behind when the write fails (a full disk must not fill up further)."""
    fd, path = create_temp(folder, mode, suffix)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
    except BaseException:
        discard(path)
        raise
    return path


def discard(path: str) -> None:
    """Remove a temporary file of ours, if it is still there."""
    try:
        os.unlink(path)
    except OSError:
        pass


def write_atomic(path: str | os.PathLike[str], data: bytes, tmp_dir: str | os.PathLike[str],
                 mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one:
    written to a :func:`create_temp` file in ``tmp_dir``, then renamed over ``path``
    (a rename replaces a symlink at ``path``, never writes through it).

    No fsync: this is on every job's path; the rename gives readers all-or-nothing.
    """
    tmp = write_temp(tmp_dir, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        discard(tmp)
        raise


def refusal(exc: OSError) -> str:
    """Why a path was refused or could not be read, in a few words."""
    if isinstance(exc, FileRefused):
        return exc.strerror or "is not a regular file"
    return f"cannot be read ({exc.strerror or exc})"


def set_aside(path: str, expected: os.stat_result | None = None) -> str | None:
    """Rename ``path`` to ``PATH.bad-YYYYmmdd-HHMMSS-XXXX`` (kept for a person to look at)
    and return the new path, or None when it could not be moved.

    With ``expected`` (the ``fstat`` of what was read), nothing is moved unless ``path``
    still is that file: a good file written meanwhile must not be set aside in its stead.
    """
    try:
        if expected is not None:
            now = os.lstat(path)
            if (now.st_dev, now.st_ino) != (expected.st_dev, expected.st_ino):
                return None
        aside = f"{path}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.urandom(2).hex()}"
        os.rename(path, aside)
    except OSError:
        return None
    return aside


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` (absolute) lies under ``root`` once symlinks in its folders are
    resolved; its last component is not resolved (open it with :func:`open_regular`)."""
    path = os.fspath(path)
    if not os.path.isabs(path):
        return False
    real_root = os.path.realpath(root)
    folder = os.path.realpath(os.path.dirname(path))
    base = os.path.basename(path)
    if base in ("", ".", ".."):
        return False
    return os.path.commonpath([real_root, folder]) == real_root


_RENAME_NOREPLACE = 1  # linux/fs.h
_AT_FDCWD = -100


@functools.cache
def _renameat2():
    """libc's ``renameat2``, loaded on first use (ctypes costs a CLI start 5 ms), or None
    where libc lacks it (glibc < 2.28, not Linux)."""
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                     ctypes.c_uint)
    return call, ctypes.get_errno


def rename_noreplace(src: str, dst: str) -> None:
    """``rename`` that raises FileExistsError instead of replacing ``dst``.

    Two files may carry one job name at once (a name dropped again while it runs); a plain
    rename of one onto the other would silently destroy a job. ``renameat2`` with
    ``RENAME_NOREPLACE`` decides atomically; where the filesystem or libc lacks it (NFS,
    old glibc) a check precedes the rename, leaving a race of a few microseconds.
    """
    loaded = _renameat2()
    if loaded is not None:
        call, get_errno = loaded
        if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst),
                _RENAME_NOREPLACE) == 0:
            return
        err = get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), src, None, dst)
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), src, None, dst)
    os.rename(src, dst)


def sha256(data: bytes = b""):
    """A SHA-256 hash object, from the interpreter's own module where it has one:
    ``hashlib`` loads OpenSSL's bindings, which costs every ``submit`` (whose capsule
    names its files by hash) 10 ms and more to import."""
    try:
        from _sha2 import sha256 as make  # Python 3.12+
    except ImportError:
        try:
            from _sha256 import sha256 as make  # Python 3.10, 3.11
        except ImportError:
            from hashlib import sha256 as make
    return make(data)
