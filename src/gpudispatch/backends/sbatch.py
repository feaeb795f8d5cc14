"""sbatch command lines from a script and its directives (pure, golden-file tested).

Our options never override the script's own ``#SBATCH`` lines: any option those set
drops the matching one of ours (sbatch itself would let the command line win).
"""

from __future__ import annotations

import math
import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from gpudispatch.job import Directives
from gpudispatch.layout import PUBLIC_JOB_VARS, SLURM_GPUS_ENV, Layout

COMMENT_PREFIX = "gpudispatch:"

# --- sbatch options ---------------------------------------------------------------------

_SHORT = {
    "a": "array", "A": "account", "b": "begin", "c": "cpus-per-task", "C": "constraint",
    "d": "dependency", "D": "chdir", "e": "error", "F": "nodefile", "G": "gpus",
    "i": "input", "J": "job-name", "L": "licenses", "M": "clusters", "m": "distribution",
    "n": "ntasks", "N": "nodes", "o": "output", "p": "partition", "q": "qos",
    "S": "core-spec", "t": "time", "w": "nodelist", "x": "exclude",
    "H": "hold", "I": "immediate", "k": "no-kill", "O": "overcommit", "s": "oversubscribe",
    "W": "wait", "Q": "quiet", "v": "verbose", "h": "help", "V": "version", "u": "usage",
}
_SHORT_FLAGS = set("HIkOsWQvhVu")
# Long options that take no value (or only an optional one, given as --opt=value).
_LONG_FLAGS = {
    "contiguous", "exclusive", "get-user-env", "help", "hold", "ignore-pbs", "immediate",
    "no-kill", "no-requeue", "overcommit", "oversubscribe", "parsable", "quiet", "reboot",
    "requeue", "spread-job", "test-only", "usage", "use-min-nodes", "verbose", "version",
    "wait",
}
_LONG_KNOWN = set(_SHORT.values()) | _LONG_FLAGS | {
    "comment", "nice", "gres", "gpus-per-node", "gpus-per-task", "gpus-per-socket",
    "time-min", "mem", "mem-per-cpu", "mem-per-gpu", "export", "mail-type", "mail-user",
}
# Our option -> the sbatch options that, set by the script, make us leave ours out.
_OVERRIDDEN_BY = {
    "gres": {"gres", "gpus", "gpus-per-node", "gpus-per-task", "gpus-per-socket"},
    "time": {"time"},
    "job-name": {"job-name"},
    "output": {"output"},
    "partition": {"partition"},
    "dependency": {"dependency"},
    "nice": {"nice"},
    "comment": {"comment"},
}


def _canonical(long_name: str) -> str:
    """sbatch (getopt_long) accepts unique prefixes: ``--part`` is ``--partition``."""
    if long_name in _LONG_KNOWN:
        return long_name
    matches = [n for n in _LONG_KNOWN if n.startswith(long_name)]
    return matches[0] if len(matches) == 1 else long_name


def split_sbatch_args(words: Sequence[str]) -> list[tuple[str, list[str]]]:
    """Group sbatch option words as ``(canonical long name, the words)``.

    A word that is not an option (a stray value) is kept under the key ``""``.
    """
    items: list[tuple[str, list[str]]] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--") and len(word) > 2:
            name, eq, _ = word[2:].partition("=")
            key = _canonical(name)
            if eq or key in _LONG_FLAGS or i >= len(words):
                items.append((key, [word]))
            else:
                items.append((key, [word, words[i]]))
                i += 1
        elif word.startswith("-") and len(word) > 1:
            letter = word[1]
            key = _SHORT.get(letter, letter)
            if letter in _SHORT_FLAGS or len(word) > 2 or i >= len(words):
                items.append((key, [word]))
            else:
                items.append((key, [word, words[i]]))
                i += 1
        else:
            items.append(("", [word]))
    return items


def script_sbatch_lines(text: str) -> list[str]:
    """The ``#SBATCH`` lines sbatch itself reads: those before the first command."""
    found = []
    for line in text.splitlines()[1:] if text.startswith("#!") else text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#SBATCH"):
            found.append(stripped[len("#SBATCH"):])
        elif stripped and not stripped.startswith("#"):
            break
    return found


def script_sbatch_options(text: str) -> dict[str, str | None]:
    """Options the script's ``#SBATCH`` lines set, canonical name -> value (None: a flag)."""
    options: dict[str, str | None] = {}
    for rest in script_sbatch_lines(text):
        try:
            words = shlex.split(rest, comments=True)
        except ValueError:
            words = rest.split()
        for key, group in split_sbatch_args(words):
            if key:
                options[key] = _value_of(group)
    return options


def _value_of(group: Sequence[str]) -> str | None:
    """The value in one option's words (``--opt V``, ``--opt=V``, ``-oV``); None: a flag."""
    if len(group) == 2:
        return group[1]
    if "=" in group[0] and group[0].startswith("--"):
        return group[0].split("=", 1)[1]
    if not group[0].startswith("--") and len(group[0]) > 2:
        return group[0][2:]
    return None


# Put before a GPU job's first command, on its line (line numbers stay as the author's):
# safe under ``set -eu``, silent, and a no-op without GPUs or the variable.
GPUS_NOTE = (f'[ -z "${{SLURM_JOB_GPUS-}}" ] || [ -z "${{{SLURM_GPUS_ENV}-}}" ] || '
             f'printf "%s\\n" "$SLURM_JOB_GPUS" 2>/dev/null >"${SLURM_GPUS_ENV}" || :; ')
_SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "busybox"}


# Where sbatch itself takes a GPU request from its environment.
_GPU_ENV = ("SBATCH_GRES", "SBATCH_GPUS", "SBATCH_GPUS_PER_NODE", "SBATCH_GPUS_PER_TASK",
            "SBATCH_GPUS_PER_SOCKET")
# A script that reads its own file (a Python job behind a ``#!/bin/sh`` line that execs
# ``python3 "$0"``) would read the note too: it is sent as it is.
_READS_ITSELF = re.compile(r"\$\{?0\b|BASH_SOURCE|ZSH_SCRIPT")


def may_use_gpus(directives: Directives, script_text: str, extra_args: Sequence[str] = (),
                 environ: dict[str, str] | None = None) -> bool:
    """Whether Slurm may give the job GPUs: our ``--gpus``, the script's own
    ``#SBATCH`` lines, the site's ``--sbatch-arg`` or sbatch's environment."""
    keys = set(script_sbatch_options(script_text)) | {k for k, _ in
                                                      split_sbatch_args(list(extra_args))}
    env = os.environ if environ is None else environ
    return (bool(directives.gpus) or bool(_OVERRIDDEN_BY["gres"] & keys)
            or any(env.get(name) for name in _GPU_ENV))


def note_gpus(text: str) -> str | None:
    """The script with :data:`GPUS_NOTE` before its first command, so that the record
    learns its GPUs even when the job ends between two looks at Slurm (``scontrol -d``
    lists a job's GPU indices only while it runs). None, and the script is sent as it
    is, when its interpreter is not a POSIX shell (its ``#!`` line names none), the shell
    traces or echoes what it runs (``-x``, ``-v``: the note would show in the log), the
    script reads its own file, or it has no command."""
    lines = text.split("\n")
    if not lines[0].startswith("#!") or _READS_ITSELF.search(text):
        return None
    words = lines[0][2:].split()
    if words and os.path.basename(words[0]) == "env":  # env's own options and settings
        words = words[1:]
        while words and (words[0].startswith("-") or "=" in words[0]):
            words = words[1:]
    if not words or os.path.basename(words[0]) not in _SHELLS:
        return None
    if any(w.startswith("-") and not w.startswith("--") and ("x" in w or "v" in w)
           for w in words[1:]):
        return None
    for i, line in enumerate(lines[1:], 1):
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):  # sbatch reads #SBATCH up to here
            lines[i] = GPUS_NOTE + line
            return "\n".join(lines)
    return None


def export_value(given: str | None, also: Sequence[str] = ()) -> str:
    """``--export`` that keeps what the script (or site) asked for and adds the names of
    :data:`PUBLIC_JOB_VARS`, whose values sbatch takes from its own environment.

    ``ALL`` (the default) carries them already; a list of names, an ``--export=NONE`` line
    or ``SBATCH_EXPORT`` would silently take the metrics path away.
    ``NONE`` takes no variables in Slurm, so it becomes the bare list of ours (as NONE:
    only ``SLURM_*`` and these); names comma-separated because values may hold commas.
    """
    words = [w for w in (given or "ALL").split(",") if w]
    if words and words[0].upper() == "ALL":
        # All of sbatch's environment, ours in it. Naming variables after ALL makes
        # slurmd take 0.15 s more to start each job (0.014 s with ALL alone, Slurm
        # 22.05): the next scheduling pass then finds its CPUs still taken, and a drain
        # of short jobs runs at half Slurm's pace.
        return ",".join(words)
    if words and words[0].upper() == "NONE":
        words = []
    named = {w.split("=", 1)[0] for w in words}
    return ",".join(words + [v for v in (*PUBLIC_JOB_VARS, *also) if v not in named])


def time_limit(seconds: float) -> str:
    """Slurm's ``--time`` for a timeout: whole minutes (its granularity), rounded up."""
    return str(max(1, math.ceil(seconds / 60 - 1e-9)))


def sbatch_command(
    script_path: Path | str | None,
    name: str,
    directives: Directives,
    layout: Layout,
    partition: str | None = None,
    extra_args: Sequence[str] = (),
    *,
    script_text: str = "",
    after_ids: Sequence[str] = (),
    attempt: int = 1,
    token: str | None = None,
    env_export: str | None = None,
    gpus_noted: bool = False,
) -> list[str]:
    """The sbatch argv that submits one job (pure).

    ``script_text`` is the script, read for its ``#SBATCH`` lines: sbatch gives them
    *lower* precedence than command-line options, but they are the job author's most
    specific word, so every option of ours (and of ``extra_args``, the site-wide
    ``--sbatch-arg``) that they set is left out. Directive-derived options likewise win
    over ``extra_args``. ``after_ids`` are the Slurm ids of the ``--after`` jobs still
    to finish. ``script_path`` None means the script comes on stdin. ``env_export`` is
    ``$SBATCH_EXPORT`` where set: ``--export`` is the script's, else the site's, else that,
    plus our variables (:func:`export_value`); with ``gpus_noted`` (the script sent is
    :func:`note_gpus`'s), the file it notes its GPUs in too.
    """
    script_options = script_sbatch_options(script_text)
    in_script = set(script_options)
    ours: list[tuple[str, str]] = [
        ("job-name", f"--job-name={slurm_job_name(name)}"),
        ("output", f"--output={layout.job_log(name, attempt)}"),
    ]
    if token:
        ours.append(("comment", f"--comment={COMMENT_PREFIX}{token}"))
    if directives.gpus:
        ours.append(("gres", f"--gres=gpu:{directives.gpus}"))
    if directives.timeout is not None:
        ours.append(("time", f"--time={time_limit(directives.timeout)}"))
    if after_ids:
        ours.append(("dependency", f"--dependency=afterok:{':'.join(after_ids)}"))
    if directives.priority < 0:  # users may only lower their priority in Slurm
        ours.append(("nice", f"--nice={-directives.priority}"))
    if partition:
        ours.append(("partition", f"--partition={partition}"))
    kept = [(k, w) for k, w in ours if not (_OVERRIDDEN_BY.get(k, {k}) & in_script)]
    taken = set()
    for key, _ in kept:
        taken |= _OVERRIDDEN_BY.get(key, {key})
    extra = split_sbatch_args(list(extra_args))
    # --export is merged, not overridden: the script's value, else the site's, plus ours.
    site_export = [_value_of(g) for k, g in extra if k == "export"]
    given = script_options.get("export") if "export" in in_script else (
        site_export[-1] if site_export else env_export)
    also = (SLURM_GPUS_ENV,) if gpus_noted else ()
    kept.append(("export", f"--export={export_value(given, also)}"))
    taken.add("export")
    argv = ["sbatch", "--parsable"] + [w for _, w in kept]
    for key, group in extra:
        if key and key in in_script or (key in taken and key != "partition"):
            continue
        argv.extend(group)
    if script_path is not None:
        argv.append(str(script_path))
    return argv


def parse_sbatch_output(stdout: str) -> str:
    """The job id ``sbatch --parsable`` printed (``ID`` or ``ID;cluster``)."""
    for line in stdout.splitlines():
        line = line.strip()
        if line:
            job_id = line.split(";", 1)[0]
            if job_id.isdigit() or re.fullmatch(r"\d+_\d+", job_id):
                return job_id
    raise ValueError(f"sbatch printed no job id: {stdout!r}")


_TRANSIENT = re.compile(
    r"Unable to contact slurm controller|Socket timed out|temporarily unable|"
    r"Zero Bytes were transmitted|Connection refused|Communication connection failure|"
    r"Slurm backup controller in standby mode|Resource temporarily unavailable|"
    r"timed out",
    re.IGNORECASE,
)


def is_transient(stderr: str) -> bool:
    """Whether a Slurm command failed because the controller was away (retry later)."""
    return bool(_TRANSIENT.search(stderr))


def sbatch_refusal(stderr: str) -> str:
    """Slurm's own words for a refused submission, for ``record.reason``: every line that
    says what is wrong (``invalid partition specified: nope`` *and* the summary after it),
    without sbatch's prefixes or its "Try sbatch --help" hint. A line that continues the
    one before (it starts in lower case) is joined to it with a space."""
    parts: list[str] = []
    for raw in stderr.splitlines():
        line = re.sub(r"^sbatch:\s*(error:\s*)?", "", raw.strip())
        line = re.sub(r"^Batch job submission failed:\s*", "", line)
        if not line or line.startswith("Try \"sbatch --help\"") or line in parts:
            continue
        if parts and line[0].islower() and not parts[-1].endswith((".", ":")):
            parts[-1] = f"{parts[-1]} {line}"
        else:
            parts.append(line)
    return "; ".join(parts) or "sbatch failed"


_UNSAFE_IN_SLURM_NAME = re.compile(r"[^A-Za-z0-9._+-]")


def slurm_job_name(name: str) -> str:
    """The name a job has in Slurm: ours, with anything but letters, digits and ``._+-``
    as ``_``. Slurm's completion file writes ``Name=sp ace.sh`` unquoted and ``sacct -c``
    then misreads the line; the token in ``--comment`` says which job is ours anyway."""
    return _UNSAFE_IN_SLURM_NAME.sub("_", name)
