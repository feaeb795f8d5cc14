"""A cgroup v2 per job, where the dispatcher may make one: every process of a job ends
with it, daemons that left its process group or session too.

As Slurm's proctrack/cgroup and systemd's ``KillMode=control-group``: the dispatcher
moves a job that has run a moment (:data:`ENCLOSE_AFTER_SECONDS`) into
``gpudispatch-PID-RUN`` under its own cgroup (its processes: its group, its session, and
those carrying its run in their environment); what they fork from then on is born there.
Its monitor stays outside, so it outlives what it kills: when the job ends it writes ``1``
to ``cgroup.kill`` and waits until the cgroup is empty before it exits. A slot is then
free only once everything of its last job is gone, whoever watches, even with no
dispatcher alive.

Before that moment, and where no cgroup can be made (not root and no delegated subtree, a
read-only cgroupfs, a kernel before 5.14 without ``cgroup.kill``), jobs are contained by
their process group and the descendants the dispatcher tracks as their subreaper
(:mod:`gpudispatch.descendants`).
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

PREFIX = "gpudispatch-"
# A job is moved into its cgroup once it has run this long: moving a process waits for an
# RCU grace period in the kernel when no other move happened just before (6 to 14 ms
# measured on an idle machine, against about 3 ms for a whole start), so a short job
# never pays it, and one of minutes pays it once, off its start. Until then (and always,
# without a cgroup) its process group and the dispatcher as subreaper hold it.
ENCLOSE_AFTER_SECONDS = 0.5
FREEZE_WAIT_SECONDS = 1.0
STALE_AFTER_SECONDS = 5.0  # an empty cgroup of a dead dispatcher, not one being joined
_NAME = re.compile(rf"{PREFIX}(\d+)-")
_JOB_NAME = re.compile(rf"{PREFIX}\d+-\d+\.\d+")


@dataclass(frozen=True)
class Containment:
    """How this dispatcher contains its jobs: ``base`` is where job cgroups are made (None:
    by process group and tracked descendants, for the reason in ``why_not``)."""

    base: str | None
    why_not: str = ""

    @property
    def mode(self) -> str:
        return "cgroup" if self.base else "process group"

    def describe(self) -> str:
        if self.base:
            return f"each job in a cgroup v2 of its own, under {self.base}"
        return f"by process group and tracked descendants ({self.why_not})"

    def cgroup_for(self, run: str) -> str | None:
        """The cgroup of one run (``INODE.ATTEMPT``), made when its monitor starts."""
        return f"{self.base}/{PREFIX}{os.getpid()}-{run}" if self.base else None


def own_cgroup_dir(proc_cgroup: str, mountinfo: str) -> str | None:
    """Where this process's cgroup v2 is in the file system: its ``0::PATH`` line of
    ``/proc/self/cgroup`` under the cgroup2 mount (pure, for tests)."""
    path = next((line[3:] for line in proc_cgroup.splitlines() if line.startswith("0::")),
                None)
    if path is None:
        return None
    for line in mountinfo.splitlines():
        fields = line.split()
        if " - cgroup2 " not in line or len(fields) < 5:
            continue
        root, mount = fields[3], fields[4]
        if root != "/" and (path == root or path.startswith(root + "/")):
            path = path[len(root):] or "/"
        return mount.rstrip("/") + ("" if path == "/" else path)
    return None


def detect(wanted: str = "auto") -> Containment:
    """The containment asked for (``run --containment``: auto, cgroup, process-group):
    a cgroup per job where this process can make one, unless told not to."""
    if wanted == "process-group":
        return Containment(None, "--containment process-group")
    try:
        with open("/proc/self/cgroup") as fh:
            proc_cgroup = fh.read()
        with open("/proc/self/mountinfo") as fh:
            mountinfo = fh.read()
    except OSError as exc:
        return Containment(None, f"cannot read /proc: {exc.strerror}")
    base = own_cgroup_dir(proc_cgroup, mountinfo)
    if base is None:
        return Containment(None, "no cgroup v2 mounted")
    probe = f"{base}/{PREFIX}{os.getpid()}-probe"
    try:
        if not os.access(f"{base}/cgroup.procs", os.W_OK):
            raise PermissionError(13, "not writable by this user")
        os.mkdir(probe)
        try:
            if not os.path.exists(f"{probe}/cgroup.kill"):
                raise OSError(0, "this kernel has no cgroup.kill (Linux 5.14+)")
        finally:
            os.rmdir(probe)
    except OSError as exc:
        return Containment(None, f"no cgroup can be made under {base}: {exc.strerror}")
    remove_stale(base)
    return Containment(base)


def checked(path: object) -> str | None:
    """A job cgroup's path as read from a record or an environment, or None: only one
    named as ours is ever signalled (never, say, a whole slice planted in a record)."""
    if not isinstance(path, str) or not path.startswith("/") or "/../" in path:
        return None
    return path if _JOB_NAME.fullmatch(path.rpartition("/")[2]) else None


def run_of(path: str) -> str:
    """The run (``INODE.ATTEMPT``) a job cgroup is named after."""
    return path.rpartition("/")[2].rpartition("-")[2]


def enclose(path: str, pids: Callable[[], list[int]], rounds: int = 5) -> int:
    """Move a running job's processes into its cgroup (made now); what they fork from
    then on is born in it. Looked for again until a round finds none left outside (one
    may fork while we move it). Returns how many were moved; 0 when none could be."""
    if not make(path):
        return 0
    moved = 0
    for _ in range(rounds):
        inside = set(members(path))
        outside = [p for p in pids() if p not in inside]
        if not outside:
            break
        for pid in outside:
            if _write(f"{path}/cgroup.procs", str(pid)):
                moved += 1
    return moved


def make(path: str) -> bool:
    """Make a job's cgroup as it is moved in (False: it stays held by its group alone)."""
    try:
        os.mkdir(path)
    except FileExistsError:
        return os.path.isdir(path)
    except OSError:
        return False
    return True


def _write(path: str, text: str) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        os.write(fd, text.encode())
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def members(path: str) -> list[int]:
    try:
        with open(f"{path}/cgroup.procs") as fh:
            return [int(line) for line in fh.read().split()]
    except (OSError, ValueError):
        return []


def populated(path: str) -> bool:
    """Whether any process is left in the cgroup (or below it)."""
    try:
        with open(f"{path}/cgroup.events") as fh:
            return "populated 1" in fh.read()
    except OSError:
        return False


def signal_all(path: str, sig: int) -> bool:
    """Signal every process of the cgroup (SIGKILL through ``cgroup.kill``, which also
    reaches what forks meanwhile); False when nothing was signalled."""
    if sig == signal.SIGKILL:
        return _write(f"{path}/cgroup.kill", "1")
    found = False
    for pid in members(path):
        try:
            os.kill(pid, sig)
            found = True
        except (ProcessLookupError, PermissionError):
            pass
    return found


def kill_all_but(path: str, monitor: int, tell: Callable[[], None]) -> None:
    """SIGKILL every process of the cgroup but an inline monitor in it (it must live to
    write the end); ``tell`` lets it know, while all is frozen (``cgroup.freeze``, so
    nothing forks past us). A cgroup that will not freeze within a second (a process
    stuck in the kernel) is killed as it is."""
    freeze = _write(f"{path}/cgroup.freeze", "1")
    deadline = time.monotonic() + FREEZE_WAIT_SECONDS
    while freeze and not _frozen(path) and time.monotonic() < deadline:
        time.sleep(0.001)
    tell()
    sigkill_each(members(path), spare=monitor)
    _write(f"{path}/cgroup.freeze", "0")


def sigkill_each(pids: Iterable[int], spare: int) -> None:
    """SIGKILL each of ``pids`` but ``spare`` (one gone, or not ours, is passed over)."""
    for pid in pids:
        if pid != spare:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def _frozen(path: str) -> bool:
    try:
        with open(f"{path}/cgroup.events") as fh:
            return "frozen 1" in fh.read()
    except OSError:
        return True  # gone: nothing to wait for


def remove(path: str) -> bool:
    """Remove an empty job cgroup; False while processes are left in it (they were killed;
    try again later)."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def remove_stale(base: str) -> None:
    """Empty job cgroups left by dispatchers that died (a live dispatcher's are its own;
    a fresh one may be waiting for its job to join)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return
    for entry in entries:
        found = _NAME.match(entry.name)
        if not found or os.path.exists(f"/proc/{found.group(1)}"):
            continue
        try:
            if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_SECONDS:
                remove(entry.path)
        except OSError:
            pass
