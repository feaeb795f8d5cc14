"""The Slurm backend: submit each queued script with ``sbatch`` and follow it to its end.

The folder protocol stays the same as for local runs. A job is claimed by the rename
``queue/ -> running/``; its record then says ``backend="slurm"`` and, once ``sbatch``
answered, ``backend_id=<Slurm job id>``. While Slurm keeps it PENDING the script stays
in ``running/`` with ``record.extra["slurm_state"] == "PENDING"``. It moves to
``completed/`` or ``failed/`` with Slurm's final state, exit code and node.

Crash safety: the record is written (with a fresh token, passed to Slurm as the job's
comment) *before* ``sbatch`` runs, so a job in ``running/`` without a ``backend_id`` may
or may not have been submitted; it is looked up in Slurm by token or name before it is
ever submitted again. Slurm keeps its own state across a ``slurmctld`` restart, and an
unreachable controller only postpones polls and submissions: nothing is lost, nothing
is run twice.

The parsing and command building are pure functions, tested against outputs captured
from a real Slurm 22.05; :class:`SlurmBackend` is the thin stateful shell around them.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gpudispatch.backends.sbatch import (
    COMMENT_PREFIX,
    is_transient,
    may_use_gpus,
    note_gpus,
    parse_sbatch_output,
    sbatch_command,
    sbatch_refusal,
    script_sbatch_options,
    slurm_job_name,
)
from gpudispatch.backends.slurm_status import (
    SACCT_FIELDS,
    SQUEUE_FORMAT,
    WAITING_STATES,
    SlurmStatus,
    outcome,
    parse_gpu_indices,
    parse_sacct,
    parse_scontrol_config,
    parse_scontrol_job,
    parse_squeue,
    resolve_output,
    sacct_base,
    slurm_time_iso,
)
from gpudispatch.job import (
    HEADER_MAX_BYTES,
    DirectiveError,
    Directives,
    JobRecord,
    JobState,
    now_iso,
    parse_directives,
)
from gpudispatch.layout import SLURM_GPUS_ENV, Layout
from gpudispatch.outcome import OOM_TAIL_BYTES, last_error_line
from gpudispatch.safeio import read_regular, read_tail
from gpudispatch.scriptcheck import content_problem, owner_problem
from gpudispatch.store import HOST, FolderQueue, write_atomic
from gpudispatch.watch import read_if_complete

log = logging.getLogger("gpudispatch.slurm")

# Looking for a job whose sbatch may have happened: any field may hold '|' here.
LOOKUP_FORMAT = "%i\x1f%T\x1f%V\x1f%j\x1f%k"
SWEEP_AHEAD = 2  # a driven sweep's jobs pending in Slurm before it asks the next run
COMMAND_TIMEOUT = 60.0  # squeue gives up on a dead controller after ~18 s, sbatch ~9 s

# --- running Slurm commands -------------------------------------------------------------


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[list[str], "str | None", "dict[str, str] | None"], Result]


def run_command(argv: list[str], stdin: str | None = None,
                env: dict[str, str] | None = None) -> Result:
    """Run one Slurm command; a missing binary or a hang is a (transient-looking) error."""
    try:
        # surrogateescape: a script's bytes that are not UTF-8 reach sbatch as they were
        proc = subprocess.run(argv, input=stdin, capture_output=True, encoding="utf-8",
                              errors="surrogateescape", env=env, timeout=COMMAND_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        return Result(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Result(124, "", f"{argv[0]}: timed out after {COMMAND_TIMEOUT:g}s")
    return Result(proc.returncode, proc.stdout, proc.stderr)


# --- the backend ------------------------------------------------------------------------


def noted_gpus(path: str) -> list[int]:
    """The GPU indices a job noted (``sbatch.note_gpus``), the note removed; [] when
    there is none (no GPU, or it never ran)."""
    try:
        text = read_regular(path, 4096).decode(errors="replace")
    except OSError:
        return []
    try:
        os.unlink(path)
    except OSError:
        pass
    return ([int(w) for w in text.split(",")]
            if re.fullmatch(r"[0-9]{1,5}(,[0-9]{1,5})*\n?", text) else [])


@dataclass
class _Tracked:
    """A submitted job this process follows (rebuilt from records on every start)."""

    name: str
    job_id: str
    state: str = "PENDING"
    reason: str | None = None  # Slurm's pending reason, while it waits
    missing_polls: int = 0
    token: str | None = None  # in its --comment (None: the script sets its own comment)
    names: tuple[str, ...] = ()  # its name in Slurm (and ours, as older versions sent it)

    def owns(self, status: SlurmStatus) -> bool:
        """Whether Slurm's job under this id is ours: after a controller crash Slurm may
        forget jobs and hand their ids to others. squeue shows the comment (our token);
        sacct and scontrol the name."""
        if self.token and status.comment is not None:
            return status.comment == f"{COMMENT_PREFIX}{self.token}"
        return status.name is None or not self.names or status.name in self.names


def _tracked(name: str, job_id: str, record: JobRecord, text: str) -> _Tracked:
    """Follow a submitted job, knowing the token and name it was submitted with (its
    script's own ``#SBATCH`` lines win over ours, as in ``sbatch_command``)."""
    own = script_sbatch_options(text)
    token = None if "comment" in own else record.extra.get("slurm_token")
    names = (own["job-name"],) if own.get("job-name") else (slurm_job_name(name), name)
    return _Tracked(name, job_id, record.extra.get("slurm_state", "PENDING"),
                    token=token, names=names)


@dataclass
class SlurmBackend:
    """Submits ``queue/`` to Slurm and follows the jobs; ``tick()`` is one loop step."""

    queue: FolderQueue
    partition: str | None = None
    sbatch_args: Sequence[str] = ()
    poll_interval: float = 2.0
    runner: Runner = run_command
    logger: logging.Logger = log
    allow_other_users: bool = False  # submit scripts other users own (as this user)
    _tracked: dict[str, _Tracked] = field(default_factory=dict, init=False)
    _reconciled: bool = field(default=False, init=False)
    _last_poll: float | None = field(default=None, init=False)
    _sacct: list[str] | None = field(default=None, init=False)
    _config_read: bool = field(default=False, init=False)
    failures: int = field(default=0, init=False)
    _sweeps: Any = field(default=None, init=False)  # adaptive.SweepDriver, made on first tick

    @property
    def layout(self) -> Layout:
        return self.queue.layout

    @property
    def owner(self) -> str:
        return f"slurm@{HOST}:{os.getpid()}"

    # ------------------------------------------------------------------ the loop
    def tick(self, now: float | None = None) -> None:
        """One step: settle leftovers once, take cancels, submit new jobs, poll Slurm."""
        now = time.monotonic() if now is None else now
        if not self._reconciled:
            self.reconcile()
        self._advance_sweeps(now)
        self._take_cancel_requests()
        if not self.queue.is_paused():
            self.submit_queued()
        if self._last_poll is None or now - self._last_poll >= self.poll_interval:
            self._last_poll = now
            self.poll()

    def _advance_sweeps(self, now: float) -> None:
        """Driven sweeps (bayes, hyperband; ``gpudispatch.adaptive``): the controller
        lives here. Slurm has no free slots to count: at most SWEEP_AHEAD jobs wait in
        Slurm (pending) before a sweep asks its next run."""
        if self._sweeps is None:
            from gpudispatch.adaptive import SweepDriver

            self._sweeps = SweepDriver(self.queue, self.logger)
        pending = sum(t.state == "PENDING" for t in self._tracked.values())
        self._sweeps.advance(now, max(0, SWEEP_AHEAD - pending), len(self._tracked),
                             lambda: [n for n, t in self._tracked.items()
                                      if t.state == "RUNNING"])

    def idle(self) -> bool:
        """Nothing queued (or paused) and nothing in Slurm's hands: ``--drain`` may stop
        (nor a bayes sweep with runs still to ask or tell)."""
        if self._sweeps is not None and self._sweeps.pending:
            return False
        queued = not self.queue.is_paused() and self.queue.names(JobState.QUEUED)
        return not queued and not self.queue.names(JobState.RUNNING)

    def run(self, stop_event: threading.Event | None = None, drain: bool = False) -> int:
        """Tick until ``stop_event`` is set (or, with ``drain``, nothing is left).

        Stopping leaves submitted jobs to Slurm; the next start follows them again.
        Returns 1 when ``drain`` saw a job fail, else 0.
        """
        stop_event = stop_event or threading.Event()
        self.logger.info("------------ Job Dispatcher Started (Slurm) ------------")
        while not stop_event.is_set():
            self.tick()
            if drain and self.idle():
                break
            stop_event.wait(min(self.poll_interval, 1.0))
        self.logger.info("Job Dispatcher stopped.")
        return 1 if drain and self.failures else 0

    # ------------------------------------------------------------------ Slurm calls
    def _run(self, argv: list[str], stdin: str | None = None,
             env: dict[str, str] | None = None) -> Result:
        return self.runner(argv, stdin, env)

    def _sacct_base(self) -> list[str] | None:
        if not self._config_read:
            res = self._run(["scontrol", "show", "config"])
            if res.returncode != 0:
                return None  # controller away: ask again next time
            self._sacct = sacct_base(parse_scontrol_config(res.stdout))
            self._config_read = True
        return self._sacct

    def squeue(self, job_ids: Iterable[str]) -> dict[str, SlurmStatus] | None:
        """Statuses of many jobs in one call; None when the controller did not answer."""
        ids = sorted(set(job_ids), key=_id_key)
        if not ids:
            return {}
        res = self._run(["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}",
                         f"--format={SQUEUE_FORMAT}"])
        if res.returncode != 0:
            if "Invalid job id" in res.stderr:  # every id long gone from memory
                return {}
            self.logger.warning("squeue failed; will retry: %s", res.stderr.strip())
            return None
        return parse_squeue(res.stdout)

    def sacct(self, job_ids: Iterable[str]) -> dict[str, SlurmStatus]:
        """Final statuses from accounting (one call), or {} where the cluster keeps none."""
        ids = sorted(set(job_ids), key=_id_key)
        base = self._sacct_base()
        if not ids or base is None:
            return {}
        res = self._run([*base, "--parsable2", "--noheader", f"--format={SACCT_FIELDS}",
                         f"--jobs={','.join(ids)}"])
        if res.returncode != 0:
            self.logger.warning("sacct failed: %s", res.stderr.strip())
            return {}
        found = parse_sacct(res.stdout)
        return {i: s for i, s in found.items() if i in ids}

    def scontrol_job(self, job_id: str) -> SlurmStatus | None:
        res = self._run(["scontrol", "show", "job", job_id])
        return parse_scontrol_job(res.stdout) if res.returncode == 0 else None

    # ------------------------------------------------------------------ submission
    def submit_queued(self) -> None:
        """Claim and submit every queued job whose ``--after`` jobs are in Slurm."""
        pending = []
        for name in self.queue.names(JobState.QUEUED):
            path = self.layout.script(JobState.QUEUED, name)
            try:
                st = os.lstat(path)
                complete, head = read_if_complete(path, st)
                if complete is None:  # no leases here: wait until it has been still 1 s
                    complete = time.time() - st.st_mtime >= 1.0
                if not complete:
                    continue
                problem = (content_problem(st, head)
                           or owner_problem(st, self.allow_other_users))
                directives = parse_directives(head.decode(errors="replace"))
            except DirectiveError as exc:
                directives, problem = Directives(), str(exc)
            except OSError:
                continue  # vanished or unreadable between listing and reading
            pending.append((-directives.priority, name, directives, problem))
        for _, name, directives, problem in sorted(pending):
            if problem:
                self._fail_queued(name, problem)
                continue
            after_ids, blocker = self._dependencies(directives)
            if blocker:
                self._fail_queued(name, blocker)
            elif after_ids is not None and self.queue.claim(name):
                self._submit(name, directives, after_ids, new_attempt=True)

    def _dependencies(self, directives: Directives) -> tuple[list[str] | None, str | None]:
        """Slurm ids to wait for, or None to keep waiting here, or a reason to fail."""
        ids = []
        for dep in directives.after:
            # twice: a retry moving running/ -> queue/ between our looks reads as absent
            where = self.queue.locate(dep) or self.queue.locate(dep)
            if where is None:
                return None, f"dependency {dep} does not exist"
            if where is JobState.FAILED:
                return None, f"dependency {dep} failed"
            if where is JobState.COMPLETED:
                continue
            if where is not JobState.RUNNING:
                return None, None  # still queued here
            record = self.queue.read_record(dep)
            if record.backend != "slurm" or not record.backend_id or _may_retry(record):
                return None, None  # Slurm's afterok would judge a run that may be retried
            ids.append(record.backend_id)
        return ids, None

    def _fail_queued(self, name: str, reason: str) -> None:
        if not self.queue.claim(name):
            return
        record = self.queue.fresh_record(name)
        record.backend, record.reason, record.ended_at = "slurm", reason, now_iso()
        self._conclude(name, record, JobState.FAILED)

    def _submit(self, name: str, directives: Directives, after_ids: list[str],
                new_attempt: bool) -> None:
        """sbatch one claimed job; the record (with its token) is written first."""
        path = Path(self.layout.script(JobState.RUNNING, name))
        record = self.queue.fresh_record(name) if new_attempt else self.queue.read_record(name)
        try:  # byte for byte (a script sent on stdin goes back to the same bytes)
            text = path.read_bytes().decode("utf-8", "surrogateescape")
        except OSError as exc:
            record.reason = f"could not read the script: {exc}"
            self._finish_failed(name, record)
            return
        if new_attempt or not record.attempts:
            record.attempts += 1
        token = uuid.uuid4().hex[:16]
        record.backend, record.backend_id = "slurm", None
        record.host, record.pid, record.dispatcher = None, None, self.owner
        record.started_at = record.ended_at = record.exit_code = record.reason = None
        stdin = None if text.startswith("#!") else "#!/bin/sh\n" + text
        gpus = may_use_gpus(directives, text, self.sbatch_args)
        noted = note_gpus(stdin or text) if gpus else None
        record.extra.pop("slurm_gpus_noted", None)
        record.extra["slurm_gpus"] = gpus  # its GPUs are looked up when it is seen running
        if noted is not None:
            stdin = noted
            record.extra["slurm_gpus_noted"] = record.attempts  # (Slurm's requeues add more)
            try:  # not through whatever sits there (the job's shell would follow it)
                os.unlink(self.layout.slurm_gpus(name, record.attempts))
            except OSError:
                pass
        record.extra.update(slurm_token=token, slurm_state="SUBMITTING",
                            slurm_submit_at=now_iso(), directives=directives.to_dict(),
                            slurm_after=list(after_ids))
        record.log = str(self.layout.job_log(name, record.attempts))
        self.queue.write_record(record)

        argv = sbatch_command(None if stdin else path, name, directives, self.layout,
                              self.partition, self.sbatch_args, script_text=text,
                              after_ids=after_ids, attempt=record.attempts, token=token,
                              env_export=os.environ.get("SBATCH_EXPORT"),
                              gpus_noted=noted is not None)
        env = self._job_env(name, record)
        if noted is not None:
            env[SLURM_GPUS_ENV] = self.layout.slurm_gpus(name, record.attempts)
        res = self._run(argv, stdin, env)
        if res.returncode == 0:
            try:
                job_id = parse_sbatch_output(res.stdout)
            except ValueError as exc:
                self.logger.warning("%s: %s; will look it up", name, exc)
                return
            self._adopt(name, record, job_id, text)
            self.logger.info("Submitted job %s to Slurm as %s", name, job_id)
        elif is_transient(res.stderr) or res.returncode in (124, 127):
            # Maybe submitted, maybe not: the record (no backend_id) sends it to _recover.
            self.logger.warning("sbatch for %s failed; will retry: %s", name,
                                res.stderr.strip())
        else:
            record.reason = sbatch_refusal(res.stderr)
            record.extra["slurm_state"] = "REFUSED"
            self.logger.warning("%s failed: Slurm refused it: %s", name, record.reason)
            self._finish_failed(name, record)

    def _job_env(self, name: str, record: JobRecord) -> dict[str, str]:
        """sbatch's environment: the job's public ``GPUDISPATCH_*`` variables (sbatch's
        ``--export`` names them, whatever the script exports) and the GPUs' order. Not the
        local monitor's own (its exit journal, run, cgroup): wrong on a Slurm node. Slurm
        sets ``CUDA_VISIBLE_DEVICES`` itself."""
        base = {k: v for k, v in os.environ.items() if not k.startswith("GPUDISPATCH_")}
        return {**base, "CUDA_DEVICE_ORDER": base.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
                **self.layout.public_job_env(name, record.attempts, record.log or "")}

    def _adopt(self, name: str, record: JobRecord, job_id: str, text: str) -> None:
        record.backend_id = job_id
        record.extra["slurm_state"] = "PENDING"
        own_output = script_sbatch_options(text).get("output")
        if own_output:
            record.log = resolve_output(own_output, job_id, name, Path.cwd())
        self.queue.write_record(record)
        self._tracked[name] = _tracked(name, job_id, record, text)

    def _recover(self, name: str, record: JobRecord) -> None:
        """A job in running/ whose sbatch may or may not have happened: find it, or
        submit it (once we know Slurm has no job with its token or name)."""
        token = record.extra.get("slurm_token")
        try:
            text = _read_head(self.layout.script(JobState.RUNNING, name))
        except OSError:
            text = ""
        own = script_sbatch_options(text)
        slurm_name = own.get("job-name") or slurm_job_name(name)
        cutoff = _parse_when(record.extra.get("slurm_submit_at"))
        res = self._run(["squeue", "--noheader", "--states=all", "--me",
                         f"--format={LOOKUP_FORMAT}"])
        if res.returncode != 0:
            return  # controller away: try again next poll
        for line in res.stdout.splitlines():
            parts = line.split("\x1f")
            if len(parts) != 5 or not token:
                continue
            job_id, _, submitted, job_name, comment = parts
            if comment.strip() == f"{COMMENT_PREFIX}{token}" or (
                "comment" in own and job_name == slurm_name
                and _not_before(slurm_time_iso(submitted), cutoff)
            ):
                return self._found(name, record, job_id.strip())
        if record.extra.get("cancel_requested"):
            record.reason = "cancelled"
            record.ended_at = now_iso()
            return self._finish_failed(name, record)
        # Ended and purged from the controller's memory? Accounting keeps name and times.
        base = self._sacct_base()
        if base is not None and token and cutoff:
            acc = self._run([*base, "--parsable2", "--noheader",
                             "--format=JobID,Submit,JobName"])
            if acc.returncode != 0:
                return
            for line in reversed(acc.stdout.splitlines()):
                parts = line.split("|", 2)
                if (len(parts) == 3 and parts[2] == slurm_name and "." not in parts[0]
                        and _not_before(slurm_time_iso(parts[1]), cutoff)):
                    return self._found(name, record, parts[0])
        self.logger.info("%s was never submitted (no trace in Slurm); submitting it", name)
        try:
            directives = parse_directives(text)
        except DirectiveError:
            directives = Directives()
        after_ids, blocker = self._dependencies(directives)
        if blocker:
            record.reason = blocker
            self._finish_failed(name, record)
        elif after_ids is not None:
            self._submit(name, directives, after_ids, new_attempt=False)

    def _found(self, name: str, record: JobRecord, job_id: str) -> None:
        self.logger.info("%s had been submitted as Slurm job %s; following it", name, job_id)
        try:
            text = Path(self.layout.script(JobState.RUNNING, name)).read_text(errors="replace")
        except OSError:
            text = ""
        self._adopt(name, record, job_id, text)
        if record.extra.get("cancel_requested"):
            self._run(["scancel", job_id])

    # ------------------------------------------------------------------ restarts
    def reconcile(self) -> None:
        """Follow every Slurm job left in ``running/`` (this process's memory is empty)."""
        self._reconciled = True
        for name in self.queue.names(JobState.RUNNING):
            record = self.queue.read_record(name)
            if record.backend_id and record.backend == "slurm" and name not in self._tracked:
                self._follow(name, record)
        # Jobs without a backend_id are settled by poll() via _recover().

    def _follow(self, name: str, record: JobRecord) -> None:
        assert record.backend_id
        try:
            text = _read_head(self.layout.script(JobState.RUNNING, name))
        except OSError:
            text = ""
        self._tracked[name] = _tracked(name, record.backend_id, record, text)

    def _unsubmitted(self) -> list[tuple[str, JobRecord]]:
        """running/ jobs of ours with no Slurm id: claimed, sbatch unknown."""
        found = []
        for name in self.queue.names(JobState.RUNNING):
            if name in self._tracked:
                continue
            record = self.queue.read_record(name)
            ours = record.backend == "slurm" or (
                record.pid is None and record.dispatcher is None and record.started_at is None
                and not record.backend_id)
            if not ours:
                continue
            if record.backend_id:  # written by another process after our reconcile
                self._follow(name, record)
            else:
                found.append((name, record))
        return found

    # ------------------------------------------------------------------ following jobs
    def poll(self) -> None:
        """One squeue for every tracked job; one sacct for those that ended."""
        for name, record in self._unsubmitted():
            if not self.queue.is_paused() or record.backend == "slurm":
                self._recover(name, record)
        by_id = {t.job_id: t for t in self._tracked.values()}
        if not by_id:
            return
        statuses = self.squeue(by_id)
        if statuses is None:
            return
        ended: dict[str, SlurmStatus | None] = {}
        for job_id, tracked in by_id.items():
            status = statuses.get(job_id)
            if status is not None and not tracked.owns(status):
                self._lost(tracked, f"Slurm lost job {job_id} (its id now names another "
                           f"job, {status.name!r})", sure=True)
            elif status is not None and not status.is_final:
                self._update_active(tracked, status)
            else:
                ended[job_id] = status
        if not ended:
            return
        final = self.sacct(ended)
        for job_id, seen in ended.items():
            tracked = by_id[job_id]
            status = final.get(job_id)
            if status is not None and (not tracked.owns(status) or not status.is_final):
                status = None  # another job's under a reused id, or a line sacct misread
            if status is None and seen is not None:
                polled = self.scontrol_job(job_id)
                status = polled if polled is not None and tracked.owns(polled) else seen
            if status is None or not status.is_final:
                tracked.missing_polls += 1
                if tracked.missing_polls >= 3:
                    # With accounting, a job that ended is in it: one that is in neither
                    # place was forgotten (a controller crash), so it never ended there.
                    self._lost(tracked, f"Slurm has no record of job {job_id}",
                               sure=self._sacct_base() is not None)
                continue
            self._conclude_slurm(tracked, status)

    def _lost(self, tracked: _Tracked, why: str, sure: bool) -> None:
        """Slurm forgot the job. ``sure``: it cannot have ended in Slurm (its id is another
        job's, or accounting has no end for it): it is submitted again, once, as a new
        attempt that does not use up ``--retries`` (as a local job whose machine died).
        Otherwise it may have run: it fails, never runs twice."""
        name = tracked.name
        self._tracked.pop(name, None)
        record = self.queue.read_record(name)
        record.extra.pop("slurm_reason", None)
        lost = record.extra.get("slurm_lost", 0)
        if sure and not lost and not record.extra.get("cancel_requested"):
            self.logger.warning("%s: %s; submitting it again", name, why)
            record.extra["slurm_lost"] = 1
            record.interrupted()
            record.reason = f"resubmitted: {why}"
            record.backend_id, record.extra["slurm_state"] = None, "LOST"
            self.queue.requeue(name, record)
            return
        record.reason = f"lost: {why}" + ("; lost again after it was submitted again"
                                          if lost else "")
        record.extra["slurm_state"] = "LOST"
        self.logger.warning("%s failed: %s", name, record.reason)
        self._finish_failed(name, record)

    def _dependency_resubmitted(self, record: JobRecord) -> bool:
        """Whether a job Slurm's afterok waits on was lost and submitted again (it is back
        in the queue, or runs under another id): its old id will never be satisfied."""
        waited = set(record.extra.get("slurm_after") or ())
        for dep in (record.extra.get("directives") or {}).get("after") or []:
            where = self.queue.locate(dep)
            if where is JobState.QUEUED and self.queue.read_record(dep).extra.get("slurm_lost"):
                return True
            if where is JobState.RUNNING:
                dep_id = self.queue.read_record(dep).backend_id
                if dep_id and dep_id not in waited:
                    return True
        return False

    def _update_active(self, tracked: _Tracked, status: SlurmStatus) -> None:
        tracked.missing_polls = 0
        if status.state == "PENDING" and status.reason == "DependencyNeverSatisfied":
            record = self.queue.read_record(tracked.name)
            if self._dependency_resubmitted(record):
                # A dependency Slurm lost was submitted again: wait for that run instead.
                self._run(["scancel", tracked.job_id])
                self._tracked.pop(tracked.name, None)
                record.interrupted()
                record.reason, record.backend_id = "requeued: its dependency runs again", None
                self.queue.requeue(tracked.name, record)
                return
            if not record.extra.get("dependency_failed"):
                record.extra["dependency_failed"] = True
                self.queue.write_record(record)
                self._run(["scancel", tracked.job_id])
            return
        reason = status.reason if status.state in WAITING_STATES else None
        if status.state == tracked.state and reason == tracked.reason:
            return
        requeued = tracked.state in ("RUNNING", "COMPLETING") and status.state in WAITING_STATES
        tracked.state, tracked.reason = status.state, reason
        record = self.queue.read_record(tracked.name)
        if requeued:
            self._requeued_by_slurm(tracked, record)
        record.extra["slurm_state"] = status.state
        record.extra["slurm_reason"] = reason
        if status.state not in WAITING_STATES:
            record.host = status.node or record.host
            if record.started_at is None:
                record.started_at = now_iso()
                if ((record.extra.get("directives") or {}).get("gpus")
                        or record.extra.get("slurm_gpus")):
                    res = self._run(["scontrol", "show", "job", "-d", tracked.job_id])
                    record.gpus = parse_gpu_indices(res.stdout) if res.returncode == 0 else []
                self.logger.info("Running job %s in Slurm (%s) on %s...", tracked.name,
                                 tracked.job_id, status.node)
        self.queue.write_record(record)

    def _requeued_by_slurm(self, tracked: _Tracked, record: JobRecord) -> None:
        """Slurm put a running job back in its queue (``scontrol requeue``, a node that
        failed): its next run is another attempt, with a log of its own (Slurm would
        write it over the first), and not the job's failure (``--retries`` untouched)."""
        record.attempts += 1
        record.interrupted()
        record.extra["slurm_requeues"] = record.extra.get("slurm_requeues", 0) + 1
        record.started_at, record.gpus = None, []
        try:
            own = script_sbatch_options(_read_head(self.layout.script(JobState.RUNNING,
                                                                      tracked.name)))
        except OSError:
            own = {}
        if "output" not in own:
            log = str(self.layout.job_log(tracked.name, record.attempts))
            res = self._run(["scontrol", "update", f"JobId={tracked.job_id}", f"StdOut={log}"])
            if res.returncode == 0:
                record.log = log
        self.logger.info("%s was requeued by Slurm (job %s); attempt %d", tracked.name,
                         tracked.job_id, record.attempts)

    def _conclude_slurm(self, tracked: _Tracked, status: SlurmStatus) -> None:
        name = tracked.name
        self._tracked.pop(name, None)
        record = self.queue.read_record(name)
        result = outcome(status)
        record.exit_code = result.exit_code
        record.reason = result.reason
        if result.state is JobState.FAILED and result.exit_code:  # what says why, as locally
            why = last_error_line(read_tail(record.log, OOM_TAIL_BYTES),
                                  str(self.layout.script(JobState.RUNNING, name)))
            if why:
                record.reason = f"{record.reason}: {why}"
        if record.extra.get("dependency_failed"):
            record.reason = "dependency failed (a job it runs --after failed)"
        elif status.state == "CANCELLED" and (
                record.extra.get("cancel_requested")
                or os.path.exists(self.layout.cancel_request(name))):
            record.reason = "cancelled"
        record.host = status.node or record.host
        noted_at = record.extra.pop("slurm_gpus_noted", None)
        if type(noted_at) is int:  # (the path is ours to build, not the record's to name)
            noted = noted_gpus(self.layout.slurm_gpus(name, noted_at))
            record.gpus = record.gpus or noted  # [] when it ended before we saw it run
        record.started_at = slurm_time_iso(status.start) or record.started_at
        record.ended_at = slurm_time_iso(status.end) or now_iso()
        record.extra["slurm_state"] = status.state
        record.extra.pop("slurm_reason", None)  # a pending reason, stale once it ended
        if status.exit_code is not None:
            record.extra["slurm_exit"] = f"{status.exit_code}:{status.signal or 0}"
        early = record.extra.get("early_stop")
        if early and (status.state == "CANCELLED" or result.state is JobState.COMPLETED):
            record.reason = early  # stopped early (hyperband): not a failure
            self.logger.info("%s %s (Slurm job %s)", name, early, tracked.job_id)
            self._conclude(name, record, JobState.COMPLETED)
            return
        if result.state is JobState.COMPLETED:
            self.logger.info("%s returned 0 (Slurm job %s)", name, tracked.job_id)
            self._conclude(name, record, JobState.COMPLETED)
            return
        self.logger.warning("%s failed in Slurm (job %s): %s", name, tracked.job_id,
                            record.reason)
        retries = record.extra.get("directives", {}).get("retries", 0)
        retryable = status.state != "CANCELLED" and not (
            record.extra.get("cancel_requested") or record.extra.get("dependency_failed"))
        if retryable and record.failed_attempts <= retries:
            self.logger.info("%s: retry %d of %d", name, record.own_attempts, retries)
            record.reason = f"{record.reason}; retrying"
            self.queue.requeue(name, record)
            return
        self._finish_failed(name, record)

    def _finish_failed(self, name: str, record: JobRecord) -> None:
        record.ended_at = record.ended_at or now_iso()
        self._conclude(name, record, JobState.FAILED)

    def _conclude(self, name: str, record: JobRecord, state: JobState) -> None:
        """Record first, then move: a crash between leaves a job poll() concludes again."""
        self._tracked.pop(name, None)
        record.extra.pop("cancel_requested", None)
        self.queue.conclude(name, record, state)
        self.queue.drop_cancel_request(name)
        if state is JobState.FAILED:
            self.failures += 1

    # ------------------------------------------------------------------ cancel
    def cancel(self, name: str) -> bool:
        """Cancel a job: a queued one fails at once, a submitted one is ``scancel``-ed
        (it reaches ``failed/`` with reason "cancelled" when Slurm says so)."""
        where = self.queue.locate(name)
        if where is JobState.QUEUED:
            if not self.queue.claim(name):
                return False
            record = self.queue.fresh_record(name)
            record.reason = "cancelled"
            self._finish_failed(name, record)
            return True
        if where is not JobState.RUNNING:
            return False
        record = self.queue.read_record(name)
        ended = self.ended_in_slurm(record)
        if ended:
            self.logger.info("%s: cancel requested after it ended in Slurm (%s); its "
                             "outcome stands", name, ended)
            return False
        record.extra["cancel_requested"] = True
        early = self.queue.early_stop_reason(name)  # hyperband's: the request is gone soon
        if early:
            record.extra["early_stop"] = early
        self.queue.write_record(record)
        if record.backend_id:
            res = self._run(["scancel", record.backend_id])
            if res.returncode != 0:
                self.logger.warning("scancel %s failed: %s", record.backend_id,
                                    res.stderr.strip())
                return False
        self.logger.info("Cancelled %s", name)
        return True

    def ended_in_slurm(self, record: JobRecord) -> str | None:
        """Slurm's final state for a submitted job that has ended there (None: not ended,
        or not known): a cancel then would change nothing."""
        if not record.backend_id:
            return None
        status = (self.squeue([record.backend_id]) or {}).get(record.backend_id)
        return status.state if status is not None and status.is_final else None

    def _take_cancel_requests(self) -> None:
        """Honour ``gpudispatch cancel`` requests (files in .gpudispatch/cancel/)."""
        try:
            names = os.listdir(self.layout.cancels)
        except FileNotFoundError:
            return
        for name in names:
            if self.cancel(name) or self.queue.locate(name) is not JobState.RUNNING:
                try:
                    os.unlink(self.layout.cancel_request(name))
                except FileNotFoundError:
                    pass


def _may_retry(record: JobRecord) -> bool:
    """Whether this run, should it fail, is not the job's last (``--retries`` left)."""
    retries = (record.extra.get("directives") or {}).get("retries", 0)
    return record.failed_attempts <= retries


def _id_key(job_id: str) -> tuple[int, str]:
    head = job_id.split("_", 1)[0]
    return (int(head) if head.isdigit() else 0, job_id)


def _parse_when(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def _not_before(slurm_iso: str | None, cutoff: datetime | None) -> bool:
    """Submitted at or after our record said "submitting" (Slurm times are whole seconds)."""
    when = _parse_when(slurm_iso)
    return bool(when and cutoff and when.timestamp() >= cutoff.timestamp() - 1.5)


def _read_head(path: str | Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(HEADER_MAX_BYTES).decode(errors="replace")


# --- CLI entry points -------------------------------------------------------------------


def run_slurm(
    root: Path | str,
    partition: str | None = None,
    sbatch_args: Sequence[str] = (),
    wait: float = 2.0,
    drain: bool = False,
    allow_other_users: bool = False,
) -> int:
    """``gpudispatch run --backend slurm``: submit ROOT's queue to Slurm until stopped.

    ``wait`` is the poll interval in seconds; ``drain`` returns once every job has ended
    (1 if any failed). SIGINT/SIGTERM stop the loop; jobs keep running in Slurm and the
    next start follows them.
    """
    if shutil.which("sbatch") is None:
        log.error("sbatch is not on PATH: the Slurm backend needs the Slurm client tools")
        return 2
    queue = FolderQueue(root)
    try:
        from gpudispatch.dispatcher import queue_logger

        logger = queue_logger(queue.layout.logfile, console=True)
    except ImportError:  # pragma: no cover
        logger = log
    lock = _lock(queue.layout)
    if lock is None:
        logger.error("another Slurm backend already serves %s", queue.layout.root)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        backend = SlurmBackend(queue, partition, tuple(sbatch_args), max(wait, 0.1),
                               logger=logger, allow_other_users=allow_other_users)
        return backend.run(stop, drain)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(lock)


class AlreadyEnded(Exception):
    """The job has ended in Slurm (its state is the message): there is nothing to cancel."""


def cancel_slurm(root: Path | str, name: str) -> bool:
    """``gpudispatch cancel NAME`` for a Slurm-backed job, from another process.

    A queued job fails at once (the claim makes that race-free). A submitted one is
    ``scancel``-ed, and a cancel request file tells the backend process to record it as
    "cancelled" (it alone writes running jobs' records). False: no such unfinished job.
    :class:`AlreadyEnded` when Slurm says it has ended (its outcome is recorded at the
    backend's next poll, untouched).
    """
    queue = FolderQueue(root, create=False)
    backend = SlurmBackend(queue)
    where = queue.locate(name)
    if where is JobState.QUEUED:
        return backend.cancel(name)
    if where is not JobState.RUNNING:
        return False
    record = queue.read_record(name)
    ended = backend.ended_in_slurm(record)
    if ended:
        raise AlreadyEnded(ended)
    write_atomic(queue.layout.cancel_request(name), now_iso().encode(), queue.layout.tmp)
    job_id = record.backend_id
    if job_id:
        res = backend._run(["scancel", job_id])
        if res.returncode != 0:
            log.warning("scancel %s failed: %s (the backend will retry)", job_id,
                        res.stderr.strip())
    return True


def _lock(layout: Layout) -> int | None:
    """One Slurm backend per root: two would both try to recover unsubmitted jobs."""
    import fcntl

    path = layout.state / "slurm.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd
