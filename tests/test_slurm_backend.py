"""The Slurm backend's pure parts: sbatch command lines (golden files), the parsers (on
outputs captured from a real Slurm 22.05), the state mapping, and the crash-window logic
driven against a small in-memory Slurm. Set UPDATE_GOLDEN=1 to rewrite golden files."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from gpudispatch.backends.sbatch import (
    COMMENT_PREFIX,
    GPUS_NOTE,
    export_value,
    is_transient,
    may_use_gpus,
    note_gpus,
    parse_sbatch_output,
    sbatch_command,
    sbatch_refusal,
    script_sbatch_options,
    slurm_job_name,
    split_sbatch_args,
    time_limit,
)
from gpudispatch.backends.slurm import Result, SlurmBackend, noted_gpus, run_command
from gpudispatch.backends.slurm_status import (
    SlurmStatus,
    outcome,
    parse_exit_code,
    parse_gpu_indices,
    parse_sacct,
    parse_scontrol_config,
    parse_scontrol_job,
    parse_squeue,
    sacct_base,
)
from gpudispatch.job import JobState, parse_directives
from gpudispatch.layout import PUBLIC_JOB_VARS, Layout
from gpudispatch.store import FolderQueue

GOLDEN = Path(__file__).parent / "golden"
CAPTURED = GOLDEN / "slurm"


def captured(name: str) -> str:
    return (CAPTURED / name).read_text()


# --- sbatch command lines ---------------------------------------------------------------

SBATCH_CASES = {
    "plain": dict(script="#!/bin/sh\necho hi\n"),
    "gpus_timeout": dict(script="#!/bin/sh\n#GPUDISPATCH --gpus 2 --timeout 90s\necho\n"),
    "after": dict(script="#!/bin/sh\n#GPUDISPATCH --after a.sh b.sh\n", after_ids=["12", "13"]),
    "retry_attempt2": dict(script="#!/bin/sh\n#GPUDISPATCH --retries 2\n", attempt=2),
    "low_priority": dict(script="#!/bin/sh\n#GPUDISPATCH --priority -5\n"),
    "stdin_script": dict(script="echo no shebang\n", path=None),
    "partition_extra": dict(
        script="#!/bin/sh\n#GPUDISPATCH --timeout 2h --gpus 1\n",
        partition="gpu",
        extra=["--account=lab", "-q", "high", "--time=30", "--gres=gpu:4", "--exclusive"],
    ),
    "script_sbatch_wins": dict(
        script=(
            "#!/bin/bash\n"
            "#SBATCH --time=5\n"
            "#SBATCH -J custom  # comment\n"
            "#SBATCH --gpus=1\n"
            "#SBATCH -pdebug\n"
            "#SBATCH --output out-%j.txt\n"
            "#SBATCH --comment='mine'\n"
            "#GPUDISPATCH --gpus 2 --timeout 1h\n"
            "python train.py\n"
            "#SBATCH --nodes=4\n"  # after the first command: sbatch ignores it, so do we
        ),
        partition="gpu",
        extra=["-A", "lab", "--partition=other", "--nodes=2"],
    ),
    # --export is merged: the script's (else the site's) value plus our variables' names.
    "script_export_none": dict(script="#!/bin/sh\n#SBATCH --export=NONE\necho\n",
                               extra=["--export=ALL,SITE=1"]),
    "site_export": dict(script="#!/bin/sh\necho\n", extra=["--export", "PATH,HOME"]),
    "env_export": dict(script="#!/bin/sh\necho\n", env_export="NONE"),  # $SBATCH_EXPORT
}


@pytest.mark.parametrize("case", sorted(SBATCH_CASES))
def test_sbatch_command_golden(case: str) -> None:
    spec = SBATCH_CASES[case]
    layout = Layout("/q")
    name = f"{case}.sh"
    path = spec.get("path", f"/q/running/{name}")
    argv = sbatch_command(
        path, name, parse_directives(spec["script"]), layout,
        partition=spec.get("partition"), extra_args=spec.get("extra", ()),
        script_text=spec["script"], after_ids=spec.get("after_ids", ()),
        attempt=spec.get("attempt", 1), token="TOKEN", env_export=spec.get("env_export"),
    )
    text = "\n".join(argv) + "\n"
    golden = GOLDEN / "sbatch" / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), shlex.join(argv)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        # ALL carries ours (sbatch's environment has them); naming them after it makes
        # slurmd start every job 0.15 s later, so they are not named.
        (None, "ALL"),
        ("ALL", "ALL"),
        ("all,A=1", "all,A=1"),
        ("NONE", "{ours}"),  # Slurm takes no variables after NONE; SLURM_* + ours, as NONE
        ("PATH,A=1", "PATH,A=1,{ours}"),
        ("PATH,GPUDISPATCH_JOB=mine", "PATH,GPUDISPATCH_JOB=mine,{rest}"),  # theirs kept
    ],
)
def test_export_value_adds_every_public_variable(given: str | None, expected: str) -> None:
    ours = ",".join(PUBLIC_JOB_VARS)
    rest = ",".join(v for v in PUBLIC_JOB_VARS if v != "GPUDISPATCH_JOB")
    assert export_value(given) == expected.format(ours=ours, rest=rest)


def test_script_sbatch_lines_override_every_option_of_ours() -> None:
    """Removing the #SBATCH-precedence rule must break this: each of ours is dropped."""
    spec = SBATCH_CASES["script_sbatch_wins"]
    argv = sbatch_command("/q/running/x.sh", "x.sh", parse_directives(spec["script"]),
                          Layout("/q"), "gpu", spec["extra"], script_text=spec["script"],
                          token="T")
    joined = " ".join(argv)
    for dropped in ("--time", "--job-name", "--gres", "--output", "--partition", "-p ",
                    "--comment"):
        assert dropped not in joined
    # the script's late "#SBATCH --nodes=4" follows a command, so sbatch ignores it
    assert argv[-4:] == ["-A", "lab", "--nodes=2", "/q/running/x.sh"]


@pytest.mark.parametrize(
    ("seconds", "minutes"),
    [(1, "1"), (59.5, "1"), (60, "1"), (61, "2"), (90, "2"), (3600, "60"), (86400, "1440")],
)
def test_time_limit_rounds_up_to_whole_minutes(seconds: float, minutes: str) -> None:
    assert time_limit(seconds) == minutes


@pytest.mark.parametrize(
    ("words", "expected"),
    [
        (["-t", "5", "--hold", "-J", "n"], [("time", ["-t", "5"]), ("hold", ["--hold"]),
                                            ("job-name", ["-J", "n"])]),
        (["-t5", "-H", "--part=x"], [("time", ["-t5"]), ("hold", ["-H"]),
                                     ("partition", ["--part=x"])]),
        (["--account", "lab", "--exclusive"], [("account", ["--account", "lab"]),
                                               ("exclusive", ["--exclusive"])]),
    ],
)
def test_split_sbatch_args(words: list[str], expected: list) -> None:
    assert split_sbatch_args(words) == expected


def test_script_sbatch_options_stop_at_first_command() -> None:
    text = "#!/bin/sh\n\n#SBATCH -t 5 --gres=gpu:1\n# note\n#SBATCH --hold\necho\n#SBATCH -p x\n"
    assert script_sbatch_options(text) == {"time": "5", "gres": "gpu:1", "hold": None}


# --- parsers on captured output ---------------------------------------------------------


def test_parse_squeue_many_jobs() -> None:
    jobs = parse_squeue(captured("squeue.txt"))
    assert set(jobs) == {"16", "17", "18", "19"}  # 1 and 999 long gone: simply absent
    assert jobs["16"] == SlurmStatus("16", "FAILED", "NonZeroExitCode", "vm", "exit3.sh",
                                     comment="gpudispatch:16161616")
    assert jobs["19"].comment == ""  # squeue shows it (empty): compared with our token
    assert jobs["17"].state == "PENDING" and jobs["17"].reason == "DependencyNeverSatisfied"
    assert jobs["17"].node is None
    assert jobs["18"].state == "RUNNING" and jobs["18"].node == "vm"
    assert jobs["19"].reason == "Resources" and not jobs["19"].is_final
    assert jobs["16"].is_final


def test_parse_sacct_completion_file() -> None:
    jobs = parse_sacct(captured("sacct_c.txt"))
    assert jobs["3"].state == "FAILED" and (jobs["3"].exit_code, jobs["3"].signal) == (3, 0)
    assert jobs["1"].state == "COMPLETED" and jobs["1"].node == "vm"
    assert jobs["4"].node is None and (jobs["4"].exit_code, jobs["4"].signal) == (0, 1)
    assert jobs["5"].state == "TIMEOUT"
    assert jobs["6"].state == "CANCELLED"
    assert jobs["7"].exit_code == 4
    assert jobs["1"].start == "2026-11-26T14:46:29" and jobs["1"].end == "2026-11-26T14:46:32"


def test_parse_sacct_skips_steps_and_takes_the_last_line_of_a_requeued_job() -> None:
    text = ("5|NODE_FAIL|0:0|vm|t0|t1|a.sh\n5.batch|CANCELLED|0:15|vm|t0|t1|batch\n"
            "5|COMPLETED|0:0|vm2|t2|t3|a.sh\n")
    assert parse_sacct(text)["5"].state == "COMPLETED"
    assert parse_sacct(text)["5"].node == "vm2"
    assert set(parse_sacct(text)) == {"5"}


def test_parse_scontrol_show_job() -> None:
    running = parse_scontrol_job(captured("scontrol_running.txt"))
    assert running and running.state == "RUNNING" and running.node == "vm"
    assert running.name == "hold2.sh"
    failed = parse_scontrol_job(captured("scontrol_failed_exit3.txt"))
    assert failed and (failed.state, failed.exit_code, failed.signal) == ("FAILED", 3, 0)
    assert failed.start == "2026-11-26T14:53:19"
    cancelled = parse_scontrol_job(captured("scontrol_cancelled.txt"))
    assert cancelled and (cancelled.state, cancelled.signal) == ("CANCELLED", 15)
    dep = parse_scontrol_job(captured("scontrol_pending_dependency.txt"))
    assert dep and dep.reason == "DependencyNeverSatisfied" and dep.node is None
    assert parse_scontrol_job("slurm_load_jobs error: Invalid job id specified") is None


def test_parse_scontrol_config_picks_the_accounting_source() -> None:
    config = parse_scontrol_config(captured("scontrol_config.txt"))
    assert config["JobCompType"] == "jobcomp/filetxt"
    assert sacct_base(config) == ["sacct", "-c"]
    assert sacct_base({"AccountingStorageType": "accounting_storage/slurmdbd"}) == ["sacct"]
    assert sacct_base({"JobCompType": "jobcomp/none"}) is None


def test_sbatch_answers() -> None:
    assert parse_sbatch_output("123\n") == "123"
    assert parse_sbatch_output("124;cluster\n") == "124"
    with pytest.raises(ValueError):
        parse_sbatch_output("")
    refused = captured("sbatch_refused.stderr")
    assert sbatch_refusal(refused) == "Requested node configuration is not available"
    # Every line that says what is wrong, not only the last (as real sbatch 22.05 wrote).
    assert sbatch_refusal(
        "sbatch: unrecognized option '--bogus-option=1'\n"
        'Try "sbatch --help" for more information\n') == "unrecognized option '--bogus-option=1'"
    assert sbatch_refusal(
        "sbatch: error: invalid partition specified: nope\n"
        "sbatch: error: Batch job submission failed: Invalid partition name specified\n"
    ) == "invalid partition specified: nope; Invalid partition name specified"
    assert sbatch_refusal(
        "sbatch: error: Batch script contains DOS line breaks (\\r\\n)\n"
        "sbatch: error: instead of expected UNIX line breaks (\\n).\n"
    ) == ("Batch script contains DOS line breaks (\\r\\n) instead of expected UNIX "
          "line breaks (\\n).")
    assert sbatch_refusal("") == "sbatch failed"
    assert not is_transient(refused)
    assert is_transient(captured("sbatch_ctld_down.stderr"))
    assert is_transient(captured("squeue_ctld_down.stderr"))
    assert not is_transient(captured("squeue_invalid_id.stderr"))


def test_slurm_job_names_hold_nothing_sacct_misreads() -> None:
    assert slurm_job_name("sp ace.sh") == "sp_ace.sh"
    assert slurm_job_name("a=b 'q'.sh") == "a_b__q_.sh"
    assert slurm_job_name("été.sh") == "_t_.sh"
    assert slurm_job_name("ok-1.2_x+y.sh") == "ok-1.2_x+y.sh"


# --- final states -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "state", "reason", "code"),
    [
        (SlurmStatus("1", "COMPLETED", node="n", exit_code=0, signal=0),
         JobState.COMPLETED, None, 0),
        (SlurmStatus("1", "FAILED", node="n", exit_code=3, signal=0),
         JobState.FAILED, "FAILED: exit code 3", 3),
        (SlurmStatus("1", "FAILED", node="n", exit_code=0, signal=9),
         JobState.FAILED, "FAILED: killed by SIGKILL", 137),
        (SlurmStatus("1", "FAILED", node=None, exit_code=0, signal=1),
         JobState.FAILED, "FAILED: Slurm could not launch the job", None),
        (SlurmStatus("1", "TIMEOUT", node="n", exit_code=0, signal=0),
         JobState.FAILED, "TIMEOUT", None),
        (SlurmStatus("1", "CANCELLED", node="n", exit_code=0, signal=15),
         JobState.FAILED, "CANCELLED", None),
        (SlurmStatus("1", "OUT_OF_MEMORY", node="n", exit_code=0, signal=125),
         JobState.FAILED, "OUT_OF_MEMORY", None),
        (SlurmStatus("1", "NODE_FAIL", node="n"), JobState.FAILED, "NODE_FAIL", None),
    ],
)
def test_outcome_of_final_states(status: SlurmStatus, state: JobState, reason, code) -> None:
    result = outcome(status)
    assert (result.state, result.reason, result.exit_code) == (state, reason, code)


def test_state_words_are_normalised() -> None:
    assert parse_sacct("9|CANCELLED by 0|0:0|vm|a|b|x.sh\n")["9"].state == "CANCELLED"
    assert parse_exit_code("(null)") == (None, None)


# --- crash windows, against an in-memory Slurm ------------------------------------------


class FakeSlurm:
    """Just enough of sbatch/squeue/sacct/scancel/scontrol for the backend's logic."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}
        self.calls: list[list[str]] = []
        self.down = False
        self.next_id = 100

    def submit(self, name: str, comment: str = "") -> str:
        job_id = str(self.next_id)
        self.next_id += 1
        self.jobs[job_id] = dict(name=name, state="PENDING", comment=comment, exit="0:0")
        return job_id

    def __call__(self, argv: list[str], stdin=None, env=None) -> Result:
        self.calls.append(argv)
        cmd = argv[0]
        if self.down and cmd != "sacct":
            return Result(1, "", "error: Unable to contact slurm controller (connect failure)")
        opts = dict(a.split("=", 1) for a in argv if a.startswith("--") and "=" in a)
        if cmd == "sbatch":
            if "--gres=gpu:9" in argv:
                return Result(1, "", "sbatch: error: Batch job submission failed: "
                                     "Requested node configuration is not available\n")
            return Result(0, self.submit(opts["--job-name"], opts.get("--comment", "")) + "\n",
                          "")
        if cmd == "squeue":
            if "--jobs" in opts:
                ids = opts["--jobs"].split(",")
                lines = [f"{i}\x1f{j['state']}\x1f{j.get('reason', 'None')}\x1fvm\x1f"
                         f"{j['comment']}\x1f{j['name']}"
                         for i, j in self.jobs.items() if i in ids]
            else:
                lines = [f"{i}\x1f{j['state']}\x1f2099-01-01T00:00:00\x1f{j['name']}"
                         f"\x1f{j['comment']}" for i, j in self.jobs.items()]
            return Result(0, "\n".join(lines) + "\n", "")
        if cmd == "sacct":
            ids = opts.get("--jobs", "").split(",")
            lines = [f"{i}|{j['state']}|{j['exit']}|vm|2099-01-01T00:00:00|"
                     f"2099-01-01T00:00:01|{j['name']}"
                     for i, j in self.jobs.items() if i in ids and j["state"] != "RUNNING"]
            return Result(0, "\n".join(lines) + "\n", "")
        if cmd == "scancel":
            self.jobs[argv[1]]["state"] = "CANCELLED"
            return Result(0, "", "")
        if argv[:3] == ["scontrol", "show", "config"]:
            return Result(0, "JobCompType             = jobcomp/filetxt\n", "")
        if argv[:3] == ["scontrol", "show", "job"]:
            return Result(1, "", "slurm_load_jobs error: Invalid job id specified")
        raise AssertionError(f"unexpected command {argv}")

    def sbatch_calls(self) -> int:
        return sum(1 for c in self.calls if c[0] == "sbatch")


def _queue(tmp_path: Path, *names: str, text: str = "#!/bin/sh\necho\n") -> FolderQueue:
    queue = FolderQueue(tmp_path / "q")
    for name in names:
        queue.enqueue_text(name, text)
        old = 1_000_000_000
        os.utime(queue.layout.script(JobState.QUEUED, name), (old, old))
    return queue


def test_submitted_then_crash_before_backend_id_is_adopted_not_resubmitted(tmp_path) -> None:
    """Crash after sbatch, before the record got the id: found by its token in Slurm."""
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh")
    assert queue.claim("a.sh")
    record = queue.read_record("a.sh")
    record.backend, record.attempts = "slurm", 1
    record.extra.update(slurm_token="tok", slurm_submit_at="2026-01-01T00:00:00+00:00")
    queue.write_record(record)
    job_id = slurm.submit("a.sh", comment=f"{COMMENT_PREFIX}tok")

    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    assert slurm.sbatch_calls() == 0
    assert queue.read_record("a.sh").backend_id == job_id
    slurm.jobs[job_id]["state"] = "COMPLETED"
    backend.tick(1)
    assert queue.locate("a.sh") is JobState.COMPLETED
    assert slurm.sbatch_calls() == 0


def test_claimed_but_never_submitted_is_submitted_once(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh")
    assert queue.claim("a.sh")  # crash right after the claim: no record of ours at all
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    backend.tick(1)
    assert slurm.sbatch_calls() == 1
    assert queue.read_record("a.sh").backend_id == "100"
    assert queue.read_record("a.sh").attempts == 1


def test_controller_down_postpones_and_loses_nothing(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh", "b.sh")
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    assert {queue.read_record(n).backend_id for n in ("a.sh", "b.sh")} == {"100", "101"}
    slurm.down = True
    queue.enqueue_text("c.sh", "#!/bin/sh\n")
    os.utime(queue.layout.script(JobState.QUEUED, "c.sh"), (1e9, 1e9))
    for now in range(1, 4):
        backend.tick(now)
    # sbatch failed transiently: c.sh waits in running/ without an id, nothing failed
    assert queue.names(JobState.FAILED) == []
    assert queue.names(JobState.RUNNING) == ["a.sh", "b.sh", "c.sh"]
    assert queue.read_record("c.sh").backend_id is None
    slurm.down = False
    for job in slurm.jobs.values():
        job["state"] = "COMPLETED"
    backend.tick(5)
    assert queue.read_record("c.sh").backend_id == "102"
    for job in slurm.jobs.values():
        job["state"] = "COMPLETED"
    backend.tick(6)
    assert queue.names(JobState.COMPLETED) == ["a.sh", "b.sh", "c.sh"]
    assert slurm.sbatch_calls() == 4  # a, b, c's failed try, c


def test_refused_job_fails_with_slurms_message(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "big.sh", text="#!/bin/sh\n#GPUDISPATCH --gpus 9\n")
    SlurmBackend(queue, runner=slurm).tick(0)
    assert queue.locate("big.sh") is JobState.FAILED
    assert queue.read_record("big.sh").reason == "Requested node configuration is not available"


def test_after_becomes_afterok_on_the_dependencys_slurm_id(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh")
    queue.enqueue_text("0-b.sh", "#!/bin/sh\n#GPUDISPATCH --after a.sh\n")  # sorts first
    os.utime(queue.layout.script(JobState.QUEUED, "0-b.sh"), (1e9, 1e9))
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)  # 0-b.sh waits: a.sh has no Slurm id yet when it is considered
    assert queue.locate("0-b.sh") is JobState.QUEUED
    backend.tick(1)
    sbatches = [c for c in slurm.calls if c[0] == "sbatch"]
    assert sbatches[0][2:4] == ["--job-name=a.sh", "--output=" + queue.layout.job_log("a.sh", 1)]
    assert "--dependency=afterok:100" in sbatches[1]


def test_after_a_missing_or_failed_job_fails_like_the_local_dispatcher(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "b.sh", text="#!/bin/sh\n#GPUDISPATCH --after nope.sh\n")
    SlurmBackend(queue, runner=slurm).tick(0)
    assert queue.read_record("b.sh").reason == "dependency nope.sh does not exist"
    assert slurm.sbatch_calls() == 0


def test_one_squeue_and_at_most_one_sacct_per_poll(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, *(f"j{i}.sh" for i in range(5)))
    backend = SlurmBackend(queue, poll_interval=10, runner=slurm)
    backend.tick(0)
    for job in slurm.jobs.values():
        job["state"] = "COMPLETED"
    slurm.calls.clear()
    backend.tick(5)  # within poll_interval: no Slurm query at all
    assert slurm.calls == []
    backend.tick(10)
    kinds = [c[0] for c in slurm.calls if c[:3] != ["scontrol", "show", "config"]]
    assert kinds == ["squeue", "sacct"]
    assert len(queue.names(JobState.COMPLETED)) == 5


def test_cancel_queued_and_submitted(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh")
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    queue.enqueue_text("b.sh", "#!/bin/sh\n")
    assert backend.cancel("b.sh")
    assert queue.locate("b.sh") is JobState.FAILED
    assert backend.cancel("a.sh")
    assert ["scancel", "100"] in slurm.calls
    backend.tick(1)
    record = queue.read_record("a.sh")
    assert queue.locate("a.sh") is JobState.FAILED
    assert (record.reason, record.extra["slurm_state"]) == ("cancelled", "CANCELLED")


def test_retries_requeue_then_resubmit_with_a_new_log(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "r.sh", text="#!/bin/sh\n#GPUDISPATCH --retries 1\nexit 3\n")
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    slurm.jobs["100"].update(state="FAILED", exit="3:0")
    backend.tick(1)  # fails, requeued ...
    backend.tick(2)  # ... and submitted again
    record = queue.read_record("r.sh")
    assert record.attempts == 2 and record.backend_id == "101"
    assert record.log.endswith("r.sh.2.log")
    slurm.jobs["101"].update(state="FAILED", exit="3:0")
    backend.tick(3)
    assert queue.locate("r.sh") is JobState.FAILED
    assert queue.read_record("r.sh").exit_code == 3


def test_a_reused_job_id_is_never_followed_and_the_lost_job_is_submitted_again(
        tmp_path) -> None:
    """slurmctld died and forgot our job; its id now names an outside job. We must not
    record that job's end as ours: ours is submitted again, once, without using up
    --retries (it is not the job's failure); lost a second time, it fails."""
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh")
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    assert queue.read_record("a.sh").backend_id == "100"
    slurm.jobs["100"] = dict(name="wrap", state="COMPLETED", comment="", exit="0:0")
    backend.tick(1)  # not ours: back to the queue ...
    record = queue.read_record("a.sh")
    assert record.reason == ("resubmitted: Slurm lost job 100 (its id now names another "
                             "job, 'wrap')"), record.reason
    backend.tick(2)  # ... and submitted again as attempt 2
    record = queue.read_record("a.sh")
    assert (record.attempts, record.backend_id) == (2, "101")
    assert record.extra["interruptions"] == 1
    assert slurm.sbatch_calls() == 2
    del slurm.jobs["101"]  # forgotten again, and no trace in accounting
    for t in range(3, 7):
        backend.tick(t)
    assert queue.locate("a.sh") is JobState.FAILED
    record = queue.read_record("a.sh")
    assert record.reason.startswith("lost: Slurm has no record of job 101"), record.reason
    assert slurm.sbatch_calls() == 2  # never a third time


def test_a_lost_job_uses_no_retry(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "r.sh", text="#!/bin/sh\n#GPUDISPATCH --retries 1\nexit 3\n")
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    slurm.jobs["100"] = dict(name="other", state="RUNNING", comment="x", exit="0:0")
    backend.tick(1)
    backend.tick(2)
    slurm.jobs["101"].update(state="FAILED", exit="3:0")
    backend.tick(3)  # its first failure: retried
    backend.tick(4)
    record = queue.read_record("r.sh")  # attempt 3: the loss was not a failure
    assert (record.attempts, record.backend_id) == (3, "102"), record


def test_squeue_final_state_wins_over_a_line_sacct_misread(tmp_path) -> None:
    """A job that squeue still shows COMPLETED is completed, even when sacct returns an
    unreadable line for it (the completion file's ``Name=sp ace.sh``)."""
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "b.sh")
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    slurm.jobs["100"].update(state="COMPLETED")
    real = slurm.__call__

    def garbled(argv, stdin=None, env=None):
        if argv[0] == "sacct":
            slurm.calls.append(argv)
            return Result(0, "100||0:0|vm|2099-01-01T00:00:00|2099-01-01T00:00:01|sp\n", "")
        return real(argv, stdin, env)

    backend.runner = garbled
    backend.tick(1)
    assert queue.locate("b.sh") is JobState.COMPLETED
    assert queue.read_record("b.sh").exit_code == 0


def test_after_waits_for_the_final_outcome_of_a_job_with_retries(tmp_path) -> None:
    """a fails once and succeeds on its retry: c --after a runs, as it does locally
    (Slurm's afterok on a's first run would have cancelled it)."""
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh", text="#!/bin/sh\n#GPUDISPATCH --retries 1\nexit 0\n")
    c_text = "#!/bin/sh\n#GPUDISPATCH --after a.sh\necho c\n"
    queue.enqueue_text("c.sh", c_text)
    os.utime(queue.layout.script(JobState.QUEUED, "c.sh"), (1_000_000_000,) * 2)
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    assert queue.locate("c.sh") is JobState.QUEUED  # held: a's run may be retried
    slurm.jobs["100"].update(state="FAILED", exit="3:0")
    backend.tick(1)  # a fails, requeued
    backend.tick(2)  # a resubmitted (its last try): now c may go with afterok on it
    assert queue.read_record("a.sh").backend_id == "101"
    backend.tick(3)
    c = queue.read_record("c.sh")
    assert c.backend_id == "102"
    sbatch_c = [call for call in slurm.calls if call[0] == "sbatch"][-1]
    assert "--dependency=afterok:101" in sbatch_c
    slurm.jobs["101"].update(state="COMPLETED")
    slurm.jobs["102"].update(state="COMPLETED")
    backend.tick(4)
    assert queue.locate("a.sh") is JobState.COMPLETED
    assert queue.locate("c.sh") is JobState.COMPLETED


def test_a_dependent_of_a_job_slurm_lost_waits_for_its_new_run(tmp_path) -> None:
    slurm = FakeSlurm()
    queue = _queue(tmp_path, "a.sh")
    queue.enqueue_text("c.sh", "#!/bin/sh\n#GPUDISPATCH --after a.sh\necho c\n")
    os.utime(queue.layout.script(JobState.QUEUED, "c.sh"), (1_000_000_000,) * 2)
    backend = SlurmBackend(queue, poll_interval=0, runner=slurm)
    backend.tick(0)
    assert queue.read_record("c.sh").extra["slurm_after"] == ["100"]
    slurm.jobs["100"] = dict(name="other", state="RUNNING", comment="", exit="0:0")
    slurm.jobs["101"]["reason"] = "DependencyNeverSatisfied"
    backend.tick(1)  # a: lost, back to the queue; c: its afterok can never be met
    backend.tick(2)  # a submitted again; c requeued, not failed ...
    backend.tick(3)  # ... and submitted again, after a's new run
    c = queue.read_record("c.sh")
    assert queue.locate("c.sh") is JobState.RUNNING, c
    assert c.extra["slurm_after"] == [queue.read_record("a.sh").backend_id]
    assert not c.extra.get("dependency_failed")


def test_gpu_indices_of_a_running_job() -> None:
    detail = ("JobId=5 JobName=a.sh\n   JOB_GRES=gpu:2\n"
              "     Nodes=vm CPU_IDs=0 Mem=256 GRES=gpu:2(IDX:0-1)\n")
    assert parse_gpu_indices(detail) == [0, 1]
    assert parse_gpu_indices("GRES=gpu:tesla:3(IDX:0,2-3)") == [0, 2, 3]
    assert parse_gpu_indices("   TRES=cpu=1,mem=256M,node=1") == []


# --- the GPUs a job ending between two looks was given -------------------------------------
def test_note_gpus_goes_before_the_first_command_on_its_line() -> None:
    text = "#!/bin/bash\n#SBATCH --gres=gpu:1\n# a comment\n\nset -eu\necho hi\n"
    noted = note_gpus(text)
    assert noted is not None
    assert noted.split("\n") == ["#!/bin/bash", "#SBATCH --gres=gpu:1", "# a comment", "",
                                 GPUS_NOTE + "set -eu", "echo hi", ""]  # line numbers kept
    assert script_sbatch_options(noted) == script_sbatch_options(text)


@pytest.mark.parametrize("shebang", ["#!/bin/sh", "#!/usr/bin/env bash", "#!/bin/zsh -l",
                                     "#!/usr/bin/env -S bash -e"])
def test_note_gpus_takes_posix_shells(shebang: str) -> None:
    assert note_gpus(f"{shebang}\ntrue\n") == f"{shebang}\n{GPUS_NOTE}true\n"


@pytest.mark.parametrize("text", [
    "#!/usr/bin/env python3\nprint(1)\n", "#!/bin/csh\nls\n",
    "#!/bin/sh\n#SBATCH --gres=gpu:1\n", "echo no shebang\n",
    # A script that reads its own file would read the note too (a Python job behind sh):
    "#!/bin/sh\n''''exec python3 -u -- \"$0\" ${1+\"$@\"} # '''\nprint('ok')\n",
    '#!/bin/bash\nsource "${BASH_SOURCE%/*}/env.sh"\n', '#!/bin/sh\ncat "${0}"\n',
    # A shell that traces or echoes its commands would show the note in the log:
    "#!/bin/bash -x\necho hi\n", "#!/bin/sh -ev\necho hi\n",
    "#!/usr/bin/env -S bash -xe\necho hi\n",
])
def test_note_gpus_leaves_other_scripts_alone(text: str) -> None:
    assert note_gpus(text) is None


def test_a_note_that_is_not_a_list_of_indices_is_ignored(tmp_path: Path) -> None:
    note = tmp_path / "n.gpus"
    for text in ["\u00b2\n", "0,\n", "-1\n", "0 1\n", "9" * 40 + "\n", "x"]:
        note.write_text(text)
        assert noted_gpus(str(note)) == [], text  # never a traceback


def test_may_use_gpus_sees_every_place_a_gpu_request_comes_from() -> None:
    none = parse_directives("")
    assert not may_use_gpus(none, "#!/bin/sh\ntrue\n", [], {})
    assert may_use_gpus(parse_directives("#GPUDISPATCH --gpus 1\n"), "", [], {})
    assert may_use_gpus(none, "#!/bin/sh\n#SBATCH --gpus-per-node=1\ntrue\n", [], {})
    assert may_use_gpus(none, "", ["--gres=gpu:1"], {})  # the site's --sbatch-arg
    assert may_use_gpus(none, "", [], {"SBATCH_GRES": "gpu:1"})  # sbatch's environment


def test_scripts_reach_sbatch_byte_for_byte(tmp_path: Path) -> None:
    """A GPU script goes on stdin: bytes that are not UTF-8 and lone CRs stay as they are
    (through a real process: ``cat`` stands in for sbatch, and writes what it got)."""
    q = FolderQueue(tmp_path / "root")
    body = b"#!/bin/sh\n#GPUDISPATCH --gpus 1\nprintf 'caf\xe9 a\rb\\n'\n"
    q.enqueue_text("g.sh", body)
    sent = tmp_path / "sent"

    def runner(argv, stdin, env):
        if argv[0] == "sbatch":
            assert run_command(["sh", "-c", f"cat > {sent}"], stdin, env).returncode == 0
            return Result(0, "7\n", "")
        return Result(0, "", "")

    SlurmBackend(q, runner=runner).tick()
    assert sent.read_bytes() == body.replace(b"printf", GPUS_NOTE.encode() + b"printf")


@pytest.mark.parametrize("gpus, ends", [("0", [0]), ("1,3", [1, 3]), ("", None)])
def test_the_note_runs_under_set_eu_and_writes_what_slurm_gave(tmp_path: Path, gpus: str,
                                                                ends: list[int] | None) -> None:
    """The line itself, run by a real sh with ``-eu``: the job goes on either way."""
    note = tmp_path / "n.gpus"
    script = tmp_path / "job.sh"
    script.write_text(note_gpus("#!/bin/sh -eu\necho after\n") or "")
    env = {"PATH": os.environ["PATH"], "GPUDISPATCH_SLURM_GPUS_FILE": str(note)}
    if gpus:
        env["SLURM_JOB_GPUS"] = gpus
    proc = subprocess.run(["sh", "-eu", str(script)], env=env, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "after\n", "")
    assert (noted_gpus(str(note)) or None) == ends
    assert not note.exists()  # read once, then removed


def test_a_note_that_cannot_be_written_is_silent(tmp_path: Path) -> None:
    script = tmp_path / "job.sh"
    script.write_text(note_gpus("#!/bin/sh\necho after\n") or "")
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_GPUS": "0",
           "GPUDISPATCH_SLURM_GPUS_FILE": str(tmp_path / "no" / "such" / "dir")}
    proc = subprocess.run(["sh", "-eu", str(script)], env=env, capture_output=True, text=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "after\n", "")


def test_a_gpu_job_is_sent_noted_and_exports_where_to_note(tmp_path: Path) -> None:
    q = FolderQueue(tmp_path / "root")
    q.enqueue_text("g.sh", "#!/bin/sh\n#GPUDISPATCH --gpus 1\necho hi\n")
    q.enqueue_text("c.sh", "#!/bin/sh\necho cpu\n")
    calls: list[tuple[list[str], str | None, dict | None]] = []

    def runner(argv, stdin, env):
        calls.append((argv, stdin, env))
        if argv[0] == "sbatch":
            return Result(0, f"{len(calls)}\n", "")
        return Result(0, "", "")

    SlurmBackend(q, runner=runner).tick()
    sent = {next(a for a in argv if a.startswith("--job-name=")): (argv, stdin, env)
            for argv, stdin, env in calls if argv[0] == "sbatch"}
    argv, stdin, env = sent["--job-name=g.sh"]
    assert stdin is not None and GPUS_NOTE + "echo hi" in stdin
    assert "--export=ALL" in argv  # (sbatch's environment, where the file is named)
    assert env["GPUDISPATCH_SLURM_GPUS_FILE"] == q.layout.slurm_gpus("g.sh", 1)
    argv, stdin, env = sent["--job-name=c.sh"]  # a CPU job is sent as it is, by its path
    assert stdin is None and "GPUDISPATCH_SLURM_GPUS_FILE" not in env
