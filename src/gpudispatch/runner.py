"""How to run a script, how to stop its whole group, and how to find it after a crash.

Starting jobs is the keeper's (``keeper.py``); this module holds the checks and process
facts around it.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
from dataclasses import dataclass

from gpudispatch.job import HEADER_MAX_BYTES


class ScriptRejected(Exception):
    """A script that cannot run correctly; the message is the reason recorded."""


@dataclass(frozen=True)
class Launch:
    """How to run a checked script: the argv, and a note for the log when it is unusual."""

    argv: list[str]
    note: str | None = None


def shebang_argv(head: bytes) -> list[str] | None:
    """The interpreter a ``#!`` line names, split as Linux does (one optional argument)."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="surrogateescape").strip()
    if not line:
        return None
    interp, _, arg = line.partition(" ")
    arg = arg.strip()
    return [interp, arg] if arg else [interp]


def read_head(path: str, st: os.stat_result) -> bytes:
    """The header of a regular file (nothing else is opened: a FIFO would block)."""
    if not stat.S_ISREG(st.st_mode):
        return b""
    with open(path, "rb") as fh:
        return fh.read(HEADER_MAX_BYTES)


def check_script(path: str, st: os.stat_result, head: bytes | None = None) -> Launch:
    """Decide how to run ``path``, or raise :class:`ScriptRejected` with the reason.

    ``st`` is its ``lstat``; ``head`` its first bytes when already read. Never opens
    anything but a regular file, so a FIFO named ``x.sh`` cannot block us.
    """
    if stat.S_ISLNK(st.st_mode):
        raise ScriptRejected("is a symlink; copy the script into the queue instead of linking it")
    if not stat.S_ISREG(st.st_mode):
        kinds = {stat.S_IFDIR: "a directory", stat.S_IFIFO: "a named pipe (FIFO)",
                 stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}
        kind = kinds.get(stat.S_IFMT(st.st_mode), "a special file")
        raise ScriptRejected(f"is {kind}, not a regular file with a script")
    if st.st_size == 0:
        raise ScriptRejected("is empty")
    if head is None:
        with open(path, "rb") as fh:
            head = fh.read(HEADER_MAX_BYTES)
    if b"\0" in head:
        raise ScriptRejected("is a binary file, not a shell script")
    if b"\r\n" in head:
        raise ScriptRejected(
            "has CRLF (Windows) line endings, which break /bin/sh; convert it with dos2unix"
        )
    interp = shebang_argv(head)
    if interp is not None and not os.access(interp[0], os.X_OK):
        raise ScriptRejected(
            f"names {interp[0]} in its #! line, which is not an executable file here"
        )
    if st.st_mode & stat.S_IXUSR:
        if interp is None:  # exec() would refuse it; a shell runs it with /bin/sh
            return Launch(
                ["/bin/sh", path], note="executable without a #! line; running it with /bin/sh"
            )
        return Launch([path])
    argv = interp or ["/bin/sh"]
    return Launch([*argv, path], note=f"not executable; running it with {' '.join(argv)}")


def kill_group(pgid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal a job's whole process group; False when it is already gone."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_status(code: int) -> str | None:
    """A reason for a non-zero exit (``code`` as ``waitstatus_to_exitcode`` gives it)."""
    if code == 0:
        return None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    if code > 128 and code - 128 < signal.NSIG:
        try:
            return f"exit code {code} (killed by {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit code {code}"


# What CUDA frameworks print when a GPU runs out of memory.
OOM_PATTERNS = (
    b"CUDA out of memory",
    b"OutOfMemoryError",
    b"CUDA_ERROR_OUT_OF_MEMORY",
    b"cudaErrorMemoryAllocation",
    b"CUBLAS_STATUS_ALLOC_FAILED",
    b"RESOURCE_EXHAUSTED: Out of memory",
    b"out of memory while trying to allocate",
)
OOM_TAIL_BYTES = 65536


def ran_out_of_gpu_memory(log_path: str) -> bool:
    """Whether the end of a job's output shows a CUDA out-of-memory error."""
    try:
        with open(log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - OOM_TAIL_BYTES))
            tail = fh.read()
    except OSError:
        return False
    return any(pattern in tail for pattern in OOM_PATTERNS)


def read_exit_file(path: str) -> int | None:
    """The code a supervisor wrote, or None when it has not (yet) written one."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return data[data.rfind(b")") + 2 : data.rfind(b")") + 3].decode()


def pid_alive(pid: int) -> bool:
    """A live, non-zombie process (zombies of a dead parent linger in containers)."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


@dataclass(frozen=True)
class FoundJob:
    pid: int
    parent: int | None  # the keeper that started it, which will write its exit code
    gpus: list[int]


def find_jobs(exit_dir: str) -> dict[str, FoundJob]:
    """Live jobs started for one queue, found by the exit file named in their environment.

    Needed after a crash between starting a job and writing its record, when no record
    holds the pid. Reads every process's environment: only done when reconciling.
    """
    from gpudispatch.keeper import EXIT_FILE_ENV

    marker = f"{EXIT_FILE_ENV}={exit_dir}/".encode()
    found: dict[str, FoundJob] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as fh:
                items = fh.read().split(b"\0")
        except OSError:
            continue
        exit_item = next((i for i in items if i.startswith(marker)), None)
        pid = int(entry.name)
        # Only the group leader: the job's children inherit its environment.
        if exit_item is None or os.getpgid(pid) != pid or not pid_alive(pid):
            continue
        name = exit_item[len(marker):].decode(errors="surrogateescape")
        cuda = next((i for i in items if i.startswith(b"CUDA_VISIBLE_DEVICES=")), b"=")
        gpus = [int(g) for g in cuda.split(b"=", 1)[1].split(b",") if g.strip().isdigit()]
        found[name] = FoundJob(pid, _keeper_parent(pid), gpus)
    return found


def is_job_process(pid: int | None, exit_path: str) -> bool:
    """Whether ``pid`` is the live group leader of the job with this exit file (a record
    may still hold an earlier run's pid, which the system may have given to another)."""
    if not pid or not pid_alive(pid):
        return False
    from gpudispatch.keeper import EXIT_FILE_ENV

    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            items = fh.read().split(b"\0")
    except OSError:
        return False
    return f"{EXIT_FILE_ENV}={exit_path}".encode() in items and os.getpgid(pid) == pid


def _keeper_parent(pid: int) -> int | None:
    """The job's parent if it is a gpudispatch keeper (not init or a subreaper)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
        parent = int(data[data.rfind(b")") + 2 :].split()[1])
        with open(f"/proc/{parent}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except (OSError, ValueError, IndexError):
        return None
    return parent if b"gpudispatch" in cmdline or b"jobdispatcher" in cmdline else None


def pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ESRCH, errno.ENOSYS, errno.EPERM):
            raise
        return None
