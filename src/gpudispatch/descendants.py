"""Daemons of jobs, where no cgroup holds them: the dispatcher is their subreaper.

A process that leaves its job's group and session (``setsid``, a double fork, ``nohup …
&``) is out of reach of the group's signals. With ``PR_SET_CHILD_SUBREAPER`` it is
reparented to the dispatcher instead of init when its parent ends, so the dispatcher finds
it among its own children; the environment it inherited names its job
(``GPUDISPATCH_JOB``, ``GPUDISPATCH_ATTEMPT``), and once that run has ended it is killed
(with its group). One that cleared its environment (``env -i``) names no job: it is killed
once every job or hook that was running when it started has ended (one of them started
it, so none is cut short). A hook's own daemons are left alone, as before. What it cannot
reach: a daemon whose parent is still alive elsewhere, and anything once the dispatcher
itself is gone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from collections.abc import Collection, Iterable

from gpudispatch import procs
from gpudispatch.layout import ATTEMPT_ENV, HOOK_STATE_ENV, JOB_ENV, RUN_ENV

PR_SET_CHILD_SUBREAPER = 36
_MARK = f"{RUN_ENV}=".encode()
_HOOK_MARK = f"{HOOK_STATE_ENV}=".encode()
HOOK = "hook"  # a hook's daemon: not ours to end


def become_subreaper() -> bool:
    """Have the orphans of our descendants reparented to us (Linux 3.4+)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


@functools.cache
def cheap_listing() -> bool:
    """Whether the kernel lists a process's children itself (CONFIG_PROC_CHILDREN): then
    finding them costs a read per thread, not one per process of the machine."""
    return os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _children(me: int, ours: Collection[int]) -> Iterable[tuple[int, bytes]]:
    """Our children but ``ours``, as (pid, state). Orphans are reparented to a thread of
    the subreaper that is alive: ours spawn from the main thread, which lives as long as
    we do, so its list is the one to read."""
    if cheap_listing():
        try:  # (os.open: a buffered file adds four system calls to each look)
            fd = os.open(f"/proc/{me}/task/{me}/children", os.O_RDONLY | os.O_CLOEXEC)
            try:
                candidates: Iterable[int] = [int(p) for p in os.read(fd, 1 << 20).split()]
            finally:
                os.close(fd)
        except (OSError, ValueError):
            return
    else:
        candidates = (int(e.name) for e in os.scandir("/proc") if e.name.isdigit())
    for pid in candidates:
        if pid in ours:
            continue
        fields = procs.stat_fields(pid)
        if fields is not None and len(fields) > 1 and fields[1] == str(me).encode():
            yield pid, fields[0]


def _run_of(pid: int) -> tuple[str, int] | str | None:
    """The job and attempt a process inherited; :data:`HOOK` for a hook's; None when
    its environment names neither (cleared, or unreadable)."""
    items = procs.environ_items(pid)
    if items is None:
        return None
    if not any(i.startswith(_MARK) for i in items):
        return HOOK if any(i.startswith(_HOOK_MARK) for i in items) else None
    env = dict(i.split(b"=", 1) for i in items if b"=" in i)
    attempt = env.get(ATTEMPT_ENV.encode(), b"")
    name = env.get(JOB_ENV.encode())
    if name is None or not attempt.isdigit():
        return None
    return name.decode(errors="surrogateescape"), int(attempt)


def sweep(live: Collection[tuple[str, int]], ours: Collection[int],
          oldest_spawner: int | None = None) -> list[int]:
    """Kill the daemons of ended runs among our children, and reap the ones that ended.

    ``live``: (name, attempt) of the runs still running; ``ours``: the children we wait
    for ourselves (monitors, the keeper, hooks); ``oldest_spawner``: the earliest start
    time (clock ticks) of a live job's monitor or hook, None when none lives. Returns the
    pids killed."""
    killed = []
    for pid, state in _children(os.getpid(), ours):
        if state == b"Z":
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            continue
        run = _run_of(pid)
        if run == HOOK or run in live:
            continue
        if run is None:  # names no job: whoever started it may still run
            started = procs.start_time(pid)
            if started is None or (oldest_spawner is not None and started >= oldest_spawner):
                continue
        for kill in (os.killpg, os.kill):  # its group (it may lead one), then itself
            try:
                kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        killed.append(pid)
    return killed
