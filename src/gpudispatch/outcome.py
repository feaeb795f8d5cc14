"""What a job's end means (pure): its reason, and whether it runs again, and alone.

Kept apart from the loop so every combination is a table-driven test: an exit code (or
none, when the job was interrupted), why we signalled it, a cancel, an out-of-memory
log, and how many attempts and interruptions came before.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from gpudispatch.job import Directives, JobState

# A job whose own runs keep killing its monitor would otherwise run forever.
MAX_INTERRUPTIONS = 10

# What CUDA frameworks print when a GPU runs out of memory.
OOM_PATTERNS = (
    b"CUDA out of memory",
    b"OutOfMemoryError",
    b"CUDA_ERROR_OUT_OF_MEMORY",
    b"cudaErrorMemoryAllocation",
    b"CUBLAS_STATUS_ALLOC_FAILED",
    b"RESOURCE_EXHAUSTED: Out of memory",
    b"out of memory while trying to allocate",
)
OOM_TAIL_BYTES = 65536


def describe_status(code: int) -> str | None:
    """A reason for a non-zero exit (``code`` as a shell's ``$?`` or ``waitstatus`` gives it)."""
    if code == 0:
        return None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name}"
    if code > 128 and code - 128 < signal.NSIG:
        try:
            return f"exit code {code} (killed by {signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def oom_in_tail(tail: bytes) -> bool:
    return any(pattern in tail for pattern in OOM_PATTERNS)


# Lines that say why a job failed, as its log ends: a Python exception (``ValueError:
# bogus activation``, ``torch.cuda.OutOfMemoryError: …``), the shell's ``Killed`` or
# ``Segmentation fault``, a CUDA error, a command that is not there.
_ERROR_LINE = re.compile(
    r"^(?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b(?::.*)?"
    r"|.*\bKilled\b.*|.*\bSegmentation fault\b.*|.*\bCUDA error\b.*"
    r"|.*: (?:command )?not found)$")
ERROR_LINE_CHARS = 200


def last_error_line(tail: bytes, script: str | None = None) -> str | None:
    """The last line of a log's end that says why the job failed (see ``_ERROR_LINE``),
    shortened to ERROR_LINE_CHARS; None when none does. ``script``: the job's path, which
    the shell names in its messages (``/…/running/a.sh: 2: foo: not found``): shown as
    its name."""
    for raw in reversed(tail.decode(errors="replace").splitlines()[-200:]):
        line = raw.strip()
        if script:
            line = line.replace(script, script.rsplit("/", 1)[-1])
        if line and _ERROR_LINE.match(line):
            return line if len(line) <= ERROR_LINE_CHARS else line[:ERROR_LINE_CHARS - 1] + "…"
    return None


@dataclass(frozen=True)
class Ending:
    """How one run of a job ended, as the dispatcher saw it."""

    code: int | None  # None: no exit status (its monitor died with it: interrupted)
    kill_reason: str | None = None  # "timeout", "cold stop" or "cancelled", if we signalled it
    cancelled: bool = False  # a cancel request is on disk
    oom: bool = False  # its log ends with a CUDA out-of-memory error
    error_line: str | None = None  # the last line of its log that says why it failed
    interrupted_by: str = "its monitor ended without an exit status"
    # The reason of an early stop (hyperband) asked for it: not a failure, completed.
    stopped_early: str | None = None


@dataclass(frozen=True)
class Verdict:
    reason: str | None
    state: JobState  # where the script goes: COMPLETED, FAILED or QUEUED (runs again)
    interrupted: bool = False  # not the job's failure: does not use up --retries
    oom_retry: bool = False  # uses up one --oom-retries
    run_alone: bool = False  # next run takes a GPU whole


def decide(ending: Ending, directives: Directives, attempts: int, interruptions: int,
           oom_retries_used: int, timeout: float | None = None) -> Verdict:
    """The verdict on one run. ``attempts`` counts this run; ``interruptions`` the earlier
    runs that were interrupted (they are not failures of the job)."""
    if ending.stopped_early and (ending.cancelled or ending.kill_reason == "cancelled"):
        return Verdict(ending.stopped_early, JobState.COMPLETED)
    if ending.cancelled or ending.kill_reason == "cancelled":
        return Verdict("cancelled", JobState.FAILED)
    if ending.kill_reason == "cold stop":
        return Verdict("interrupted: cold stop (killed when the dispatcher stopped); requeued",
                       JobState.QUEUED, interrupted=True)
    if ending.code is None:
        if interruptions + 1 >= MAX_INTERRUPTIONS:
            return Verdict(f"interrupted {interruptions + 1} times ({ending.interrupted_by}); "
                           "giving up", JobState.FAILED)
        return Verdict(f"interrupted: {ending.interrupted_by}; requeued", JobState.QUEUED,
                       interrupted=True)
    if ending.kill_reason == "timeout":
        reason = f"timeout after {(timeout or directives.timeout or 0):g}s"
    elif ending.code != 0 and ending.oom:
        reason = "oom"
    else:
        reason = describe_status(ending.code)
        if reason is not None and ending.error_line:
            reason = f"{reason}: {ending.error_line}"
    if reason is None:
        return Verdict(None, JobState.COMPLETED)
    failures = attempts - interruptions
    if reason == "oom" and oom_retries_used < directives.oom_retries:
        return Verdict(reason, JobState.QUEUED, oom_retry=True, run_alone=True)
    if failures <= directives.retries:
        return Verdict(reason, JobState.QUEUED, run_alone=reason == "oom")
    return Verdict(reason, JobState.FAILED)
