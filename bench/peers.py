"""The three queues the bench drives: gpudispatch, the seed loop, and task-spooler.

Each runs in its own fresh directory; :class:`RunDirs` deletes the previous run's
directory *before* the next one is set up, never during a timed section.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
READY_LINE = "Job queue empty. Waiting..."


def gpudispatch_command() -> list[str]:
    script = Path(sys.executable).with_name("gpudispatch")
    if script.exists():
        return [str(script)]
    found = shutil.which("gpudispatch")
    return [found] if found else [sys.executable, "-m", "gpudispatch"]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def count_files(folder: Path) -> int:
    try:
        return sum(1 for _ in os.scandir(folder))
    except FileNotFoundError:
        return 0


class RunDirs:
    """Fresh directories under one base. With ``keep``, the old ones stay until the end
    (``cleanup(final=True)``), otherwise each goes before a new one is made.

    Why keep: on an ext4 without a journal (this project's VMs' root), every inode freed
    in the last 60 s (300 s if its table block is dirty) is skipped, one look each, by
    each file created in its block group (``find_inode_bit``): a file created just after
    thousands were deleted costs 0.5-1.2 ms of system time instead of 0.02 (2,000 scripts
    written by ``submit --each-line``: 2.5 s of system time right after a deletion,
    0.4-0.5 s a minute later). The deletions are the bench's housekeeping, not a peer's
    work, and the cost falls on each file a peer creates (task-spooler creates one a
    job; gpudispatch two, three with ``submit``), so it is kept out of the timed part.
    ``--delete-between`` brings it back."""

    def __init__(self, base: Path, keep: bool = False) -> None:
        self.base = base
        self.keep = keep
        self.serial = 0
        self.previous: list[Path] = []

    def fresh(self, label: str) -> Path:
        self.cleanup()
        self.serial += 1
        path = self.base / f"{self.serial:03d}-{label}"
        path.mkdir(parents=True)
        self.previous.append(path)
        return path

    def cleanup(self, final: bool = False) -> None:
        if self.keep and not final:
            return
        if self.previous:
            for path in self.previous:
                shutil.rmtree(path, ignore_errors=True)
            self.previous = []
            os.sync()  # let the deletions reach the disk before anything is timed


def write_script(path: Path | str, body: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o755)
    try:
        os.write(fd, b"#!/bin/sh\n" + body.encode() + b"\n")
    finally:
        os.close(fd)


def _terminate(proc: subprocess.Popen, grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class FolderPeer:
    """A queue that is a folder: users drop scripts into ``queue/``."""

    name = "?"
    root: Path
    staging: Path
    proc: subprocess.Popen | None = None

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    @property
    def done_dirs(self) -> list[Path]:
        return [self.root / "completed", self.root / "failed"]

    def stage(self, name: str, body: str) -> Path:
        path = self.staging / name
        write_script(path, body)
        return path

    def drop(self, staged: Path) -> None:
        os.rename(staged, self.queue_dir / staged.name)

    def logfile_says_idle(self) -> bool:
        try:
            return READY_LINE in (self.root / "logfile.txt").read_text()
        except FileNotFoundError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            _terminate(self.proc)
            self.proc = None


class GpuDispatch(FolderPeer):
    name = "gpudispatch"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.root = run_dir / "q"
        # Scripts are written in the queue's own tmp folder, then renamed into queue/.
        self.staging = self.root / ".gpudispatch" / "tmp"

    def command(self, drain: bool = False) -> list[str]:
        cmd = [*gpudispatch_command(), "run", "--dir", str(self.root), "--slots", "1", "-q"]
        return [*cmd, "--drain"] if drain else cmd

    def create(self) -> None:
        """Make the folders without a dispatcher (to pre-fill the queue)."""
        for sub in ("queue", "completed", "failed", ".gpudispatch/tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def popen(self, drain: bool = False) -> subprocess.Popen:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUDISPATCH")}
        err = open(self.run_dir / "dispatcher.stderr", "ab")  # noqa: SIM115
        try:
            return subprocess.Popen(self.command(drain), stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, env=env)
        finally:
            err.close()

    def start(self) -> None:
        self.create()
        self.proc = self.popen()
        dispatchers = self.root / ".gpudispatch" / "dispatchers"
        wait_until(lambda: self._alive() and count_files(dispatchers) > 0
                   and self.logfile_says_idle(), 60, "an idle gpudispatch dispatcher")

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            err = (self.run_dir / "dispatcher.stderr").read_text(errors="replace")
            raise RuntimeError(f"gpudispatch exited with {self.proc.returncode}:\n{err[-3000:]}")
        return True


class SeedLoop(FolderPeer):
    name = "seed loop"

    def __init__(self, run_dir: Path, wait: float = 1.0) -> None:
        self.run_dir = run_dir
        self.root = run_dir / "gpu0"
        self.staging = run_dir / "staging"
        self.wait = wait

    def start(self) -> None:
        self.staging.mkdir(exist_ok=True)
        cmd = [sys.executable, str(BENCH / "seed_loop.py"), "--gpu", "0",
               "--dir", str(self.run_dir), "--wait", str(self.wait)]
        # The seed runs from a folder beside its queue root and moves each job there.
        self.proc = subprocess.Popen(cmd, cwd=self.run_dir, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.logfile_says_idle, 60, "an idle seed loop")


_QUIET = [
    (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
    (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
]


class TaskSpooler:
    """``tsp`` with a private socket and TMPDIR, one slot."""

    name = "task-spooler"

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        tmp = run_dir / "tmp"
        tmp.mkdir(exist_ok=True)
        self.env = dict(os.environ, TS_SOCKET=str(run_dir / "tsp.socket"), TMPDIR=str(tmp),
                        TS_SLOTS="1", TS_MAXFINISHED="100000")
        self._exe: str | None = None
        self.env.pop("TS_ONFINISH", None)
        self.env.pop("TS_ENV", None)

    def tsp(self, *args: str, capture: bool = False) -> str:
        out = subprocess.run(["tsp", *args], env=self.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, check=True)
        return out.stdout.decode() if capture else ""

    def spawn(self, *args: str) -> int:
        """Start one client as cheaply as a shell loop would; its pid."""
        if self._exe is None:
            self._exe = shutil.which("tsp") or "tsp"
            self._envb = {k.encode(): v.encode() for k, v in self.env.items()}
        return os.posix_spawn(self._exe, ["tsp", *args], self._envb, file_actions=_QUIET)

    def submit(self, *args: str) -> None:
        _, status = os.waitpid(self.spawn(*args), 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"tsp {' '.join(args)} exited {status}")

    def start(self) -> None:
        self.tsp("-S", "1")  # starts the server and sets one slot

    def stop(self) -> None:
        subprocess.run(["tsp", "-K"], env=self.env, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
