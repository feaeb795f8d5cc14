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
from dataclasses import dataclass

from gpudispatch.store import write_atomic

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


def _spawn(request: SpawnRequest) -> int:
    return os.posix_spawn(
        request.argv[0],
        request.argv,
        {**request.env, EXIT_FILE_ENV: request.exit_path},
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


def _keeper_loop(sock: socket.socket, tmp_dir: str) -> None:
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
    children: dict[int, str] = {}  # pid -> exit file
    unrecorded: dict[str, int] = {}  # exit file -> code the dispatcher has not recorded
    connected = True

    def save(exit_path: str, code: int) -> None:
        write_atomic(exit_path, f"{code}\n".encode(), tmp_dir)

    def disconnect() -> None:
        nonlocal connected
        if connected:
            connected = False
            selector.unregister(sock)
            for exit_path, code in unrecorded.items():
                save(exit_path, code)
            unrecorded.clear()

    def send(message) -> None:
        if connected:
            try:
                sock.send(pickle.dumps(message))
            except OSError:
                disconnect()

    while connected or children:
        for key, _ in selector.select(1.0 if children else None):
            if key.data == "child":
                try:
                    while os.read(wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
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
                unrecorded.pop(message.exit_path, None)
                try:
                    os.unlink(message.exit_path)  # a stale code must not outlive its run
                except FileNotFoundError:
                    pass
                try:
                    pid = _spawn(message)
                except OSError as exc:
                    send(("error", message.name, str(exc)))
                else:
                    children[pid] = message.exit_path
                    send(("started", message.name, pid))
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
            code = os.waitstatus_to_exitcode(status)
            if connected:
                unrecorded[exit_path] = code
                send(Exited(pid, code))
            if not connected:
                save(exit_path, code)


class Keeper:
    """The dispatcher's handle on its keeper process."""

    def __init__(self, tmp_dir: str) -> None:
        self._tmp_dir = tmp_dir
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
                _keeper_loop(theirs, self._tmp_dir)
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

    def forget(self, exit_path: str) -> None:
        """The dispatcher has recorded this outcome: the keeper may drop the code."""
        self._send(("forget", exit_path))

    def messages(self) -> list:
        """``("started", name, pid)``, ``("error", name, text)`` and :class:`Exited`
        messages received since the last call, in order (never blocks)."""
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
        except BlockingIOError:
            return None
        except InterruptedError:
            return None
        if not data:
            raise KeeperGone("keeper exited")
        return pickle.loads(data)
