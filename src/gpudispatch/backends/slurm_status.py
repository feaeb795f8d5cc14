"""What Slurm says about jobs: squeue / sacct / scontrol output, parsed (pure), and
how a final state maps to completed or failed with a reason and an exit code."""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gpudispatch.job import JobState

# Fields split by US (\x1f), which no job name may hold (names are printable); comment,
# then name, last: a script's own --comment may hold anything but a newline.
SQUEUE_FORMAT = "%i\x1f%T\x1f%r\x1f%N\x1f%k\x1f%j"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Start,End,JobName"

# --- Slurm's answers --------------------------------------------------------------------

FINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
    "BOOT_FAIL", "DEADLINE", "PREEMPTED", "REVOKED",
})
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
                            "CONFIGURING", "RESV_DEL_HOLD", "SPECIAL_EXIT"})


@dataclass(frozen=True)
class SlurmStatus:
    """One job as a Slurm command reported it."""

    job_id: str
    state: str  # first word, upper case: "CANCELLED by 0" -> "CANCELLED"
    reason: str | None = None
    node: str | None = None
    name: str | None = None
    exit_code: int | None = None
    signal: int | None = None
    start: str | None = None
    end: str | None = None
    comment: str | None = None  # squeue's ("" when none): our token; None: not shown

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


def _state_word(text: str) -> str:
    return text.strip().split(" ", 1)[0].rstrip("+").upper()


def _nullable(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.strip()
    return None if text in ("", "(null)", "None", "None assigned", "Unknown", "N/A") else text


def parse_exit_code(text: str | None) -> tuple[int | None, int | None]:
    """``"3:0"`` -> (3, 0): Slurm's exit code and the signal that ended the job."""
    text = _nullable(text)
    if not text or ":" not in text:
        return None, None
    code, _, sig = text.partition(":")
    try:
        return int(code), int(sig)
    except ValueError:
        return None, None


def parse_squeue(text: str) -> dict[str, SlurmStatus]:
    """``squeue --noheader --format=SQUEUE_FORMAT`` for many jobs at once."""
    jobs = {}
    for line in text.splitlines():
        parts = line.split("\x1f")
        if len(parts) < 6:
            continue
        job_id, state, reason, node = (p.strip() for p in parts[:4])
        name, comment = parts[-1], "\x1f".join(parts[4:-1])
        jobs[job_id] = SlurmStatus(job_id, _state_word(state), _nullable(reason),
                                   _nullable(node), name, comment=comment.strip())
    return jobs


def parse_sacct(text: str) -> dict[str, SlurmStatus]:
    """``sacct [-c] --parsable2 --noheader --format=JobID,State,ExitCode,NodeList,Start,
    End,JobName``; step lines (``12.batch``) are skipped and a later line for the same job
    (a requeued job ends more than once) wins."""
    jobs = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split("|", 6)
        if len(parts) < 7 or "." in parts[0]:
            continue
        job_id, state, exit_text, node, start, end, name = parts
        code, sig = parse_exit_code(exit_text)
        jobs[job_id] = SlurmStatus(job_id, _state_word(state), None, _nullable(node), name,
                                   code, sig, _nullable(start), _nullable(end))
    return jobs


_KEY_VALUE = re.compile(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)")


def parse_scontrol_fields(text: str) -> dict[str, str]:
    """``scontrol show job ID`` (multi-line or ``-o``) as a dict of its Key=Value pairs."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        for match in _KEY_VALUE.finditer(line.strip()):
            fields.setdefault(match.group(1), match.group(2).strip())
    return fields


def parse_scontrol_job(text: str) -> SlurmStatus | None:
    """The status in ``scontrol show job ID`` output, or None when it holds no job."""
    fields = parse_scontrol_fields(text)
    if "JobId" not in fields or "JobState" not in fields:
        return None
    code, sig = parse_exit_code(fields.get("ExitCode"))
    return SlurmStatus(
        fields["JobId"], _state_word(fields["JobState"]), _nullable(fields.get("Reason")),
        _nullable(fields.get("NodeList")), fields.get("JobName"), code, sig,
        _nullable(fields.get("StartTime")), _nullable(fields.get("EndTime")),
    )


_GRES_IDX = re.compile(r"\bGRES=[^\s]*?gpu[^\s(]*\(IDX:([0-9,\-]+)\)")


def parse_gpu_indices(text: str) -> list[int]:
    """The GPUs a running job holds, from ``scontrol show job -d``'s
    ``GRES=gpu:2(IDX:0-1)`` (``IDX:0,2``, ranges and lists), in order; [] when none."""
    found: list[int] = []
    for match in _GRES_IDX.finditer(text):
        for part in match.group(1).split(","):
            first, _, last = part.partition("-")
            if first.isdigit() and (not last or last.isdigit()):
                found.extend(range(int(first), int(last or first) + 1))
    return sorted(set(found))


def parse_scontrol_config(text: str) -> dict[str, str]:
    """``scontrol show config``: ``Key = Value`` lines."""
    config = {}
    for line in text.splitlines():
        key, eq, value = line.partition("=")
        if eq and key.strip() and " " not in key.strip():
            config[key.strip()] = value.strip()
    return config


def sacct_base(config: dict[str, str]) -> list[str] | None:
    """How this cluster answers for finished jobs: ``sacct`` with slurmdbd, ``sacct -c``
    with the jobcomp/filetxt file, or None (then only ``scontrol``, for MinJobAge)."""
    if config.get("AccountingStorageType", "").endswith("slurmdbd"):
        return ["sacct"]
    if config.get("JobCompType", "").endswith("filetxt"):
        return ["sacct", "-c"]
    return None


@dataclass(frozen=True)
class Outcome:
    """What a final Slurm status means for gpudispatch."""

    state: JobState
    reason: str | None
    exit_code: int | None


def outcome(status: SlurmStatus) -> Outcome:
    """Map a final Slurm state to completed/failed, a reason and an exit code.

    FAILED carries the script's exit code (or the signal that killed it, as 128+N like a
    shell); CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL... are their own reason.
    """
    code, sig = status.exit_code, status.signal
    exit_code = 128 + sig if sig else code
    if status.state == "COMPLETED" and not code and not sig:
        return Outcome(JobState.COMPLETED, None, 0)
    if status.state in ("FAILED", "COMPLETED"):
        if sig and not code and status.node is None:  # 0:1 and no node: never started
            return Outcome(JobState.FAILED, "FAILED: Slurm could not launch the job", None)
        if sig:
            try:
                name = signal.Signals(sig).name
            except ValueError:
                name = f"signal {sig}"
            return Outcome(JobState.FAILED, f"FAILED: killed by {name}", exit_code)
        if code:
            return Outcome(JobState.FAILED, f"FAILED: exit code {code}", code)
        return Outcome(JobState.FAILED, "FAILED: Slurm could not launch the job", None)
    # Slurm ended it (CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL...): the code sacct or
    # scontrol shows then is Slurm's signal, not the script's; it stays in extra.
    return Outcome(JobState.FAILED, status.state, None)


def slurm_time_iso(text: str | None) -> str | None:
    """Slurm's local ``2026-11-26T14:46:33`` as gpudispatch's ISO time with offset."""
    text = _nullable(text)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).astimezone().isoformat(timespec="milliseconds")
    except ValueError:
        return None


def resolve_output(pattern: str, job_id: str, name: str, cwd: Path) -> str:
    """The file a script's own ``--output`` pattern names (the common %j, %x, %%)."""
    out = pattern.replace("%%", "\0").replace("%j", job_id).replace("%A", job_id)
    out = out.replace("%x", name).replace("\0", "%")
    return str(cwd / out)


