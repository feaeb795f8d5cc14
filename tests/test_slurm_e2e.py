"""The Slurm backend against a real single-node Slurm (``bash .ci/slurm-up.sh``) with two
declared GPUs. Every wait is a bounded poll; job names carry a per-test prefix so that
Slurm's memory of earlier tests never matches."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import cli, job_env, wait_until

from gpudispatch.backends.sbatch import COMMENT_PREFIX, sbatch_command
from gpudispatch.backends.slurm import SlurmBackend, cancel_slurm, run_slurm
from gpudispatch.job import JobState, now_iso, parse_directives
from gpudispatch.layout import LOCAL_ONLY_VARS, PUBLIC_JOB_VARS
from gpudispatch.store import FolderQueue

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sinfo") is None,
                       reason="Slurm client tools not on PATH (run: bash .ci/slurm-up.sh)"),
]

REPO = Path(__file__).resolve().parent.parent
SLURM_STATE = Path(os.environ.get("SLURM_STATE", "/var/lib/gpudispatch-slurm"))


@pytest.fixture(scope="session", autouse=True)
def slurm_up() -> None:
    """slurm-up.sh is idempotent: it returns at once when Slurm is already up."""
    proc = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, f"Slurm did not come up:\n{proc.stdout}{proc.stderr}"


@pytest.fixture
def queue(tmp_path: Path):
    q = FolderQueue(tmp_path / "root")
    yield q
    for name in (n for s in JobState for n in q.names(s)):  # free the GPUs for the next test
        subprocess.run(["scancel", f"--name={name}"], capture_output=True, check=False)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def add(queue: FolderQueue, name: str, body: str, header: str = "") -> str:
    queue.enqueue_text(name, f"#!/bin/sh\n{header}{body}\n")
    old = time.time() - 10  # a finished copy, as far as the backend's check is concerned
    os.utime(queue.layout.script(JobState.QUEUED, name), (old, old))
    return name


def gate_body(gate: Path, name: str) -> str:
    """A job that logs one line, then waits (bounded) for the test to open its gate."""
    return (f'echo "ran {name} on $CUDA_VISIBLE_DEVICES"\n'
            f"i=0; while [ ! -e {gate} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done")


def drive(backend: SlurmBackend, done: Callable[[], bool], timeout: float = 40.0,
          what: str = "condition") -> None:
    """Tick the backend by hand until ``done()`` (a bounded poll)."""

    def step() -> bool:
        backend.tick()
        return done()

    wait_until(step, timeout, interval=0.1, message=what)


def in_states(queue: FolderQueue, states: set[JobState], *names: str) -> Callable[[], bool]:
    return lambda: all(queue.locate(n) in states for n in names)


def slurm_state(queue: FolderQueue, name: str) -> str | None:
    return queue.read_record(name).extra.get("slurm_state")


def slurm_ids_named(name: str) -> list[str]:
    out = subprocess.run(["squeue", "--noheader", "--states=all", f"--name={name}",
                          "--format=%i"], capture_output=True, text=True, check=True).stdout
    return out.split()


FINAL = {JobState.COMPLETED, JobState.FAILED}


def wait_gone(pid: int, what: str) -> None:
    """Until ``pid`` has exited. A daemon started from this process while it is a
    subreaper (an in-process dispatcher makes it one) is its child: reaped here, else it
    would stay a zombie and look alive."""

    def gone() -> bool:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:
            pass
        return not Path(f"/proc/{pid}").exists()

    wait_until(gone, 30, message=what)


def _slurmctld_pid() -> int:
    return int((SLURM_STATE / "slurmctld.pid").read_text())


def _sbatch_outside(*args: str) -> str:
    return subprocess.run(["sbatch", "--parsable", "--output=/dev/null", *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def test_exit_codes_logs_and_records(queue: FolderQueue, prefix: str) -> None:
    ok = add(queue, f"{prefix}-ok.sh", "echo hello from slurm")
    bad = add(queue, f"{prefix}-bad.sh", "echo failing; exit 3")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, ok, bad), what="both jobs to end")

    assert queue.locate(ok) is JobState.COMPLETED
    rec = queue.read_record(ok)
    assert (rec.exit_code, rec.reason, rec.backend) == (0, None, "slurm")
    assert rec.backend_id and rec.extra["slurm_state"] == "COMPLETED"
    assert rec.host == socket.gethostname().split(".")[0]
    assert rec.started_at and rec.ended_at and rec.attempts == 1
    assert Path(rec.log).read_text() == "hello from slurm\n"

    assert queue.locate(bad) is JobState.FAILED
    rec = queue.read_record(bad)
    assert (rec.exit_code, rec.reason) == (3, "FAILED: exit code 3")
    assert rec.extra["slurm_state"] == "FAILED" and rec.extra["slurm_exit"] == "3:0"
    assert Path(rec.log).read_text() == "failing\n"


def test_gpu_jobs_get_distinct_cuda_visible_devices(queue: FolderQueue, prefix: str) -> None:
    root = queue.layout.root
    a, b = f"{prefix}-one-a.sh", f"{prefix}-one-b.sh"
    # Each 1-GPU job waits until both run: they must hold the two GPUs at once.
    both = (f'echo "$CUDA_VISIBLE_DEVICES" > {root}/cvd-$GPUDISPATCH_JOB\n'
            f"i=0; until [ -e {root}/cvd-{a} ] && [ -e {root}/cvd-{b} ]; do\n"
            f"  i=$((i+1)); [ $i -gt 300 ] && exit 9; sleep 0.1; done")
    add(queue, a, both, "#GPUDISPATCH --gpus 1\n")
    add(queue, b, both, "#GPUDISPATCH --gpus 1\n")
    two = add(queue, f"{prefix}-two.sh", f'echo "$CUDA_VISIBLE_DEVICES" > {root}/cvd-two',
              f"#GPUDISPATCH --gpus 2 --after {a} {b}\n")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, a, b, two), what="the GPU jobs to end")

    assert queue.names(JobState.COMPLETED) == sorted([a, b, two])
    singles = {(root / f"cvd-{n}").read_text().strip() for n in (a, b)}
    assert singles == {"0", "1"}
    assert (root / "cvd-two").read_text().strip() == "0,1"



def test_timeout_maps_to_slurm_time_limit_and_ends_as_timeout(queue: FolderQueue,
                                                              prefix: str) -> None:
    slow = add(queue, f"{prefix}-slow.sh", "sleep 300", "#GPUDISPATCH --timeout 50s\n")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, lambda: slurm_state(queue, slow) == "RUNNING", what="the job to run")
    job_id = queue.read_record(slow).backend_id
    limit = subprocess.run(["squeue", "--noheader", f"--jobs={job_id}", "--format=%l"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert limit == "1:00"  # 50 s rounded up to Slurm's one-minute granularity
    # Slurm limits are whole minutes; rather than wait one, shrink it to zero so Slurm's
    # own time-limit enforcement ends the job now (same TIMEOUT path as after a minute).
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "TimeLimit=0"], check=True)
    drive(backend, in_states(queue, FINAL, slow), timeout=60, what="the timeout")
    rec = queue.read_record(slow)
    assert queue.locate(slow) is JobState.FAILED
    assert (rec.reason, rec.extra["slurm_state"], rec.exit_code) == ("TIMEOUT", "TIMEOUT", None)


def test_cancel_running_pending_and_dependent(queue: FolderQueue, prefix: str) -> None:
    long, dep, other = f"{prefix}-long.sh", f"{prefix}-dep.sh", f"{prefix}-other.sh"
    add(queue, long, "sleep 300")
    add(queue, dep, "echo must not run", f"#GPUDISPATCH --after {long}\n")
    add(queue, other, "sleep 300")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, lambda: slurm_state(queue, long) == "RUNNING"
          and queue.read_record(dep).backend_id is not None
          and queue.read_record(other).backend_id is not None, what="submission")

    assert backend.cancel(long)  # in-process, as the backend's own tick does
    assert cancel_slurm(queue.layout.root, other)  # from another process (the CLI)
    drive(backend, in_states(queue, FINAL, long, dep, other), what="the cancels")

    for name in (long, other):
        rec = queue.read_record(name)
        assert queue.locate(name) is JobState.FAILED
        assert (rec.reason, rec.extra["slurm_state"]) == ("cancelled", "CANCELLED")
    rec = queue.read_record(dep)  # afterok can never be met: Slurm would hold it forever
    assert queue.locate(dep) is JobState.FAILED
    assert rec.reason.startswith("dependency failed")
    assert not Path(rec.log).exists() or "must not run" not in Path(rec.log).read_text()
    assert not os.listdir(queue.layout.cancels)


def test_job_slurm_refuses_fails_with_its_message(queue: FolderQueue, prefix: str) -> None:
    big = add(queue, f"{prefix}-big.sh", "echo never", "#GPUDISPATCH --gpus 9\n")
    SlurmBackend(queue, poll_interval=0.2).tick()
    rec = queue.read_record(big)
    assert queue.locate(big) is JobState.FAILED
    assert rec.reason == "Requested node configuration is not available"
    assert rec.backend_id is None and rec.extra["slurm_state"] == "REFUSED"


def test_sbatch_accepts_the_command_we_build(tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    text = "#!/bin/sh\n#SBATCH --time=3\n#GPUDISPATCH --gpus 2 --timeout 2h --priority -1\necho\n"
    script.write_text(text)
    queue = FolderQueue(tmp_path / "root")
    argv = sbatch_command(script, "x.sh", parse_directives(text), queue.layout, "debug",
                          ["--exclusive", "-c", "1"], script_text=text, token="abc")
    proc = subprocess.run([argv[0], "--test-only", *argv[1:]], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "to start at" in proc.stderr


def _claim_with_token(queue: FolderQueue, name: str, token: str) -> None:
    """What the backend leaves when it dies between writing its record and sbatch's id."""
    assert queue.claim(name)
    rec = queue.read_record(name)
    rec.backend, rec.attempts, rec.log = "slurm", 1, queue.layout.job_log(name, 1)
    rec.extra.update(slurm_token=token, slurm_submit_at=now_iso(), slurm_state="SUBMITTING")
    queue.write_record(rec)


def test_backend_restart_mid_run_loses_nothing_and_runs_nothing_twice(
        queue: FolderQueue, prefix: str) -> None:
    gate = queue.layout.root / "gate"
    names = [f"{prefix}-{c}.sh" for c in "abcde"]
    a, b, c, d, e = names
    for name in names:
        add(queue, name, gate_body(gate, name))
    first = SlurmBackend(queue, poll_interval=0.2)
    first.submit_queued = lambda: None  # type: ignore[method-assign]
    for name in (a, b):
        assert queue.claim(name)
        first._submit(name, parse_directives(""), [], new_attempt=True)
    # c: crashed after sbatch, before the id reached the record
    _claim_with_token(queue, c, f"{prefix}c")
    manual = subprocess.run(
        ["sbatch", "--parsable", f"--job-name={c}", f"--comment={COMMENT_PREFIX}{prefix}c",
         f"--output={queue.layout.job_log(c, 1)}",
         str(queue.layout.script(JobState.RUNNING, c))],
        capture_output=True, text=True, check=True).stdout.strip()
    # d: crashed before sbatch; e: still queued
    _claim_with_token(queue, d, f"{prefix}d")
    del first

    second = SlurmBackend(queue, poll_interval=0.2)
    drive(second, lambda: all(queue.read_record(n).backend_id for n in names),
          what="every job to have a Slurm id")
    assert queue.read_record(c).backend_id == manual
    for name in names:
        assert len(slurm_ids_named(name)) == 1, name
    gate.touch()
    drive(second, in_states(queue, FINAL, *names), timeout=60, what="all jobs to end")
    assert queue.names(JobState.COMPLETED) == names
    for name in names:
        assert Path(queue.read_record(name).log).read_text().count("ran ") == 1, name


def test_slurmctld_restart_mid_run_loses_nothing(queue: FolderQueue, prefix: str) -> None:
    gate = queue.layout.root / "gate"
    a, b, c = (f"{prefix}-{x}.sh" for x in "abc")
    add(queue, a, gate_body(gate, a))
    add(queue, b, gate_body(gate, b))
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, lambda: slurm_state(queue, a) == "RUNNING"
          and queue.read_record(b).backend_id is not None, what="a to run")

    pid = _slurmctld_pid()
    subprocess.run(["scontrol", "shutdown", "slurmctld"], check=True, capture_output=True)
    wait_gone(pid, "slurmctld to exit")
    try:
        add(queue, c, gate_body(gate, c))
        gate.touch()  # a and b end while the controller is away
        backend.tick()  # sbatch for c and squeue fail: both just wait
        assert queue.names(JobState.FAILED) == []
        assert queue.locate(c) is JobState.RUNNING
    finally:
        up = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0, up.stderr
    drive(backend, in_states(queue, FINAL, a, b, c), timeout=60, what="all jobs to end")
    assert queue.names(JobState.COMPLETED) == [a, b, c]
    for name in (a, b, c):
        assert len(slurm_ids_named(name)) == 1, name
        assert Path(queue.read_record(name).log).read_text().count("ran ") == 1


def test_run_slurm_drains_and_reports_failure(tmp_path: Path, prefix: str) -> None:
    queue = FolderQueue(tmp_path / "root")
    add(queue, f"{prefix}-ok.sh", "true")
    add(queue, f"{prefix}-no.sh", "exit 2")
    started = time.monotonic()
    assert run_slurm(queue.layout.root, wait=0.2, drain=True) == 1
    assert time.monotonic() - started < 60
    assert queue.names(JobState.COMPLETED) == [f"{prefix}-ok.sh"]
    assert queue.names(JobState.FAILED) == [f"{prefix}-no.sh"]
    assert "Job Dispatcher Started" in queue.layout.logfile.read_text()


def test_names_with_spaces_quotes_and_unicode_round_trip(queue: FolderQueue,
                                                         prefix: str) -> None:
    """Slurm's completion file writes names unquoted (``sacct -c`` then misreads the
    line): the name in Slurm holds none of that, and the outcome is the job's own."""
    odd = add(queue, f"{prefix} sp'ace é.sh", "echo space ok")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, odd), what="the oddly named job to end")
    rec = queue.read_record(odd)
    assert queue.locate(odd) is JobState.COMPLETED, rec
    assert (rec.exit_code, rec.reason) == (0, None)
    assert "slurm_reason" not in rec.extra  # no pending reason kept once it ended
    assert Path(rec.log).read_text() == "space ok\n"


def test_bad_scripts_fail_before_sbatch_as_they_do_locally(queue: FolderQueue,
                                                          prefix: str) -> None:
    empty, crlf = f"{prefix}-empty.sh", f"{prefix}-crlf.sh"
    queue.enqueue_text(empty, "")
    queue.enqueue_text(crlf, "#!/bin/sh\r\necho dos\r\n")
    for name in (empty, crlf):
        old = time.time() - 10
        os.utime(queue.layout.script(JobState.QUEUED, name), (old, old))
    SlurmBackend(queue, poll_interval=0.2).tick()
    assert queue.locate(empty) is JobState.FAILED and queue.locate(crlf) is JobState.FAILED
    assert queue.read_record(empty).reason == "is empty"
    assert queue.read_record(crlf).reason.startswith("has CRLF (Windows) line endings")
    assert not slurm_ids_named(empty) and not slurm_ids_named(crlf)


def test_sbatch_refusals_keep_every_line_that_says_why(queue: FolderQueue,
                                                       prefix: str) -> None:
    bogus = add(queue, f"{prefix}-bogus.sh", "echo never", "#SBATCH --bogus-option=1\n")
    SlurmBackend(queue, poll_interval=0.2).tick()
    assert queue.read_record(bogus).reason == "unrecognized option '--bogus-option=1'"
    nowhere = add(queue, f"{prefix}-nowhere.sh", "echo never")
    SlurmBackend(queue, partition="nope", poll_interval=0.2).tick()
    reason = queue.read_record(nowhere).reason
    assert queue.locate(nowhere) is JobState.FAILED
    assert "nope" in reason and "Invalid partition name specified" in reason, reason


def test_a_reused_job_id_is_not_followed(queue: FolderQueue, prefix: str) -> None:
    """After a controller crash Slurm may forget our job and give its id to another
    one. Here the record is pointed at an outside job's id, as after that crash: the
    outside job's end must not become ours; ours runs again, once, as attempt 2."""
    gate = queue.layout.root / "gate"
    ours = add(queue, f"{prefix}-ours.sh", gate_body(gate, "ours"))
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, lambda: slurm_state(queue, ours) == "RUNNING", what="our job to run")
    outside = subprocess.run(["sbatch", "--parsable", f"--job-name={prefix}-outside",
                              "--output=/dev/null", "--wrap", "exit 0"],
                             capture_output=True, text=True, check=True).stdout.strip()
    rec = queue.read_record(ours)
    subprocess.run(["scancel", rec.backend_id], check=True)  # Slurm "forgot" ours
    rec.backend_id = outside
    queue.write_record(rec)
    gate.touch()

    restarted = SlurmBackend(queue, poll_interval=0.2)
    drive(restarted, in_states(queue, FINAL, ours), timeout=60, what="our job to end")
    rec = queue.read_record(ours)
    assert queue.locate(ours) is JobState.COMPLETED, rec
    assert rec.attempts == 2 and rec.backend_id != outside, rec
    assert rec.extra["interruptions"] == 1
    assert Path(rec.log).name.endswith(".2.log")


def test_jobs_a_crashed_slurmctld_forgot_run_once_and_reused_ids_are_not_followed(
        queue: FolderQueue, prefix: str) -> None:
    """A real ``kill -9`` of slurmctld after it took our submissions and before it saved
    them: it comes back without them and hands their ids to outside jobs. (Its state
    file is put back as it was before our submissions, so the crash always lands in
    that window, as it did 8 times in 12 when this was found.) Our jobs must run once
    each, as a new attempt; the outside jobs' ends must never be taken for ours."""
    state = SLURM_STATE / "ctld"
    blocker = _sbatch_outside(f"--job-name={prefix}-blocker", "--cpus-per-task=2",
                              "--wrap", "sleep 120")  # holds the node: ours stay pending
    submitted = time.time()
    wait_until(lambda: (state / "job_state").stat().st_mtime > submitted + 0.01, 30,
               message="slurmctld to save its state with the blocker in it")
    saved = {f: (state / f).read_bytes() for f in ("job_state", "job_state.old")
             if (state / f).exists()}
    names = [add(queue, f"{prefix}-{i}.sh", f'echo "ran {prefix}-{i}"') for i in range(3)]
    backend = SlurmBackend(queue, poll_interval=0.2)
    backend.tick()
    first_ids = [queue.read_record(n).backend_id for n in names]
    assert all(first_ids), first_ids

    pid = _slurmctld_pid()
    os.kill(pid, 9)
    wait_gone(pid, "slurmctld to die")
    for f, data in saved.items():  # what it had saved when it died
        (state / f).write_bytes(data)
    try:
        backend.tick()  # the controller is away: nothing is decided
        assert queue.names(JobState.FAILED) == []
    finally:
        up = subprocess.run(["bash", str(REPO / ".ci" / "slurm-up.sh")], capture_output=True,
                            text=True, timeout=120)
        assert up.returncode == 0, up.stderr
    outside = [_sbatch_outside(f"--job-name={prefix}-outside", "--wrap", "exit 0")
               for _ in names]
    assert set(outside) & set(first_ids), (outside, first_ids)  # our ids, reused
    subprocess.run(["scancel", blocker], check=True)

    drive(backend, in_states(queue, FINAL, *names), timeout=90, what="our jobs to end")
    for name, first in zip(names, first_ids, strict=True):
        rec = queue.read_record(name)
        assert queue.locate(name) is JobState.COMPLETED, rec
        assert Path(rec.log).read_text().count("ran ") == 1, name
        assert rec.attempts == 2 and rec.extra["interruptions"] == 1, rec
        assert rec.backend_id not in (first, *outside), rec
        assert Path(rec.log).name.endswith(".2.log")


def test_slurm_jobs_see_what_local_jobs_see_and_their_metrics_reach_results(
        queue: FolderQueue, prefix: str) -> None:
    name = add(queue, f"{prefix}-env.sh",
               'for v in GPUDISPATCH_JOB GPUDISPATCH_ATTEMPT GPUDISPATCH_ROOT GPUDISPATCH_LOG '
               'GPUDISPATCH_METRICS CUDA_DEVICE_ORDER; do\n'
               '  eval "echo $v=\\${$v-UNSET}"; done\n'
               'echo \'{"acc": 0.75}\' > "$GPUDISPATCH_METRICS"')
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, name), what="the job to end")
    rec = queue.read_record(name)
    assert queue.locate(name) is JobState.COMPLETED, rec
    seen = dict(line.split("=", 1) for line in Path(rec.log).read_text().splitlines())
    assert "UNSET" not in seen.values(), seen
    assert seen["GPUDISPATCH_JOB"] == name and seen["GPUDISPATCH_ATTEMPT"] == "1"
    assert seen["GPUDISPATCH_ROOT"] == str(queue.layout.root)
    assert seen["GPUDISPATCH_METRICS"] == queue.layout.metrics(name)
    assert seen["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    out = subprocess.run([sys.executable, "-m", "gpudispatch", "results", "--dir",
                          str(queue.layout.root), "--json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {row["name"]: row for row in json.loads(out)}
    assert rows[name]["acc"] == 0.75, rows[name]


def test_after_a_job_that_succeeds_on_its_retry_runs(queue: FolderQueue, prefix: str) -> None:
    mark = queue.layout.root / "failed-once"
    a = add(queue, f"{prefix}-a.sh", f"[ -e {mark} ] && exit 0; touch {mark}; exit 3",
            "#GPUDISPATCH --retries 1\n")
    c = add(queue, f"{prefix}-c.sh", "echo c ran", f"#GPUDISPATCH --after {a}\n")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, a, c), timeout=60, what="a and c to end")
    assert queue.locate(a) is JobState.COMPLETED and queue.read_record(a).attempts == 2
    rec = queue.read_record(c)
    assert queue.locate(c) is JobState.COMPLETED, rec
    assert Path(rec.log).read_text() == "c ran\n"


def test_cancel_of_a_job_that_already_ended_in_slurm_says_so(queue: FolderQueue,
                                                            prefix: str) -> None:
    quick = add(queue, f"{prefix}-quick.sh", "echo done")
    backend = SlurmBackend(queue, poll_interval=0.2)
    backend.tick()  # submitted; not polled again until it has ended in Slurm
    job_id = queue.read_record(quick).backend_id
    assert job_id

    def slurm_says() -> str:
        return subprocess.run(["squeue", "--noheader", "--states=all", f"--jobs={job_id}",
                               "--format=%T"], capture_output=True, text=True).stdout.strip()

    wait_until(lambda: slurm_says() == "COMPLETED", 30, message=slurm_says)
    proc = subprocess.run([sys.executable, "-m", "gpudispatch", "cancel", "--dir",
                           str(queue.layout.root), quick], capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout
    assert "already ended in Slurm (COMPLETED)" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
    drive(backend, in_states(queue, FINAL, quick), what="the outcome to be recorded")
    rec = queue.read_record(quick)
    assert queue.locate(quick) is JobState.COMPLETED and rec.reason is None, rec


def test_the_record_names_the_gpus_slurm_gave_a_running_job(queue: FolderQueue,
                                                           prefix: str) -> None:
    gate = queue.layout.root / "gate"
    one = add(queue, f"{prefix}-gpu.sh", gate_body(gate, "gpu"), "#GPUDISPATCH --gpus 1\n")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, lambda: slurm_state(queue, one) == "RUNNING", what="the job to run")
    gate.touch()
    drive(backend, in_states(queue, FINAL, one), what="the job to end")
    rec = queue.read_record(one)
    seen = Path(rec.log).read_text().split()[-1]  # "ran gpu on N"
    assert rec.gpus == [int(seen)], rec  # not [] (shown as "cpu")


def test_a_gpu_job_that_ended_between_two_looks_names_its_gpus(queue: FolderQueue,
                                                                prefix: str) -> None:
    """``scontrol -d`` lists a job's GPUs only while it runs: a job first seen ended
    (shorter than a poll) has its GPUs from the note its first line wrote."""
    quick = add(queue, f"{prefix}-quick.sh", 'echo "ran on $CUDA_VISIBLE_DEVICES"',
                "#GPUDISPATCH --gpus 1\nset -eu\n")
    backend = SlurmBackend(queue, poll_interval=0.2)
    backend.tick()  # submitted; not looked at again until Slurm says it ended
    job_id = queue.read_record(quick).backend_id
    assert job_id

    def ended_in_slurm() -> bool:
        out = subprocess.run(["squeue", "--noheader", "--states=all", "-j", job_id,
                              "--format=%T"], capture_output=True, text=True).stdout
        return out.strip() == "COMPLETED"

    wait_until(ended_in_slurm, 40, message="the job to end in Slurm")
    drive(backend, in_states(queue, FINAL, quick), what="its outcome")
    rec = queue.read_record(quick)
    seen = Path(rec.log).read_text().split()[-1]  # "ran on N"
    assert queue.locate(quick) is JobState.COMPLETED, rec
    assert rec.gpus == [int(seen)], rec  # not [] (shown as "cpu")
    assert not Path(queue.layout.slurm_gpus(quick, 1)).exists()  # the note is gone


def test_a_gpu_job_that_reads_its_own_file_runs_as_written(queue: FolderQueue,
                                                           prefix: str) -> None:
    """A Python job behind a ``#!/bin/sh`` line (it execs ``python3 "$0"``) reads its own
    file: it is sent without the GPU note, and runs."""
    name = f"{prefix}-poly.sh"
    queue.enqueue_text(name, "#!/bin/sh\n#GPUDISPATCH --gpus 1\n"
                             "''''exec python3 -u -- \"$0\" ${1+\"$@\"} # '''\n"
                             "import os\nprint('python on', os.environ['CUDA_VISIBLE_DEVICES'])\n")
    old = time.time() - 10
    os.utime(queue.layout.script(JobState.QUEUED, name), (old, old))
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, name), what="the job to end")
    rec = queue.read_record(name)
    assert queue.locate(name) is JobState.COMPLETED, rec
    assert Path(rec.log).read_text().startswith("python on "), Path(rec.log).read_text()


def test_a_job_slurm_requeues_is_another_attempt_with_its_own_log(queue: FolderQueue,
                                                                  prefix: str) -> None:
    gate = queue.layout.root / "gate"
    job = add(queue, f"{prefix}-rq.sh", 'echo "run $GPUDISPATCH_JOB"\n'
              f"[ -e {gate} ] && exit 0\n" + gate_body(gate, "rq"))
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, lambda: slurm_state(queue, job) == "RUNNING", what="the job to run")
    first = queue.read_record(job)
    # Slurm says RUNNING once it has allocated the job; slurmd may not have launched it.
    wait_until(lambda: Path(first.log).exists() and "run " in Path(first.log).read_text(),
               30, message="the first run to start")
    subprocess.run(["scontrol", "requeue", first.backend_id], check=True)
    drive(backend, lambda: queue.read_record(job).attempts == 2, what="the requeue")
    gate.touch()  # the second run ends at once
    # Slurm holds a requeued job back a while (BeginTime); let it start now, once its
    # first run's step is gone and the clock has passed the second it was killed in
    # (slurmd keeps revoked credentials to the second: sooner, it refuses the launch).
    slurmd_log = SLURM_STATE / "slurmd.log"
    wait_until(lambda: f"[{first.backend_id}.batch] done with job" in slurmd_log.read_text(),
               30, message="the first run's step to end")
    killed_in = int(time.time())
    wait_until(lambda: time.time() >= killed_in + 1.2, 5, message="the next second")
    subprocess.run(["scontrol", "update", f"JobId={first.backend_id}", "StartTime=now"],
                   check=True)
    drive(backend, in_states(queue, FINAL, job), timeout=90, what="the second run to end")
    rec = queue.read_record(job)
    assert queue.locate(job) is JobState.COMPLETED and rec.attempts == 2, rec
    assert rec.extra["interruptions"] == 1
    assert Path(rec.log).name == f"{job}.2.log" and Path(first.log).name == f"{job}.log"
    assert Path(first.log).read_text().startswith("run ")  # the first run's output kept
    assert Path(rec.log).read_text().startswith("run ")
ENV_DUMP = "env | grep '^GPUDISPATCH_' | sort > {out}/env-$GPUDISPATCH_JOB\n"
METRIC = """printf '{"step": 2, "val_loss": 0.25}\\n' > "$GPUDISPATCH_METRICS"\n"""


def dumped_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines())


def test_slurm_job_sees_every_variable_a_local_job_sees(
        queue: FolderQueue, prefix: str, launch, tmp_path: Path) -> None:
    """The same script run by the local dispatcher and on Slurm (also under an
    ``#SBATCH --export=NONE`` line): same variable names, less the local monitor's own."""
    out = tmp_path / "envs"
    out.mkdir()
    local_root = tmp_path / "local"
    local = FolderQueue(local_root)
    add(local, "local.sh", ENV_DUMP.format(out=out))
    proc = launch.run(local_root, "--slots", "1", "--drain")
    assert proc.wait(30) == 0, proc.output()
    plain = add(queue, f"{prefix}-plain.sh", ENV_DUMP.format(out=out))
    bare = add(queue, f"{prefix}-bare.sh", ENV_DUMP.format(out=out), "#SBATCH --export=NONE\n")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, plain, bare), what="both jobs to end")
    assert queue.names(JobState.COMPLETED) == sorted([plain, bare])

    seen_locally = set(dumped_env(out / "env-local.sh")) - set(LOCAL_ONLY_VARS)
    assert seen_locally == set(PUBLIC_JOB_VARS)
    for name in (plain, bare):
        env = dumped_env(out / f"env-{name}")
        assert set(env) == seen_locally, name
        assert env == queue.layout.public_job_env(name, 1, queue.layout.job_log(name, 1))


def test_sbatch_export_none_in_the_environment_is_kept_with_our_variables(
        queue: FolderQueue, prefix: str, monkeypatch, tmp_path: Path) -> None:
    """``SBATCH_EXPORT=NONE`` where the backend runs: the job gets ours and not the rest
    of the backend's environment (our ``--export`` must not turn it into ALL)."""
    monkeypatch.setenv("SBATCH_EXPORT", "NONE")
    monkeypatch.setenv("GPUDISPATCH_TEST_NOT_EXPORTED", "1")
    out = tmp_path / "envs"
    out.mkdir()
    job = add(queue, f"{prefix}-env.sh", ENV_DUMP.format(out=out))
    drive(SlurmBackend(queue, poll_interval=0.2), in_states(queue, FINAL, job),
          what="the job to end")
    assert queue.locate(job) is JobState.COMPLETED, queue.read_record(job).reason
    assert dumped_env(out / f"env-{job}") == queue.layout.public_job_env(
        job, 1, queue.layout.job_log(job, 1))


def test_metrics_a_slurm_job_writes_reach_results(queue: FolderQueue, prefix: str) -> None:
    job = add(queue, f"{prefix}-metric.sh", METRIC)
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, job), what="the job to end")
    assert queue.locate(job) is JobState.COMPLETED, queue.read_record(job).reason
    root = str(queue.layout.root)
    rows = json.loads(cli("results", "--dir", root, "--json", check=True).stdout)
    assert [(r["name"], r["step"], r["val_loss"]) for r in rows] == [(job, 2, 0.25)]
    table = cli("results", "--dir", root, env={**job_env(), "COLUMNS": "200"},
                check=True).stdout
    assert "val_loss" in table and "0.25" in table


def test_a_failed_slurm_jobs_reason_says_why(queue: FolderQueue, prefix: str) -> None:
    bad = add(queue, f"{prefix}-why.sh", "no-such-command-here --lr 3 || exit $?")
    backend = SlurmBackend(queue, poll_interval=0.2)
    drive(backend, in_states(queue, FINAL, bad), what="the job to end")
    reason = queue.read_record(bad).reason
    assert reason.startswith("FAILED: exit code 127: ") and reason.endswith("not found"), reason
