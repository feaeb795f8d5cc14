"""The keeper: the process that starts jobs (through their monitors) and refills slots.

The dispatcher starts one keeper (``python -m gpudispatch.keeper``, exec'd, so it never
inherits the dispatcher's threads). It spawns each job's monitor in a session of its
own, reports starts and ends, and holds *hand-overs*: jobs to claim and start the moment
a running one ends, without a round trip through the dispatcher. The monitor of the next
job of a slot is started ahead, held at a gate until the claim (*primed*, ``monitor``).

It owns no outcome: each monitor writes its job's exit status under ROOT, so the keeper,
like the dispatcher, may die at any moment. When the dispatcher goes, the keeper drops
its hand-overs (they stay queued) and exits; the monitors carry on alone.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import pickle
import select
import selectors
import signal
import socket
import stat
import sys
from dataclasses import dataclass, field, replace

from gpudispatch import procs
from gpudispatch.job import JobState
from gpudispatch.monitor import GATE_FD, LOCK_FD, gated
from gpudispatch.safeio import DISK_ERRNOS
from gpudispatch.store import FolderQueue
from gpudispatch.watch import drain_pipe

_MAX_MESSAGE = 1 << 20
_SOCKET_FD = 3  # where the keeper finds its end of the socket pair
_MAX_FDS = 64  # descriptors with one message (a hand-over's pidfds, one per slot)
_FDS_SPACE = socket.CMSG_SPACE(4 * _MAX_FDS)
# A plain int: or-ing the IntFlag members at each call costs more than the call (twice a job).
_RECV_FLAGS = int(socket.MSG_CMSG_CLOEXEC | socket.MSG_DONTWAIT)


def _recv(sock: socket.socket) -> tuple[bytes, list[int]]:
    """One message and the descriptors sent with it (never waits: ``BlockingIOError``
    when there is none). Received descriptors are
    inheritable unless asked otherwise (``socket.recv_fds`` drops its flags): a lock
    leaked into every later job would keep its job owned while any of them runs."""
    data, ancdata, _flags, _addr = sock.recvmsg(_MAX_MESSAGE, _FDS_SPACE, _RECV_FLAGS)
    fds = [int.from_bytes(d[i:i + 4], sys.byteorder) for level, kind, d in ancdata
           if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS
           for i in range(0, len(d) - len(d) % 4, 4)]
    return data, fds


# --- requests (dispatcher -> keeper) -------------------------------------------------------
@dataclass(frozen=True)
class SpawnRequest:
    name: str
    argv: list[str]  # the monitor's
    env: dict[str, str]  # added to the keeper's environment
    log_path: str


@dataclass(frozen=True)
class Handover:
    """Start ``name`` the moment one of the processes in ``variants`` ends, in that one's
    slots (each variant is the request for those slots), claiming it only then.

    The job stays in ``queue/`` until the claim, so a cancel, another dispatcher or the
    user may still take it. The keeper holds several in run order and, when a job ends,
    starts the first that may follow it: a later job never overtakes an earlier one.
    """

    name: str
    variants: dict[int, SpawnRequest]  # monitor pid followed -> request
    identity: tuple[int, int, int]  # inode, size, mtime of the script the dispatcher checked
    # Monitors the dispatcher started itself: their pidfds come with the message, in this
    # order (the keeper cannot wait for another's child, and a pid alone may be reused).
    pidfd_pids: tuple[int, ...] = ()
    # A chain: follow the hand-over of this name, in its slots (``variants`` has one
    # request, under CHAINED), once it starts. A slot then never waits for the dispatcher
    # between short jobs; should that one not start, this one may take its place.
    after_job: str | None = None

    def following(self, *pids: int) -> Handover:
        """This chained hand-over, now following those processes (in its slots)."""
        return replace(self, after_job=None,
                       variants={pid: self.variants[CHAINED] for pid in pids})

    def succeeding(self, ahead: Handover) -> Handover:
        """This chained hand-over, following what ``ahead`` (the one it followed, which
        will not start now) followed."""
        if ahead.after_job is not None:
            return replace(self, after_job=ahead.after_job)
        return self.following(*ahead.variants)


CHAINED = 0  # the key of a chained hand-over's one request (no process has pid 0)


@dataclass(frozen=True)
class Withdraw:
    name: str


# --- reports (keeper -> dispatcher) --------------------------------------------------------
@dataclass(frozen=True)
class Started:
    name: str
    pid: int  # the monitor's
    started: int | None  # its start time (with the pid, its identity)
    after: int | None = None  # for a hand-over: the pid it followed (which slots it took)
    lock_fd: int | None = None  # for a hand-over: the job's lock the keeper took (received)


@dataclass(frozen=True)
class SpawnFailed:
    name: str
    error: str
    errno: int | None = None  # ENOSPC, EROFS...: the disk refused its log; it waits
    lock_fd: int | None = None  # for a hand-over: the job's lock the keeper took (received)


@dataclass(frozen=True)
class Exited:
    name: str
    pid: int
    code: int  # the monitor's status: the job's exit code, or < 0 if the monitor was killed


@dataclass(frozen=True)
class HandoverReturned:
    """A hand-over did not start. ``why``: ``withdrawn`` (asked, or paused, or its log
    could not be created: ``errno`` says why), ``taken`` (someone else claimed or removed
    it), ``changed`` (claimed, but the script changed since it was checked: the dispatcher
    checks and starts it itself)."""

    name: str
    why: str
    errno: int | None = None  # the disk refused its log (ENOSPC, EROFS...): it waits


@dataclass(frozen=True)
class KeeperExited:
    """The keeper process is gone (its hand-overs with it); the jobs it started go on."""


# (Python itself ignores SIGPIPE and SIGXFSZ, as subprocess's restore_signals knows.)
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ)


class KeeperGone(Exception):
    """The keeper process ended; the dispatcher watches its jobs' monitors directly."""


try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)  # for sched_getcpu
except OSError:
    _LIBC = None

# Never through a planted symlink; a FIFO there fails instead of blocking us.
LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK
_ABOVE_TARGETS = max(LOCK_FD, GATE_FD) + 1


def spawn_monitor(request: SpawnRequest, lock_fd: int | None,
                  base_env: dict[str, str] | None = None,
                  log_fd: int | None = None, gate_fd: int | None = None) -> tuple[int, int | None]:
    """Start a job's monitor in a session of its own, its output to the job's log (opened
    here, or ``log_fd``, the caller's); its pid and start time (its identity). With
    ``gate_fd``, a primed monitor (``monitor.gated``) that waits for a line on it.
    ``posix_spawn`` (a vfork and an exec, no Python in the child) is safe from a process
    with threads, so the dispatcher calls this itself."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, request.log_path, LOG_FLAGS | os.O_TRUNC, 0o644)
        if log_fd is None else (os.POSIX_SPAWN_DUP2, log_fd, 1),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    env = {**(os.environ if base_env is None else base_env), **request.env}
    # Moved above both targets first: a dup2 onto itself keeps CLOEXEC, and one descriptor
    # must not be overwritten by the other's dup2 before it is itself placed.
    moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _ABOVE_TARGETS)
             if fd in (LOCK_FD, GATE_FD) else fd for fd in (lock_fd, gate_fd)]
    for fd, target in zip(moved, (LOCK_FD, GATE_FD), strict=True):
        if fd is not None:
            actions.append((os.POSIX_SPAWN_DUP2, fd, target))
    argv = request.argv if gate_fd is None else gated(request.argv)
    try:
        before = procs.boot_ns()
        pid = os.posix_spawn(
            argv[0], argv, env, setsid=True,
            # Ignored dispositions survive exec: a job that ignores SIGTERM cannot be
            # stopped gently (nor a pipeline end on SIGPIPE).
            setsigdef=_RESET_SIGNALS, file_actions=actions,
        )
        return pid, procs.child_start_time(pid, before)
    finally:
        for fd, given in zip(moved, (lock_fd, gate_fd), strict=True):
            if fd != given:
                os.close(fd)


def _pin_here() -> set[int] | None:
    """Pin this process to the CPU it runs on, for one spawn of a primed monitor; the mask
    to set back on both (None: not pinned). A ``posix_spawn`` blocks its caller until the
    child has exec'd, and the kernel places a new process on the CPU that looks idlest at
    the fork, often one busy with the dispatcher: the child then waits there while our CPU
    sits idle (half a millisecond to two, measured with two CPUs), and with it the next
    job's start. Pinned, it runs at once where we wait. A primed monitor runs nothing
    before its gate opens, and its mask is set back before that."""
    try:
        mask = os.sched_getaffinity(0)
        here = _LIBC.sched_getcpu() if _LIBC is not None else -1
        if len(mask) < 2 or here not in mask:
            return None
        os.sched_setaffinity(0, {here})
    except OSError:
        return None
    return mask


@dataclass
class _Primed:
    """A hand-over's monitor started ahead, waiting at its gate (``monitor.gated``)."""

    pid: int
    started: int | None  # its start time (with the pid, its identity)
    gate: int  # the pipe's write end: a line opens the gate, closing it unwritten ends it
    script_fd: int  # the queued script, open in the monitor too: locked on this at the claim
    log_fd: int  # the job's log, the monitor's output: truncated at the claim

    def close(self) -> None:
        """Send the monitor away (it runs nothing), and let go of what we held for it."""
        for fd in (self.gate, self.script_fd, self.log_fd):
            os.close(fd)


@dataclass
class _KeeperState:
    queue: FolderQueue
    sock: socket.socket
    selector: selectors.BaseSelector
    children: dict[int, str] = field(default_factory=dict)  # monitor pid -> job name
    handovers: list[Handover] = field(default_factory=list)  # in run order
    base_env: dict[str, str] | None = None  # what the monitors inherit
    pidfds: dict[int, int] = field(default_factory=dict)  # followed, not ours: pid -> pidfd
    outbox: list = field(default_factory=list)  # this round's reports, in order
    primed: dict[str, _Primed] = field(default_factory=dict)  # by job name
    primed_pids: dict[int, str] = field(default_factory=dict)  # their monitors, not started

    def send(self, message) -> None:
        """Report to the dispatcher, at the end of this round (:meth:`flush`)."""
        self.outbox.append(message)

    def flush(self) -> None:
        """Send the round's reports as one message (one system call and one wake of the
        dispatcher, not one a report). A hand-over's start carries the lock the keeper
        took for it: its ``lock_fd`` is then its index among the descriptors sent."""
        reports, self.outbox = self.outbox, []
        while reports:
            batch, fds = [], []
            while reports and len(fds) < _MAX_FDS:
                report = reports.pop(0)
                fd = getattr(report, "lock_fd", None)
                if fd is not None:
                    report = replace(report, lock_fd=len(fds))
                    fds.append(fd)
                batch.append(report)
            try:
                socket.send_fds(self.sock, [pickle.dumps(batch)], fds)
            finally:
                for fd in fds:
                    os.close(fd)

    def start(self, request: SpawnRequest, lock_fd: int | None, after: int | None = None,
              log_fd: int | None = None):
        try:
            pid, started = spawn_monitor(request, lock_fd, self.base_env, log_fd)
        except OSError as exc:  # (a hand-over's lock goes to the dispatcher with this)
            return SpawnFailed(request.name, str(exc), exc.errno,
                               lock_fd if after is not None else None)
        finally:
            if log_fd is not None:
                os.close(log_fd)
            if lock_fd is not None and after is None:
                os.close(lock_fd)  # the monitor and the dispatcher hold it now
        self.children[pid] = request.name
        return Started(request.name, pid, started, after,
                       lock_fd if after is not None else None)

    def hand_over(self, handover: Handover, after: int) -> list:
        """Start a handed-over job in the slots of ``after`` (ended); should it not start,
        the one chained to it takes its place, and so on. The reports, in order."""
        reports = []
        while True:
            report = self._hand_over_one(handover, after)
            reports.append(report)
            if isinstance(report, Started):
                self.chain_to(handover.name, report.pid)
                return reports
            successor = self.successor(handover)
            if successor is None:
                return reports
            handover = successor.following(after)

    def _hand_over_one(self, handover: Handover, after: int):
        """Lock, claim and start a handed-over job (the lock goes to the dispatcher with
        the start; until this moment, other dispatchers could take the job). A primed
        monitor (:meth:`prime`) is let through its gate."""
        primed = self.unprime(handover.name, keep=True)
        request = handover.variants[after]
        held = self._lock(handover, request, primed)
        if isinstance(held, HandoverReturned):
            return held
        lock_fd, log_fd = held
        try:
            claimed = self.queue.claim(handover.name)
        except OSError:  # the disk refuses the rename (read-only): it stays queued
            claimed = None
        if not claimed or not self._claimed_locked(handover, lock_fd):
            if primed is not None:
                primed.close()  # (its script and log are lock_fd and log_fd)
            else:
                for fd in (lock_fd, log_fd):
                    if fd is not None:
                        os.close(fd)
            why = ("withdrawn" if claimed is None else "taken" if not claimed
                   else "changed")  # (changed: the dispatcher checks it again)
            return HandoverReturned(handover.name, why)
        if log_fd is not None:
            try:
                os.ftruncate(log_fd, 0)
            except OSError:  # the spawn's own open (it truncates) reports what is wrong
                if primed is None:
                    os.close(log_fd)
                    log_fd = None
        # What the ended job left in its group goes before the next job takes its slot
        # (the dispatcher does the same when it hears of the end, maybe later than this).
        procs.end_leftovers(after)
        if primed is None:
            return self.start(request, lock_fd, after, log_fd)
        os.close(primed.log_fd)
        try:
            os.write(primed.gate, b"\n")  # (a pipe's buffer: never waits)
        except OSError:  # it died at its gate just now: a monitor started the usual way
            return self.start(request, lock_fd, after)
        finally:
            os.close(primed.gate)
        self.children[primed.pid] = handover.name
        return Started(handover.name, primed.pid, primed.started, after, lock_fd)

    def _lock(self, handover: Handover, request: SpawnRequest,
              primed: _Primed | None) -> tuple[int, int | None] | HandoverReturned:
        """The job's lock and its log, for the claim; or why it does not start. A primed
        monitor is locked on the script it holds open: it holds the lock from then on, as
        a monitor started now would."""
        if self.queue.is_paused():
            if primed is not None:
                primed.close()
            return HandoverReturned(handover.name, "withdrawn")
        if primed is not None:
            try:
                fcntl.flock(primed.script_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                primed.close()
                return HandoverReturned(handover.name, "taken")
            return primed.script_fd, primed.log_fd
        lock_fd = self.queue.lock_job(handover.name, JobState.QUEUED)
        if lock_fd is None:
            return HandoverReturned(handover.name, "taken")
        # Its log before its claim: a disk that refuses the file (full, read-only) leaves
        # the job untouched in the queue. Truncated only once the job is ours.
        try:
            return lock_fd, os.open(request.log_path, LOG_FLAGS | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            if exc.errno in DISK_ERRNOS:
                os.close(lock_fd)
                return HandoverReturned(handover.name, "withdrawn", exc.errno)
            return lock_fd, None  # (a FIFO or a symlink there: the spawn's own open says so)

    def _claimed_locked(self, handover: Handover, lock_fd: int) -> bool:
        """Whether the script we locked is the one the dispatcher checked, and the one our
        claim moved to ``running/`` (it may have been replaced since we opened it)."""
        st = os.fstat(lock_fd)
        try:
            there = os.lstat(self.queue.layout.script(JobState.RUNNING, handover.name))
        except OSError:
            return False
        return ((st.st_ino, st.st_size, st.st_mtime_ns) == handover.identity
                and (there.st_ino, there.st_dev) == (st.st_ino, st.st_dev))

    def prime(self) -> None:
        """Start ahead, for each running monitor, the monitor of the job that follows it,
        held at its gate: the exec then happens while the job before it runs, not between
        the two. Only a hand-over in one slot set (a chain's, or one following one
        process); a primed one that is no longer next is sent away. Best effort: what
        fails here is done, or reported, the usual way at the start."""
        nexts: dict[str, tuple[Handover, int]] = {}
        for pid in (*self.children, *self.pidfds):
            handover = next((h for h in self.handovers if pid in h.variants), None)
            if handover is not None and len(handover.variants) == 1:
                nexts[handover.name] = (handover, pid)
        for name in [n for n in self.primed if n not in nexts]:
            self.unprime(name)
        for name, (handover, pid) in nexts.items():
            if name not in self.primed:
                self._prime_one(handover, handover.variants[pid])

    def _prime_one(self, handover: Handover, request: SpawnRequest) -> None:
        held: list[int] = []  # the script, the log, the gate's write end
        try:
            held.append(os.open(self.queue.layout.script(JobState.QUEUED, handover.name),
                                os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC))
            st = os.fstat(held[0])
            if (stat.S_ISREG(st.st_mode)
                    and (st.st_ino, st.st_size, st.st_mtime_ns) == handover.identity):
                held.append(os.open(request.log_path, LOG_FLAGS | os.O_CLOEXEC, 0o644))
                gate_r, gate_w = os.pipe2(os.O_CLOEXEC)
                held.append(gate_w)
                mask = _pin_here()
                try:
                    pid, started = spawn_monitor(request, held[0], self.base_env, held[1],
                                                 gate_r)
                finally:
                    os.close(gate_r)
                    if mask is not None:
                        os.sched_setaffinity(0, mask)
                if mask is not None:
                    os.sched_setaffinity(pid, mask)  # (should it fail, it runs nothing)
                script_fd, log_fd, gate_w = held
                self.primed[handover.name] = _Primed(pid, started, gate_w, script_fd, log_fd)
                self.primed_pids[pid] = handover.name
                return
        except OSError:
            pass
        for fd in held:
            os.close(fd)

    def unprime(self, name: str, keep: bool = False) -> _Primed | None:
        """Forget the primed monitor of ``name``, sending it away unless ``keep``."""
        primed = self.primed.pop(name, None)
        if primed is not None:
            del self.primed_pids[primed.pid]
            if not keep:
                primed.close()
        return primed

    def follow(self, handover: Handover, fds: list[int]) -> None:
        """Take a hand-over, with the pidfds of the dispatcher's monitors it follows. It
        starts at once if one of them is unknown here (ended, and its end was not used
        for another job); an end seen by a pidfd is acted on once every request sent
        before it has been read, so the first in run order gets the slots."""
        for pid, fd in zip(handover.pidfd_pids, fds, strict=False):
            old = self.pidfds.pop(pid, None)
            if old is not None:
                self.selector.unregister(old)
                os.close(old)
            self.pidfds[pid] = fd
            self.selector.register(fd, selectors.EVENT_READ, "pidfd")
        if handover.after_job is not None:
            self.follow_chained(handover)
            return
        ended = next((pid for pid in handover.variants
                      if pid not in self.children and pid not in self.pidfds), None)
        if ended is None:
            self.handovers.append(handover)
        else:
            self.send_all(self.hand_over(handover, ended))
            self.forget_pidfds()

    def follow_chained(self, handover: Handover) -> None:
        """Chain a hand-over to the one it names, waiting here or started by now; when
        that one is neither (it ended, or did not start), it goes back: whether its slots
        are free is the dispatcher's to say."""
        ahead = handover.after_job
        if any(h.name == ahead for h in self.handovers):
            self.handovers.append(handover)
            return
        pid = next((p for p, name in self.children.items() if name == ahead), None)
        if pid is None:
            self.send(HandoverReturned(handover.name, "withdrawn"))
            return
        self.handovers.append(handover.following(pid))

    def chain_to(self, name: str, pid: int) -> None:
        """``name`` started as ``pid``: the hand-over chained to it follows that process."""
        for i, h in enumerate(self.handovers):
            if h.after_job == name:
                self.handovers[i] = h.following(pid)

    def successor(self, ahead: Handover) -> Handover | None:
        """Take out the hand-over chained to ``ahead``, if any."""
        for i, h in enumerate(self.handovers):
            if h.after_job == ahead.name:
                del self.handovers[i]
                return h
        return None

    def withdraw(self, name: str) -> None:
        """Give back a waiting hand-over; one chained to it follows what it followed."""
        for i, handover in enumerate(self.handovers):
            if handover.name == name:
                del self.handovers[i]
                self.unprime(name)
                for j, h in enumerate(self.handovers):
                    if h.after_job == name:
                        self.handovers[j] = h.succeeding(handover)
                self.send(HandoverReturned(name, "withdrawn"))
                self.forget_pidfds()
                return

    def send_all(self, reports: list) -> None:
        self.outbox.extend(reports)

    def check_followed(self) -> None:
        """Refill the slots of the followed monitors that ended (one job each: the others
        that follow it stay until the dispatcher takes them back)."""
        if not self.pidfds:
            return
        ready = set(select.select(list(self.pidfds.values()), [], [], 0)[0])
        for pid in [p for p, fd in self.pidfds.items() if fd in ready]:
            fd = self.pidfds.pop(pid)
            self.selector.unregister(fd)
            os.close(fd)
            follow = self.follower(pid)
            if follow is not None:
                self.send_all(self.hand_over(follow, pid))
        self.forget_pidfds()

    def follower(self, pid: int) -> Handover | None:
        for i, handover in enumerate(self.handovers):
            if pid in handover.variants:
                del self.handovers[i]
                return handover
        return None

    def forget_pidfds(self) -> None:
        """Close the pidfds no hand-over follows any more."""
        followed = {pid for h in self.handovers for pid in h.variants}
        for pid in [p for p in self.pidfds if p not in followed]:
            fd = self.pidfds.pop(pid)
            self.selector.unregister(fd)
            os.close(fd)


def run_keeper(sock: socket.socket, queue: FolderQueue) -> None:
    """Serve one dispatcher until it goes; then leave the monitors to themselves."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "sock")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    # The environment once, as a plain dict: ``os.environ`` decodes every variable at
    # each read (a tenth of a millisecond a job).
    state = _KeeperState(queue, sock, selector, base_env=dict(os.environ))
    try:
        while True:
            for key, _ in selector.select():
                if key.data == "child":
                    drain_pipe(wake_r)
                elif key.data == "sock" and not _serve(state):
                    return
            _reap(state)
            state.check_followed()
            # The next monitor before the reports: the job let through its gate runs on
            # the other CPU meanwhile, before the reports wake the dispatcher there (they
            # are not urgent: the slot's next jobs are here already).
            state.prime()
            state.flush()
    except OSError:  # the dispatcher is gone (the socket broke)
        return


def _serve(state: _KeeperState) -> bool:
    """Act on every request sent so far; False once the dispatcher has gone."""
    while True:
        try:
            data, fds = _recv(state.sock)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        message = pickle.loads(data)
        if isinstance(message, SpawnRequest):
            state.send(state.start(message, fds[0] if fds else None))
        elif isinstance(message, Handover):
            state.follow(message, fds)
        elif isinstance(message, Withdraw):
            state.withdraw(message.name)


def _reap(state: _KeeperState) -> None:
    while True:  # (monitors sent away from their gates are reaped here too)
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        name = state.children.pop(pid, None)
        if name is None:
            if pid in state.primed_pids:  # killed at its gate: started the usual way
                state.unprime(state.primed_pids[pid])
            continue
        follow = state.follower(pid)
        reports = state.hand_over(follow, pid) if follow else []  # refill the slot first
        state.send(Exited(name, pid, os.waitstatus_to_exitcode(status)))
        state.send_all(reports)
        state.forget_pidfds()


def _seal_inherited() -> None:
    """Mark what this process inherited (beyond stdin, stdout, stderr) close-on-exec:
    the monitors it starts get only what ``spawn_monitor`` gives them."""
    try:
        fds = [int(n) for n in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, closed by now


class Keeper:
    """The dispatcher's launcher: it starts jobs itself and keeps a keeper process for
    hand-overs.

    A start is a ``posix_spawn`` from the dispatcher, with no round trip to another
    process on the way (that hop was a third of the start latency). The monitors it
    starts are its children; it reaps them and reports their ends. The keeper process
    only holds hand-overs (it follows our monitors through pidfds sent with each); if it
    dies, its hand-overs and the monitors it started are reported lost
    (:class:`KeeperExited`), and the next hand-over starts a new one.
    """

    def __init__(self, root: str, base_env: dict[str, str]) -> None:
        _seal_inherited()
        self._root = root
        self._base_env = base_env
        self.pid: int | None = None
        self._sock: socket.socket | None = None
        self._children: dict[int, tuple[str, int]] = {}  # our monitors: pid -> name, pidfd
        self._lost = False  # a send found the keeper gone

    def start(self) -> None:
        """Start the keeper process (again, after it died)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = os.posix_spawn(
                sys.executable, [sys.executable, "-m", "gpudispatch.keeper", self._root],
                self._base_env, setsid=True,  # a Ctrl-C meant for the dispatcher is not ours
                file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), _SOCKET_FD)],
            )
        finally:
            theirs.close()
        ours.setblocking(False)  # reads never wait; a full buffer is waited on in _send
        self._sock = ours

    def fileno(self) -> int:
        if self._sock is None:
            self.start()
        assert self._sock is not None
        return self._sock.fileno()

    def owns(self, pid: int) -> bool:
        """Whether the monitor ``pid`` is our child (its end is ours to report)."""
        return pid in self._children

    def spawn(self, request: SpawnRequest, lock_fd: int | None) -> Started | SpawnFailed:
        """Start a job's monitor now (the caller keeps its hold on ``lock_fd``)."""
        try:
            pid, started = spawn_monitor(request, lock_fd, self._base_env)
        except OSError as exc:
            return SpawnFailed(request.name, str(exc), exc.errno)
        # Our unreaped child: its pid cannot be reused while we hold it, so this pidfd
        # is this process's for good.
        self._children[pid] = (request.name, os.pidfd_open(pid))
        return Started(request.name, pid, started)

    def hand_over(self, handover: Handover) -> None:
        ours = tuple(pid for pid in handover.variants if pid in self._children)
        self._send(replace(handover, pidfd_pids=ours), [self._children[p][1] for p in ours])

    def withdraw(self, name: str) -> None:
        """Take back a hand-over; :class:`HandoverReturned` comes if it was in time."""
        self._send(Withdraw(name))

    def signal(self, monitor_pid: int, sig: int, cgroup: str | None = None) -> None:
        procs.signal_job(monitor_pid, sig, cgroup)

    def own_pids(self) -> set[int]:
        return set(self._children) | ({self.pid} if self.pid else set())

    def messages(self) -> list:
        """Reports since the last call, in order (never blocks): the keeper's, then the
        ends of our own monitors, then :class:`KeeperExited` if the keeper died. An end
        the keeper acted on goes before the start that followed it, as in the keeper's
        own reports (its start comes quickly, often before we reap the one it followed)."""
        out, lost = self._read_keeper()
        for end in self._reap():
            out.insert(next((i for i, m in enumerate(out)
                             if isinstance(m, Started) and m.after == end.pid), len(out)),
                       end)
        if lost or self._lost:
            self._drop_keeper()
            out.append(KeeperExited())
        return out

    def close(self) -> None:
        """Let the keeper go (running jobs carry on under their monitors)."""
        self._drop_keeper()
        for _name, fd in self._children.values():
            os.close(fd)
        self._children.clear()

    def _read_keeper(self) -> tuple[list, bool]:
        out: list = []
        while self._sock is not None:
            try:
                data, fds = _recv(self._sock)
            except (BlockingIOError, InterruptedError):
                return out, False
            except OSError:
                return out, True
            if not data:
                return out, True
            for report in pickle.loads(data):  # a round's reports (see _KeeperState.flush)
                at = getattr(report, "lock_fd", None)
                out.append(report if at is None else replace(report, lock_fd=fds[at]))
        return out, False

    def _reap(self) -> list[Exited]:
        out = []
        for pid, (name, fd) in list(self._children.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped elsewhere: its status is in the journal
                done, status = pid, None
            if done:
                del self._children[pid]
                os.close(fd)
                code = -1 if status is None else os.waitstatus_to_exitcode(status)
                out.append(Exited(name, pid, code))
        return out

    def _drop_keeper(self) -> None:
        self._lost = False
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.pid is not None:
            try:
                os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            self.pid = None

    def _send(self, message, fds: list[int] | None = None) -> None:
        if self._sock is None:
            self.start()
        assert self._sock is not None
        data = pickle.dumps(message)
        while True:
            try:
                socket.send_fds(self._sock, [data], fds or [])
                return
            except BlockingIOError:  # the keeper is behind: wait until it reads
                select.select([], [self._sock], [], 1.0)
            except OSError as exc:
                self._lost = True  # messages() reports it, in order with the rest
                raise KeeperGone(f"keeper is gone: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Jobs inherit what the keeper has open: nothing but stdin, stdout and stderr.
    os.set_inheritable(_SOCKET_FD, False)
    os.closerange(_SOCKET_FD + 1, os.sysconf("SC_OPEN_MAX"))
    sock = socket.socket(fileno=_SOCKET_FD)
    run_keeper(sock, FolderQueue(argv[0], create=False))
    return 0


if __name__ == "__main__":
    # Run the module's own copy, not __main__'s: the messages unpickle as its classes.
    from gpudispatch.keeper import main as keeper_main

    sys.exit(keeper_main())
