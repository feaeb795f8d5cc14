"""The keeper: a small process that starts jobs and outlives the dispatcher.

The dispatcher forks one keeper when it starts. The keeper spawns each job (its own
session, so its group can be killed), waits for it and tells the dispatcher, keeping
the exit code until the dispatcher says it has recorded it (``forget``). When the
dispatcher dies (even by ``kill -9``) the keeper writes every code not yet recorded
to ``.gpudispatch/exit/NAME`` and goes on until its jobs end and their codes are on
disk, so a restarted dispatcher concludes them instead of running them again.

One keeper per dispatcher, rather than a shell per job, keeps a second ``exec`` and,
while the dispatcher lives, any file creation off every job's path: creating a file
costs 0.3 to 1 ms on the disks this runs on, more than starting ``/bin/sh``.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import socket
import time
from dataclasses import dataclass

from gpudispatch import peers
from gpudispatch.job import JobState
from gpudispatch.store import FolderQueue, write_atomic
from gpudispatch.watch import drain_pipe

# Environment marker that lets a restarted dispatcher find a job by its exit file.
EXIT_FILE_ENV = "GPUDISPATCH_EXIT_FILE"
_MAX_MESSAGE = 1 << 20


@dataclass(frozen=True)
class SpawnRequest:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: str
    exit_path: str


@dataclass(frozen=True)
class Exited:
    pid: int
    code: int


# (Python itself ignores SIGPIPE and SIGXFSZ, as subprocess's restore_signals knows.)
_RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ)


class KeeperGone(Exception):
    """The keeper process ended; jobs it started can no longer report."""


def _spawn(request: SpawnRequest, base_env: dict[str, str]) -> int:
    return os.posix_spawn(
        request.argv[0],
        request.argv,
        {**base_env, **request.env, EXIT_FILE_ENV: request.exit_path},
        setsid=True,
        # The keeper ignores these; ignored dispositions survive exec, and a job that
        # ignores SIGTERM cannot be stopped gently (nor a pipeline end on SIGPIPE).
        setsigdef=_RESET_SIGNALS,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, request.log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
             0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ],
    )


@dataclass(frozen=True)
class Handover:
    """Start ``request`` the moment process ``after_pid`` ends, claiming it only then.

    The next job of a busy slot waits here, so that a slot is refilled without a round
    trip through the dispatcher; it stays in ``queue/`` until the claim, so a cancel,
    another dispatcher or the user may still take it, and a dispatcher that dies leaves
    nothing half started.
    """

    request: SpawnRequest
    after_pid: int
    identity: tuple[int, int, int]  # inode, size, mtime of the script the dispatcher checked


def _keeper_loop(
    sock: socket.socket, queue: FolderQueue, base_env: dict[str, str], owner: str,
    every: float,
) -> None:
    """Run in the forked keeper until the dispatcher is gone and every job has ended."""
    os.setsid()  # no terminal: a Ctrl-C meant for the dispatcher must not reach us
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
    tmp_dir = str(queue.layout.tmp)
    children: dict[int, str] = {}  # pid -> exit file
    unrecorded: dict[str, int] = {}  # exit file -> code the dispatcher has not recorded
    handovers: dict[int, Handover] = {}  # pid of the running job -> the job to follow it
    connected = True

    def save(exit_path: str, code: int) -> None:
        write_atomic(exit_path, f"{code}\n".encode(), tmp_dir)

    def disconnect() -> None:
        nonlocal connected
        if connected:
            connected = False
            selector.unregister(sock)
            handovers.clear()  # nobody would record them: leave them queued
            for exit_path, code in unrecorded.items():
                save(exit_path, code)
            unrecorded.clear()

    def send(message) -> None:
        if connected:
            try:
                sock.send(pickle.dumps(message))
            except OSError:
                disconnect()

    def start(request: SpawnRequest):
        unrecorded.pop(request.exit_path, None)
        try:
            os.unlink(request.exit_path)  # a stale code must not outlive its run
        except FileNotFoundError:
            pass
        try:
            pid = _spawn(request, base_env)
        except OSError as exc:
            return ("error", request.name, str(exc))
        children[pid] = request.exit_path
        return ("started", request.name, pid)

    def hand_over(handover: Handover):
        name = handover.request.name
        if queue.is_paused():  # paused since it was handed over: give it back
            return ("withdrawn", name, None)
        if not queue.claim(name):
            return ("not-claimed", name, None)
        try:
            st = os.lstat(queue.layout.script(JobState.RUNNING, name))
        except FileNotFoundError:
            return ("not-claimed", name, None)
        if (st.st_ino, st.st_size, st.st_mtime_ns) != handover.identity:
            return ("claimed", name, None)  # changed since checked: the dispatcher decides
        return start(handover.request)

    next_beat = 0.0
    while connected or children:
        if not connected and time.monotonic() >= next_beat:
            # The dispatcher is gone but its jobs run on: peers on other hosts must not
            # take them over, so keep its heartbeat going until they end.
            next_beat = time.monotonic() + every
            peers.heartbeat(queue.layout, owner)
        timeout = min(1.0, every) if children else None
        for key, _ in selector.select(timeout):
            if key.data == "child":
                drain_pipe(wake_r)
                continue
            try:
                data = sock.recv(_MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:
                disconnect()
                continue
            message = pickle.loads(data)
            if isinstance(message, SpawnRequest):
                send(start(message))
            elif isinstance(message, Handover):
                if message.after_pid in children:
                    handovers[message.after_pid] = message
                else:  # it ended already
                    send(hand_over(message))
            elif message[0] == "withdraw":
                for pid, handover in list(handovers.items()):
                    if handover.request.name == message[1]:
                        del handovers[pid]
                        send(("withdrawn", message[1], None))
            elif message[0] == "forget":
                unrecorded.pop(message[1], None)
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            exit_path = children.pop(pid, None)
            if exit_path is None:
                continue
            handover = handovers.pop(pid, None)
            follow = hand_over(handover) if handover else None  # refill the slot first
            code = os.waitstatus_to_exitcode(status)
            if connected:
                unrecorded[exit_path] = code
                send(Exited(pid, code))
                if follow:
                    send(follow)
            if not connected:
                save(exit_path, code)
    if not connected:
        peers.unregister(queue.layout, owner)  # its last jobs' codes are on disk


class Keeper:
    """The dispatcher's handle on its keeper process."""

    def __init__(self, queue: FolderQueue, base_env: dict[str, str], owner: str,
                 heartbeat: float) -> None:
        self._queue = queue
        self._owner, self._heartbeat = owner, heartbeat
        self._base_env = base_env  # requests carry only what each job adds to it
        self.pid: int | None = None
        self._sock: socket.socket | None = None

    def start(self) -> None:
        """Fork the keeper; call before any thread starts (fork copies only this one)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:  # the keeper
            code = 0
            try:
                ours.close()
                _keeper_loop(theirs, self._queue, self._base_env, self._owner,
                             self._heartbeat)
            except BaseException:
                import traceback

                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        theirs.close()
        self.pid, self._sock = pid, ours

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def spawn(self, request: SpawnRequest) -> None:
        """Ask for a job to start; its pid (or error) arrives later from :meth:`messages`.

        Not waiting lets the dispatcher record the last job while this one starts.
        """
        self._send(request)

    def hand_over(self, handover: Handover) -> None:
        """Queue a job to claim and start as soon as ``handover.after_pid`` ends."""
        self._send(handover)

    def withdraw(self, name: str) -> None:
        """Take back a hand-over; ``("withdrawn", name, None)`` comes if it was in time."""
        self._send(("withdraw", name))

    def forget(self, exit_path: str) -> None:
        """The dispatcher has recorded this outcome: the keeper may drop the code."""
        self._send(("forget", exit_path))

    def messages(self) -> list:
        """Messages since the last call, in order (never blocks): :class:`Exited`, and
        ``(kind, name, detail)`` with kind ``started`` (detail: pid), ``error`` (text),
        and for hand-overs ``not-claimed``, ``claimed`` (changed since checked: start it
        yourself) and ``withdrawn``."""
        out = []
        while True:
            message = self._receive()
            if message is None:
                return out
            out.append(message)

    def close(self) -> None:
        """Let the keeper exit once its jobs have ended."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, message) -> None:
        if self._sock is None:
            raise KeeperGone("keeper is closed")
        try:
            self._sock.send(pickle.dumps(message))
        except OSError as exc:
            raise KeeperGone(f"keeper is gone: {exc}") from None

    def _receive(self):
        if self._sock is None:
            raise KeeperGone("keeper is closed")
        try:
            data = self._sock.recv(_MAX_MESSAGE, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:  # the keeper died (connection reset)
            raise KeeperGone(f"keeper is gone: {exc}") from None
        if not data:
            raise KeeperGone("keeper exited")
        return pickle.loads(data)
