"""The per-job monitor: a ``/bin/sh`` that is the job's parent and owns its exit status.

As Podman's conmon or Slurm's slurmstepd, it lives exactly as long as the job and does
one thing: wait for it, then append ``RUN CODE NAME`` to its host's exit journal under
ROOT. The dispatcher and its keeper may die at any moment; the status survives them.

- It ignores SIGTERM/SIGINT/SIGHUP with a *caught* no-op (not ``SIG_IGN``, which would be
  inherited across ``exec``), so a signal to the job's group stops the job, and the monitor
  goes on to write what the job returned.
- It holds the job's lock (fd 9, a ``flock`` the dispatcher took on the script before the
  claim; see ``store.lock_job``) and closes it for the job: the lock is held while the
  dispatcher *or* the monitor lives, which is how any other process tells that a job in
  ``running/`` still has an owner.
- A plain ``/bin/sh`` script is sourced in a subshell, one ``exec`` shorter; ``$0`` is the
  script's path in both ways, and it gets no arguments (``$#`` is 0, as for ``sh SCRIPT``).
- A plain ``/bin/sh`` script that cannot take the shell from its monitor (no ``exec``,
  ``trap``, ``eval``, ``.``, function or alias: see ``scriptcheck.INLINE_UNSAFE``) is
  sourced by the monitor itself, *inline*: one fork shorter (a third of a trivial job's
  cost). The monitor then writes the status from its ``EXIT`` trap, with the values it
  copied before the script ran; a signal ends the script as it would a shell running it
  (``TERM`` 143, ``INT`` 130, ``HUP`` 129) and is recorded; ``USR2`` is how a SIGKILL of
  the job reaches it (``procs.signal_job`` kills the rest): 137. In a cgroup it is moved
  in with its job, and once it has written the status it kills the rest of the cgroup.
- A monitor may be started ahead, *primed*: the keeper starts the next job's monitor of
  a slot while the job before it runs, and it waits at its gate (a pipe, fd 8) before it
  does anything. The keeper claims the job when the slot frees and opens the gate with a
  line; closing the pipe unwritten (a withdrawal, or the keeper's death) sends the monitor
  away, having run nothing and written nothing. The exec, a third of a trivial job's
  cost, is then off the path between two jobs. It holds the script open (fd 9) from its
  start, unlocked: the lock is taken on that open file at the claim, so the monitor holds
  it from then on, and a job waiting behind a primed monitor can still be cancelled.
- One journal per host, appended with ``O_APPEND`` (a short line is one atomic write),
  rather than a file per job: creating a file costs more than a trivial job on the disks
  this runs on. ``RUN`` is the script's inode and the attempt, so a line is never taken
  for another run's. A line without its newline (a write cut by a crash) is ignored.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gpudispatch.layout import CGROUP_ENV, EXIT_FILE_ENV, JOB_ENV, RUN_ENV
from gpudispatch.safeio import read_regular

LOCK_FD = 9
_RECORD = f'printf "%s %s %s\\n" "${RUN_ENV}" $c "${JOB_ENV}" >>"${EXIT_FILE_ENV}"; '
_HEAD = ": gpudispatch-monitor; "
# A script sourced by its monitor gets no arguments: ``shift`` drops the ``.`` that says so.
_RUN_JOB = 'if [ "$1" = . ]; then (trap - TERM INT HUP; shift; . "$0") 9<&-; else "$@" 9<&-; fi; '
MONITOR_SCRIPT = f"{_HEAD}trap : TERM INT HUP; {_RUN_JOB}c=$?; {_RECORD}exit $c"
# With a cgroup (``cgroups``; the dispatcher moves a job into it once it has run a
# moment): at the end the monitor, outside it, kills it, records the status, and is gone
# only once everything of the job is: it spins briefly (a SIGKILL is quick), then looks
# every 10 ms, for at most about a minute (a process stuck in the kernel). A job that
# ended before it was moved has no cgroup (most short ones): a test (a ``stat``, no
# fork) skips both steps; one removed meanwhile fails at once, quietly.
CGROUP_MONITOR_SCRIPT = (
    f"{_HEAD}trap : TERM INT HUP; {_RUN_JOB}c=$?; "
    f'g=0; [ -d "${CGROUP_ENV}" ] && g=1 && '
    f'{{ echo 1 >"${CGROUP_ENV}/cgroup.kill"; }} 2>/dev/null; '
    f"{_RECORD}"
    f'n=0; while [ $g = 1 ] && [ $n -lt 5000 ] && '
    f'read -r _ p 2>/dev/null <"${CGROUP_ENV}/cgroup.events"'
    ' && [ "$p" = 1 ]; do n=$((n+1)); [ $n -lt 200 ] || sleep 0.01; done; exit $c'
)
# Inline: values copied before the script runs (it may change its environment); names a
# script may not use (``scriptcheck``). ``$?`` is read first in the trap: the status.
_INLINE_COPY = (f'__gpudispatch_run="${RUN_ENV}" __gpudispatch_job="${JOB_ENV}" '
                f'__gpudispatch_exits="${EXIT_FILE_ENV}" __gpudispatch_cg="${CGROUP_ENV}"; ')
# (In a group with no stderr: what a script's ``set -x`` would trace into its log. Its
# options and ``IFS`` are reset: they would change how the trap's lines run.)
_INLINE_RECORD = ('{ __gpudispatch_code=$?; set +eux; unset IFS; printf "%s %s %s\\n" '
                  '"$__gpudispatch_run" "$__gpudispatch_code" "$__gpudispatch_job" '
                  '>>"$__gpudispatch_exits"')
# In its cgroup with its job (moved in with it), it kills every other process there, in
# rounds (one may fork meanwhile), until none is listed or for about a second (builtins
# only: a ``sleep`` would be born in the cgroup too), then exits: the keeper starts the
# next job in its slot only then, as for a monitor outside that waits for ``populated 0``.
_INLINE_KILL_CGROUP = (
    '; [ -n "$__gpudispatch_cg" ] && [ -d "$__gpudispatch_cg" ] && '
    '__gpudispatch_n=0 && while [ $__gpudispatch_n -lt 20000 ]; do __gpudispatch_o=0; '
    'while read -r __gpudispatch_p; do [ "$__gpudispatch_p" = $$ ] || '
    '{ kill -9 "$__gpudispatch_p"; __gpudispatch_o=1; }; done <"$__gpudispatch_cg/cgroup.procs"; '
    '[ $__gpudispatch_o = 0 ] && break; __gpudispatch_n=$((__gpudispatch_n+1)); done; '
    '} 2>/dev/null')
INLINE_HEAD = f"{_HEAD}: inline; "
INLINE_MONITOR_SCRIPT = (
    f"{INLINE_HEAD}{_INLINE_COPY}"
    "trap 'exit 143' TERM; trap 'exit 130' INT; trap 'exit 129' HUP; trap 'exit 137' USR2; "
    f"trap '{_INLINE_RECORD}{_INLINE_KILL_CGROUP}' EXIT; "
    '. "$0" 9<&-'
)
JOURNAL_ROTATE_BYTES = 4 << 20
JOURNAL_READ_LIMIT = 64 << 20  # rotated at start only: a long-lived one may grow past 4 MB
MARKER = _HEAD.rstrip().encode()
GATE_FD = 8
# First of all, before any trap: an end at the gate runs nothing and records nothing.
_GATE = f"read -r _ <&{GATE_FD} || exit 0; exec {GATE_FD}<&-; "


def monitor_argv(argv: list[str], plain_sh: bool, cgroup: bool = False,
                 inline: bool = False) -> list[str]:
    """The monitor's argv for a job run as ``argv`` (its ``$0`` is the script)."""
    script = argv[-1]
    if inline and plain_sh:
        return ["/bin/sh", "-c", INLINE_MONITOR_SCRIPT, script]
    rest = ["."] if plain_sh else argv
    return ["/bin/sh", "-c", CGROUP_MONITOR_SCRIPT if cgroup else MONITOR_SCRIPT, script,
            *rest]


def gated(argv: list[str]) -> list[str]:
    """The argv of a primed monitor: the same monitor, waiting first for a line on
    ``GATE_FD``. Its head (the marker, ``: inline;``) stays first: it is how a monitor and
    its kind are told from ``/proc``."""
    text = argv[2]
    head = INLINE_HEAD if text.startswith(INLINE_HEAD) else _HEAD
    return [*argv[:2], head + _GATE + text[len(head):], *argv[3:]]


@dataclass(frozen=True)
class ExitStatus:
    attempt: int
    code: int


def read_exit_journals(exit_dir: str) -> dict[tuple[str, int], ExitStatus]:
    """Every status in a queue's exit journals (all hosts, rotated ones too), by job name
    and script inode; the latest attempt of each wins."""
    found: dict[tuple[str, int], ExitStatus] = {}
    try:
        journals = [e.name for e in os.scandir(exit_dir) if e.name.endswith((".log",
                                                                             ".log.old"))]
    except OSError:
        return found
    for journal in journals:
        try:
            data = read_regular(f"{exit_dir}/{journal}", JOURNAL_READ_LIMIT)
        except OSError:
            continue
        for line in data.split(b"\n")[:-1]:  # a line cut short by a crash has no newline
            parts = line.split(b" ", 2)
            if len(parts) != 3:
                continue
            run, code, name = parts
            inode, _, attempt = run.partition(b".")
            if not (inode.isdigit() and attempt.isdigit() and code.lstrip(b"-").isdigit()):
                continue
            key = (name.decode(errors="surrogateescape"), int(inode))
            if key not in found or int(attempt) >= found[key].attempt:
                found[key] = ExitStatus(int(attempt), int(code))
    return found


def rotate_journal(path: str) -> None:
    """Start a new journal once this one is large (the previous one is still read)."""
    try:
        if os.lstat(path).st_size >= JOURNAL_ROTATE_BYTES:
            os.replace(path, f"{path}.old")
    except OSError:
        pass
