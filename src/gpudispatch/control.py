"""Steering a queue from outside its dispatcher: submit, cancel, retry, pause.

Every verb works on the folders alone, so it works whether a dispatcher runs or not,
and with several dispatchers on one queue.
"""

from __future__ import annotations

import os
import shlex
import time
from collections.abc import Sequence

from gpudispatch.job import DIRECTIVE_PREFIX, JobState, now_iso
from gpudispatch.layout import name_problem, printable
from gpudispatch.store import HOST, FolderQueue, QueueError, write_atomic

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start)
if TYPE_CHECKING:
    from pathlib import Path


def directive_line(options: Sequence[str]) -> str:
    """A ``#GPUDISPATCH`` line from option words (already validated by the caller)."""
    return f"{DIRECTIVE_PREFIX} {shlex.join(options)}" if options else ""


def with_directives(text: str, options: Sequence[str]) -> str:
    """Insert a directive line after the shebang (or at the top)."""
    line = directive_line(options)
    if not line:
        return text
    if text.startswith("#!"):
        first, _, rest = text.partition("\n")
        return f"{first}\n{line}\n{rest}"
    return f"{line}\n{text}"


def command_script(argv: Sequence[str], cwd: str | None = None,
                   env_file: str | None = None) -> str:
    """A script that runs one command line exactly as given (every word quoted), in the
    environment kept in ``env_file`` (see :func:`env_text`) and the folder ``cwd``."""
    lines = ["#!/bin/sh", "# submitted with: gpudispatch submit -- ..."]
    if env_file:
        lines.append(f". {shlex.quote(env_file)} || exit 1")
    if cwd:
        lines.append(f"cd {shlex.quote(cwd)} || exit 1")
    lines.append(f"exec {shlex.join(argv)}")
    return "\n".join(lines) + "\n"


# Not kept from the submitting shell: what the dispatcher sets for each job (its GPUs,
# their numbering, the GPUDISPATCH_* names), what describes the shell itself, and the
# variables of a Slurm job the shell may be in (a Slurm backend's job has its own).
ENV_NOT_KEPT = frozenset({"CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "PWD", "OLDPWD",
                          "SHLVL", "_", "PPID"})
ENV_PREFIXES_NOT_KEPT = ("GPUDISPATCH_", "SLURM_")


ENV_DROP_ENV = "GPUDISPATCH_ENV_DROP"  # patterns of names not kept, e.g. "*TOKEN*:AWS_*"


def env_text(environ: dict[str, str]) -> str:
    """The environment a job of ``submit --`` runs in, as ``export`` lines for ``sh``
    (pure): the submitting shell's, as pueue keeps it, so a command that works there
    (a virtual environment's PATH, a variable set for it) works when it runs. A name
    that is not a shell variable's (``BASH_FUNC_f%%``) cannot be exported by ``sh``;
    names matching a pattern of ``$GPUDISPATCH_ENV_DROP`` (``:``-separated shell
    patterns, case-sensitive) are left out, for secrets a job does not need."""
    drop = [p for p in environ.get(ENV_DROP_ENV, "").split(":") if p]
    if drop:
        from fnmatch import fnmatchcase
    lines = ["# the environment of `gpudispatch submit`, sourced by its jobs"]
    for name in sorted(environ):
        if (name in ENV_NOT_KEPT or name.startswith(ENV_PREFIXES_NOT_KEPT)
                or not name.isascii() or not name.isidentifier()
                or any(fnmatchcase(name, pattern) for pattern in drop)):
            continue
        lines.append(f"export {name}={shlex.quote(environ[name])}")
    return "\n".join(lines) + "\n"


def line_script(line: str, cwd: str | None = None, env_file: str | None = None) -> str:
    """A script that runs one shell command line as ``sh -c LINE`` would (pipes,
    redirections and ``&&`` included), in the job's own shell: one ``exec`` fewer per
    job than ``submit -- sh -c LINE``, which a queue of trivial commands feels."""
    lines = ["#!/bin/sh", "# submitted with: gpudispatch submit --each-line"]
    if env_file:
        lines.append(f". {shlex.quote(env_file)} || exit 1")
    if cwd:
        lines.append(f"cd {shlex.quote(cwd)} || exit 1")
    lines.append(line)
    return "\n".join(lines) + "\n"


def command_name(argv: Sequence[str]) -> str:
    """A file name for a wrapped command: its program's name, made safe."""
    stem = os.path.basename(argv[0]) if argv else "command"
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_stem(stem)}.sh"


def safe_stem(stem: str) -> str:
    """``stem`` made safe for a file name: letters, digits, ``-_.``; never empty."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._") or "cmd"


def line_program(line: str) -> str:
    """The program a shell line starts (its first word's base name), for a job's name."""
    words = line.split(None, 1)
    return os.path.basename(words[0]) if words else "line"


def each_line_names(lines: Sequence[str], stamp: str | None = None) -> list[str]:
    """Job names for one command per line, unique and sorting in line order.

    ``STAMP-NNNN-PROGRAM.sh``: the stamp has microseconds, so a later batch sorts after
    an earlier one (and after ``submit --`` jobs of the same second); the zero-padded
    line number keeps the batch in line order, and the program makes ``status`` legible.
    """
    if stamp is None:
        now = time.time()
        stamp = f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.{int(now % 1 * 1e6):06d}"
    width = len(str(len(lines)))
    names = []
    for number, line in enumerate(lines, 1):
        program = safe_stem(line_program(line)[:40])
        names.append(f"{stamp}-{number:0{width}d}-{program}.sh")
    return names


SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"})


def shell_problem(text: str) -> str | None:
    """Why a ``cd`` line cannot be put in this script (its ``#!`` names no shell), or
    None when it can (no ``#!``: it runs through ``/bin/sh``)."""
    if not text.startswith("#!"):
        return None
    words = text[2:].split("\n", 1)[0].split()
    if not words:
        return None
    program = os.path.basename(words[0])
    if program == "env" and len(words) > 1:
        program = os.path.basename(next((w for w in words[1:] if not w.startswith("-")), ""))
    if program in SHELLS:
        return None
    return f"runs through {program}, not a shell"


def with_workdir(text: str, workdir: str) -> str:
    """``cd WORKDIR || exit 1`` after the script's header (the ``#!``, comments and
    blank lines), so that its ``#GPUDISPATCH`` and ``#SBATCH`` lines stay in the header
    and it runs in ``workdir`` on every backend."""
    lines = text.split("\n")
    at = 0
    while at < len(lines) and (not lines[at].strip() or lines[at].lstrip().startswith("#")):
        at += 1
    lines.insert(at, f"cd {shlex.quote(workdir)} || exit 1  # gpudispatch: the snapshot")
    return "\n".join(lines)


def submit_file(
    queue: FolderQueue, path: Path, options: Sequence[str] = (), rename: bool = False,
    extra: dict | None = None, workdir: str | None = None,
) -> str:
    """Queue a copy of the script at ``path``; with ``workdir`` (a snapshot's) it starts
    there, whatever folder the dispatcher runs in."""
    problem = name_problem(path.name)
    if problem:
        raise QueueError(f"{printable(str(path))} cannot be queued: it {problem}")
    if not path.is_file():
        raise QueueError(f"{printable(str(path))} is not a file")
    text = path.read_bytes()
    if options or workdir:
        decoded = text.decode(errors="surrogateescape")
        if workdir:
            why = shell_problem(decoded)
            if why:
                raise QueueError(
                    f"{printable(str(path))} {why}: --snapshot starts a job in its snapshot "
                    "with a shell 'cd'; submit it as: gpudispatch submit --snapshot -- "
                    f"{printable(str(path))}")
            decoded = with_workdir(decoded, workdir)
        text = with_directives(decoded, options).encode(errors="surrogateescape")
    return queue.enqueue_text(path.name, text, rename=rename, extra=extra)


def _require(queue: FolderQueue, name: str) -> JobState:
    state = queue.locate(name)
    if state is None:
        raise QueueError(f"no job named {name!r} in {queue.layout.root}")
    return state


def cancel(queue: FolderQueue, name: str, grace: float = 10.0) -> str:
    """Cancel a job; what happened, in words. Running groups get SIGTERM then SIGKILL."""
    state = _require(queue, name)
    layout = queue.layout
    if state is JobState.QUEUED:
        lock_fd = queue.lock_job(name, JobState.QUEUED)
        try:
            if queue.claim(name):  # the rename decides, whoever else holds its lock
                _fail_cancelled(queue, name)
                return f"{name}: removed from the queue (cancelled)"
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
        state = _require(queue, name)  # a dispatcher took it meanwhile
    if state is not JobState.RUNNING:
        raise QueueError(f"{name} is {state.value}; only queued or running jobs can be cancelled")
    record = queue.read_record(name)
    if record.backend == "slurm":
        from gpudispatch.backends.slurm import AlreadyEnded, cancel_slurm

        try:
            cancel_slurm(layout.root, name)
        except AlreadyEnded as ended:
            raise QueueError(f"{name} already ended in Slurm ({ended}); not cancelled: its "
                             "outcome is recorded as it was") from None
        return f"{name}: scancel sent for Slurm job {record.backend_id} (cancelled)"
    write_atomic(layout.cancel_request(name), now_iso().encode(), layout.tmp)
    lock_fd = queue.lock_job(name, JobState.RUNNING)
    if lock_fd is not None:  # no dispatcher and no monitor holds it: nothing runs it
        try:
            _fail_cancelled(queue, name)
        finally:
            os.close(lock_fd)
        return f"{name}: was not running any more (cancelled)"
    if record.host not in (None, HOST):
        return f"{name}: cancel requested; its dispatcher on {record.host} will stop it"
    import signal

    from gpudispatch import cgroups, procs  # here: submit imports this module, not these

    started = record.extra.get("monitor_started")
    cgroup = cgroups.checked(record.extra.get("cgroup"))
    if procs.same_process(record.pid, started):
        pid = record.pid
    else:  # its start is not recorded yet
        monitor = procs.find_monitors(str(layout.exits)).get(name)
        pid, started = (monitor.pid, monitor.started) if monitor else (None, None)
        cgroup = monitor.cgroup if monitor else None
    if pid is None:
        return (f"{name}: cancel requested; its dispatcher stops it within a second and "
                "records it cancelled")
    # Stop it now; whoever owns it (its dispatcher, or the next one) records the end.
    procs.signal_job(pid, signal.SIGTERM, cgroup)
    deadline = time.monotonic() + grace
    while procs.same_process(pid, started) and time.monotonic() < deadline:
        time.sleep(0.05)
    if procs.same_process(pid, started):
        procs.signal_job(pid, signal.SIGKILL, cgroup)
    return f"{name}: stopped (cancelled)"


def _fail_cancelled(queue: FolderQueue, name: str) -> None:
    record = queue.fresh_record(name)  # a name dropped again keeps its earlier outcome
    record.reason = "cancelled"
    record.ended_at = now_iso()
    queue.conclude(name, record, JobState.FAILED)
    queue.drop_cancel_request(name)


def retry(queue: FolderQueue, name: str) -> str:
    """Put a failed job back in the queue; its attempts are kept."""
    state = _require(queue, name)
    if state is not JobState.FAILED:
        raise QueueError(f"{name} is {state.value}; only failed jobs can be retried")
    record = queue.read_record(name)
    record.extra["requeued"] = True
    record.reason = f"retried by hand (was: {record.reason})"
    queue.write_record(record)
    if not queue.move(name, JobState.FAILED, JobState.QUEUED):
        raise QueueError(f"{name} left failed/ meanwhile")
    return f"{name}: queued again (attempts so far: {record.attempts})"


SCRIPT_MAX_BYTES = 16 << 20


def rerun(queue: FolderQueue, name: str) -> tuple[str, str | None]:
    """Queue the run ``name`` again, under a new name (``NAME-2.sh``...), with the same
    script, params and capsule (so the same snapshot); its record says ``rerun_of``. The
    new name, and a warning when there is no snapshot to run the same code from."""
    from gpudispatch import safeio
    from gpudispatch.snapshot import usable

    state = _require(queue, name)
    record = queue.read_record(name)
    capsule = record.extra.get("capsule")
    snap = capsule.get("snapshot") if isinstance(capsule, dict) else None
    warning = None
    if isinstance(snap, str) and snap:
        if "/" in snap or snap in (".", ".."):
            raise QueueError(f"{name}: its record names no snapshot of ROOT ({snap!r})")
        problem = usable(queue.layout, snap)
        if problem:
            raise QueueError(f"{name}: its snapshot {snap} {problem}; not re-run (it "
                             "would not run the code it ran)")
    else:
        warning = (f"{name} was queued without a snapshot: the re-run runs the code as it "
                   "is now")
    try:
        text = safeio.read_regular(queue.layout.script(state, name), SCRIPT_MAX_BYTES)
    except OSError as exc:
        raise QueueError(f"{name}: its script {safeio.refusal(exc)}; not re-run") from None
    extra = {key: record.extra[key] for key in ("capsule", "sweep", "sweep_metric")
             if key in record.extra}
    extra["rerun_of"] = name
    new = queue.enqueue_text(name, text, params=record.params, rename=True, extra=extra)
    return new, warning
