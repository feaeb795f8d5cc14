"""The folder convention of a queue root: the only place paths are built.

A root holds one folder per job state plus ``logs/`` and the seed's ``logfile.txt``;
dispatcher bookkeeping that users never touch lives in the hidden ``.gpudispatch/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Layout:
    """Every path under one queue root."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).absolute())

    # --- state folders -------------------------------------------------------------
    @property
    def queue(self) -> Path:
        return self.root / "queue"

    @property
    def running(self) -> Path:
        return self.root / "running"

    @property
    def completed(self) -> Path:
        return self.root / "completed"

    @property
    def failed(self) -> Path:
        return self.root / "failed"

    def state_dir(self, state: JobState) -> Path:
        return self.root / STATE_DIRS[state]

    def script(self, state: JobState, name: str) -> Path:
        return self.root / STATE_DIRS[state] / name

    # --- outputs -------------------------------------------------------------------
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def logfile(self) -> Path:
        return self.root / "logfile.txt"

    def record(self, name: str) -> Path:
        return self.logs / f"{name}.json"

    def job_log(self, name: str, attempt: int) -> Path:
        """One output file per run: ``NAME.log`` for the first, ``NAME.N.log`` after."""
        return self.logs / (f"{name}.log" if attempt <= 1 else f"{name}.{attempt}.log")

    def metrics(self, name: str) -> Path:
        return self.logs / f"{name}.metrics.json"

    # --- bookkeeping ---------------------------------------------------------------
    @property
    def state(self) -> Path:
        return self.root / ".gpudispatch"

    @property
    def exits(self) -> Path:
        """Exit codes written by each job's supervisor, read back after a crash."""
        return self.state / "exit"

    def exit_file(self, name: str) -> Path:
        return self.exits / name

    @property
    def cancels(self) -> Path:
        return self.state / "cancel"

    def cancel_request(self, name: str) -> Path:
        return self.cancels / name

    @property
    def dispatchers(self) -> Path:
        return self.state / "dispatchers"

    def dispatcher_file(self, owner: str) -> Path:
        return self.dispatchers / owner

    @property
    def paused_flag(self) -> Path:
        return self.state / "paused"

    @property
    def tmp(self) -> Path:
        """Where files are written before their atomic rename (same filesystem)."""
        return self.state / "tmp"

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
