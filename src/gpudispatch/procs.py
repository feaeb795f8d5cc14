"""Facts about processes: liveness, identity (pid and start time), finding a queue's
monitors after a crash, and ending every process of a job."""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass

from gpudispatch import cgroups
from gpudispatch.layout import ATTEMPT_ENV, CGROUP_ENV, EXIT_FILE_ENV, JOB_ENV, RUN_ENV
from gpudispatch.monitor import INLINE_HEAD, MARKER

_INLINE_CMDLINE = b"/bin/sh\0-c\0" + INLINE_HEAD.encode()  # (primed or not)
LATE_SIGNAL_SECONDS = 0.05


def stat_fields(pid: int) -> list[bytes] | None:
    """``/proc/PID/stat`` after the command name: state is [0], ppid [1], pgrp [2],
    session [3], start time [19]."""
    try:  # (os.open: a buffered file adds four system calls; this is read a few times a job)
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data[data.rfind(b")") + 2:].split()


def pid_alive(pid: int) -> bool:
    """A live, non-zombie process (zombies of a dead parent linger in containers)."""
    fields = stat_fields(pid)
    return fields is not None and fields[0] not in (b"Z", b"X")


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid, its identity."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


def boot_ns() -> int:
    """The clock a process's start time is taken from (``CLOCK_BOOTTIME``)."""
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


def child_start_time(pid: int, before_ns: int) -> int | None:
    """:func:`start_time` of a child spawned just now, after ``before_ns`` (:func:`boot_ns`).
    The kernel stamps it during the spawn and ``/proc`` shows that stamp in clock ticks:
    when no tick passed during the spawn, that tick is the answer, with no ``/proc``
    read (one costs 0.13 ms here while the child is still starting: it waits on it)."""
    tick = before_ns // _TICK_NS
    return tick if boot_ns() // _TICK_NS == tick else start_time(pid)


def same_process(pid: int | None, started: int | None) -> bool:
    """Whether ``pid`` is still the process that started at ``started`` and is alive."""
    return bool(pid) and started is not None and pid_alive(pid) and start_time(pid) == started


@dataclass(frozen=True)
class FoundMonitor:
    pid: int
    started: int
    attempt: int
    gpus: list[int]
    cgroup: str | None = None


def environ_items(pid: int) -> list[bytes] | None:
    """A process's environment as ``NAME=value`` items; None when it is gone or not
    ours to read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            return fh.read().split(b"\0")
    except OSError:
        return None


def _queue_env(pid: int, exit_dir: str) -> dict[bytes, bytes] | None:
    """The environment of a process started for a job of the queue whose exit journals
    are in ``exit_dir``; None for any other (or one that is gone, or not ours to read)."""
    marker = f"{EXIT_FILE_ENV}={exit_dir}/".encode()
    items = environ_items(pid)
    if items is None or not any(i.startswith(marker) for i in items):
        return None
    return dict(i.split(b"=", 1) for i in items if b"=" in i)


def find_monitors(exit_dir: str) -> dict[str, FoundMonitor]:
    """Live monitors of one queue, by job name: session leaders running the monitor script
    with an exit journal under ``exit_dir``. A daemon the job started has the same environment
    but not the monitor's command line, so it is never taken for the job."""
    found: dict[str, FoundMonitor] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if MARKER not in fh.read(4096):
                    continue
        except OSError:
            continue
        env = _queue_env(pid, exit_dir)
        fields = stat_fields(pid)
        if env is None or fields is None or int(fields[3]) != pid or fields[0] == b"Z":
            continue
        name = env.get(JOB_ENV.encode(), b"").decode(errors="surrogateescape")
        attempt = env.get(ATTEMPT_ENV.encode(), b"0")
        found[name] = FoundMonitor(pid, int(fields[19]),
                                   int(attempt) if attempt.isdigit() else 0,
                                   _gpus(env), _cgroup(env))
    return found


def _gpus(env: dict[bytes, bytes]) -> list[int]:
    """The GPUs a job's process was given."""
    return [int(g) for g in env.get(b"CUDA_VISIBLE_DEVICES", b"").split(b",")
            if g.strip().isdigit()]


def _cgroup(env: dict[bytes, bytes]) -> str | None:
    return cgroups.checked(env.get(CGROUP_ENV.encode(), b"").decode(errors="replace"))


@dataclass(frozen=True)
class FoundRun:
    session: int  # its monitor's pid, the job's process group and session
    attempt: int
    gpus: list[int]
    cgroup: str | None  # made for it, if its dispatcher made one


def find_run_session(exit_dir: str, name: str, inode: int) -> FoundRun | None:
    """A run of the job whose monitor is gone and whose record names no pid: one killed
    in the job's first moments, before its start record. Its processes carry the run in
    their environment (script inode and attempt); a daemon the job started carries it
    too, but is younger than the job's first process, whose session is the one taken."""
    job, prefix = name.encode(errors="surrogateescape"), f"{inode}.".encode()
    runs: list[tuple[int, int, int, dict[bytes, bytes]]] = []  # attempt, -start, session, env
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        env = _queue_env(int(entry.name), exit_dir)
        run = env.get(RUN_ENV.encode(), b"") if env is not None else b""
        fields = stat_fields(int(entry.name))
        if (env is None or env.get(JOB_ENV.encode()) != job or not run.startswith(prefix)
                or not run[len(prefix):].isdigit() or fields is None
                or fields[0] in (b"Z", b"X")):
            continue
        runs.append((int(run[len(prefix):]), -int(fields[19]), int(fields[3]), env))
    if not runs:
        return None
    attempt, _, session, env = max(runs, key=lambda r: r[:3])
    return FoundRun(session, attempt, _gpus(env), _cgroup(env))


def _members(session: int) -> list[int]:
    """Processes of a job: its monitor's session or process group (both are the
    monitor's pid; a child that called ``setpgid`` stays in the session)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields and session in (int(fields[2]), int(fields[3])):
                out.append(int(entry.name))
    return out


def job_processes(monitor: int, name: str, run: str, since: int | None = None,
                  with_monitor: bool = False) -> list[int]:
    """Every live process of a job but its monitor (first, with ``with_monitor``: an
    inline one is the job's shell): those of its group or session, and those that left
    them but carry its run in their environment (``setsid`` daemons). ``since``: the
    monitor's start time; what started before is not the job's (and its environment is
    not read: on a large machine that is most of ``/proc``)."""
    marks = (f"{RUN_ENV}={run}".encode(), f"{JOB_ENV}={name}".encode())
    me = os.getpid()
    out = [monitor] if with_monitor and pid_alive(monitor) else []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in (monitor, me):
            continue
        pid = int(entry.name)
        fields = stat_fields(pid)
        if fields is None or fields[0] in (b"Z", b"X"):
            continue
        if since is not None and int(fields[19]) < since:
            continue
        if monitor in (int(fields[2]), int(fields[3])):
            out.append(pid)
            continue
        items = environ_items(pid)
        if items is not None and all(mark in items for mark in marks):
            out.append(pid)
    return out


def signal_job(monitor: int, sig: int, cgroup: str | None = None) -> bool:
    """Signal every process of a job, never its monitor with SIGKILL; False when gone.

    With a cgroup, SIGTERM goes to each of its processes (daemons that left the group too)
    and SIGKILL through ``cgroup.kill``. Without one, or for what never joined it:
    SIGTERM goes to the group (the monitor traps it and goes on to record the end);
    SIGKILL freezes the group first (SIGSTOP: nothing forks meanwhile), kills each member
    but the monitor, and lets the monitor go on, as Slurm's proctrack does without a cgroup.
    An inline monitor (the job's shell too) is told with SIGUSR2, and ends with 137; in a
    cgroup it is in, the cgroup is frozen instead and the rest killed one by one. A
    SIGTERM it traps goes again to the commands that may have lost it (for 50 ms).
    """
    inline = sig in (signal.SIGKILL, signal.SIGTERM) and monitor_inline(monitor)
    before = _commands(monitor) if inline and sig == signal.SIGTERM else {}
    if inline and sig == signal.SIGKILL and cgroup and monitor in cgroups.members(cgroup):
        cgroups.kill_all_but(cgroup, monitor, lambda: _tell_killed(monitor))
        in_cgroup = True
    else:
        in_cgroup = cgroups.signal_all(cgroup, sig) if cgroup else False
    try:
        if sig != signal.SIGKILL:
            if not in_cgroup:
                os.killpg(monitor, sig)
            if inline and sig == signal.SIGTERM:
                _signal_late_comers(monitor, before, sig)
            return True
        os.killpg(monitor, signal.SIGSTOP)
    except (ProcessLookupError, PermissionError):
        return in_cgroup
    if inline:
        _tell_killed(monitor)  # (pending until SIGCONT, when its job is gone)
    cgroups.sigkill_each(_members(monitor), spare=monitor)
    try:
        os.killpg(monitor, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        pass
    return True


def _commands(monitor: int) -> dict[int, bytes]:
    """The command line of each process of the job."""
    return {pid: _cmdline(pid) for pid in _members(monitor)}


def _signal_late_comers(monitor: int, before: dict[int, bytes], sig: int) -> None:
    """After a signal an inline monitor traps: send it again, for a moment, to those of
    its job that may have lost it. The monitor (the job's shell) runs its trap only once
    its current command ends, so that command must get it: one forked as the signal came
    (or while it was pending in the monitor) was a copy of the monitor, with its handler
    and not its trap, and loses it with its ``exec``. Each is signalled once it has
    exec'd; what had exec'd before the first signal got it; a subshell that never execs
    keeps it (its own commands get theirs)."""
    mine = before.get(monitor, b"")
    done = {pid for pid, command in before.items() if command != mine}
    deadline = time.monotonic() + LATE_SIGNAL_SECONDS
    while pid_alive(monitor) and time.monotonic() < deadline:
        for pid in _members(monitor):
            if pid in done or pid == monitor:
                continue
            command = _cmdline(pid)
            if command == mine or not command:
                continue  # not exec'd yet (or in its exec: no command line meanwhile)
            done.add(pid)
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.001)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read(4096)
    except OSError:
        return b""


def _tell_killed(monitor: int) -> None:
    try:
        os.kill(monitor, signal.SIGUSR2)
    except (ProcessLookupError, PermissionError):
        pass


def monitor_inline(pid: int) -> bool:
    """Whether the monitor runs its job's script itself (``monitor.INLINE_MONITOR_SCRIPT``)."""
    return _cmdline(pid).startswith(_INLINE_CMDLINE)


def end_leftovers(monitor: int, cgroup: str | None = None) -> None:
    """SIGKILL what is left of a job once its monitor has ended (children it put in the
    background, or that ignored SIGTERM): its slot is then free for the next job.

    Its cgroup, if it has one, holds all of it (its monitor killed it already; this is for
    a monitor that was itself killed). Otherwise the process group: its id stays taken
    while any member lives, so no other group has it; daemons that left it (``setsid``)
    are found by :func:`gpudispatch.descendants.sweep`. A live process with the
    monitor's pid is a new one (the pid was reused): left alone."""
    if cgroup:
        cgroups.signal_all(cgroup, signal.SIGKILL)
    if pid_alive(monitor):
        return
    try:
        os.killpg(monitor, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def job_alive(monitor: int, cgroup: str | None = None) -> bool:
    """Whether any live (not zombie) process of the job's cgroup, group or session is left."""
    if cgroup and cgroups.populated(cgroup):
        return True
    try:
        os.killpg(monitor, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return any(pid_alive(pid) for pid in _members(monitor))  # zombies answer killpg too


def pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when ``pid`` exits (Linux 5.3+), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ESRCH, errno.ENOSYS, errno.EPERM):
            raise
        return None
