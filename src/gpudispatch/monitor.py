"""The per-job monitor: a ``/bin/sh`` that is the job's parent and owns its exit status.

As Podman's conmon or Slurm's slurmstepd, it lives exactly as long as the job and does
one thing: wait for it, then write ``ATTEMPT CODE`` to the job's exit file under ROOT.
The dispatcher and its keeper may die at any moment; the status survives them.

- It ignores SIGTERM/SIGINT/SIGHUP with a *caught* no-op (not ``SIG_IGN``, which would be
  inherited across ``exec``), so a signal to the job's group stops the job, and the monitor
  goes on to write what the job returned.
- It holds the job's lock (fd 9, a ``flock`` the dispatcher took on the script before the
  claim; see ``store.lock_job``) and closes it for the job: the lock is held while the
  dispatcher *or* the monitor lives, which is how any other process tells that a job in
  ``running/`` still has an owner.
- A plain ``/bin/sh`` script is sourced in a subshell, one ``exec`` shorter; ``$0`` is the
  script's path in both ways.
- The line ends with a newline: a reader that finds no newline (a write cut by a crash)
  treats the file as absent.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gpudispatch.layout import ATTEMPT_ENV, EXIT_FILE_ENV

LOCK_FD = 9
MONITOR_SCRIPT = (
    ": gpudispatch-monitor; trap : TERM INT HUP; "
    'if [ "$1" = . ]; then (trap - TERM INT HUP; . "$0") 9<&-; else "$@" 9<&-; fi; '
    f'c=$?; echo "${ATTEMPT_ENV} $c" >"${EXIT_FILE_ENV}"; exit $c'
)
MARKER = b": gpudispatch-monitor;"


def monitor_argv(argv: list[str], plain_sh: bool) -> list[str]:
    """The monitor's argv for a job run as ``argv`` (its ``$0`` is the script)."""
    script = argv[-1]
    rest = ["."] if plain_sh else argv
    return ["/bin/sh", "-c", MONITOR_SCRIPT, script, *rest]


@dataclass(frozen=True)
class ExitStatus:
    attempt: int
    code: int


def read_exit_file(path: str) -> ExitStatus | None:
    """What a monitor wrote, or None (not written, cut short, or not a monitor's line)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        data = os.read(fd, 64)
    except OSError:
        return None
    finally:
        os.close(fd)
    if not data.endswith(b"\n"):
        return None
    parts = data.split()
    if len(parts) != 2 or not all(p.lstrip(b"-").isdigit() for p in parts):
        return None
    return ExitStatus(int(parts[0]), int(parts[1]))
