"""The folder convention of a queue root: the only place paths are built.

A root holds one folder per job state plus ``logs/`` and the seed's ``logfile.txt``;
dispatcher bookkeeping that users never touch lives in the hidden ``.gpudispatch/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpudispatch.job import JobState

ROOT_ENV = "GPUDISPATCH_ROOT"
DEFAULT_ROOT = "~/gpudispatch"

STATE_DIRS: dict[JobState, str] = {
    JobState.QUEUED: "queue",
    JobState.RUNNING: "running",
    JobState.COMPLETED: "completed",
    JobState.FAILED: "failed",
}

_EDITOR_SUFFIXES = ("~", ".swp", ".swx", ".swo", ".tmp", ".part", ".partial", ".crdownload")


def default_root() -> Path:
    """ROOT when ``--dir`` is not given: ``$GPUDISPATCH_ROOT``, else ``~/gpudispatch``."""
    return Path(os.environ.get(ROOT_ENV) or DEFAULT_ROOT).expanduser()


def is_job_name(name: str) -> bool:
    """Whether a file name in ``queue/`` is a job: ``*.sh``, not hidden, not an editor temp."""
    return (
        name.endswith(".sh")
        and not name.startswith((".", "#"))
        and not name.endswith(_EDITOR_SUFFIXES)
    )


class Layout:
    """Every path under one queue root.

    Folders are ``Path`` objects; per-job files are plain ``str`` paths, because the
    dispatcher builds several per job and ``pathlib`` costs more than the syscalls.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(os.path.abspath(os.path.expanduser(root)))
        self.queue = self.root / "queue"
        self.running = self.root / "running"
        self.completed = self.root / "completed"
        self.failed = self.root / "failed"
        self.logs = self.root / "logs"
        self.logfile = self.root / "logfile.txt"
        self.state = self.root / ".gpudispatch"
        self.exits = self.state / "exit"  # exit codes written by each job's supervisor
        self.cancels = self.state / "cancel"
        self.dispatchers = self.state / "dispatchers"
        self.paused_flag = self.state / "paused"
        self.gpu_report = self.state / "gpus.json"  # the dispatcher's last GPU reading
        self.tmp = self.state / "tmp"  # written here, then renamed (same filesystem)
        self._state_dirs = {state: f"{self.root}/{folder}/" for state, folder in STATE_DIRS.items()}
        self._logs = f"{self.logs}/"

    def __repr__(self) -> str:
        return f"Layout({str(self.root)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layout) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    def state_dir(self, state: JobState) -> Path:
        return self.root / STATE_DIRS[state]

    def script(self, state: JobState, name: str) -> str:
        return self._state_dirs[state] + name

    def record(self, name: str) -> str:
        return f"{self._logs}{name}.json"

    def job_log(self, name: str, attempt: int) -> str:
        """One output file per run: ``NAME.log`` for the first, ``NAME.N.log`` after."""
        return f"{self._logs}{name}.log" if attempt <= 1 else f"{self._logs}{name}.{attempt}.log"

    def metrics(self, name: str) -> str:
        return f"{self._logs}{name}.metrics.json"

    def exit_file(self, name: str) -> str:
        return f"{self.exits}/{name}"

    def cancel_request(self, name: str) -> str:
        return f"{self.cancels}/{name}"

    def dispatcher_file(self, owner: str) -> str:
        return f"{self.dispatchers}/{owner}"

    def all_dirs(self) -> tuple[Path, ...]:
        return (
            self.queue,
            self.running,
            self.completed,
            self.failed,
            self.logs,
            self.exits,
            self.cancels,
            self.dispatchers,
            self.tmp,
        )

    def create(self) -> Layout:
        for path in self.all_dirs():
            path.mkdir(parents=True, exist_ok=True)
        return self

    def exists(self) -> bool:
        return self.queue.is_dir()
